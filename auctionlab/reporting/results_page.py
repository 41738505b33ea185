"""Results pages: one Markdown page per experiment, made from a finished reproduce run.

A page is never typed by hand: ``scripts/results_pages.py <run dir>`` (``make results``) renders
it from what the run wrote, so its numbers, command, commit, machine, scale and attacker budget
are the run's own. It reads, in the reproduce run's directory:

* ``reproduce.json`` (written by every reproduce run since it exists): command, start and end
  time, provenance (code version and machine), scale, attacker budgets, jobs and failures;
* ``config.yaml`` (experiment title, what it reproduces, ``experiment.cite``, scale);
* ``<experiment>.md`` (the table, its caption and notes) and ``<experiment>.png`` (the figure);
* for a run older than ``reproduce.json``: ``.hydra/overrides.yaml``, the jobs' ``metrics.json``
  provenance and ``config.yaml`` budgets, ``points.csv`` and ``reproduce.log``; what none of
  them holds is written as "not recorded".

The attacker budget of a stage is read from its jobs' resolved configs (an experiment may
override the scale's budgets for a stage), as ``restarts x steps on N profiles``.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from auctionlab.errors import ConfigError
from auctionlab.references import link_citations

#: The record a reproduce run writes into its directory.
RECORD = "reproduce.json"
NOT_RECORDED = "not recorded"
#: A ``scale=smoke`` page's command goes in a ``bash`` block (run by the docs test) only when
#: the run took at most this many seconds; a longer one goes in a ``text`` block.
CHEAP_SECONDS = 30.0
#: Overrides that change where and how fast a run goes, not its numbers: left out of the
#: page's runnable command (the key/value table keeps the exact one).
RUNTIME_KEYS = ("threads", "device", "progress", "tracking", "keep_going", "hydra")
#: The key/value table's rows, in order (``parse_metadata`` reads them back).
METADATA_KEYS = (
    "command",
    "commit",
    "date (UTC)",
    "machine",
    "scale",
    "attacker budget",
    "run time",
    "failed jobs",
)
#: Table columns holding a cited paper's printed numbers (and the column ``published``).
PUBLISHED_PREFIXES = ("lit_", "paper_")
#: Where a page links its citation keys (``docs/references.md``, next to ``docs/results/``).
REFERENCES = "../references.md"
#: Training stages: their jobs are ``train`` jobs.
TRAINING_STAGES = ("teacher", "train", "resume")
_LOG_TIME = re.compile(r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")


@dataclass(frozen=True)
class ResultsPage:
    """A rendered results page.

    Attributes:
        name: the experiment's name (the page is ``docs/results/<name>.md``).
        markdown: the page's text.
        figure: the run's figure (``<run dir>/<name>.png``), which the page shows as
            ``img/<name>.png``.
        metadata: the key/value table's rows (``METADATA_KEYS``), as written on the page.

    """

    name: str
    markdown: str
    figure: Path
    metadata: dict[str, str] = field(default_factory=dict)


def scale_budgets(scale: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every attacker budget a ``scale`` config holds, whatever its layout.

    A budget is a ``<prefix>restarts`` key with a ``<prefix>steps`` key next to it (and
    ``<prefix>profiles`` or ``<prefix>holdout_profiles`` for its profiles): ``evaluation``,
    ``validation``, ``certify.statistical``, ``allocation.val`` (``val_restarts``...).

    Args:
        scale: the resolved ``scale`` node (nested mappings).

    Returns:
        ``{dotted path: {"restarts", "steps", "profiles"}}`` (``profiles`` ``None`` when the
        block names none), in the config's order.

    """
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{path}.{key}" if path else str(key))
            elif str(key).endswith("restarts") and f"{str(key)[:-8]}steps" in node:
                prefix = str(key)[:-8]
                profiles = node.get(f"{prefix}profiles", node.get(f"{prefix}holdout_profiles"))
                name = ".".join(p for p in (path, prefix.rstrip("_")) if p)
                found[name] = {
                    "restarts": value,
                    "steps": node[f"{prefix}steps"],
                    "profiles": profiles,
                }

    walk(scale, "")
    return found


def _select(cfg: DictConfig, *keys: str) -> list[Any] | None:
    values = [OmegaConf.select(cfg, key, default=None) for key in keys]
    return None if values[0] is None or values[1] is None else values


