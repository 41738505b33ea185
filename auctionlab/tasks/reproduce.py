"""``auctionlab reproduce``: run an experiment's sweep, then aggregate its table and plot.

An experiment (``conf/experiment/<name>.yaml``, package ``_global_``) sets its default
``scale`` and an ``experiment`` node::

    experiment:
      name: classical_revenue
      title: ...                 # the table's heading
      reproduces: ...            # the seed / table / figure it reproduces (one line)
      pipeline: [evaluate]       # stages run for every point, in the order of STAGES:
                                 # [evaluate], [train], [train, evaluate], [train, certify],
                                 # [teacher, train, certify]...
      sweep:                     # Hydra basic-sweeper syntax; points = union of the
        - mechanism: vcg,myerson_itemwise   # cartesian product of each block
          env: 2x2,2x3
      overrides: {evaluate: []}  # fixed overrides per stage
      fixed_rules: error         # [train, evaluate] pipelines: `evaluate` lets points whose
                                 # mechanism is a fixed rule (PF next to RPF-Net) skip train
      table: {...}               # see auctionlab.reporting.tables.TableSpec
      plot: {...}                # see auctionlab.reporting.plots.plot_table

Each stage of each point is a normal job run in-process through Hydra's ``run_job``: its own
run directory ``<this run>/points/<NN>_<labels>/<stage>/`` (resolved ``config.yaml``,
``metrics.json``, ``.hydra/``, ``<stage>.log``) and its own MLflow run, a child of this run (tag
``mlflow.parentRunId``). The point's sweep overrides go to its ``train`` stage (its first stage
when it has none); ``evaluate`` and ``certify`` after a ``train`` get ``run=<train dir>``. A
``teacher`` stage is a ``train`` job (``overrides.teacher`` plus the point's ``env*`` and
``seed``) whose directory is passed to the point's ``train`` as ``mechanism.teacher=<dir>``
(distillation, seed 004 §3.2); identical teachers are trained once per reproduce run.
The ``scale`` (with any ``scale.*`` override), ``device``,
``threads``, ``progress`` and the tracking store of this run are passed to every job.

Metrics are read back from MLflow (from ``metrics.json`` when tracking is off); the table
(``<name>.md``, ``.csv``, ``.tex``), the plot (``<name>.png``) and ``points.csv`` are written
into this run's directory and logged as its artifacts.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError
from auctionlab.reporting import (
    TableSpec,
    build_table,
    check_budget_columns,
    child_metrics,
    format_table,
    plot_table,
    read_metrics_json,
    render_markdown,
    write_table,
)
from auctionlab.reporting.plots import check_plot
from auctionlab.schema import validate
from auctionlab.tasks.common import build_env_and_mechanism, choices, log, run_dir, save_config
from auctionlab.tracking import Tracker, flatten

#: Stages a pipeline may hold, in this order (``teacher`` is a ``train`` job, see above).
STAGES = ("teacher", "train", "evaluate", "certify")
#: Point overrides a ``teacher`` stage inherits (with their sub-keys: ``env.n_bidders``...).
TEACHER_KEYS = ("env", "seed")


def _teacher_override(override: str) -> bool:
    return override.partition("=")[0].lstrip("+~").split(".")[0] in TEACHER_KEYS


EXPERIMENT_KEYS = (
    "name",
    "title",
    "reproduces",
    "pipeline",
    "sweep",
    "overrides",
    "table",
    "plot",
    "fixed_rules",
)
#: ``experiment.fixed_rules``: a fixed-rule point of a train pipeline is an error, or is only
#: evaluated (its sweep overrides go to ``evaluate``; seed 002 tables mix PF and RPF-Net rows).
FIXED_RULES = ("error", "evaluate")


@dataclass
class Point:
    """One point of an experiment's sweep.

    Attributes:
        number: its position (0-based) in the sweep.
        overrides: its sweep overrides (``["mechanism=vcg", "env=2x2"]``), for the first stage.
        labels: row labels for the table: the first stage's Hydra choices and the sweep values.
        skip: pipeline stages this point does not run (``train`` for a fixed rule).

    """

    number: int
    overrides: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    skip: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """``03_bundled_myerson-2x2``: the point's directory name."""
        values = "-".join(o.split("=", 1)[1].strip("'\"") for o in self.overrides)
        return f"{self.number:02d}_" + re.sub(r"[^\w.-]+", "_", values)[:80]


@dataclass
class Plan:
    """A validated experiment: its points and how to aggregate them."""

    name: str
    title: str
    reproduces: str
    pipeline: list[str]
    points: list[Point]
    stage_overrides: dict[str, list[str]]
    table: TableSpec
    plot: dict[str, Any]
    scale: str


