"""Every multirun (``auctionlab <task> -m ...``): a parent MLflow run, named job dirs, a summary.

**Parent run.** :class:`MultirunSummary` (``hydra.callbacks.sweep_summary`` in
``conf/hydra_settings.yaml``) opens one MLflow run when the multirun starts: tag
``task=multirun``, the sweep's overrides as params, its command as tag ``sweep.command``. It is
recorded in ``<hydra.sweep.dir>/sweep.json``; each job's own run finds it there
(:func:`auctionlab.tracking.sweep_job_tags`) and becomes its child (tags
``mlflow.parentRunId``, ``sweep``, ``sweep.job``). A file works for every launcher: jobs in
joblib or submitit workers, or on Slurm nodes, read the same sweep directory.

**Job directories.** ``hydra.sweep.subdir`` is ``<job number>_<swept overrides>``
(:func:`auctionlab.conf.job_dirname`), e.g. ``3_env-2x2_seed-1``: only the keys the command
line sweeps (the console script lists the fixed ones in
``hydra.job.config.override_dirname.exclude_keys``), ``key-value`` joined by ``_``, every other
character made ``_``, a path value by its last part. The name stays a valid unquoted Hydra
value, so ``auctionlab evaluate run=<job dir>`` takes it (``=`` and ``,`` would not parse).

**Summary.** When the multirun ends (or is stopped) every job's record
(``sweep_job.json``, written as the job ends) and ``metrics.json`` are read back: one row per
configuration (the job's overrides less ``seed``), mean ± sample standard deviation over its
seeds of the env's headline metrics (``val_`` names for train), the objective and the attacker
budget behind each regret column; ``n`` counts the jobs that finished, ``failed`` the others,
which are named under the table. Written as ``summary.md`` and ``summary.csv`` in the sweep
directory, printed, and logged to the parent run. A failed job does not stop the sweep; the
multirun then exits with status 1 after the summary.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from auctionlab.conf import EXCLUDE_KEYS
from auctionlab.errors import ConfigError
from auctionlab.reporting import read_metrics_json, render_markdown
from auctionlab.reporting.summary import budget
from auctionlab.runs import write_json
from auctionlab.tracking import SWEEP_RECORD, open_store, tag_key, with_retry

log = logging.getLogger("auctionlab")

#: A job's record in its directory: overrides, status, headline metric names.
JOB_RECORD = "sweep_job.json"
#: The summary's file stem in the sweep directory (``.md``, ``.csv``).
SUMMARY = "summary"
#: The override kept out of a configuration's identity: its rows average over it.
SEED = "seed"
#: Characters of a failed job's reason kept in its record and under the table.
REASON_CHARS = 300


@dataclass(frozen=True)
class JobFailure:
    """What a multirun job returns to Hydra instead of raising: the sweep goes on.

    Attributes:
        reason: one line, as the console printed it.

    """

    reason: str


# -- job directory names --------------------------------------------------------------------------
def fixed_keys(overrides: Sequence[Any]) -> list[str]:
    """Keys of the parsed command-line overrides that are not swept (left out of dir names).

    Args:
        overrides: Hydra's parsed task overrides (``Override`` objects).

    """
    keys = []
    for override in overrides:
        key = str(override.key_or_group)
        if key.startswith("hydra") or override.is_sweep_override():
            continue
        keys.append(key)
    return list(dict.fromkeys(keys))


# -- reading the jobs back ------------------------------------------------------------------------
@dataclass
class Job:
    """One job of a multirun as its directory records it."""

    number: int
    directory: Path
    overrides: list[str]
    failure: str | None = None
    headline: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    config_seed: str | None = None

    @property
    def seed(self) -> str | None:
        """The job's ``seed``: its override, else its config's (``None``: unknown)."""
        for override in self.overrides:
            key, _, value = override.partition("=")
            if key.lstrip("+~") == SEED:
                return value
        return self.config_seed

    @property
    def configuration(self) -> tuple[str, ...]:
        """The overrides that identify its configuration: all but ``seed``."""
        return tuple(o for o in self.overrides if o.split("=", 1)[0].lstrip("+~") != SEED)


def write_job_record(
    directory: Path,
    number: int,
    overrides: Sequence[str],
    failure: str | None,
    headline: Sequence[str],
    seed: Any = None,
) -> Path:
    """``sweep_job.json``: what the summary reads back about one job."""
    record = {
        "job": number,
        "overrides": list(overrides),
        "status": "failed" if failure else "ok",
        "reason": failure,
        "headline": list(headline),
        "seed": None if seed is None else str(seed),
    }
    return write_json(directory / JOB_RECORD, record)


def _number_of(name: str) -> int:
    match = re.match(r"\d+", name)
    return int(match.group()) if match else -1


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job of a sweep directory, by job number.

    Jobs with a record are read from it (any depth of ``hydra.sweep.subdir``); a job directory
    (``.hydra/`` next to it) without one never finished (killed, or stopped with the sweep) and
    counts as failed.
    """
    jobs: dict[Path, Job] = {}
    for path in sorted(sweep_dir.rglob(JOB_RECORD)):
        try:
            record = json.loads(path.read_text())
            number, overrides = int(record["job"]), [str(o) for o in record["overrides"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        job = Job(number, path.parent, overrides, record.get("reason") or None)
        if job.failure is None and record.get("status") != "ok":
            job.failure = "failed"
        job.headline = [str(h) for h in record.get("headline") or []]
        job.config_seed = None if record.get("seed") is None else str(record["seed"])
        if job.failure is None:  # a task without metrics.json (reproduce, replay) has no columns
            job.metrics = read_metrics_json(path.parent)
        jobs[path.parent] = job
    for hydra_dir in sorted(sweep_dir.glob("*/.hydra")):
        directory = hydra_dir.parent
        if directory in jobs:
            continue
        try:
            overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
        except Exception:  # noqa: BLE001 - a half-written job: named by its directory alone
            overrides = []
        jobs[directory] = Job(
            _number_of(directory.name), directory, overrides, "did not finish (no job record)"
        )
    return sorted(jobs.values(), key=lambda j: (j.number, str(j.directory)))


# -- the table ------------------------------------------------------------------------------------
def _columns(jobs: Sequence[Job]) -> list[str]:
    """Metric columns: each job's headline (``val_`` names where it has them), then objective."""
    names: list[str] = []
    for job in jobs:
        if job.failure is not None:
            continue
        for name in job.headline:
            chosen = f"val_{name}" if f"val_{name}" in job.metrics else name
            if chosen in job.metrics:
                names.append(chosen)
        if "objective" in job.metrics:
            names.append("objective")
    ordered = list(dict.fromkeys(n for n in names if n != "objective"))
    return ordered + (["objective"] if "objective" in names else [])


def _varying(jobs: Sequence[Job]) -> list[str]:
    """Override keys (less ``seed``) whose value is not the same in every job."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        present = {o.split("=", 1)[0].lstrip("+~"): o for o in job.configuration}
        for key in dict.fromkeys([*values, *present]):
            values.setdefault(key, set()).add(present.get(key, ""))
    return [key for key, seen in values.items() if len(seen) > 1]


def _value_of(job: Job, key: str) -> str:
    for override in job.configuration:
        name, _, value = override.partition("=")
        if name.lstrip("+~") == key:
            return value
    return ""


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; NaN for a single value)."""
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


@dataclass
class Summary:
    """A sweep's summary: rows per configuration, and the failed jobs."""

    keys: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]]
    failed: list[Job]