def job_budget(
    stage: str,
    cfg: DictConfig,
    metrics: Mapping[str, Any] | None = None,
    attacker: str | None = None,
) -> list[dict[str, Any]]:
    """The attacker budgets one job ran with, from its resolved ``config.yaml``.

    An ``evaluate`` job's budget is what its attacker reported (``attack_restarts``,
    ``attack_steps`` in ``metrics``: the numbers next to its regret in the table), whatever
    the attacker; a job without them has no regret to report and no budget.

    Args:
        stage: the job's pipeline stage (``train``, ``teacher``, ``resume``, ``evaluate``,
            ``certify``).
        cfg: the job's resolved config.
        metrics: the job's ``metrics.json`` (``evaluate``: the attacker's reported budget).
        attacker: the job's ``attacker`` option (its Hydra choice), the evaluate budget's label.

    Returns:
        One ``{"stage", "attacker", "restarts", "steps", "profiles", "per"}`` per attacker:
        for a training stage the end-of-training validation and the training attacker
        (``per: batch``); for ``evaluate`` its stress test; for ``certify`` the statistical
        certifier's oracle on the holdout, or the PGD attacker the MIP certificate is
        compared with.

    """
    specs: list[tuple[str, tuple[str, str, str], str]] = []
    if stage in TRAINING_STAGES:
        validation = ("validation.attacker.restarts", "validation.attacker.steps")
        training = ("attack_budget.restarts", "attack_budget.steps", "train.batch_size")
        specs = [
            ("validation", (*validation, "validation.profiles"), "profiles"),
            ("training attacker", training, "batch"),
        ]
    elif stage == "evaluate":
        reported = metrics or {}
        if "attack_restarts" not in reported or "attack_steps" not in reported:
            return []
        return [
            {
                "stage": stage,
                "attacker": attacker or "",
                "restarts": int(reported["attack_restarts"]),
                "steps": int(reported["attack_steps"]),
                "profiles": int(reported.get("profiles", cfg.get("profiles"))),
                "per": "profiles",
            }
        ]
    elif stage == "certify":
        if OmegaConf.select(cfg, "certifier.restarts", default=None) is not None:
            keys = ("certifier.restarts", "certifier.steps", "certifier.holdout_profiles")
            specs = [("holdout oracle", keys, "profiles")]
        else:
            keys = ("attack_budget.restarts", "attack_budget.steps", "certifier.profiles")
            specs = [("pgd", keys, "profiles")]
    out = []
    for attacker, keys, per in specs:
        values = _select(cfg, *keys)
        if values is not None:
            restarts, steps, profiles = values
            out.append(
                {
                    "stage": stage,
                    "attacker": attacker,
                    "restarts": restarts,
                    "steps": steps,
                    "profiles": profiles,
                    "per": per,
                }
            )
    return out


def job_budgets(run_dir: Path) -> list[dict[str, Any]]:
    """The distinct attacker budgets of a reproduce run's jobs (``points/*/<stage>/``).

    Args:
        run_dir: the reproduce run's directory.

    Returns:
        :func:`job_budget` entries, each distinct one once, in point and stage order.

    """
    found: list[dict[str, Any]] = []
    for path in sorted((run_dir / "points").glob("*/*/config.yaml")):
        try:
            cfg = OmegaConf.load(path)
        except (OSError, ValueError):
            continue  # a job that never wrote its config has no budget to report
        if not isinstance(cfg, DictConfig):
            continue
        metrics_path = path.parent / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        except (OSError, ValueError):
            metrics = None
        hydra = path.parent / ".hydra" / "hydra.yaml"
        try:
            attacker = OmegaConf.select(OmegaConf.load(hydra), "hydra.runtime.choices.attacker")
        except (OSError, ValueError):
            attacker = None
        for entry in job_budget(path.parent.name, cfg, metrics, attacker):
            if entry not in found:
                found.append(entry)
    return found


def scale_stage_budgets(
    budgets: Mapping[str, Mapping[str, Any]], pipeline: Iterable[str]
) -> list[dict[str, Any]]:
    """Per-stage budgets from the scale's blocks, for a run whose jobs' configs are gone."""
    blocks = {"validation": TRAINING_STAGES, "evaluation": ("evaluate",)}
    blocks["certify.statistical"] = ("certify",)
    stages = list(pipeline)
    out = []
    for block, owners in blocks.items():
        stage = next((s for s in stages if s in owners), None)
        if stage is not None and block in budgets:
            entry = {"stage": stage, "attacker": f"scale.{block}", "per": "profiles"}
            out.append({**entry, **budgets[block]})
    return out