# -- the experiment group --------------------------------------------------------------------------
def experiment_names() -> list[str]:
    """The experiments in ``conf/experiment/``."""
    from auctionlab.cli import options

    return options("experiment")


@contextlib.contextmanager
def hydra_initialized(job_name: str) -> Iterator[Any]:
    """Hydra's compose API on ``conf/``, also inside a running Hydra job.

    The running app's ``GlobalHydra`` is set aside meanwhile and put back afterwards.

    Yields:
        The config loader (for ``HydraContext``).

    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from auctionlab.cli import CONF_DIR

    holder = GlobalHydra.instance()
    outer = holder.hydra if holder.is_initialized() else None
    holder.clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=job_name):
            yield GlobalHydra.instance().config_loader()
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def _compose(task: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """``task``'s primary config with ``overrides`` (Hydra's compose API, usable inside a job)."""
    from hydra import compose

    with hydra_initialized(task):
        return compose(config_name=task, overrides=overrides, return_hydra_config=hydra)


def _value(value: Any) -> str:
    """A config value as Hydra override text (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "\\'") + "'"


def expand_sweep(sweep: Any) -> list[list[str]]:
    """The points of a sweep: the union of the cartesian products of its blocks.

    Args:
        sweep: a list of mappings ``{key: "a,b,c"}`` (Hydra basic-sweeper syntax, lists allowed).

    Returns:
        One override list per point, in sweep order.

    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not isinstance(sweep, list) or not sweep or not all(isinstance(b, Mapping) for b in sweep):
        raise ConfigError("experiment.sweep must be a non-empty list of {key: values} blocks")
    parser = OverridesParser.create()
    points: list[list[str]] = []
    for block in sweep:
        lines = []
        for key, value in block.items():
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            lines.append(f"{key}={text}")
        try:
            (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
        except HydraException as err:
            raise ConfigError(f"experiment.sweep: cannot parse {lines}: {err}") from err
        points += batch
    return points


def listing() -> str:
    """One line per experiment: name, points, pipeline, default scale, what it reproduces."""
    lines = []
    for name in experiment_names():
        cfg = _compose("reproduce", [f"experiment={name}"])
        node = cfg.experiment
        count = len(expand_sweep(OmegaConf.to_container(node.sweep, resolve=True)))
        stages = "+".join(node.pipeline)
        lines.append(
            f"{name:<22} {count:>3} points ({stages}), scale={cfg.scale.name}: {node.reproduces}"
        )
    return "\n".join(lines)


#: ``auctionlab reproduce --list`` (see ``auctionlab.cli``).
FLAGS = {"--list": listing}


# -- validation ------------------------------------------------------------------------------------
def _check_groups(name: str, overrides: list[str]) -> None:
    from auctionlab.cli import GROUPS, options

    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in GROUPS and value.strip("'\"") not in options(key):
            raise ConfigError(
                f"experiment {name}: {key}={value} is not an option; choose one of: "
                + ", ".join(options(key))
            )


def _compose_point(plan_name: str, stage: str, overrides: list[str], hydra: bool = False):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = _compose(stage, overrides, hydra=hydra)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        text = " ".join(str(err).split())
        raise ConfigError(
            f"experiment {plan_name}: {stage} {' '.join(overrides)}: {text}"
        ) from None
    return cfg


def prepare(cfg: DictConfig) -> Plan:
    """Validate the experiment and every point cheaply; raises ``ConfigError`` on bad input.

    Each point's first stage is composed and its env and mechanism are built (that catches
    unknown options, misspelled keys and impossible pairs such as RochetNet with 2 bidders);
    nothing is trained or evaluated and nothing is written.
    """
    validate(cfg)
    names = experiment_names()
    node = cfg.get("experiment")
    if node is None:
        raise ConfigError(f"reproduce needs experiment=<name>; choose one of: {', '.join(names)}")
    spec = OmegaConf.to_container(node, resolve=True)
    if not spec.get("name"):
        raise ConfigError("experiment: the config sets no experiment.name")
    name = str(spec["name"])
    unknown = set(spec) - set(EXPERIMENT_KEYS)
    if unknown:
        raise ConfigError(
            f"experiment {name}: unknown keys {sorted(unknown)}; valid keys: "
            + ", ".join(EXPERIMENT_KEYS)
        )
    pipeline = [str(s) for s in spec.get("pipeline") or []]
    in_order = [s for s in STAGES if s in pipeline] == pipeline and len(set(pipeline)) == len(
        pipeline
    )
    needs_train = ("teacher" in pipeline or "certify" in pipeline) and "train" not in pipeline
    if not pipeline or not in_order or needs_train:
        raise ConfigError(
            f"experiment {name}: pipeline={pipeline} must list stages in the order "
            f"{', '.join(STAGES)} ([evaluate], [train], [train, evaluate], [train, certify]...); "
            "teacher and certify need train"
        )
    fixed_rules = str(spec.get("fixed_rules") or "error")
    if fixed_rules not in FIXED_RULES or (
        fixed_rules == "evaluate" and pipeline != ["train", "evaluate"]
    ):
        raise ConfigError(
            f"experiment {name}: fixed_rules={fixed_rules}: choose one of "
            f"{', '.join(FIXED_RULES)} (evaluate needs pipeline [train, evaluate])"
        )
    stage_overrides = {
        s: [str(o) for o in (spec.get("overrides") or {}).get(s, [])] for s in STAGES
    }
    table = TableSpec.from_config(spec.get("table") or {})
    check_budget_columns(table)
    outside = table.stages() - set(pipeline)
    if outside:
        raise ConfigError(
            f"experiment {name}: table columns read stages {sorted(outside)} that the pipeline "
            f"{pipeline} does not run"
        )
    plot = dict(spec.get("plot") or {})
    columns = [*table.index, *table.columns, *table.relative, *table.derived]
    columns += [k for row in table.reference for k in row if k not in columns]
    check_plot(plot, columns)

    scale = str(cfg.scale.name)
    first = primary_stage(pipeline)
    points = []
    for number, overrides in enumerate(expand_sweep(spec.get("sweep"))):
        _check_groups(name, overrides)
        composed = _compose_point(
            name, first, [f"scale={scale}", *stage_overrides[first], *overrides], hydra=True
        )
        if "teacher" in pipeline:
            # The student needs its teacher's directory, which exists only once trained: check
            # the teacher job here; the student's config was composed (keys, options) above.
            keep = [o for o in overrides if _teacher_override(o)]
            teacher = _compose_point(
                name, "train", [f"scale={scale}", *stage_overrides["teacher"], *keep]
            )
            build_env_and_mechanism(teacher)
        else:
            env, mechanism = build_env_and_mechanism(composed)
        wanted = first == "train"
        skip: tuple[str, ...] = ()
        if wanted and fixed_rules == "evaluate" and not mechanism.learnable:
            skip = ("train",)  # a fixed rule: evaluated directly, with the point's overrides
            _compose_point(
                name, "evaluate", [f"scale={scale}", *stage_overrides["evaluate"], *overrides]
            )
        elif "teacher" not in pipeline and mechanism.learnable != wanted:
            what = "a fixed rule with nothing to train" if wanted else "learned: train it first"
            raise ConfigError(
                f"experiment {name}: point {' '.join(overrides)}: mechanism is {what}"
            )
        labels = {
            k: str(v)
            for k, v in composed.hydra.runtime.choices.items()
            if v is not None and not k.startswith("hydra")
        }
        for override in overrides:
            key, _, value = override.partition("=")
            labels[key.lstrip("+~")] = value.strip("'\"")
        points.append(Point(number, overrides, labels, skip))
    for stage in pipeline:
        if stage == first:
            continue
        _check_groups(name, stage_overrides[stage])
        _compose_point(name, task_of(stage), [f"scale={scale}", *stage_overrides[stage]])
    return Plan(
        name=name,
        title=str(spec.get("title") or name),
        reproduces=str(spec.get("reproduces") or ""),
        pipeline=pipeline,
        points=points,
        stage_overrides=stage_overrides,
        table=table,
        plot=plot,
        scale=scale,
    )


def primary_stage(pipeline: list[str]) -> str:
    """The stage that receives a point's sweep overrides: ``train`` if any, else the first."""
    return "train" if "train" in pipeline else pipeline[0]


