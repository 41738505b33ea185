"""What every task does: Hydra choices, its run directory, runtime setup, integer options."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from auctionlab.utils import integer_option

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
    seed_everything(integer(cfg, "seed"))
    if cfg.get("threads") is not None:
        torch.set_num_threads(integer(cfg, "threads", 1))
    return resolve_device(str(cfg.device))


def progress_enabled(cfg: DictConfig) -> bool:
    """Progress bars when asked (``progress=true``) or, on ``auto``, on a terminal."""
    value = cfg.get("progress", "auto")
    if value == "auto":
        return sys.stderr.isatty()
    return bool(value)