def format_budgets(budgets: Sequence[Mapping[str, Any]]) -> str:
    """``evaluate: 4 restarts x 20 steps on 128 profiles; train (validation): ...``."""
    parts = []
    for b in budgets:
        label = f"{b['stage']} ({b['attacker']})" if b.get("attacker") else str(b["stage"])
        text = f"{label}: {b['restarts']} restarts x {b['steps']} steps"
        if b.get("profiles") is not None:
            text += (
                f" per batch of {b['profiles']}"
                if b.get("per") == "batch"
                else f" on {b['profiles']} profiles"
            )
        parts.append(text)
    return "; ".join(parts) if parts else NOT_RECORDED


def _refuse(run_dir: Path, why: str) -> ConfigError:
    return ConfigError(f"{run_dir} is not a finished auctionlab reproduce run ({why})")


def _load_config(run_dir: Path) -> DictConfig:
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise _refuse(run_dir, "no such directory")
    if not path.is_file():
        raise _refuse(run_dir, "no config.yaml")
    try:
        cfg = OmegaConf.load(path)
    except (OSError, ValueError) as err:
        why = " ".join(str(err).split())
        raise _refuse(run_dir, f"config.yaml cannot be read: {why}") from None
    if (
        not isinstance(cfg, DictConfig)
        or cfg.get("task") != "reproduce"
        or not OmegaConf.select(cfg, "experiment.name", default=None)
    ):
        raise _refuse(run_dir, "its config.yaml is not a reproduce config with an experiment")
    return cfg


def _read_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise _refuse(run_dir, f"{RECORD} cannot be read: {' '.join(str(err).split())}") from None
    if not isinstance(record, dict):
        raise _refuse(run_dir, f"{RECORD} is not a JSON object")
    return record


def _recorded_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        recorded = OmegaConf.load(path)
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, ListConfig):
        return None
    return [str(o) for o in recorded]


def command_line(overrides: Sequence[str]) -> str:
    """``auctionlab reproduce <overrides>``, each override shell-quoted."""
    return " ".join(["auctionlab", "reproduce", *(shlex.quote(str(o)) for o in overrides)])


def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def runnable_command(name: str, scale: str, overrides: Sequence[str] | None) -> str:
    """The page's command: experiment and scale, plus overrides that change the numbers."""
    kept = [
        o
        for o in overrides or []
        if _override_key(o) not in ("experiment", "scale")
        and _override_key(o).split(".")[0].split("/")[0] not in RUNTIME_KEYS
    ]
    return command_line([f"experiment={name}", f"scale={scale}", *kept])


def job_provenance(run_dir: Path) -> dict[str, str]:
    """The provenance record of the run's first job with one (``metrics.json``), else ``{}``."""
    for path in sorted((run_dir / "points").glob("*/*/metrics.json")):
        try:
            found = json.loads(path.read_text()).get("provenance")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, dict) and found:
            return {str(k): str(v) for k, v in found.items()}
    return {}


def _log_times(run_dir: Path) -> tuple[datetime, datetime] | None:
    path = run_dir / "reproduce.log"
    if not path.is_file():
        return None
    times = [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        for line in path.read_text(errors="replace").splitlines()
        if (m := _LOG_TIME.match(line))
    ]
    return (times[0], times[-1]) if times else None