def task_of(stage: str) -> str:
    """The task a stage runs (a ``teacher`` is a ``train`` job)."""
    return "train" if stage == "teacher" else stage


def stage_arguments(
    stage: str, point: Point, pipeline: list[str], done: dict[str, Path]
) -> list[str]:
    """The point-specific overrides of ``stage``, given the directories of its earlier stages."""
    if stage == "teacher":
        return [o for o in point.overrides if _teacher_override(o)]
    if stage == primary_stage(pipeline) or (stage == "evaluate" and "train" in point.skip):
        own = list(point.overrides)
        if "teacher" in done:
            own.append(f"mechanism.teacher={_value(str(done['teacher']))}")
        return own
    return [f"run={_value(str(done['train']))}"]


# -- running the points ----------------------------------------------------------------------------
def run_stage(stage: str, overrides: list[str], directory: Path) -> BaseException | None:
    """Run one job of ``stage`` in-process, as Hydra would run it, in ``directory``.

    Args:
        stage: a task (``train``, ``evaluate``, ``certify``).
        overrides: its Hydra overrides.
        directory: its run directory (``hydra.run.dir``).

    Returns:
        ``None`` on success, else the exception the job raised.

    """
    from hydra import compose
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import JobStatus, run_job
    from hydra.types import HydraContext

    from auctionlab.cli import TASKS

    module = importlib.import_module(TASKS[stage][0])
    overrides = [*overrides, f"hydra.run.dir={_value(str(directory))}"]
    with hydra_initialized(stage) as loader:
        config = compose(config_name=stage, overrides=overrides, return_hydra_config=True)
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
                module.run, config, "hydra.run.dir", None, context, configure_logging=False
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


