"""Hyperparameter search with Optuna: the study behind ``auctionlab tune`` (``conf/tune.yaml``).

**Space.** ``tune.space`` maps config keys (nested, or dotted: ``trainer.lr``) to Hydra sweep
syntax. Each string is parsed by Hydra's own override parser and becomes an Optuna distribution
(:func:`parse_dimension`); a sampled value becomes an override again (:func:`trial_overrides`):

| sweep syntax | Optuna distribution |
|---|---|
| `interval(a, b)` | `FloatDistribution(a, b)` |
| `tag(log, interval(a, b))` | `FloatDistribution(a, b, log=True)` |
| `tag(int, interval(a, b))` | `IntDistribution(a, b)` (`tag(int, log, ...)`: log scale) |
| `range(a, b[, s])` | `IntDistribution(a, last, step=s)` (float steps: `FloatDistribution`) |
| `choice(x, y)`, `x,y` | `CategoricalDistribution`: numbers as numbers, the rest as override text |

**Study.** An Optuna study in an RDB storage (default: the sqlite file
``outputs/tune/<study>.db`` under the working directory). Running the same command again
loads it and runs trials until ``tune.trials`` of them are COMPLETE; completed trials are never
run again. The sampler (``tpe``, ``random``, ``nsga2``) is seeded from ``seed`` plus the number
of trials the study already has.

**Trials.** Every trial is an ordinary ``train`` job: the tune command's own overrides (less
``tune.*``), then the sampled ones. Trials are launched through the tune run's Hydra launcher
(in-process one after another by default; ``tune.parallel > 1`` launches that many at once, with
``hydra/launcher=joblib`` unless another launcher is chosen). Each writes its run directory
``<tune run>/trials/<number>/`` and its own MLflow run, a child of the tune run (tags
``tune.study``, ``tune.trial``, ``tune.params``). With ``tune.evaluate`` the trial then runs
``evaluate run=<its dir>`` in ``trials/<number>/evaluate/`` (the in-process job of
:func:`auctionlab.experiments.stages.run_stage`, as ``reproduce`` runs its stages) and is scored
on that. A failed trial is FAIL in the study and the search goes on.

**Values.** ``single`` mode: the scored job's objective (``objective.*``: metric, direction,
regret limit and penalty) computed from its metrics. ``pareto`` mode: two values, the
objective's metric (its direction) and its ``regret_metric`` (minimised).

The task functions and the objective come from the caller (``auctionlab.tasks.tune``): this
library never imports the task modules.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import re
import shlex
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from auctionlab.components import build_env_and_mechanism
from auctionlab.conf import hydra_initialized, job_config_dirs, searchpath_override
from auctionlab.errors import ConfigError, InterruptedRunError, RunError
from auctionlab.experiments.plan import compose, quote
from auctionlab.experiments.stages import base_overrides
from auctionlab.reporting import child_metrics, read_metrics_json, render_markdown
from auctionlab.reporting.tuning import front_mask, plot_front
from auctionlab.runs import save_config, write_metrics
from auctionlab.schema import validate
from auctionlab.tracking import Tracker

if TYPE_CHECKING:
    from optuna import Study
    from optuna.distributions import BaseDistribution

log = logging.getLogger("auctionlab")

#: Tags a ``tune.space`` entry may carry: ``tag(log, ...)``, ``tag(int, interval(...))``.
TAGS = ("log", "int")
#: What a ``tune.space`` entry may be, for messages.
SYNTAX = (
    "choice(a,b,...) or a,b; range(start,stop[,step]); interval(low,high); "
    "tag(log, interval(...)) or tag(log, range(...)); tag(int, interval(...))"
)
#: The directory of a trial's evaluate job, inside the trial's train run directory.
EVALUATE_DIR = "evaluate"
#: Trials composed (and the first one built) before a study starts: the first value of every
#: dimension, then each dimension's other end or choices, one at a time.
MAX_CHECKED_TRIALS = 8
#: Trial overrides and spaces :func:`check_trials` has accepted in this process.
_CHECKED: set[str] = set()
#: ``objective -> value`` of a job's metrics (``auctionlab.tasks.common.objective_value``).
Scorer = Callable[[Mapping[str, Any], Mapping[str, Any]], float]
#: ``evaluate overrides (None: no evaluate) -> the task function of a trial job``.
TrialFactory = Callable[[list[str] | None], Callable[[DictConfig], Any]]


# -- the space ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One searched config key.

    Attributes:
        key: the override key (``trainer.lr``; ``+key`` adds a key the config lacks).
        text: the sweep syntax it was given as.
        distribution: the Optuna distribution it is sampled from.

    """

    key: str
    text: str
    distribution: BaseDistribution


def _number_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def value_text(value: Any) -> str:
    """A sampled value as override text: numbers as numbers, strings as they are stored.

    A categorical choice that is not a number (a list, a string) is stored in the study as its
    override text already (``[64,64]``), so it goes back verbatim.
    """
    if isinstance(value, str):
        return value
    return _number_text(value)