def _jobs_from_csv(run_dir: Path) -> tuple[int, int] | None:
    path = run_dir / "points.csv"
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return None
    return len(rows), sum(1 for r in rows if r.get("status") != "FINISHED")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`"


def describe_machine(found: Mapping[str, str]) -> str:
    """CPU model, logical CPUs, OS, device (with the GPU's name) and torch threads."""
    device = found.get("device")
    where = []
    if device:
        gpu = found.get("cuda_device")
        where.append(f"device `{device}`" + (f" ({gpu})" if gpu else ""))
    if found.get("threads"):
        where.append(f"torch threads: {found['threads']}")
    if "cpu_model" not in found and "platform" not in found:
        return NOT_RECORDED + (f" ({', '.join(where)})" if where else "")
    machine = [
        found.get("cpu_model", "CPU not recorded"),
        f"{found.get('cpu_count', '?')} logical CPUs",
        found.get("platform", "OS not recorded"),
    ]
    return ", ".join(machine) + ("; " + ", ".join(where) if where else "")


def describe_commit(found: Mapping[str, str]) -> str:
    """The commit (with "(uncommitted changes)" when dirty), or the installed version."""
    commit = found.get("git_commit")
    if commit:
        dirty = " (uncommitted changes)" if found.get("git_dirty") == "true" else ""
        return f"`{commit}`{dirty}"
    version = found.get("auctionlab_version")
    if version:
        return f"{NOT_RECORDED} (auctionlab {version} from an installed package, no checkout)"
    return NOT_RECORDED


def _cite_keys(experiment: DictConfig) -> list[str]:
    cite = experiment.get("cite")
    if cite is None:
        return []
    if isinstance(cite, str):
        return [cite]
    return [str(k) for k in cite]


def _table_section(run_dir: Path, name: str) -> tuple[str, list[str]]:
    """The run's ``<name>.md`` less its heading (the page has its own), run paths shortened."""
    text = (run_dir / f"{name}.md").read_text()
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = "\n".join(lines).strip()
    # The notes name the jobs' absolute directory, which means nothing on the docs site.
    for path in sorted({str(run_dir.resolve()), str(run_dir)}, key=len, reverse=True):
        body = body.replace(path, "<run dir>")
    header = next((line for line in body.splitlines() if line.startswith("| ")), "")
    columns = [c.strip() for c in header.strip("|").split("|")] if header else []
    return body, columns


def render_results_page(run_dir: Path) -> ResultsPage:
    """Render the results page of a finished ``auctionlab reproduce`` run.

    Args:
        run_dir: the reproduce run's directory (``outputs/runs/<date>/<time>_reproduce``).

    Returns:
        The page: Markdown text, the figure to copy next to it, its key/value metadata.

    Raises:
        ConfigError: ``run_dir`` is not a finished reproduce run (no reproduce
            ``config.yaml``, table or figure), in one line.

    """
    run_dir = Path(run_dir)
    cfg = _load_config(run_dir)
    experiment = cfg.experiment
    name = str(experiment.name)
    for needed in (f"{name}.md", f"{name}.png", "points.csv"):
        if not (run_dir / needed).is_file():
            raise _refuse(run_dir, f"no {needed}")
    record = _read_record(run_dir)
    title = str(record.get("title") or experiment.get("title") or name)
    reproduces = str(record.get("reproduces") or experiment.get("reproduces") or "")
    cite = [str(k) for k in record.get("cite") or []] or _cite_keys(experiment)
    scale = str(record.get("scale") or OmegaConf.select(cfg, "scale.name", default=NOT_RECORDED))

    overrides = record.get("overrides")
    if overrides is None:
        overrides = _recorded_overrides(run_dir)
    command = record.get("command") or (None if overrides is None else command_line(overrides))
    found = record.get("provenance") or job_provenance(run_dir)

    seconds = record.get("seconds")
    if record.get("started"):
        started = datetime.fromisoformat(str(record["started"]))
        date = started.strftime("%Y-%m-%d %H:%M:%S")
    else:
        times = _log_times(run_dir)
        date = (
            NOT_RECORDED
            if times is None
            else f"{NOT_RECORDED} (run started {times[0]:%Y-%m-%d %H:%M:%S} local time, "
            "reproduce.log)"
        )
    if seconds is not None:
        run_time = _duration(float(seconds))
    else:
        times = _log_times(run_dir)
        run_time = (
            NOT_RECORDED
            if times is None
            else f"{NOT_RECORDED} (over {_duration((times[1] - times[0]).total_seconds())} "
            "between the first and last lines of reproduce.log)"
        )

    if "jobs" in record and "failed" in record:
        jobs, failed = int(record["jobs"]), int(record["failed"])
    else:
        jobs, failed = _jobs_from_csv(run_dir) or (0, 0)
    budgets = (record.get("attacker_budgets") or {}).get("jobs") or job_budgets(run_dir)
    if not budgets:
        scale_node = OmegaConf.select(cfg, "scale", default=None)
        if isinstance(scale_node, DictConfig):
            container = OmegaConf.to_container(scale_node, resolve=True)
            budgets = scale_stage_budgets(scale_budgets(container), experiment.get("pipeline", []))

    metadata = {
        "command": _code(command) if command else NOT_RECORDED,
        "commit": describe_commit(found),
        "date (UTC)": date,
        "machine": describe_machine(found),
        "scale": _code(scale),
        "attacker budget": format_budgets(budgets),
        "run time": run_time,
        "failed jobs": f"{failed} of {jobs}",
    }

    runnable = runnable_command(name, scale, overrides)
    cheap = seconds is not None and float(seconds) <= CHEAP_SECONDS
    # The docs test runs every `auctionlab ... scale=smoke` line of a bash block: an expensive
    # smoke run is shown in a text block so the docs test does not spend minutes on it.
    fence = "text" if scale == "smoke" and not cheap else "bash"
    table, columns = _table_section(run_dir, name)
    literature = [c for c in columns if c.startswith(PUBLISHED_PREFIXES) or c == "published"]
    links = ", ".join(f"[{k}]({REFERENCES}#{k})" for k in cite)

    lines = [f"# {title}", ""]
    if scale == "smoke":
        lines += [
            '!!! warning "scale=smoke: a pipeline check, not a reproduction"',
            "    This page was made at `scale=smoke`, whose training and attacker budgets only "
            "check that the pipeline runs end to end in seconds. Its numbers are not comparable "
            "with the paper's.",
            "",
        ]
    what = reproduces.rstrip(".") if reproduces else f"experiment `{name}`"
    lines += [f"**Reproduces:** {what}." + (f" Cited: {links}." if links else ""), ""]
    lines += [
        "## How this page was made",
        "",
        f"```{fence}",
        runnable,
        "python scripts/results_pages.py <run dir>   # writes this page from the run's outputs",
        "```",
        "",
        "| what | value |",
        "|---|---|",
        *(f"| {key} | {_cell(value)} |" for key, value in metadata.items()),
        "",
        "## Table",
        "",
        table,
        "",
    ]
    if literature:
        names = ", ".join(f"`{c}`" for c in literature)
        source = f"the cited paper ({links})" if links else "the cited paper"
        lines.append(
            f"Columns {names} are the numbers printed in {source}; every other column is "
            "measured by this run (closed-form references such as `target` are described in "
            "the caption)."
        )
    else:
        lines.append(
            "This table has no column of published numbers (`lit_*`, `paper_*`); its reference "
            "columns, if any, are described in the caption."
        )
    alt = title.replace("[", "").replace("]", "")  # alt text holds no links
    lines += ["", "## Figure", "", f"![{alt}](img/{name}.png)", ""]
    return ResultsPage(
        name=name,
        markdown=link_citations("\n".join(lines), REFERENCES),
        figure=run_dir / f"{name}.png",
        metadata=metadata,
    )