def _base_overrides(cfg: DictConfig, tracker: Tracker) -> list[str]:
    """What every job inherits from this run: scale, runtime options, tracking store."""
    out = [f"scale={cfg.scale.name}"]
    scale = flatten(OmegaConf.to_container(cfg.scale, resolve=True))
    out += [f"scale.{k}={_value(v)}" for k, v in scale.items() if k != "name"]
    out += [f"device={_value(str(cfg.device))}", f"progress={_value(cfg.progress)}"]
    if cfg.get("threads") is not None:
        out.append(f"threads={int(cfg.threads)}")
    if tracker.enabled:
        out += [
            "tracking.enabled=true",
            f"tracking.uri={_value(tracker.uri)}",
            f"tracking.experiment={_value(str(cfg.tracking.experiment))}",
            f"+tracking.parent_run_id={tracker.run_id}",
        ]
    else:
        out.append("tracking.enabled=false")
    return out


def _collect(
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


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the experiment's points, then write and log its table and plot."""
    plan = prepare(cfg)
    out = run_dir()
    picked = choices()
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
        base = _base_overrides(cfg, tracker)
        jobs: list[dict[str, Any]] = []
        failed = 0
        teachers: dict[tuple[str, ...], Path] = {}
        for point in plan.points:
            done: dict[str, Path] = {}
            for stage in plan.pipeline:
                if stage in point.skip:
                    continue
                directory = out / "points" / point.slug / stage
                own = stage_arguments(stage, point, plan.pipeline, done)
                overrides = [*base, *plan.stage_overrides[stage], *own]
                if stage == "teacher" and tuple(overrides) in teachers:
                    done[stage] = teachers[tuple(overrides)]  # trained once per reproduce run
                    continue
                log.info("[%d/%d] %s %s", point.number + 1, len(plan.points), stage, " ".join(own))
                error = run_stage(task_of(stage), overrides, directory)
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
                if stage == "teacher":
                    teachers[tuple(overrides)] = directory
        records, jobs = _collect(plan, jobs, tracker)
        table = build_table(records, plan.table)
        notes = _notes(plan, cfg, out)
        files = write_table(table, plan.table, out, plan.name, plan.title, notes)
        files.append(
            plot_table(table, {"title": plan.title, **plan.plot}, out / f"{plan.name}.png")
        )
        files.append(_write_jobs(jobs, out / "points.csv"))
        summary = {
            "points": float(len(plan.points)),
            "jobs": float(len(jobs)),
            "jobs_failed": float(failed),
            "seconds": time.perf_counter() - started,
        }
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


def _notes(plan: Plan, cfg: DictConfig, out: Path) -> list[str]:
    scale = flatten(OmegaConf.to_container(cfg.scale, resolve=True))
    budgets = ", ".join(f"{k}={v}" for k, v in scale.items() if k != "name")
    lines = [
        f"Reproduces: {plan.reproduces}.",
        f"Scale `{plan.scale}`: {budgets}.",
        f"{len(plan.points)} points ({' + '.join(plan.pipeline)}); one run directory per job "
        f"under `{out / 'points'}` (see `points.csv`).",
    ]
    if any("regret" in source for source in plan.table.columns.values()):
        lines.append(
            "Regret columns are per-bidder means (max over profiles for `regret_max`) under the "
            "PGD attacker whose budget (restarts x steps on the held-out profiles) is in the "
            "same row."
        )
    return lines


def _write_jobs(jobs: list[dict[str, Any]], path: Path) -> Path:
    fields = ["point", "stage", "status", "overrides", "run_dir", "mlflow_run_id", "source"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*fields, "error"])
        writer.writeheader()
        for job in jobs:
            writer.writerow({k: job.get(k, "") for k in [*fields, "error"]})
    return path
