"""What every task does: Hydra choices, its run directory, runtime setup, integer options."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError, NonFiniteError, OutputError
from auctionlab.runs import write_failure
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


def integer(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    """``cfg[key]`` (dotted) as an int, or a ``ConfigError`` naming the option."""
    return integer_option(OmegaConf.select(cfg, key), key, minimum)


def setup_runtime(cfg: DictConfig) -> torch.device:
    """Validate the whole config (types, ranges, targets); then seed, threads and device."""
    from auctionlab.schema import validate
    from auctionlab.utils import resolve_device, seed_everything

    validate(cfg)
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
