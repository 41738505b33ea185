"""Structured schemas for every config group: types and ranges checked before any work starts.

Two kinds of nodes make up a task config:

* **sections** (``train``, ``validation``, ``attack_budget``, ``scale``, ``tracking``,
  ``trainer`` and the top-level runtime keys) have explicit dataclass schemas below;
* **components** (``env``, ``env.distribution``, ``mechanism``, ``attacker``, ``oracle``,
  ``trainer.constraint``, ``validation.attacker``...) carry a ``_target_``; their schema is the
  dataclass derived from the target class's constructor signature, so a new mechanism is still
  one module + one yaml. Their value ranges are checked by the constructors themselves
  (``ConfigError`` naming the option), which :func:`validate` does not duplicate.

Both are checked with OmegaConf's structured-config merge, whose errors are turned into one
line naming the option, the value and what is allowed.

The gate against code execution is :func:`check_targets`: a config file may come from someone
else (a run directory's ``config.yaml`` handed to ``evaluate run=...``, the overrides a
``train resume=`` replays, an audit log's header), and Hydra builds whatever a ``_target_``
names, at any depth. So every ``_target_`` anywhere in a tree (dicts, lists, ``_args_``) must
resolve, exactly as Hydra resolves it, to a component class (a subclass of
``auctionlab.core.component.Component``) whose real module is in auctionlab, or in a module
listed in ``AUCTIONLAB_TRUSTED_MODULES`` (comma-separated, set by the user who runs the tool,
never by a config). Keys starting with ``_`` other than Hydra's instantiate keys are refused.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from auctionlab.core.component import Component
from auctionlab.errors import ConfigError

#: The environment variable listing extra modules (comma-separated) whose component classes a
#: config may name; only the person running the tool sets it, never a config file.
TRUSTED_MODULES_VARIABLE = "AUCTIONLAB_TRUSTED_MODULES"
#: The only ``_``-keys a config node may carry: Hydra's instantiate keys.
INSTANTIATE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
#: Constructor arguments supplied by the code at build time, never by the config.
INJECTED = {"env", "self"}
OPTIMIZERS = ("adam", "sgd")
FALLBACKS = ("none", "local")
DIRECTIONS = ("maximize", "minimize")
PROGRESS = ("auto", True, False)
#: ``tune.sampler``: Optuna's TPE, random search, NSGA-II.
SAMPLERS = ("tpe", "random", "nsga2")
#: ``tune.mode``: maximise one objective, or search the revenue-regret Pareto front.
TUNE_MODES = ("single", "pareto")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive(path: str, value: float | None, strict: bool = True) -> None:
    if value is None:
        return
    ok = math.isfinite(value) and (value > 0 if strict else value >= 0)
    _require(ok, f"{path}={value} must be {'> 0' if strict else '>= 0'} and finite")


def _at_least(path: str, value: int | None, minimum: int) -> None:
    if value is not None:
        _require(value >= minimum, f"{path}={value} must be >= {minimum}")


# -- sections ---------------------------------------------------------------------------------
@dataclass
class TrainSection:
    """``train``: the loop's budget (filled from ``scale.train``)."""

    iterations: int = 1
    batch_size: int = 1
    num_samples: Optional[int] = None  # noqa: UP045 - OmegaConf 2.3 needs typing.Optional
    cache_misreports: bool = True
    log_every: int = 100
    checkpoint_every: int = 0
    detect_anomaly: bool = False
    mlflow_model: Any = "auto"

    def check(self, path: str) -> None:
        """Ranges."""
        _require(
            self.mlflow_model in PROGRESS,
            f"{path}.mlflow_model={self.mlflow_model} is not valid; choose one of auto, true, "
            "false",
        )
        _at_least(f"{path}.iterations", self.iterations, 1)
        _at_least(f"{path}.batch_size", self.batch_size, 1)
        _at_least(f"{path}.num_samples", self.num_samples, self.batch_size)
        _at_least(f"{path}.log_every", self.log_every, 1)
        _at_least(f"{path}.checkpoint_every", self.checkpoint_every, 0)


@dataclass
class AttackBudget:
    """``attack_budget``: what every ``attacker`` option reads its budget from."""

    restarts: int = 1
    steps: int = 0
    step_size: float = 0.1
    final_step_size: Optional[float] = None  # noqa: UP045
    include_truthful: bool = False

    def check(self, path: str) -> None:
        """Ranges."""
        _at_least(f"{path}.restarts", self.restarts, 1)
        _at_least(f"{path}.steps", self.steps, 0)
        _positive(f"{path}.step_size", self.step_size)
        _positive(f"{path}.final_step_size", self.final_step_size)