def parse_dimension(key: str, text: Any) -> Dimension:
    """Parse one ``tune.space`` entry with Hydra's override parser into an Optuna distribution.

    Args:
        key: the config key (``trainer.lr``).
        text: its sweep syntax (``"tag(log, interval(1e-4, 1e-2))"``).

    Returns:
        The dimension.

    Raises:
        ConfigError: one line naming ``tune.space.<key>``: not a string, not parsable, not a
            sweep, an unsupported sweep or tag, or an empty or reversed range.

    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    where = f"tune.space.{key}"

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{where}={text}: {why}; give one of: {SYNTAX}")

    if not isinstance(text, str) or not text.strip():
        raise refuse("not a search space (a string of Hydra sweep syntax)")
    try:
        override = OverridesParser.create().parse_override(f"{key}={text}")
    except HydraException as err:
        raise refuse(f"cannot parse it ({str(err).strip().splitlines()[0]})") from None
    name = override.get_key_element().lstrip("+")
    if override.is_delete() or name.split(".")[0].split("/")[0] in ("hydra", "tune"):
        raise ConfigError(f"{where}: cannot search this key (a deletion, hydra.* or tune.*)")
    if not override.is_sweep_override():
        raise refuse("a fixed value, not a search space (set it as an override of the command)")
    sweep = override.value()
    tags = set(getattr(sweep, "tags", ()) or ())
    unknown = tags - set(TAGS)
    if unknown:
        raise refuse(f"unknown tag {sorted(unknown)[0]} (tags: {', '.join(TAGS)})")
    log_scale = "log" in tags
    if isinstance(sweep, IntervalSweep):
        low, high = float(sweep.start), float(sweep.end)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise refuse(f"the interval needs finite low < high (got {low:g}, {high:g})")
        if log_scale and low <= 0:
            raise refuse(f"a log scale needs low > 0 (got {low:g})")
        if "int" in tags:
            if low != int(low) or high != int(high):
                raise refuse("tag(int, ...) needs integer bounds")
            distribution = IntDistribution(int(low), int(high), log=log_scale)
        else:
            distribution = FloatDistribution(low, high, log=log_scale)
    elif isinstance(sweep, RangeSweep):
        if "int" in tags:
            raise refuse("tag(int, ...) applies to interval(...); a range of integers is one")
        if sweep.shuffle:
            raise refuse("shuffle() has no meaning for a search")
        values = [float(v) for v in override.sweep_iterator()]
        if not values:
            raise refuse("the range is empty")
        step = abs(float(sweep.step))
        low, high = min(values), max(values)
        whole = all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step))
        if log_scale and (low <= 0 or step != 1 or not whole):
            raise refuse("tag(log, range(...)) needs integers from 1 up with step 1")
        if len(values) == 1:
            distribution = CategoricalDistribution([int(low) if whole else low])
        elif whole:
            distribution = IntDistribution(int(low), int(high), step=int(step), log=log_scale)
        else:
            distribution = FloatDistribution(low, high, step=step)
    elif isinstance(sweep, ChoiceSweep):
        if log_scale:
            raise refuse("tag(log, ...) applies to interval(...) and range(...)")
        if sweep.shuffle:
            raise refuse("shuffle() has no meaning for a search")
        texts = list(override.sweep_string_iterator())
        choices: list[Any] = []
        for value, shown in zip(sweep.list, texts, strict=True):
            number = isinstance(value, int | float) and not (
                isinstance(value, float) and not math.isfinite(value)
            )
            choices.append(value if number else shown)
        distribution = CategoricalDistribution(list(dict.fromkeys(choices)))
    else:
        raise refuse(f"{type(sweep).__name__} sweeps are not supported")
    return Dimension(override.get_key_element(), text, distribution)


def parse_space(space: Any) -> dict[str, Dimension]:
    """Every ``tune.space`` entry, by its dotted key (nested mappings are flattened).

    Args:
        space: the ``tune.space`` node as plain data (``{"trainer": {"lr": "..."}}`` or
            ``{"trainer.lr": "..."}``).

    Returns:
        ``{dotted key: dimension}`` in the order given.

    Raises:
        ConfigError: an empty space, a key given twice, or a bad entry (see
            :func:`parse_dimension`).

    """
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(
            "tune.space is empty; give at least one config key with a search space, e.g. "
            "tune.space.trainer.lr='\"tag(log, interval(1e-4, 1e-2))\"'"
        )
    dimensions: dict[str, Dimension] = {}
    seen: set[str] = set()
    for key, text in _entries(space):
        name = key.lstrip("+")
        if name in seen:
            raise ConfigError(f"tune.space.{name} is given twice (nested and dotted)")
        seen.add(name)
        dimensions[key] = parse_dimension(key, text)
    return dimensions


def _entries(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf)`` of a nested mapping (``flatten``, but a repeated key is kept)."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if not value:
                raise ConfigError(f"tune.space.{name} is empty; give it a search space")
            yield from _entries(value, name + ".")
        else:
            yield name, value


def trial_overrides(params: Mapping[str, Any], space: Mapping[str, Dimension]) -> list[str]:
    """A trial's sampled values as overrides (``trainer.lr=0.0012``, ``mechanism.hidden=[64,64]``).

    Args:
        params: the Optuna trial's ``params`` (``{dotted key: value}``).
        space: the dimensions they were sampled from.

    """
    return [f"{dim.key}={value_text(params[name])}" for name, dim in space.items()]


def _first(dimension: Dimension) -> Any:
    distribution = dimension.distribution
    if hasattr(distribution, "choices"):
        return distribution.choices[0]
    return distribution.low


def _others(dimension: Dimension) -> list[Any]:
    distribution = dimension.distribution
    if hasattr(distribution, "choices"):
        return list(distribution.choices[1:])
    return [distribution.high]


def _same(choice: Any, value: Any) -> bool:
    """Whether a categorical choice (a number, or override text: ``[64,64]``) is ``value``."""
    if isinstance(choice, int | float) and not isinstance(choice, bool):
        return isinstance(value, int | float) and not isinstance(value, bool) and choice == value
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(f"k={choice}").value()
    except HydraException:
        return str(choice) == str(value)
    return parsed == value or str(parsed) == str(value)


def baseline_params(cfg: DictConfig, space: Mapping[str, Dimension]) -> tuple[dict, str | None]:
    """The config's own value of every searched key, as a point of the space.

    The study starts with this point (``tune.baseline``) so that its report can say whether a
    trial beats what the command trains without a search.

    Args:
        cfg: the composed ``tune`` config (the command's overrides applied).
        space: the searched dimensions.

    Returns:
        ``({dotted key: value as the study stores it}, None)``, or ``({}, why)`` when a value lies
        outside its dimension (the first such key, in words).

    """
    params: dict[str, Any] = {}
    for name, dim in space.items():
        value = OmegaConf.select(cfg, name.lstrip("+"), default=None)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        distribution = dim.distribution
        shown = "null" if value is None else value
        if hasattr(distribution, "choices"):
            found = [c for c in distribution.choices if _same(c, value)]
            if not found:
                return {}, f"{name}={shown} is not one of tune.space.{name}={dim.text}"
            params[name] = found[0]
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        step = getattr(distribution, "step", None)
        off_grid = (
            number
            and step
            and not math.isclose(
                (value - distribution.low) / step, round((value - distribution.low) / step)
            )
        )
        if not number or not distribution.low <= value <= distribution.high or off_grid:
            return {}, f"{name}={shown} lies outside tune.space.{name}={dim.text}"
        params[name] = value
    return params, None


# -- the plan -------------------------------------------------------------------------------------
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _under(key: str, root: str) -> bool:
    return key == root or key.startswith(root + ".")


@dataclass
class TunePlan:
    """A validated ``tune`` config: the study, its space and every trial's fixed overrides.

    Attributes:
        study: the Optuna study's name.
        storage: its storage URL (``sqlite:///...``).
        mode: ``single`` or ``pareto``.
        sampler: ``tpe``, ``random`` or ``nsga2``.
        trials: complete trials the study should reach.
        parallel: trials launched at once.
        max_failures: failed trials after which a run stops.
        space: the searched keys.
        train: the overrides every trial's train job gets (the command's, less ``tune.*``; its
            ``objective.*`` when train is the scored job), before the sampled ones.
        evaluate: the overrides of every trial's evaluate job (``None``: no evaluate job).
        objective: the scored job's ``objective`` node (plain data).
        launcher: the tune run's ``hydra/launcher`` choice.
        hydra: the tune run's Hydra overrides (``hydra.launcher.*`` are passed on).
        baseline: the config's own values of the searched keys, the first trial of a new study
            (empty: ``tune.baseline`` is off or they lie outside the space).
        no_baseline: why a ``tune.baseline`` study has no baseline trial (a value outside the
            space), or empty.

    """

    study: str
    storage: str
    mode: str
    sampler: str
    trials: int
    parallel: int
    max_failures: int
    space: dict[str, Dimension]
    train: list[str]
    evaluate: list[str] | None
    objective: dict[str, Any]
    launcher: str = "basic"
    hydra: list[str] = field(default_factory=list)
    baseline: dict[str, Any] = field(default_factory=dict)
    no_baseline: str = ""

    @property
    def directions(self) -> list[str]:
        """The study's directions: the objective's, then (pareto) ``minimize`` for regret."""
        first = str(self.objective.get("direction", "maximize"))
        return [first, "minimize"] if self.mode == "pareto" else [first]

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        """``{dotted key: Optuna distribution}``."""
        return {name: dim.distribution for name, dim in self.space.items()}

    @property
    def scored(self) -> str:
        """The job whose metrics score a trial: ``train`` or ``evaluate``."""
        return "train" if self.evaluate is None else "evaluate"


def job_settings() -> tuple[list[str], list[str], str]:
    """The running Hydra job's task overrides, Hydra overrides and ``hydra/launcher`` choice.

    ``([], [], "basic")`` outside a job.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], [], "basic"
    hydra = HydraConfig.get()
    task = [str(o) for o in hydra.overrides.task]
    own = [str(o) for o in hydra.overrides.hydra]
    launcher = str(hydra.runtime.choices.get("hydra/launcher") or "basic")
    return task, own, launcher


