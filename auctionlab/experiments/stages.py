"""Running an experiment's plan: every stage of every point as an in-process Hydra job.

Each stage of each point is a normal job run through Hydra's ``run_job``: its own run directory
``<reproduce run>/points/<NN>_<labels>/<stage>/`` (resolved ``config.yaml``, ``metrics.json``,
``.hydra/``, ``<stage>.log``) and its own MLflow run, a child of the reproduce run (tag
``mlflow.parentRunId``). Identical teachers, and identical ``train`` jobs (points that differ
only in a later stage's sweep keys), are trained once per reproduce run. The ``scale``
(with any ``scale.*`` override), ``device``, ``threads``, ``progress`` and the tracking store of
the reproduce run are passed to every job.

Metrics are read back from MLflow (from ``metrics.json`` when tracking is off); the table
(``<name>.md``, ``.csv``, ``.tex``), the plot (``<name>.png``) and ``points.csv`` are written
into the reproduce run's directory and logged as its artifacts.

The task functions come from the caller (``auctionlab.tasks.reproduce``): this library never
imports the task modules.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from auctionlab.conf import hydra_initialized, job_config_dirs, searchpath_override
from auctionlab.errors import InterruptedRunError
from auctionlab.experiments.plan import (
    Plan,
    quote,
    stage_arguments,
    task_of,
)
from auctionlab.experiments.record import write_record
from auctionlab.references import citation
from auctionlab.reporting import (
    build_table,
    child_metrics,
    format_table,
    plot_table,
    read_metrics_json,
    render_markdown,
    write_table,
)
from auctionlab.runs import read_recorded_overrides, save_config
from auctionlab.tracking import Tracker, flatten

log = logging.getLogger("auctionlab")

#: Per-family budget blocks of the ``scale`` group (``scale.allocation``, ``allocation_timing``:
#: [zeng2025rpf]'s RPF-Net experiments), read by those experiments' overrides.
FAMILIES = ("allocation", "allocation_timing")
#: ``task name -> its run(cfg)`` (``train``, ``evaluate``, ``certify``), given by the caller.
JobRunner = Callable[[str], Callable[[DictConfig], Any]]


def run_stage(
    stage: str, overrides: list[str], directory: Path, task: JobRunner
) -> BaseException | None:
    """Run one job of ``stage`` in-process, as Hydra would run it, in ``directory``.

    Args:
        stage: a task (``train``, ``evaluate``, ``certify``).
        overrides: its Hydra overrides.
        directory: its run directory (``hydra.run.dir``).
        task: gives the task's ``run(cfg)`` function.

    Returns:
        ``None`` on success, else the exception the job raised.

    """
    from hydra import compose
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import JobStatus, run_job
    from hydra.types import HydraContext

    function = task(stage)
    overrides = [*overrides, f"hydra.run.dir={quote(str(directory))}"]
    with hydra_initialized(stage) as loader:
        where = searchpath_override(job_config_dirs())
        config = compose(
            config_name=stage, overrides=[*overrides, *where], return_hydra_config=True
        )
        context = HydraContext(loader, Callbacks())
    directory.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(directory / f"{stage}.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            result = run_job(
                function, config, "hydra.run.dir", None, context, configure_logging=False
            )
        if result.status != JobStatus.COMPLETED:
            error = result._return_value
            log.error(
                "%s in %s failed: %s",
                stage,
                directory,
                error,
                exc_info=(type(error), error, error.__traceback__),
            )
            return error
        return None
    finally:
        root.removeHandler(handler)
        handler.close()
        if printed.getvalue():
            (directory / "stdout.txt").write_text(printed.getvalue())


def base_overrides(cfg: DictConfig, tracker: Tracker) -> list[str]:
    """What every job inherits from this run: scale, runtime options, tracking store."""
    out = [f"scale={cfg.scale.name}"]
    scale = flatten(OmegaConf.to_container(cfg.scale, resolve=True))
    out += [f"scale.{k}={quote(v)}" for k, v in scale.items() if k != "name"]
    out += [f"device={quote(str(cfg.device))}", f"progress={quote(cfg.progress)}"]
    if cfg.get("threads") is not None:
        out.append(f"threads={int(cfg.threads)}")
    if tracker.enabled:
        out += [
            "tracking.enabled=true",
            f"tracking.uri={quote(tracker.uri)}",
            f"tracking.experiment={quote(str(cfg.tracking.experiment))}",
            f"+tracking.parent_run_id={tracker.run_id}",
        ]
    else:
        out.append("tracking.enabled=false")
    return out


def collect(
    plan: Plan, jobs: list[dict[str, Any]], tracker: Tracker
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Metrics of every job (MLflow first, metrics.json otherwise) as table records."""
    found: dict[str, dict] = {}
    if tracker.enabled:
        experiment = tracker.client.get_run(tracker.run_id).info.experiment_id
        found = child_metrics(tracker.client, experiment, tracker.run_id)
    records = {p.number: {**p.labels, "point": p.number} for p in plan.points}
    for job in jobs:
        child = found.get(str(Path(job["run_dir"]).resolve()))
        if child is not None:
            metrics, job["mlflow_run_id"], job["source"] = (
                child["metrics"],
                child["run_id"],
                "mlflow",
            )
        else:
            metrics, job["mlflow_run_id"], job["source"] = (
                read_metrics_json(job["run_dir"]),
                "",
                "json",
            )
        if job["status"] == "FINISHED":
            records[job["point"]].update({f"{job['stage']}.{k}": v for k, v in metrics.items()})
    return list(records.values()), jobs