@dataclass
class ScaleTrain:
    """``scale.train``."""

    iterations: int = 1
    batch_size: int = 1
    num_samples: Optional[int] = None  # noqa: UP045
    log_every: int = 1
    checkpoint_every: int = 0


@dataclass
class ScaleValidation:
    """``scale.validation``: the end-of-training check's budget."""

    profiles: int = 1
    restarts: int = 1
    steps: int = 0


@dataclass
class ScaleEvaluation:
    """``scale.evaluation``: the stress test's budget."""

    profiles: int = 1
    restarts: int = 1
    steps: int = 0
    chunk_size: Optional[int] = None  # noqa: UP045


@dataclass
class ScaleSection:
    """``scale``: smoke / cpu / paper budgets (extra keys such as ``certify`` are allowed)."""

    name: str = ""
    train: ScaleTrain = field(default_factory=ScaleTrain)
    validation: ScaleValidation = field(default_factory=ScaleValidation)
    evaluation: ScaleEvaluation = field(default_factory=ScaleEvaluation)

    def check(self, path: str) -> None:
        """Ranges."""
        for name in ("iterations", "batch_size", "log_every"):
            _at_least(f"{path}.train.{name}", getattr(self.train, name), 1)
        _at_least(f"{path}.train.num_samples", self.train.num_samples, self.train.batch_size)
        _at_least(f"{path}.train.checkpoint_every", self.train.checkpoint_every, 0)
        for part in ("validation", "evaluation"):
            node = getattr(self, part)
            _at_least(f"{path}.{part}.profiles", node.profiles, 1)
            _at_least(f"{path}.{part}.restarts", node.restarts, 1)
            _at_least(f"{path}.{part}.steps", node.steps, 0)
        _at_least(f"{path}.evaluation.chunk_size", self.evaluation.chunk_size, 1)


@dataclass
class TrackingSection:
    """``tracking``: the MLflow store, and what to do when it cannot be reached."""

    enabled: bool = True
    uri: Optional[str] = None  # noqa: UP045
    experiment: str = "auctionlab"
    fallback: str = "none"
    parent_run_id: Optional[str] = None  # noqa: UP045

    def check(self, path: str) -> None:
        """Allowed values."""
        _require(
            self.fallback in FALLBACKS,
            f"{path}.fallback={self.fallback} is not valid; choose one of {', '.join(FALLBACKS)}",
        )
        _require(bool(self.experiment), f"{path}.experiment must be a non-empty name")


@dataclass
class TrainerSection:
    """``trainer``: optimiser settings; ``constraint`` is a component."""

    name: str = ""
    optimizer: str = "adam"
    lr: float = 1e-3
    # cosine decay of lr to lr * lr_decay_to after this fraction of the iterations (None: off)
    lr_decay_start: Optional[float] = None  # noqa: UP045
    lr_decay_to: float = 0.1
    constraint: Any = None
    # gradient strategy for mechanisms with a discrete forward pass (their
    # ``gradient_strategy``); None keeps the mechanism's own
    grad: Optional[str] = None  # noqa: UP045

    def check(self, path: str) -> None:
        """Allowed values."""
        _require(
            self.optimizer in OPTIMIZERS,
            f"{path}.optimizer={self.optimizer} is not valid; choose one of "
            + ", ".join(OPTIMIZERS),
        )
        _positive(f"{path}.lr", self.lr)
        _require(
            self.lr_decay_start is None or 0.0 <= self.lr_decay_start < 1.0,
            f"{path}.lr_decay_start={self.lr_decay_start} must be null or in [0, 1)",
        )
        _require(
            0.0 < self.lr_decay_to <= 1.0,
            f"{path}.lr_decay_to={self.lr_decay_to} must be in (0, 1]",
        )


@dataclass
class ValidationSection:
    """``validation``: the end-of-training check; ``attacker`` is a component."""

    profiles: int = 1
    seed: int = 0
    attacker: Any = None

    def check(self, path: str) -> None:
        """Ranges."""
        _at_least(f"{path}.profiles", self.profiles, 1)