def default_study(picked: Mapping[str, str], mode: str) -> str:
    """``<env>-<mechanism>`` (``-pareto`` in pareto mode), safe as a file name."""
    name = f"{picked.get('env', 'env')}-{picked.get('mechanism', 'mechanism')}"
    if mode == "pareto":
        name += "-pareto"
    return _safe(name)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "study"


def storage_url(value: str | None, study: str) -> str:
    """``tune.storage`` as a database URL: a URL stays, a file path becomes sqlite.

    Args:
        value: ``tune.storage`` (``None``: ``outputs/tune/<study>.db`` under the working
            directory).
        study: the study's name.

    """
    if value is None:
        return f"sqlite:///{(Path('outputs') / 'tune' / f'{_safe(study)}.db').resolve()}"
    text = str(value).strip()
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def build_tune_plan(
    cfg: DictConfig,
    picked: Mapping[str, str],
    overrides: Sequence[str] = (),
    hydra: Sequence[str] = (),
    launcher: str = "basic",
) -> TunePlan:
    """Validate the ``tune`` config and its space; compose and check a few trials.

    Nothing is trained and nothing is written: the trials' train configs are composed (the
    first value of every dimension, then each dimension's other end or choices, up to
    :data:`MAX_CHECKED_TRIALS`), schema-checked, and the first one's env and mechanism built.

    Args:
        cfg: the composed ``tune`` config.
        picked: its Hydra group choices (the default study name).
        overrides: the tune command's overrides (what every trial inherits).
        hydra: the tune command's Hydra overrides.
        launcher: its ``hydra/launcher`` choice.

    Returns:
        The plan.

    Raises:
        ConfigError: one line naming the option.

    """
    validate(cfg)
    node = OmegaConf.to_container(cfg.tune, resolve=True)
    space = parse_space(node.get("space"))
    mode, trials, parallel = str(node["mode"]), int(node["trials"]), int(node["parallel"])
    threads = cfg.get("threads")
    if parallel > 1 and threads != 1:
        raise ConfigError(
            f"tune.parallel={parallel} runs trials side by side, each must use threads=1 "
            f"(got threads={'null' if threads is None else threads})"
        )
    own = [o for o in overrides if not _under(_key(o), "tune") and _key(o) != "task"]
    for override in own:
        if _key(override) == "resume" and override.split("=", 1)[1] not in ("", "null"):
            raise ConfigError(
                f"{override}: tune trials are fresh train runs; a study is continued by "
                "running the same tune command again"
            )
    objective_overrides = [o for o in own if _under(_key(o), "objective")]
    passed = [o for o in own if not _under(_key(o), "objective")]
    evaluate: list[str] | None = None
    if node.get("evaluate"):
        extra = [str(o) for o in node.get("evaluate_overrides") or []]
        if any(_key(o) in ("run", "scale") or _under(_key(o), "hydra") for o in extra):
            raise ConfigError(
                f"tune.evaluate_overrides={extra}: run=, scale= and hydra.* are set by tune "
                "(the trial's run directory, the tune run's scale)"
            )
        evaluate = [*objective_overrides, *extra]
        try:
            composed = compose("evaluate", [f"scale={cfg.scale.name}", *evaluate])
            OmegaConf.resolve(composed)
            validate(composed)
        except ConfigError as err:
            raise ConfigError(f"tune.evaluate_overrides: {err}") from None
        except Exception as err:  # noqa: BLE001 - Hydra's and OmegaConf's errors, one line
            text = " ".join(str(err).split()).split(" Config search path:")[0]
            raise ConfigError(f"tune.evaluate_overrides={extra}: {text}") from None
        objective = OmegaConf.to_container(composed.objective, resolve=True)
        train = passed
    else:
        objective = OmegaConf.to_container(cfg.objective, resolve=True)
        train = [*passed, *objective_overrides]
    if mode == "pareto" and not objective.get("regret_metric"):
        raise ConfigError(
            "tune.mode=pareto searches objective.metric against objective.regret_metric, "
            "which is null; set objective.regret_metric"
        )
    study = str(node.get("study") or default_study(picked, mode))
    plan = TunePlan(
        study=study,
        storage=storage_url(node.get("storage"), study),
        mode=mode,
        sampler=str(node["sampler"]),
        trials=trials,
        parallel=parallel,
        max_failures=int(node.get("max_failures") or trials),
        space=space,
        train=train,
        evaluate=evaluate,
        objective=objective,
        launcher=launcher,
        hydra=list(hydra),
    )
    if node.get("baseline", True):
        plan.baseline, why = baseline_params(cfg, space)
        plan.no_baseline = why or ""
    # The console script builds the plan before Hydra starts and again in the job: the trials
    # are composed once per distinct plan.
    key = repr((plan.train, [(d.key, d.text) for d in plan.space.values()], job_config_dirs()))
    if key not in _CHECKED:
        check_trials(plan)
        _CHECKED.add(key)
    return plan