def summarize(jobs: Sequence[Job]) -> Summary:
    """Group jobs by configuration; mean ± std of each metric column over the seeds.

    Args:
        jobs: the sweep's jobs (:func:`read_jobs`).

    Returns:
        One row per configuration in the order of its first job: ``keys`` (its values of the
        overrides that vary between configurations), ``n`` (jobs with results), ``failed``,
        ``seeds``, ``<metric>`` as ``(mean, std)`` and ``attacker`` (the budget behind each
        regret column, ``/``-joined when seeds differ).

    """
    keys, metrics = _varying(jobs), _columns(jobs)
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.configuration, []).append(job)
    rows = []
    for members in groups.values():
        done = [j for j in members if j.failure is None]
        row: dict[str, Any] = {key: _value_of(members[0], key) for key in keys}
        row["n"] = len(done)
        row["failed"] = len(members) - len(done)
        row["seeds"] = " ".join(str(j.seed) for j in done if j.seed is not None)
        for name in metrics:
            row[name] = mean_std([j.metrics[name] for j in done if name in j.metrics])
        budgets = []
        for name in metrics:
            if name.endswith("regret_mean"):
                prefix = name[: -len("regret_mean")]
                budgets += [budget(j.metrics, prefix) for j in done if name in j.metrics]
        row["attacker"] = " / ".join(dict.fromkeys(b for b in budgets if b))
        rows.append(row)
    failed = [j for j in jobs if j.failure is not None]
    return Summary(keys, metrics, rows, failed)