def parse_metadata(markdown: str) -> dict[str, str]:
    """The key/value table of a results page (``| what | value |``), backticks kept.

    Args:
        markdown: a page written by :func:`render_results_page`.

    Returns:
        ``{key: value}``; empty when the page has no such table.

    """
    out: dict[str, str] = {}
    inside = False
    for line in markdown.splitlines():
        if line.strip() == "| what | value |":
            inside = True
            continue
        if not inside:
            continue
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 2 and set(cells[0]) != {"-"}:
            out[cells[0]] = cells[1].replace("\\|", "|")
    return out


def render_index(experiments: Sequence[tuple[str, str]], pages: Path) -> str:
    """``docs/results/index.md``: every experiment, with its page's scale, commit and date.

    Args:
        experiments: ``(name, title)`` of every experiment (``auctionlab reproduce --list``).
        pages: the folder of the results pages (``docs/results``).

    Returns:
        The index's Markdown.

    """
    lines = [
        "# Results",
        "",
        "One page per experiment of `auctionlab reproduce --list`, each made by a command from "
        "a reproduce run's outputs (never typed by hand): its table and figure next to the "
        "paper's numbers, with the exact command, commit, date, machine, scale and attacker "
        "budget. To make or refresh a page:",
        "",
        "```text",
        "auctionlab reproduce experiment=<name> scale=paper",
        "python scripts/results_pages.py outputs/runs/<date>/<time>_reproduce",
        "```",
        "",
        "| experiment | what it shows | page |",
        "|---|---|---|",
    ]
    for name, title in experiments:
        page = pages / f"{name}.md"
        if page.is_file():
            meta = parse_metadata(page.read_text())
            commit = re.search(r"[0-9a-f]{40}", meta.get("commit", ""))
            date = meta.get("date (UTC)", NOT_RECORDED)
            date = NOT_RECORDED if date.startswith(NOT_RECORDED) else date.split(" ")[0]
            scale = meta.get("scale", NOT_RECORDED)
            short = f"`{commit.group(0)[:10]}`" if commit else NOT_RECORDED
            cell = f"[{name}]({name}.md): scale {scale}, commit {short}, {date}"
        else:
            cell = (
                f"no page yet: `auctionlab reproduce experiment={name}` then "
                "`python scripts/results_pages.py <run dir>`"
            )
        lines.append(f"| `{name}` | {_cell(title)} | {cell} |")
    return link_citations("\n".join(lines), REFERENCES) + "\n"
