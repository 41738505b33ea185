"""An experiment's plan: its sweep expanded into points, each point's stages and overrides.

An experiment (``conf/experiment/<name>.yaml``, package ``_global_``) sets its default
``scale`` and an ``experiment`` node::

    experiment:
      name: classical_revenue
      title: ...                 # the table's heading
      reproduces: ...            # the paper's table / figure it reproduces, cited as [key]
      cite: [curry2020certifying]  # bibliography keys (auctionlab.references): the papers
                                 # it reproduces or compares against
      pipeline: [evaluate]       # stages run for every point, in the order of STAGES:
                                 # [evaluate], [train], [train, evaluate], [train, certify],
                                 # [teacher, train, certify], [resume, evaluate]...
      sweep:                     # Hydra basic-sweeper syntax; points = union of the
        - mechanism: vcg,myerson_itemwise   # cartesian product of each block
          env: 2x2,2x3
      overrides: {evaluate: []}  # fixed overrides per stage
      fixed_rules: error         # [train|resume, evaluate] pipelines: `evaluate` lets points
                                 # whose mechanism is a fixed rule (PF next to RPF-Net) skip
                                 # training
      table: {...}               # see auctionlab.reporting.tables.TableSpec
      plot: {...}                # see auctionlab.reporting.plots.plot_table

The point's sweep overrides go to its ``train`` (or ``resume``) stage, its first stage when it has
neither; ``evaluate`` and ``certify`` after training get ``run=<train dir>``. A sweep key
``<stage>/<key>`` (``evaluate/env: 2x2,2x5,3x10``) goes to that later stage instead, as
``<key>=<value>``: points that differ only there share one training run (identical ``train``
jobs run once per reproduce run) and are evaluated each their own way (a net trained on one size
served on others). A ``teacher`` stage is
a ``train`` job (``overrides.teacher`` plus the point's ``env*`` and ``seed``) whose directory is
passed to the point's ``train`` as ``mechanism.teacher=<dir>`` (distillation, [curry2020certifying]
§3.2). A ``resume`` stage is a staged schedule (warm restarts): the first point that trains runs a
fresh ``train`` (``overrides.train`` plus its sweep overrides); every later one continues the
previous training point's run in a copy of its directory (``train resume=<copy>`` with
``overrides.resume`` and its own sweep overrides; the earlier stage stays as it was, the copy gets
its own MLflow run). See :mod:`auctionlab.experiments.stages` for how the jobs run.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from auctionlab.components import build_env_and_mechanism
from auctionlab.conf import compose as compose_config
from auctionlab.conf import group_options, job_config_dirs
from auctionlab.errors import ConfigError
from auctionlab.references import check_keys
from auctionlab.reporting import TableSpec, check_budget_columns
from auctionlab.reporting.plots import check_plot
from auctionlab.schema import validate

#: Stages a pipeline may hold, in this order (``teacher`` and ``resume`` are ``train`` jobs).
STAGES = ("teacher", "train", "resume", "evaluate", "certify")
#: Stages that train: a point's sweep overrides go to the one it has.
TRAINING = ("train", "resume")
#: Point overrides a ``teacher`` stage inherits (with their sub-keys: ``env.n_bidders``...).
TEACHER_KEYS = ("env", "seed")
EXPERIMENT_KEYS = (
    "name",
    "title",
    "reproduces",
    "cite",
    "pipeline",
    "sweep",
    "overrides",
    "table",
    "plot",
    "fixed_rules",
)
#: ``experiment.fixed_rules``: a fixed-rule point of a train pipeline is an error, or is only
#: evaluated (its sweep overrides go to ``evaluate``; [zeng2025rpf] tables mix PF and RPF-Net rows).
FIXED_RULES = ("error", "evaluate")


def _teacher_override(override: str) -> bool:
    return override.partition("=")[0].lstrip("+~").split(".")[0] in TEACHER_KEYS


@dataclass
class Point:
    """One point of an experiment's sweep.

    Attributes:
        number: its position (0-based) in the sweep.
        overrides: its sweep overrides (``["mechanism=vcg", "env=2x2"]``), for the first stage.
        labels: row labels for the table: the first stage's Hydra choices and the sweep values.
        skip: pipeline stages this point does not run (``train`` for a fixed rule).
        staged: its sweep overrides for later stages (``{"evaluate": ["env=3x10"]}``), from
            the sweep's ``<stage>/<key>`` keys.

    """

    number: int
    overrides: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    staged: dict[str, list[str]] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """``03_bundled_myerson-2x2``: the point's directory name."""
        every = [*self.overrides, *(o for own in self.staged.values() for o in own)]
        values = "-".join(o.split("=", 1)[1].strip("'\"") for o in every)
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
    cite: list[str] = field(default_factory=list)