def render(summary: Summary, title: str) -> str:
    """``summary.md``: a title, the table (``mean ± std``), the failed jobs by name."""
    import pandas as pd

    columns = [*summary.keys, "n", "failed", "seeds", *summary.metrics, "attacker"]
    cells = []
    for row in summary.rows:
        line = {key: str(row[key]) for key in summary.keys}
        line.update(n=str(row["n"]), failed=str(row["failed"]), seeds=row["seeds"])
        line["attacker"] = row["attacker"]
        line.update({name: _cell(*row[name]) for name in summary.metrics})
        cells.append(line)
    text = [f"# {title}", ""]
    if cells:
        text.append(render_markdown(pd.DataFrame(cells, columns=columns)))
    else:
        text.append("No job ran.\n")
    text.append(
        "mean ± sample standard deviation over the seeds (n: jobs that finished); attacker: the "
        "budget behind the regret columns."
    )
    if summary.failed:
        text += ["", f"Failed jobs ({len(summary.failed)}):", ""]
        for job in summary.failed:
            text.append(f"- job {job.number} ({job.directory.name}): {job.failure}")
    return "\n".join(text) + "\n"


def write_csv(summary: Summary, path: Path) -> Path:
    """``summary.csv``: full precision, ``<metric>_mean`` and ``<metric>_std`` per metric."""
    header = [*summary.keys, "n", "failed", "seeds"]
    for name in summary.metrics:
        header += [f"{name}_mean", f"{name}_std"]
    header.append("attacker")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in summary.rows:
            line = [row[k] for k in summary.keys] + [row["n"], row["failed"], row["seeds"]]
            for name in summary.metrics:
                line += ["" if math.isnan(v) else repr(v) for v in row[name]]
            writer.writerow([*line, row["attacker"]])
    return path


# -- the callback ---------------------------------------------------------------------------------
@dataclass
class _Sweep:
    """The multirun this process started (one at a time)."""

    directory: Path
    task: str
    command: str
    started: float
    client: Any = None
    parent_run_id: str | None = None


#: The open multirun of this process: closed by ``on_multirun_end``, or by
#: :func:`close_open_sweep` when the multirun stops early.
_OPEN: list[_Sweep] = []