@dataclass
class ObjectiveSection:
    """``objective``: the one number a task returns to a Hydra sweeper (and logs as ``objective``).

    See :func:`auctionlab.tasks.common.objective_value` for how it is computed.
    """

    metric: str = "revenue"
    direction: str = "maximize"
    regret_metric: Optional[str] = None  # noqa: UP045
    regret_limit: Optional[float] = None  # noqa: UP045
    penalty: Optional[float] = None  # noqa: UP045

    def check(self, path: str) -> None:
        """Allowed values."""
        _require(bool(self.metric), f"{path}.metric must name a metric of the run")
        _require(
            self.direction in DIRECTIONS,
            f"{path}.direction={self.direction} is not valid; choose one of "
            + ", ".join(DIRECTIONS),
        )
        _positive(f"{path}.regret_limit", self.regret_limit, strict=False)
        _positive(f"{path}.penalty", self.penalty, strict=False)
        _require(
            self.regret_limit is None or bool(self.regret_metric),
            f"{path}.regret_limit={self.regret_limit} needs {path}.regret_metric",
        )


@dataclass
class TuneSection:
    """``tune``: the Optuna search of ``auctionlab tune`` (see :mod:`auctionlab.experiments.tune`).

    ``space`` (config key -> Hydra sweep syntax) is parsed and checked by
    :func:`auctionlab.experiments.tune.parse_space`.
    """

    trials: int = 20
    parallel: int = 1
    sampler: str = "tpe"
    mode: str = "single"
    study: Optional[str] = None  # noqa: UP045
    storage: Optional[str] = None  # noqa: UP045
    evaluate: bool = False
    evaluate_overrides: list[str] = field(default_factory=list)
    max_failures: Optional[int] = None  # noqa: UP045
    baseline: bool = True
    space: Any = None

    def check(self, path: str) -> None:
        """Ranges and allowed values."""
        _at_least(f"{path}.trials", self.trials, 1)
        _at_least(f"{path}.parallel", self.parallel, 1)
        _at_least(f"{path}.max_failures", self.max_failures, 1)
        _require(
            self.sampler in SAMPLERS,
            f"{path}.sampler={self.sampler} is not valid; choose one of {', '.join(SAMPLERS)}",
        )
        _require(
            self.mode in TUNE_MODES,
            f"{path}.mode={self.mode} is not valid; choose one of {', '.join(TUNE_MODES)}",
        )
        _require(
            self.study is None or bool(self.study.strip()),
            f"{path}.study is empty; give the study a name or null (derived from env and "
            "mechanism)",
        )
        _require(
            self.storage is None or bool(self.storage.strip()),
            f"{path}.storage is empty; give an sqlite file or database URL, or null "
            "(outputs/tune/<study>.db)",
        )


@dataclass
class Runtime:
    """Top-level keys shared by the tasks (each task has the ones it needs)."""

    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None  # noqa: UP045
    progress: Any = "auto"
    profiles: Optional[int] = None  # noqa: UP045
    profile_seed: Optional[int] = None  # noqa: UP045
    resume: Optional[str] = None  # noqa: UP045
    run: Optional[str] = None  # noqa: UP045

    def check(self, path: str) -> None:
        """Ranges and allowed values (the device itself is checked by ``resolve_device``)."""
        _at_least("threads", self.threads, 1)
        _at_least("profiles", self.profiles, 1)
        _require(
            self.progress in PROGRESS,
            f"progress={self.progress} is not valid; choose one of auto, true, false",
        )


#: In this order, so an error is reported where the value is set (``scale`` feeds ``train``).
SECTIONS: dict[str, type] = {
    "scale": ScaleSection,
    "attack_budget": AttackBudget,
    "train": TrainSection,
    "tracking": TrackingSection,
    "trainer": TrainerSection,
    "validation": ValidationSection,
    "objective": ObjectiveSection,
    "tune": TuneSection,
}
#: Keys inside sections that hold components (checked as such, not by the section).
COMPONENT_KEYS = {"trainer": ("constraint",), "validation": ("attacker",)}
#: Top-level component nodes.
COMPONENTS = ("env", "mechanism", "attacker", "certifier", "oracle")


