"""What every task does: Hydra choices, its run directory, runtime setup, integer options."""

from __future__ import annotations

import errno
import functools
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError, NonFiniteError, OutputError
from auctionlab.runs import write_failure
from auctionlab.schema import DIRECTIONS
from auctionlab.utils import check_seeds, integer_option

log = logging.getLogger("auctionlab")


def choices() -> dict[str, str]:
    """Hydra's group choices of the current run (``{}`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {
        k: str(v)
        for k, v in HydraConfig.get().runtime.choices.items()
        if v is not None and not k.startswith("hydra")
    }


def hydra_output_dir() -> Path | None:
    """The running Hydra job's output directory (``None`` outside a job; creates nothing)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and not OmegaConf.is_missing(
        HydraConfig.get().runtime, "output_dir"
    ):
        return Path(HydraConfig.get().runtime.output_dir)
    return None  # also while the CLI checks a config before the job (no directory yet)


def run_dir() -> Path:
    """The Hydra run directory (or ``outputs/adhoc`` when called outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    path = Path("outputs") / "adhoc"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_label(run: str | Path) -> str:
    """A run directory as run names and titles show it.

    Its name; a multirun job's with its sweep's (``17-15-31-522718_train/3_env-2x2_seed-1``):
    a job's name alone says neither when nor which sweep.
    """
    from auctionlab.tracking import SWEEP_RECORD

    path = Path(str(run)).expanduser()
    sweep = path.resolve().parent
    if (sweep / "multirun.yaml").exists() or (sweep / SWEEP_RECORD).exists():
        return f"{sweep.name}/{path.name}"
    return path.name


def integer(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    """``cfg[key]`` (dotted) as an int, or a ``ConfigError`` naming the option."""
    return integer_option(OmegaConf.select(cfg, key), key, minimum)


def setup_runtime(cfg: DictConfig) -> torch.device:
    """Validate the whole config (types, ranges, targets); then seed, threads and device."""
    from auctionlab.schema import validate
    from auctionlab.utils import resolve_device, seed_everything

    try:
        validate(cfg)
    except ConfigError as err:
        recipe = choices().get("recipe")
        if recipe is None or not str(err).startswith("trainer."):
            raise
        # A recipe is written for the setting's default trainer; name the way out.
        hint = f"set by recipe {recipe}; add ~recipe to train without it"
        raise ConfigError(f"{err} ({hint})") from None
    check_seeds(OmegaConf.to_container(cfg, resolve=True))
    seed_everything(integer(cfg, "seed"))
    if cfg.get("threads") is not None:
        torch.set_num_threads(integer(cfg, "threads", 1))
    return resolve_device(str(cfg.device))


def check_applies(attacker: Any, env: Any) -> None:
    """Refuse, before any work, an attacker that cannot search ``env``'s reports.

    Raises:
        ConfigError: the attacker's own reason (``Attacker.unsupported``), one line.

    """
    reason = attacker.unsupported(env)
    if reason is not None:
        raise ConfigError(reason)


#: The numbers a non-finite failure names first (when they are among the non-finite ones).
HEADLINE = ("revenue", "welfare", "regret_mean", "regret_max", "ir_violation_mean")


def non_finite_failure(out: Path, bad: list[str], what: str) -> NonFiniteError:
    """Write ``failure.json`` for NaN / inf results and return the error the run ends with.

    Args:
        out: the run directory (it gets no ``metrics.json``).
        bad: the non-finite metric names.
        what: what produced them (for the message).

    """
    # Headline numbers first; the curve's and per-bidder copies follow from them.
    bad = sorted(bad, key=lambda k: (HEADLINE.index(k) if k in HEADLINE else len(HEADLINE), k))
    shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    reason = (
        f"non-finite {what} ({shown}): NaN or inf in the mechanism's outputs or the sampled values"
    )
    write_failure(out, reason, non_finite=bad)
    return NonFiniteError(f"{reason}; no result written (see {out / 'failure.json'})")


def progress_enabled(cfg: DictConfig) -> bool:
    """Progress bars when asked (``progress=true``) or, on ``auto``, on a terminal."""
    value = cfg.get("progress", "auto")
    if value == "auto":
        return sys.stderr.isatty()
    return bool(value)


#: ``errno`` values of a write the run cannot recover from: full disk or quota, read-only file
#: system, file size limit, no permission.
WRITE_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
)

Task = TypeVar("Task", bound=Callable[..., Any])


def one_line_write_errors(run: Task) -> Task:
    """Decorate a task's ``run``: a failed write (figure, report, log) ends in one line.

    Files written through ``auctionlab.runs`` already raise ``OutputError``; this catches the
    ``OSError`` of any other writer (matplotlib, csv) with the same message and exit status 1.
    The task's MLflow run has been marked FAILED with the reason by then.
    """

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        except OSError as err:
            if err.errno not in WRITE_ERRORS:
                raise
            where = err.filename if err.filename is not None else "the run directory"
            # Permission errors may come from a read as well.
            verb = "access" if err.errno in (errno.EACCES, errno.EPERM) else "write"
            raise OutputError(f"cannot {verb} {where}: {err.strerror}") from err

    return wrapper  # type: ignore[return-value]


# -- the objective a sweep tunes ------------------------------------------------------------------
#: Families of metric names listed once in a message (the regret curve, per-bidder copies).
_NAME_FAMILIES = (
    (re.compile(r"curve_r\d+_s\d+_"), "curve_r<R>_s<S>_"),
    (re.compile(r"bidder\d+"), "bidder<i>"),
)


def _metric(metrics: Mapping[str, Any], name: str, option: str) -> float:
    """``metrics[name]`` as a float, or a ``ConfigError`` naming ``option`` and the choices."""
    value = metrics.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        names: set[str] = set()
        for key, item in metrics.items():
            if isinstance(item, int | float) and not isinstance(item, bool):
                for pattern, family in _NAME_FAMILIES:
                    key = pattern.sub(family, key)
                names.add(key)
        raise ConfigError(
            f"{option}={name} is not a metric of this run; choose one of: "
            + ", ".join(sorted(names))
        )
    return float(value)


def objective_value(objective: Mapping[str, Any], metrics: Mapping[str, Any]) -> float:
    """The scalar a sweep optimises: ``metrics[objective.metric]``, worsened past a regret limit.

    With ``regret_limit`` null the value is the metric itself. Otherwise, when
    ``metrics[regret_metric]`` exceeds ``regret_limit`` (a NaN regret counts as exceeding it),
    ``penalty * (regret - regret_limit)`` is subtracted from the metric (``maximize``) or added
    to it (``minimize``); with ``penalty`` null the value is the worst one, ``-inf``
    (``maximize``) or ``+inf`` (``minimize``), which ``metrics.json`` writes as ``null`` with an
    ``objective_reason`` and MLflow stores as the largest float.

    Args:
        objective: the ``objective`` config node (``metric``, ``direction``, ``regret_metric``,
            ``regret_limit``, ``penalty``).
        metrics: the run's flat metrics (what ``metrics.json`` holds).

    Raises:
        ConfigError: a bad direction, or a metric name the run does not have (naming those it
            has).

    """
    direction = str(objective.get("direction", "maximize"))
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"objective.direction={direction} is not valid; choose one of {', '.join(DIRECTIONS)}"
        )
    value = _metric(metrics, str(objective["metric"]), "objective.metric")
    limit = objective.get("regret_limit")
    if limit is None:
        return value
    regret = _metric(metrics, str(objective.get("regret_metric")), "objective.regret_metric")
    if regret <= float(limit):
        return value
    worse = -1.0 if direction == "maximize" else 1.0
    penalty = objective.get("penalty")
    if penalty is None:
        return worse * math.inf
    return value + worse * float(penalty) * (regret - float(limit))


def describe_objective(objective: Mapping[str, Any]) -> str:
    """``objective`` in words: the MLflow tag ``objective``.

    E.g. ``maximize val_revenue``, ``maximize val_revenue - 10 * max(0, val_regret_mean -
    0.001)`` or ``maximize val_revenue; -inf when val_regret_mean > 0.001``.
    """
    direction, metric = str(objective.get("direction", "maximize")), str(objective["metric"])
    limit = objective.get("regret_limit")
    if limit is None:
        return f"{direction} {metric}"
    regret, penalty = objective.get("regret_metric"), objective.get("penalty")
    if penalty is None:
        worst = "-inf" if direction == "maximize" else "+inf"
        return f"{direction} {metric}; {worst} when {regret} > {limit:g}"
    sign = "-" if direction == "maximize" else "+"
    return f"{direction} {metric} {sign} {penalty:g} * max(0, {regret} - {limit:g})"


def record_objective(cfg: DictConfig, metrics: dict[str, Any]) -> dict[str, str]:
    """Add ``metrics["objective"]`` from ``cfg.objective``; returns the tags that define it.

    Called before ``metrics.json`` is written, so the file, MLflow and the value returned to
    Hydra (:func:`sweep_result`) agree. A config without ``objective`` adds nothing.

    Raises:
        ConfigError: see :func:`objective_value`.

    """
    node = cfg.get("objective")
    if node is None:
        return {}
    objective = OmegaConf.to_container(node, resolve=True)
    metrics["objective"] = objective_value(objective, metrics)
    return {"objective": describe_objective(objective)}


def sweep_result(cfg: DictConfig, result: Any) -> Any:
    """What a task returns to Hydra: its ``objective`` as a float, else its result unchanged.

    The float is what a sweeper such as Optuna's minimises or maximises; tasks without an
    ``objective`` node (``reproduce``, ``runs``...) keep their result.
    """
    if cfg.get("objective") is not None and isinstance(result, Mapping) and "objective" in result:
        return float(result["objective"])
    return result