class MultirunSummary(Callback):
    """Hydra callback: a parent MLflow run per multirun, job records, the summary at the end.

    Configured in ``conf/hydra_settings.yaml`` as ``hydra.callbacks.sweep_summary``, after
    ``mlflow_init`` (which creates the store first).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the parent run and record it in ``<sweep dir>/sweep.json``."""
        directory = Path(str(config.hydra.sweep.dir)).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        task = str(config.get("task", config.hydra.job.name))
        overrides = [str(o) for o in config.hydra.overrides.task]
        # Hydra's own overrides as the user gave them (not hydra.mode, nor the dir-name keys)
        launch = [
            str(o)
            for o in config.hydra.overrides.hydra
            if str(o).split("=", 1)[0] not in ("hydra.mode", EXCLUDE_KEYS)
        ]
        command = shlex.join(["auctionlab", task, "-m", *launch, *overrides])
        sweep = _Sweep(directory, task, command, time.time())
        record: dict[str, Any] = {"task": task, "command": command, "sweep_dir": str(directory)}
        tracking = config.get("tracking")
        if tracking is not None and tracking.get("enabled", True):
            try:
                sweep.client, uri, experiment = open_store(tracking)
                sweep.parent_run_id = _open_parent(
                    sweep.client, experiment, task, overrides, launch, command, directory
                )
                record.update(uri=uri, parent_run_id=sweep.parent_run_id)
            except ConfigError as err:
                print(f"auctionlab: error: {err}", file=sys.stderr)
                raise SystemExit(2) from err
        write_json(directory / SWEEP_RECORD, record)
        _OPEN[:] = [sweep]

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Write the job's ``sweep_job.json`` (in the process that ran it; multirun jobs only)."""
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if config.hydra.get("mode") != RunMode.MULTIRUN:
            return
        directory = Path(str(config.hydra.runtime.output_dir))
        failure = None
        if job_return.status != JobStatus.COMPLETED:
            error = job_return._return_value
            failure = f"{type(error).__name__}: {error}"
        elif isinstance(job_return._return_value, JobFailure):
            failure = job_return._return_value.reason
        headline = [] if failure else _headline(config)
        write_job_record(
            directory,
            int(config.hydra.job.num),
            [str(o) for o in config.hydra.overrides.task],
            " ".join(str(failure).split())[:REASON_CHARS] if failure else None,
            headline,
            OmegaConf.select(config, SEED, default=None),
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write, print and log the summary; exit with status 1 when a job failed."""
        if not _OPEN:
            return
        summary = finish(_OPEN.pop(), None)
        if summary.failed:
            names = ", ".join(str(j.number) for j in summary.failed)
            print(
                f"auctionlab: {len(summary.failed)} sweep job(s) failed ({names}); see "
                f"{summary_path(config)}",
                file=sys.stderr,
            )
            raise SystemExit(1)


def summary_path(config: DictConfig) -> Path:
    """Where a multirun writes ``summary.md``."""
    return Path(str(config.hydra.sweep.dir)).resolve() / f"{SUMMARY}.md"


def _headline(config: DictConfig) -> list[str]:
    """The env's headline metric names (``Env.headline_metrics``), ``[]`` without an env."""
    from auctionlab.components import build

    node = config.get("env")
    if node is None or "_target_" not in node:
        return []
    try:
        return list(build(node, "env").headline_metrics())
    except Exception:  # noqa: BLE001 - the summary then shows the objective alone
        return []


def _open_parent(
    client: Any,
    experiment: str,
    task: str,
    overrides: list[str],
    launch: list[str],
    command: str,
    directory: Path,
) -> str:
    """Create the parent run: overrides as params, the command and the sweep dir as tags."""
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags

    tags = {
        "task": "multirun",
        "sweep.task": task,
        "sweep.command": command[:5000],
        "sweep": str(directory),
        "run_dir": str(directory),
    }
    if launch:
        tags["sweep.hydra_overrides"] = " ".join(launch)[:5000]
    name = f"{task} -m {' '.join(overrides)}"[:200]
    run = with_retry(client.create_run, experiment, tags=resolve_tags(tags), run_name=name)
    params = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep:
            params[tag_key(key.lstrip("+~"))] = value[:500]
    batch = [Param(k, v) for k, v in params.items()]
    for lo in range(0, len(batch), 100):
        with_retry(client.log_batch, run.info.run_id, params=batch[lo : lo + 100])
    return run.info.run_id


def finish(sweep: _Sweep, error: BaseException | None) -> Summary:
    """Write and print the summary, log it to the parent run and close the parent.

    Args:
        sweep: the multirun.
        error: why it stopped early (``None``: it ran to the end).

    Returns:
        The summary. The parent run is FINISHED, FAILED (a job failed, or ``error``) or KILLED
        (an interruption). Logging errors are warnings: the files are written first.

    """
    from auctionlab.errors import InterruptedRunError

    jobs = read_jobs(sweep.directory)
    summary = summarize(jobs)
    title = sweep.command + ("" if error is None else " (stopped early)")
    text = render(summary, title)
    markdown = sweep.directory / f"{SUMMARY}.md"
    markdown.write_text(text)
    table = write_csv(summary, sweep.directory / f"{SUMMARY}.csv")
    print(text)
    if sweep.client is None or sweep.parent_run_id is None:
        return summary
    if isinstance(error, InterruptedRunError | KeyboardInterrupt) or _signalled(error):
        status = "KILLED"
    elif error is not None or summary.failed:
        status = "FAILED"
    else:
        status = "FINISHED"
    client, run_id = sweep.client, sweep.parent_run_id
    tags = {"sweep.jobs": str(len(jobs)), "sweep.failed": str(len(summary.failed))}
    if _signalled(error):
        tags["failure"] = f"stopped by a signal (exit status {error.code})"
    elif error is not None:
        tags["failure"] = f"{type(error).__name__}: {error}"[:4000]
    try:
        for key, value in tags.items():
            with_retry(client.set_tag, run_id, key, value)
        for path in (markdown, table, sweep.directory / SWEEP_RECORD):
            with_retry(client.log_artifact, run_id, str(path))
    except Exception as err:  # noqa: BLE001 - the summary files are what matters
        log.warning("MLflow logging of the sweep summary failed (%s); files in %s", err, markdown)
    try:
        with_retry(client.set_terminated, run_id, status)
    except Exception as err:  # noqa: BLE001
        log.warning("could not close the sweep's MLflow run %s (%s)", run_id, err)
    return summary


def _signalled(error: BaseException | None) -> bool:
    """Whether ``error`` is the exit of a job stopped by a signal (status 128 + signal)."""
    return isinstance(error, SystemExit) and isinstance(error.code, int) and error.code > 128


def close_open_sweep(error: BaseException | None) -> None:
    """Close a multirun that stopped before its end (Ctrl-C, a launcher error): summary, status.

    Called by the console script when Hydra's multirun raises; a no-op when none is open.
    """
    if not _OPEN:
        return
    sweep = _OPEN.pop()
    try:
        finish(sweep, error)
    except Exception as err:  # noqa: BLE001 - never hide the error that stopped the sweep
        log.warning("could not write the sweep summary (%s)", err)