# -- the checks ---------------------------------------------------------------------------------
def _describe(kind: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if kind in names:
        return names[kind]
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " or null"
    if origin in (list, collections.abc.Sequence):
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return getattr(kind, "__name__", str(kind))


def _merge_error(
    path: str, schema: type, data: dict, err: OmegaConfBaseException, hints: dict | None
) -> ConfigError:
    key = str(getattr(err, "full_key", "") or getattr(err, "key", "") or "")
    key = key.split(".")[-1].split("[")[0] if key else ""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if key and key not in fields:
        return ConfigError(f"{path}.{key}: no such option; valid keys: {', '.join(sorted(fields))}")
    if key:
        kind = (hints or typing.get_type_hints(schema)).get(key, Any)
        value = data.get(key)
        return ConfigError(f"{path}.{key}={value!r} has the wrong type: must be {_describe(kind)}")
    return ConfigError(f"{path}: {str(err).splitlines()[0]}")


def _structured(path: str, schema: type, data: dict, hints: dict | None = None) -> Any:
    """``data`` merged onto ``schema`` and turned into the dataclass (types converted).

    Args:
        path: the node's dotted name, for messages.
        schema: the dataclass.
        data: the node as plain data.
        hints: type hints to describe in messages (default: the schema's own).

    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _merge_error(path, schema, data, err, hints) from None


def trusted_modules() -> tuple[str, ...]:
    """Top-level module names whose component classes a ``_target_`` may name."""
    extra = os.environ.get(TRUSTED_MODULES_VARIABLE, "")
    return ("auctionlab", *(name.strip() for name in extra.split(",") if name.strip()))


def _trusted(module: str, trusted: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in trusted)


def _refuse(path: str, target: Any, why: str) -> ConfigError:
    allowed = " or ".join(trusted_modules())
    return ConfigError(
        f"{path}._target_={target!r}: {why}; only component classes defined in {allowed} may "
        f"be instantiated (trust more modules with {TRUSTED_MODULES_VARIABLE})"
    )


def check_target(target: Any, path: str) -> type:
    """The class a ``_target_`` names, if it is a component class of a trusted module.

    The name is resolved by Hydra's own resolver (``hydra.utils.get_class``), so the object
    checked is the object Hydra would build; the name must start with a trusted module before
    anything is imported, and the object's real module (not the name it was reached by, which
    may be a re-export) must be trusted too.

    Args:
        target: the ``_target_`` value.
        path: the node's dotted name, for messages.

    Raises:
        ConfigError: not a string, an untrusted module, no such class, not a class, not a
            component, or defined outside the trusted modules.

    """
    trusted = trusted_modules()
    if not isinstance(target, str) or not _trusted(target.rpartition(".")[0], trusted):
        raise _refuse(path, target, "not in a trusted module")
    from hydra.utils import get_class

    hydra_log = logging.getLogger("hydra.utils")  # it logs every failed lookup as an error
    quiet, hydra_log.disabled = hydra_log.disabled, True
    try:
        obj = get_class(target)
    except Exception:  # noqa: BLE001 - Hydra wraps import and lookup errors differently
        raise _refuse(path, target, "no such class") from None
    finally:
        hydra_log.disabled = quiet
    if not inspect.isclass(obj) or not issubclass(obj, Component):
        raise _refuse(path, target, "not a component class")
    if not _trusted(obj.__module__, trusted):
        raise _refuse(path, target, f"it is {obj.__module__}.{obj.__qualname__}")
    return obj


def check_targets(node: Any, path: str = "") -> None:
    """The gate: every ``_target_`` in a config tree names a component class, at any depth.

    Walks dicts and lists (``_args_`` included) without building anything; a node's other
    ``_``-keys must be Hydra's instantiate keys.

    Args:
        node: a config tree as plain data (``OmegaConf.to_container``).
        path: the tree's dotted name, for messages.

    Raises:
        ConfigError: naming the first offending node.

    """
    if isinstance(node, collections.abc.Mapping):
        for key in node:
            if str(key).startswith("_") and key not in INSTANTIATE_KEYS:
                where = f"{path}.{key}" if path else str(key)
                raise ConfigError(
                    f"{where}: keys starting with '_' are reserved; allowed: "
                    + ", ".join(INSTANTIATE_KEYS)
                )
        if "_target_" in node:
            check_target(node["_target_"], path or "config")
        for key, value in node.items():
            if key != "_target_":
                check_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            check_targets(value, f"{path}[{index}]")


def check_resolved(node: Any, path: str = "") -> None:
    """A saved (resolved) config holds no ``${...}``: one that does was edited by hand.

    Interpolations are resolved when a config is read, so a file someone else wrote could
    otherwise pull values from this machine (``${oc.env:...}``) into the run.

    Raises:
        ConfigError: naming the first interpolation.

    """
    if isinstance(node, collections.abc.Mapping):
        for key, value in node.items():
            check_resolved(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            check_resolved(value, f"{path}[{index}]")
    elif isinstance(node, str) and "${" in node:
        raise ConfigError(
            f"{path}={node!r}: an interpolation in a saved config (saved configs are resolved)"
        )


def _omegaconf_type(kind: Any) -> Any:
    """A constructor annotation as a type OmegaConf 2.3 can check (``Any`` when it cannot)."""
    if kind in (int, float, bool, str):
        return kind
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            converted = _omegaconf_type(inner[0])
            return Any if converted is Any else Optional[converted]  # noqa: UP045
        return Any
    if origin in (list, tuple, collections.abc.Sequence) and args:
        if args[0] in (int, float, bool, str) and (origin is not tuple or args[1:] in ((), (...,))):
            return list[args[0]]
    return Any


@functools.cache
def component_schema(cls: type) -> tuple[type, frozenset[str]]:
    """A dataclass schema from ``cls.__init__``'s signature, and its required keys.

    Every field is optional in the schema (``None`` default) so only the keys a config sets
    are checked; required ones are reported separately.
    """
    signature = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        hints = {}
    fields, required = [], set()
    for name, parameter in signature.parameters.items():
        if name in INJECTED or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            required.add(name)
        kind = _omegaconf_type(hints.get(name, Any))
        if kind is not Any and typing.get_origin(kind) is not Union:
            kind = Optional[kind]  # noqa: UP045 - null-ness is checked against the hint below
        fields.append((name, kind, field(default=None)))
    schema = dataclasses.make_dataclass(f"{cls.__name__}Config", fields)
    return schema, frozenset(required)


def _accepts_none(cls: type, name: str) -> bool:
    parameter = inspect.signature(cls.__init__).parameters[name]
    if parameter.default is None:
        return True
    try:
        kind = typing.get_type_hints(cls.__init__).get(name, Any)
    except Exception:  # noqa: BLE001
        return True
    return kind is Any or type(None) in typing.get_args(kind)


def check_component(node: Any, path: str) -> None:
    """Check a ``_target_`` node (and nested ones): allowed class, known keys, value types."""
    check_targets(node, path)
    if not isinstance(node, dict) or "_target_" not in node:
        return
    cls = check_target(node["_target_"], path)
    signature = inspect.signature(cls.__init__)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    schema, required = component_schema(cls)
    data = {k: v for k, v in node.items() if not k.startswith("_")}
    nested = {k: v for k, v in data.items() if isinstance(v, dict) and "_target_" in v}
    for key, child in nested.items():
        check_component(child, f"{path}.{key}")
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(data) - known)
    if unknown and not takes_any:
        raise ConfigError(
            f"{path}.{unknown[0]}: {cls.__name__} has no option '{unknown[0]}'; valid keys: "
            + ", ".join(sorted(known))
        )
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{path}.{missing[0]} is required by {cls.__name__} and not set")
    for key, value in data.items():
        if value is None and key in known and not _accepts_none(cls, key):
            raise ConfigError(f"{path}.{key}=null: {cls.__name__} needs a value")
    checked = {k: v for k, v in data.items() if k in known and k not in nested}
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001
        hints = None
    _structured(path, schema, checked, hints)


def validate(cfg: DictConfig) -> None:
    """Check a composed task config before any work; raises ``ConfigError`` in one line.

    Args:
        cfg: the task's composed config (interpolations are resolved here, on a copy).

    """
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"config: {' '.join(str(err).split())}") from None
    check_targets(data)  # before anything else looks at the tree
    runtime_keys = {f.name for f in dataclasses.fields(Runtime)}
    runtime = {k: v for k, v in data.items() if k in runtime_keys}
    _structured("config", Runtime, runtime).check("")
    for key, schema in SECTIONS.items():
        node = data.get(key)
        if not isinstance(node, dict):
            continue
        plain = {k: v for k, v in node.items() if k not in COMPONENT_KEYS.get(key, ())}
        if key == "scale":  # tasks may add their own budgets (``scale.certify``...)
            plain = {k: v for k, v in plain.items() if k in {"name", *SCALE_PARTS}}
        _structured(key, schema, plain).check(key)
        for component in COMPONENT_KEYS.get(key, ()):
            check_component(node.get(component), f"{key}.{component}")
    for key in COMPONENTS:
        check_component(data.get(key), key)


SCALE_PARTS = ("train", "validation", "evaluation")