def resume_overrides(previous: Path, directory: Path, overrides: list[str]) -> list[str]:
    """Continue the train run ``previous`` in a copy at ``directory`` with ``overrides``.

    What ``auctionlab train resume=DIR`` does on the command line, for an in-process job: the
    copy's recorded overrides (``.hydra/overrides.yaml``), less the keys given now, then the
    given ones and ``resume=<copy>``. The copy loses ``tracking.json`` (its own MLflow run)
    and ``metrics.json`` (written again when the stage is done); ``previous`` stays as it was.

    Args:
        previous: the finished train run directory continued.
        directory: where the continued run goes (must not exist yet).
        overrides: the new overrides (base, ``overrides.resume``, the point's).

    Returns:
        The overrides of the resumed ``train`` job.

    """
    shutil.copytree(previous, directory)
    (directory / "tracking.json").unlink(missing_ok=True)
    (directory / "metrics.json").unlink(missing_ok=True)

    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    given = {key(o) for o in overrides}
    recorded = read_recorded_overrides(directory / ".hydra" / "overrides.yaml", f"{directory}")
    before = [o for o in recorded if key(o) not in given | {"resume"}]
    return [*before, *overrides, f"resume={quote(str(directory))}"]


def run_experiment(
    cfg: DictConfig, plan: Plan, out: Path, picked: dict[str, str], task: JobRunner
) -> dict[str, float]:
    """Run the plan's points, then write and log its table and plot.

    Args:
        cfg: the ``reproduce`` config (scale, runtime options, tracking, ``keep_going``).
        plan: the validated plan (:func:`auctionlab.experiments.plan.build_plan`).
        out: the reproduce run's directory.
        picked: its Hydra group choices (MLflow tags).
        task: gives each task's ``run(cfg)``.

    Returns:
        ``points``, ``jobs``, ``jobs_failed`` and ``seconds``.

    Raises:
        RuntimeError: a job failed (at once, or after the table with ``keep_going``).

    """
    tags = {
        "task": "reproduce",
        "experiment": plan.name,
        "run_dir": str(out.resolve()),
        "choice.experiment": plan.name,
        "choice.scale": plan.scale,
    }
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    started = time.perf_counter()
    with Tracker(cfg, cfg.tracking, f"reproduce {plan.name} scale={plan.scale}", tags) as tracker:
        save_config(cfg, out)
        base = base_overrides(cfg, tracker)
        jobs: list[dict[str, Any]] = []
        failed = 0
        trained: dict[tuple[str, ...], Path] = {}  # teacher and train jobs, by overrides
        chain: Path | None = None  # the last resume stage's run, continued by the next one
        for point in plan.points:
            done: dict[str, Path] = {}
            for stage in plan.pipeline:
                if stage in point.skip:
                    continue
                directory = out / "points" / point.slug / stage
                own = stage_arguments(stage, point, plan.pipeline, done)
                fixed = plan.stage_overrides[stage]
                if stage == "resume" and chain is None:
                    fixed = plan.stage_overrides["train"]  # the schedule starts afresh
                overrides = [*base, *fixed, *own]
                shared = trained.get((stage, *overrides))
                if shared is not None:  # trained once per reproduce run
                    done[stage] = shared
                    if stage == "train":  # the point's row reads the shared run's metrics
                        jobs.append(
                            {
                                "point": point.number,
                                "stage": stage,
                                "overrides": " ".join(own),
                                "run_dir": str(shared),
                                "status": "FINISHED",
                                "error": "",
                            }
                        )
                    continue
                log.info("[%d/%d] %s %s", point.number + 1, len(plan.points), stage, " ".join(own))
                if stage == "resume" and chain is not None:
                    overrides = resume_overrides(chain, directory, overrides)
                error = run_stage(task_of(stage), overrides, directory, task)
                if isinstance(error, InterruptedRunError):  # a signal stops the whole sweep
                    raise error
                jobs.append(
                    {
                        "point": point.number,
                        "stage": stage,
                        "overrides": " ".join(own),
                        "run_dir": str(directory),
                        "status": "FINISHED" if error is None else "FAILED",
                        "error": "" if error is None else f"{type(error).__name__}: {error}",
                    }
                )
                if error is not None:
                    failed += 1
                    if not cfg.keep_going:
                        raise RuntimeError(f"{stage} {' '.join(own)} failed: {error}") from error
                    break
                done[stage] = directory
                if stage in ("teacher", "train"):
                    trained[(stage, *overrides)] = directory
                if stage == "resume":
                    chain = directory
        records, jobs = collect(plan, jobs, tracker)
        table = build_table(records, plan.table)
        files = write_table(
            table, plan.table, out, plan.name, plan.title, table_notes(plan, cfg, out)
        )
        files.append(
            plot_table(table, {"title": plan.title, **plan.plot}, out / f"{plan.name}.png")
        )
        files.append(write_jobs(jobs, out / "points.csv"))
        summary = {
            "points": float(len(plan.points)),
            "jobs": float(len(jobs)),
            "jobs_failed": float(failed),
            "seconds": time.perf_counter() - started,
        }
        files.append(write_record(cfg, plan, out, summary, tracker.provenance))
        tracker.log_metrics(summary)
        tracker.log_artifacts([out / "config.yaml", *files])
        print(f"{plan.title}\n\n{render_markdown(format_table(table, plan.table))}")
        print("\n".join(f"wrote {p}" for p in files))
        if failed:
            raise RuntimeError(
                f"{failed} of {len(jobs)} jobs failed (see {out / 'points.csv'}); the table "
                "shows them as missing"
            )
    return summary