def check_trials(plan: TunePlan) -> None:
    """Compose a few trials' train configs (see :func:`build_tune_plan`); one line on error."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    first = {name: _first(dim) for name, dim in plan.space.items()}
    points = [first]
    for name, dim in plan.space.items():
        for value in _others(dim):
            if len(points) < MAX_CHECKED_TRIALS:
                points.append({**first, name: value})
    for number, point in enumerate(points):
        sampled = trial_overrides(point, plan.space)
        try:
            composed = compose("train", [*plan.train, *sampled])
            OmegaConf.resolve(composed)
            validate(composed)
            if number == 0:
                build_env_and_mechanism(composed)
        except ConfigError as err:
            raise ConfigError(f"tune.space: trial {' '.join(sampled)}: {err}") from None
        except (HydraException, OmegaConfBaseException, ValueError) as err:
            text = " ".join(str(err).split())
            found = re.search(r"override '([^']+)'", text)
            culprit = found.group(1).lstrip("+~") if found else None
            dims = {name.lstrip("+"): dim for name, dim in plan.space.items()}
            reason = text.split(" full_key:")[0]
            if culprit in dims:
                if text.startswith("Could not override"):
                    reason = _missing_key(plan, culprit)
                raise ConfigError(f"tune.space.{culprit}={dims[culprit].text}: {reason}") from None
            raise ConfigError(f"tune: trial {' '.join(sampled)}: {reason}") from None


def _missing_key(plan: TunePlan, key: str) -> str:
    """``the train config has no key 'x.y'; valid keys of 'x': ...`` (or less, if unknown)."""
    parent, _, leaf = key.rpartition(".")
    said = f"the train config has no key '{key}'"
    try:
        node: Any = compose("train", plan.train)
        for part in filter(None, parent.split(".")):
            node = node[part]
        valid = ", ".join(str(k) for k in node.keys())
    except Exception:  # noqa: BLE001 - a parent that is not a mapping: the short message
        return said
    return f"{said}; valid keys of {repr(parent) if parent else 'the top level'}: {valid}"


# -- the study ------------------------------------------------------------------------------------
def _sampler(name: str, seed: int, parallel: int) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel > 1)


def open_study(plan: TunePlan, seed: int) -> Study:
    """Create the study, or load it to continue it; its sampler is seeded from ``seed``.

    The seed is ``seed`` plus the number of trials the study already has, so a continued study
    does not draw its first trials again.

    Raises:
        ConfigError: the storage cannot be opened, or the study exists with other directions
            (another ``tune.mode`` or ``objective.direction``).

    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = plan.storage
    engine: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 30}}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        existing = next((s for s in summaries if s.study_name == plan.study), None)
        count = existing.n_trials if existing is not None else 0
        study = optuna.create_study(
            storage=storage,
            sampler=_sampler(plan.sampler, seed + count, plan.parallel),
            study_name=plan.study,
            directions=plan.directions,
            load_if_exists=True,
        )
    except Exception as err:  # noqa: BLE001 - a bad URL, a missing driver, an unreadable file
        first = str(err).strip().splitlines()
        raise ConfigError(
            f"tune.storage={url}: cannot open the study ({first[0] if first else err})"
        ) from None
    found = [d.name.lower() for d in study.directions]
    if found != plan.directions:
        raise ConfigError(
            f"tune.study={plan.study} in {url} has directions {found}, this search "
            f"{plan.directions} (tune.mode={plan.mode}, objective.direction); choose another "
            "tune.study"
        )
    if count:
        log.info("continuing study %s (%d trials so far) in %s", plan.study, count, url)
    return study