def options(group: str) -> list[str]:
    """Available options of a config group, the running job's user directories included."""
    return group_options(group, job_config_dirs())


def experiment_names() -> list[str]:
    """The experiments on the config search path (``conf/experiment/`` and user dirs)."""
    return options("experiment")


def compose(task: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """``task``'s primary config with ``overrides`` (Hydra's compose API, usable inside a job)."""
    return compose_config(task, overrides, job_config_dirs(), return_hydra_config=hydra)


def quote(value: Any) -> str:
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
        cfg = compose("reproduce", [f"experiment={name}"])
        node = cfg.experiment
        count = len(expand_sweep(OmegaConf.to_container(node.sweep, resolve=True)))
        stages = "+".join(node.pipeline)
        lines.append(
            f"{name:<22} {count:>3} points ({stages}), scale={cfg.scale.name}: {node.reproduces}"
        )
    return "\n".join(lines)


def split_staged(
    name: str, overrides: list[str], pipeline: list[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """A point's sweep overrides: those of its first stage, and ``<stage>/<key>`` ones by stage.

    Raises:
        ConfigError: a ``<stage>/`` key names the first stage or a stage the pipeline lacks.

    """
    first = primary_stage(pipeline)
    own: list[str] = []
    staged: dict[str, list[str]] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        stage, slash, rest = key.lstrip("+~").partition("/")
        if not slash or stage not in STAGES:
            own.append(override)
            continue
        later = [s for s in pipeline if s != first]
        if stage not in later:
            raise ConfigError(
                f"experiment {name}: sweep key {key}: {stage} is not a later stage of the "
                f"pipeline {pipeline}; a <stage>/<key> key names one of: {', '.join(later)}"
            )
        prefix = key[: len(key) - len(key.lstrip("+~"))]
        staged.setdefault(stage, []).append(f"{prefix}{rest}={value}")
    return own, staged


def _check_groups(name: str, overrides: list[str], groups: Collection[str]) -> None:
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in groups and value.strip("'\"") not in options(key):
            raise ConfigError(
                f"experiment {name}: {key}={value} is not an option; choose one of: "
                + ", ".join(options(key))
            )


def _compose_point(
    plan_name: str, stage: str, overrides: list[str], hydra: bool = False
) -> DictConfig:
    """``stage``'s config with ``overrides``, resolved; a failure is a one-line ``ConfigError``."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(stage, overrides, hydra=hydra)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        text = " ".join(str(err).split())
        raise ConfigError(
            f"experiment {plan_name}: {stage} {' '.join(overrides)}: {text}"
        ) from None
    return cfg


def build_plan(cfg: DictConfig, groups: Collection[str]) -> Plan:
    """Validate the experiment and every point cheaply.

    Each point's first stage is composed and its env and mechanism are built (that catches
    unknown options, misspelled keys and impossible pairs such as RochetNet with 2 bidders);
    nothing is trained or evaluated and nothing is written.

    Args:
        cfg: the composed ``reproduce`` config (with its ``experiment`` node).
        groups: the config groups whose options a point override may choose
            (``env``, ``mechanism``...): an unknown option is an error here, not mid-sweep.

    Returns:
        The plan: points (sweep overrides, table labels, skipped stages), stage overrides,
        table and plot specs.

    Raises:
        ConfigError: a bad experiment, pipeline, table, plot or point, in one line.

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
    trains = [s for s in TRAINING if s in pipeline]
    needs_train = ("teacher" in pipeline and "train" not in pipeline) or (
        "certify" in pipeline and not trains
    )
    if not pipeline or not in_order or needs_train or len(trains) > 1:
        raise ConfigError(
            f"experiment {name}: pipeline={pipeline} must list stages in the order "
            f"{', '.join(STAGES)} ([evaluate], [train], [train, evaluate], [train, certify], "
            "[resume, evaluate]...); teacher needs train, certify needs train or resume, and "
            "train and resume exclude each other"
        )
    fixed_rules = str(spec.get("fixed_rules") or "error")
    if fixed_rules not in FIXED_RULES or (
        fixed_rules == "evaluate"
        and pipeline not in (["train", "evaluate"], ["resume", "evaluate"])
    ):
        raise ConfigError(
            f"experiment {name}: fixed_rules={fixed_rules}: choose one of "
            f"{', '.join(FIXED_RULES)} (evaluate needs pipeline [train|resume, evaluate])"
        )
    stage_overrides = {
        s: [str(o) for o in (spec.get("overrides") or {}).get(s, [])] for s in STAGES
    }
    cite = check_keys(spec.get("cite"), f"experiment {name}: experiment.cite")
    table = TableSpec.from_config(spec.get("table") or {}, name)
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
    for number, swept in enumerate(expand_sweep(spec.get("sweep"))):
        overrides, staged = split_staged(name, swept, pipeline)
        _check_groups(name, overrides, groups)
        for stage, own in staged.items():
            _check_groups(name, own, groups)
            _compose_point(name, task_of(stage), [f"scale={scale}", *stage_overrides[stage], *own])
        # A resume point is checked as the fresh run that starts its schedule.
        fresh = stage_overrides["train"]
        composed = _compose_point(
            name,
            task_of(first),
            [f"scale={scale}", *(fresh if first == "resume" else stage_overrides[first])]
            + overrides,
            hydra=True,
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
        wanted = first in TRAINING
        skip: tuple[str, ...] = ()
        if wanted and fixed_rules == "evaluate" and not mechanism.learnable:
            skip = (first,)  # a fixed rule: evaluated directly, with the point's overrides
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
        for override in swept:
            key, _, value = override.partition("=")
            labels[key.lstrip("+~")] = value.strip("'\"")
        points.append(Point(number, overrides, labels, skip, staged))
    for stage in pipeline:
        if stage == first:
            if stage == "resume":  # its overrides continue a run composed from train's
                _check_groups(name, stage_overrides[stage], groups)
                _compose_point(name, "train", [f"scale={scale}", *fresh, *stage_overrides[stage]])
            continue
        _check_groups(name, stage_overrides[stage], groups)
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
        cite=cite,
    )


def primary_stage(pipeline: list[str]) -> str:
    """The stage that receives a point's sweep overrides: the training one, else the first."""
    return next((s for s in pipeline if s in TRAINING), pipeline[0])


def task_of(stage: str) -> str:
    """The task a stage runs (``teacher`` and ``resume`` are ``train`` jobs)."""
    return "train" if stage in ("teacher", "resume") else stage


def stage_arguments(
    stage: str, point: Point, pipeline: list[str], done: dict[str, Path]
) -> list[str]:
    """The point-specific overrides of ``stage``, given the directories of its earlier stages."""
    if stage == "teacher":
        return [o for o in point.overrides if _teacher_override(o)]
    first = primary_stage(pipeline)
    if stage == first or (stage == "evaluate" and first in point.skip):
        own = [*point.overrides, *point.staged.get(stage, [])]
        if "teacher" in done:
            own.append(f"mechanism.teacher={quote(str(done['teacher']))}")
        return own
    trained = done["train"] if "train" in done else done["resume"]
    return [f"run={quote(str(trained))}", *point.staged.get(stage, [])]