def table_notes(plan: Plan, cfg: DictConfig, out: Path) -> list[str]:
    """The notes under the table: what it reproduces, the scale's budgets, where the jobs are.

    A family's own budgets (``scale.allocation``) are not listed: its experiments' tables show
    the numbers they use in their columns. The notes end with the references: a
    ``References:`` line, then ``- [key] <full citation>`` for every key the experiment
    (``experiment.cite``) or its reference rows (``cite``) name, in that order, once each.
    """
    scale = flatten(OmegaConf.to_container(cfg.scale, resolve=True))
    budgets = ", ".join(
        f"{k}={v}" for k, v in scale.items() if k != "name" and k.split(".")[0] not in FAMILIES
    )
    lines = [
        f"Reproduces: {plan.reproduces}.",
        f"Scale `{plan.scale}`: {budgets}.",
        f"{len(plan.points)} points ({' + '.join(plan.pipeline)}); one run directory per job "
        f"under `{out / 'points'}` (see `points.csv`).",
    ]
    if any("regret" in source for source in plan.table.columns.values()):
        lines.append(
            "Regret columns are per-bidder means (max over profiles for `regret_max`) under the "
            "stress-test attacker whose budget (restarts x steps on the held-out profiles; "
            "deviation-steps spent per bidder and profile where the table has that column) is "
            "in the same row."
        )
    keys = list(dict.fromkeys([*plan.cite, *plan.table.citations]))
    if keys:
        lines += ["", "References:", "", *(f"- [{key}] {citation(key)}" for key in keys)]
    return lines


def write_jobs(jobs: list[dict[str, Any]], path: Path) -> Path:
    """``points.csv``: one row per job (stage, status, overrides, run dir, MLflow run, error)."""
    fields = ["point", "stage", "status", "overrides", "run_dir", "mlflow_run_id", "source"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*fields, "error"])
        writer.writeheader()
        for job in jobs:
            writer.writerow({k: job.get(k, "") for k in [*fields, "error"]})
    return path