def _complete(study: Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


# -- launching trials -----------------------------------------------------------------------------
def launcher_overrides(plan: TunePlan, trials_dir: Path) -> list[str]:
    """The Hydra overrides of the launcher that runs the trials.

    The tune run's ``hydra/launcher`` and ``hydra.launcher.*`` overrides, joblib when
    ``tune.parallel > 1`` with the default (sequential) launcher, ``n_jobs = tune.parallel``
    for joblib unless given, the trials' directory, and quiet consoles: every trial logs to its
    own ``train.log``.
    """
    passed = [
        o
        for o in plan.hydra
        if _key(o).startswith("hydra/launcher") or _key(o).startswith("hydra.launcher.")
    ]
    out = list(passed)
    launcher = plan.launcher
    if plan.parallel > 1 and launcher == "basic":
        out.append("hydra/launcher=joblib")
        launcher = "joblib"
    if launcher == "joblib" and not any(_key(o) == "hydra.launcher.n_jobs" for o in passed):
        out.append(f"hydra.launcher.n_jobs={plan.parallel}")
    out += [
        f"hydra.sweep.dir={quote(str(trials_dir))}",
        "hydra.hydra_logging.root.handlers=[]",
        "hydra.job_logging.root.handlers=[file]",
        *searchpath_override(job_config_dirs()),
    ]
    return out


@contextlib.contextmanager
def _logging_kept() -> Iterator[None]:
    """The root logger's handlers and level as they were, whatever a launcher configures.

    Hydra's launchers configure logging (``hydra.hydra_logging``, and in-process each job's
    ``hydra.job_logging``), which replaces the tune run's own handlers (its ``tune.log``).
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ours = logging.getLogger("auctionlab").level
    loggers = {
        name: logger.disabled
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        for name, disabled in loggers.items():
            logging.getLogger(name).disabled = disabled
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)  # a closed file handler reopens on its next record
        root.setLevel(level)
        logging.getLogger("auctionlab").setLevel(ours)


@contextlib.contextmanager
def trial_launcher(
    overrides: list[str], function: Callable[[DictConfig], Any]
) -> Iterator[Callable[[list[list[str]], int], list[Any]]]:
    """Hydra's launcher for ``train`` jobs, as a multirun would make it.

    Args:
        overrides: its Hydra overrides (:func:`launcher_overrides`).
        function: the task function every job runs.

    Yields:
        ``launch(jobs, first)``: runs one batch of jobs (each a list of overrides; ``first``
        numbers the first job) and returns their ``JobReturn`` in order.

    """
    from hydra import compose as hydra_compose
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import HydraContext
    from omegaconf.errors import OmegaConfBaseException

    with hydra_initialized("train") as loader:
        try:
            master = hydra_compose(
                config_name="train", overrides=overrides, return_hydra_config=True
            )
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(f"hydra/launcher: {' '.join(str(err).split())}") from None
        context = HydraContext(loader, Callbacks())
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=function, config=master
        )

        def launch(jobs: list[list[str]], first: int) -> list[Any]:
            with _logging_kept():
                return list(launcher.launch(jobs, initial_job_idx=first))

        yield launch


# -- scoring and reporting ------------------------------------------------------------------------
def _value(metrics: Mapping[str, Any], name: str, option: str) -> float:
    value = metrics.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{option}={name} is not a metric of the scored job")
    return float(value)


def attacker_budget(metrics: Mapping[str, Any], regret_metric: str) -> str:
    """The budget that measured ``regret_metric``: ``2 restarts x 10 steps on 64 profiles``.

    Read from the same job's ``<prefix>attack_restarts``, ``<prefix>attack_steps`` and
    ``<prefix>profiles`` (``val_`` for train's validation, none for evaluate).
    """
    prefix = regret_metric.split("regret", 1)[0] if "regret" in regret_metric else ""
    restarts = metrics.get(f"{prefix}attack_restarts")
    steps = metrics.get(f"{prefix}attack_steps")
    profiles = metrics.get(f"{prefix}profiles")
    if restarts is None or steps is None:
        return "not recorded"
    text = f"{int(restarts)} restarts x {int(steps)} steps"
    return text + (f" on {int(profiles)} profiles" if profiles is not None else "")


def score(plan: TunePlan, metrics: Mapping[str, Any], scorer: Scorer) -> tuple[list[float], dict]:
    """A trial's values for the study, and what the table shows of it.

    Args:
        plan: the plan (mode, the scored job's objective).
        metrics: the scored job's metrics.
        scorer: ``objective_value``.

    Returns:
        The values (one, or metric and regret) and ``{objective, metric, regret, budget}``.

    Raises:
        ConfigError: a metric the job does not have.

    """
    objective = plan.objective
    regret_name = objective.get("regret_metric")
    metric = _value(metrics, str(objective["metric"]), "objective.metric")
    regret = (
        _value(metrics, str(regret_name), "objective.regret_metric") if regret_name else math.nan
    )
    info = {
        "metric": metric,
        "regret": regret,
        "budget": attacker_budget(metrics, str(regret_name)) if regret_name else "",
    }
    if plan.mode == "pareto":
        return [metric, regret], info
    value = float(scorer(objective, metrics))
    info["objective"] = value
    return [value], info


def train_command(overrides: Sequence[str]) -> str:
    """``auctionlab train <overrides>``, each override shell-quoted."""
    return " ".join(["auctionlab", "train", *(shlex.quote(str(o)) for o in overrides)])


def _cell(value: Any) -> Any:
    """A CSV cell: a missing number (NaN) is empty."""
    return "" if isinstance(value, float) and math.isnan(value) else value


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def trial_records(study: Study, plan: TunePlan) -> tuple[list[dict[str, Any]], list[int]]:
    """Every trial of the study as a record, and the numbers of the selected ones.

    Selected: the best trial (single) or the Pareto trials (pareto), by regret.
    """
    from optuna.trial import TrialState

    records = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        records.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "objective": attrs.get("objective", math.nan),
                "metric": attrs.get("metric", math.nan),
                "regret": attrs.get("regret", math.nan),
                "budget": attrs.get("budget", ""),
                "params": {k: value_text(v) for k, v in trial.params.items()},
                "run_dir": attrs.get("run_dir", ""),
                "mlflow_run_id": attrs.get("mlflow_run_id", ""),
                "command": attrs.get("command", ""),
                "error": attrs.get("error", ""),
                "baseline": bool(attrs.get("baseline", False)),
            }
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return records, []
    if plan.mode == "pareto":
        chosen = [t.number for t in study.best_trials]
        by_number = {r["trial"]: r for r in records}
        return records, sorted(chosen, key=lambda n: (by_number[n]["regret"], n))
    return records, [study.best_trial.number]


def write_trials_csv(
    records: list[dict[str, Any]], chosen: list[int], plan: TunePlan, path: Path
) -> Path:
    """``trials.csv``: one row per trial of the study (state, values, parameters, run dir)."""
    keys = list(dict.fromkeys(k for r in records for k in r["params"]))
    metric, regret = str(plan.objective["metric"]), str(plan.objective.get("regret_metric"))
    head = [
        "trial",
        "state",
        "selected",
        "baseline",
        "objective",
        metric,
        regret,
        "attacker_budget",
    ]
    tail = ["run_dir", "mlflow_run_id", "command", "error"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*head, *keys, *tail])
        for r in records:
            writer.writerow(
                [
                    r["trial"],
                    r["state"],
                    r["trial"] in chosen,
                    r["baseline"],
                    "" if plan.mode == "pareto" else _cell(r["objective"]),
                    _cell(r["metric"]),
                    _cell(r["regret"]),
                    r["budget"],
                    *(r["params"].get(k, "") for k in keys),
                    *(r[k] for k in tail),
                ]
            )
    return path


def report(
    records: list[dict[str, Any]],
    chosen: list[int],
    plan: TunePlan,
    counts: Mapping[str, int],
    describe: str,
) -> str:
    """``tune.md``: the best or Pareto trials, the figure, and the commands that reproduce them.

    Args:
        records: :func:`trial_records`.
        chosen: the selected trials' numbers.
        plan: the plan.
        counts: ``complete``, ``failed`` and ``ran`` (this run) trials.
        describe: the objective in words (single mode).

    """
    import pandas as pd

    metric, regret = str(plan.objective["metric"]), str(plan.objective.get("regret_metric"))
    by_number = {r["trial"]: r for r in records}
    rows = [by_number[n] for n in chosen]
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    what = (
        f"objective: {describe}"
        if plan.mode == "single"
        else f"Pareto front of {metric} ({plan.directions[0]}) and {regret} (minimize)"
    )
    lines = [
        f"# Tune: {plan.study}",
        "",
        f"Study `{plan.study}` in `{plan.storage}`, sampler `{plan.sampler}`; {what}. "
        f"{counts['complete']} trials complete, {counts['failed']} failed "
        f"({counts['ran']} run now); every trial is a `train` job"
        + (
            " and an `evaluate` of it, scored on the evaluate job"
            if plan.evaluate is not None
            else ""
        )
        + ".",
        "",
        "## Best trial" if plan.mode == "single" else "## Pareto trials",
        "",
    ]
    if rows:
        table = pd.DataFrame(
            [
                {
                    "trial": str(r["trial"]),
                    **({"objective": _format(r["objective"])} if plan.mode == "single" else {}),
                    metric: _format(r["metric"]),
                    regret: _format(r["regret"]),
                    "attacker budget": r["budget"],
                    **{k: _format_param(r["params"].get(k, "")) for k in keys},
                    "run dir": f"`{r['run_dir']}`",
                }
                for r in rows
            ]
        )
        lines += [render_markdown(table).rstrip(), ""]
        lines += [
            f"`{regret}` is measured by the {plan.scored} job's attacker with the budget in the "
            "same row (restarts x steps on the held-out profiles).",
            "",
        ]
    else:
        lines += ["No trial is complete yet.", ""]
    lines += against_baseline(records, plan)
    lines += ["![trials: metric against regret](pareto.png)", ""]
    if rows:
        lines += ["## Reproduce", ""]
        for r in rows:
            if plan.mode == "pareto":
                lines.append(f"Trial {r['trial']}:")
                lines.append("")
            lines += ["```bash", r["command"], "```", ""]
        if plan.evaluate is not None:
            extra = " ".join(shlex.quote(o) for o in plan.evaluate)
            lines += [
                "then `auctionlab evaluate run=<its run dir>"
                + (f" {extra}" if extra else "")
                + "` (what scored the trial).",
                "",
            ]
    lines.append("All trials: `trials.csv`.")
    return "\n".join(lines) + "\n"


def beats(record: Mapping[str, Any], other: Mapping[str, Any], maximize: bool) -> bool:
    """Whether ``record`` has a better metric than ``other`` at no more regret."""
    sign = 1.0 if maximize else -1.0
    metric, regret = float(record["metric"]), float(record["regret"])
    if not (math.isfinite(metric) and math.isfinite(regret)):
        return False
    return sign * metric > sign * float(other["metric"]) and regret <= float(other["regret"])


def against_baseline(records: list[dict[str, Any]], plan: TunePlan) -> list[str]:
    """``tune.md``'s lines on the baseline trial: which trials beat it (none without one)."""
    base = next((r for r in records if r.get("baseline")), None)
    if base is None:
        return []
    metric, regret = str(plan.objective["metric"]), str(plan.objective.get("regret_metric"))
    values = " ".join(f"{k}={_format_param(v)}" for k, v in base["params"].items())
    lines = ["## Against the baseline", ""]
    if base["state"] != "COMPLETE":
        return [*lines, f"The baseline, trial {base['trial']} ({values}), did not complete.", ""]
    maximize = plan.directions[0] == "maximize"
    others = [r for r in records if r["state"] == "COMPLETE" and r is not base]
    winners = sorted(
        (r for r in others if beats(r, base, maximize)),
        key=lambda r: float(r["metric"]),
        reverse=maximize,
    )
    lines.append(
        f"Trial {base['trial']} trains the config's own values ({values}): {metric} "
        f"{_format(base['metric'])} at {regret} {_format(base['regret'])} ({base['budget']})."
    )
    better = "higher" if maximize else "lower"
    if winners:
        listed = ", ".join(
            f"{r['trial']} ({_format(r['metric'])} at {_format(r['regret'])})" for r in winners
        )
        lines.append(
            f"{len(winners)} of the {len(others)} other complete trials have a {better} "
            f"{metric} at no more {regret}: {listed}."
        )
    else:
        lines.append(
            f"None of the {len(others)} other complete trials has a {better} {metric} at no "
            f"more {regret}."
        )
    return [*lines, ""]


def _format_param(text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number == int(number) and "." not in text else f"{number:.4g}"


# -- the run --------------------------------------------------------------------------------------
def _children(tracker: Tracker) -> dict[str, dict]:
    if not tracker.active:
        return {}
    experiment = tracker.client.get_run(tracker.run_id).info.experiment_id
    return child_metrics(tracker.client, experiment, tracker.run_id)


def _shown(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={value_text(v)}" for k, v in params.items())


def _error_text(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text if type(error) is RunError else f"{type(error).__name__}: {text}")[:2000]


def run_tune(
    cfg: DictConfig,
    plan: TunePlan,
    out: Path,
    picked: Mapping[str, str],
    make_trial: TrialFactory,
    scorer: Scorer,
    describe: Callable[[Mapping[str, Any]], str] = lambda objective: str(objective),
) -> dict[str, float]:
    """Run the study until ``plan.trials`` trials are complete; write and log its report.

    Args:
        cfg: the ``tune`` config (seed, scale, runtime options, tracking).
        plan: the validated plan (:func:`build_tune_plan`).
        out: the tune run's directory (trials under ``trials/``).
        picked: its Hydra group choices (MLflow tags).
        make_trial: gives the task function of a trial job.
        scorer: ``objective -> value`` of a job's metrics.
        describe: the objective in words (``tune.md``).

    Returns:
        ``trials_complete``, ``trials_failed``, ``trials_run``, ``trials_run_failed``,
        ``seconds``; ``objective`` (the best value) in single mode, ``front_size`` in pareto
        mode.

    Raises:
        RunError: no trial completed, or ``plan.max_failures`` trials failed in this run
            before the study reached ``plan.trials`` (the report is written first).
        InterruptedRunError: a signal stopped a trial (the trials of its batch are FAIL).

    """
    from optuna.trial import TrialState

    started = time.perf_counter()
    study = open_study(plan, int(cfg.seed))
    if not study.get_trials(deepcopy=False):
        if plan.baseline:
            study.enqueue_trial(plan.baseline, user_attrs={"baseline": True})
            log.info("trial 0 is the baseline: the config's own %s", _shown(plan.baseline))
        elif plan.no_baseline:
            log.warning("tune.baseline: no baseline trial, %s", plan.no_baseline)
    trials_dir = out / "trials"
    tags = {
        "task": "tune",
        "run_dir": str(out.resolve()),
        "tune.study": plan.study,
        "tune.storage": plan.storage,
        "tune.mode": plan.mode,
        "tune.sampler": plan.sampler,
        **{f"choice.{k}": v for k, v in picked.items()},
    }
    ran = failed = 0
    with Tracker(cfg, cfg.tracking, f"tune {plan.study}", tags) as tracker:
        save_config(cfg, out)
        base = base_overrides(cfg, tracker)
        evaluate = None if plan.evaluate is None else [*base, *plan.evaluate]
        function = make_trial(evaluate)
        with trial_launcher(launcher_overrides(plan, trials_dir), function) as launch:
            while _complete(study) < plan.trials and failed < plan.max_failures:
                size = min(plan.parallel, plan.trials - _complete(study))
                batch = [study.ask(plan.distributions) for _ in range(size)]
                jobs = []
                for trial in batch:
                    sampled = trial_overrides(trial.params, plan.space)
                    trial.set_user_attr("run_dir", str((trials_dir / str(trial.number)).resolve()))
                    trial.set_user_attr("overrides", sampled)
                    trial.set_user_attr("command", train_command([*plan.train, *sampled]))
                    jobs.append(
                        [*base, *plan.train, *sampled, f"hydra.sweep.subdir={trial.number}"]
                    )
                    log.info("[trial %d] %s", trial.number, " ".join(sampled))
                try:
                    returns = launch(jobs, batch[0].number)
                except BaseException as err:  # Ctrl-C, a launcher failure: the batch is FAIL
                    for trial in batch:
                        with contextlib.suppress(Exception):
                            trial.set_user_attr("error", _error_text(err))
                            study.tell(trial, state=TrialState.FAIL)
                    raise
                stop, lost = _tell(study, plan, batch, returns, trials_dir, tracker, scorer)
                ran, failed = ran + len(batch), failed + lost
                if stop is not None:
                    raise stop
        records, chosen = trial_records(study, plan)
        counts = {
            "complete": sum(r["state"] == "COMPLETE" for r in records),
            "failed": sum(r["state"] == "FAIL" for r in records),
            "ran": ran,
        }
        files = _write_outputs(records, chosen, plan, counts, out, describe(plan.objective))
        summary: dict[str, float] = {
            "trials_complete": float(counts["complete"]),
            "trials_failed": float(counts["failed"]),
            "trials_run": float(ran),
            "trials_run_failed": float(failed),
            "seconds": time.perf_counter() - started,
        }
        if chosen and plan.mode == "single":
            best = next(r for r in records if r["trial"] == chosen[0])
            summary["objective"] = float(best["objective"])
            summary["best_trial"] = float(best["trial"])
            tracker.set_tags({"tune.best_trial": str(best["trial"]), "tune.best": best["command"]})
        elif plan.mode == "pareto":
            summary["front_size"] = float(len(chosen))
        write_metrics(out, summary, tracker.provenance)
        tracker.log_metrics(summary)
        tracker.log_artifacts([out / "config.yaml", out / "metrics.json", *files])
        print((out / "tune.md").read_text())
        print("\n".join(f"wrote {p}" for p in files))
        if not chosen:
            raise RunError(
                f"no trial of study {plan.study} is complete ({failed} failed in this run; see "
                f"{out / 'trials.csv'})"
            )
        if counts["complete"] < plan.trials:
            raise RunError(
                f"{failed} trials failed in this run (tune.max_failures={plan.max_failures}); "
                f"{counts['complete']} of {plan.trials} are complete (see {out / 'trials.csv'}); "
                "run the same command again to continue the study"
            )
    return summary


def _tell(
    study: Study,
    plan: TunePlan,
    batch: list[Any],
    returns: list[Any],
    trials_dir: Path,
    tracker: Tracker,
    scorer: Scorer,
) -> tuple[BaseException | None, int]:
    """Score each finished job of a batch and tell the study.

    Returns:
        A stop signal's error (``None`` if none stopped a job), and how many trials failed.

    """
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    found = _children(tracker)
    stop: BaseException | None = None
    failed = 0
    for trial, result in zip(batch, returns, strict=True):
        directory = (trials_dir / str(trial.number)).resolve()
        scored = directory / EVALUATE_DIR if plan.evaluate is not None else directory
        error = None if result.status == JobStatus.COMPLETED else result._return_value
        if isinstance(error, InterruptedRunError | KeyboardInterrupt):
            stop = error
        child = found.get(str(scored))
        metrics = child["metrics"] if child is not None else read_metrics_json(scored)
        sampled = trial.user_attrs.get("overrides", [])
        own = {
            "tune.study": plan.study,
            "tune.trial": str(trial.number),
            "tune.params": " ".join(sampled),
        }
        for job in {directory, scored}:
            run = found.get(str(job))
            if run is not None:
                tracker.tag_run(run["run_id"], own)
        if child is not None:
            trial.set_user_attr("mlflow_run_id", child["run_id"])
        values: list[float] = []
        if error is None:
            try:
                values, info = score(plan, metrics, scorer)
            except ConfigError as err:
                error = err
            else:
                if any(math.isnan(v) for v in values):
                    error = RunError(f"a NaN value {values}")
        if error is not None:
            trial.set_user_attr("error", _error_text(error))
            study.tell(trial, state=TrialState.FAIL)
            failed += 1
            log.warning("[trial %d] failed: %s (%s)", trial.number, _error_text(error), directory)
            continue
        for key, value in info.items():
            trial.set_user_attr(key, value)
        study.tell(trial, values if len(values) > 1 else values[0])
        step = {"trial.metric": info["metric"], "trial.regret": info["regret"]}
        if "objective" in info:
            step["trial.objective"] = info["objective"]
        tracker.log_metrics({k: v for k, v in step.items() if not math.isnan(v)}, trial.number)
        log.info(
            "[trial %d] %s -> %s (%s %s, %s %s)",
            trial.number,
            " ".join(sampled),
            ", ".join(f"{v:.4g}" for v in values),
            plan.objective["metric"],
            f"{info['metric']:.4g}",
            plan.objective.get("regret_metric"),
            f"{info['regret']:.4g}",
        )
    return stop, failed


def _write_outputs(
    records: list[dict[str, Any]],
    chosen: list[int],
    plan: TunePlan,
    counts: Mapping[str, int],
    out: Path,
    describe: str,
) -> list[Path]:
    """``tune.md``, ``trials.csv`` and ``pareto.png`` in the tune run's directory."""
    metric, regret = str(plan.objective["metric"]), str(plan.objective.get("regret_metric"))
    complete = [r for r in records if r["state"] == "COMPLETE"]
    if plan.mode == "pareto":
        front = set(chosen)
        flags = [r["trial"] in front for r in complete]
    else:
        maximize = plan.directions[0] == "maximize"
        flags = front_mask(
            [float(r["metric"]) for r in complete], [float(r["regret"]) for r in complete], maximize
        )
    points = [
        {"trial": r["trial"], "metric": r["metric"], "regret": r["regret"], "front": flag}
        for r, flag in zip(complete, flags, strict=True)
    ]
    budgets = {r["budget"] for r in complete if r["budget"]}
    label = regret + (f" ({next(iter(budgets))})" if len(budgets) == 1 else "")
    figure = plot_front(
        points,
        out / "pareto.png",
        metric,
        label,
        title=f"{plan.study}: {counts['complete']} complete trials",
        best=chosen[0] if plan.mode == "single" and chosen else None,
        baseline=next((r["trial"] for r in complete if r["baseline"]), None),
    )
    markdown = out / "tune.md"
    markdown.write_text(report(records, chosen, plan, counts, describe))
    table = write_trials_csv(records, chosen, plan, out / "trials.csv")
    return [markdown, table, figure]
