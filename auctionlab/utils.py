"""Device selection and seeding."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from auctionlab.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Largest seed accepted. torch takes seeds below 2**64, and derived seeds add small offsets
#: (``validation.seed + 1``, ``heldout_seed + 2``...), so the upper half stays free.
SEED_MAX = 2**63 - 1


def resolve_device(device: str) -> torch.device:
    """Turn ``auto|cpu|cuda[:k]`` into a ``torch.device``.

    Raises:
        ConfigError: unknown value, or ``cuda`` asked for on a machine without CUDA.

    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device}: CUDA is not available here; use device=cpu or auto"
            )
        return torch.device(device)
    raise ConfigError(f"device={device} is not valid; choose one of {', '.join(DEVICE_CHOICES)}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def integer_option(value: Any, key: str, minimum: int | None = None) -> int:
    """``value`` as an int (an integral number), at least ``minimum``."""
    try:
        number = int(value)
        # Exact for ints (a float comparison would call 10**20 + 1 "not an integer").
        if not isinstance(value, str) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} must be an integer") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return number


def check_seeds(node: Any, path: str = "") -> None:
    """Every integer ``seed`` / ``*_seed`` in a config tree lies in ``[0, SEED_MAX]``.

    A seed out of torch's range would otherwise fail deep inside a generator with an overflow
    traceback, after the run had started.

    Args:
        node: the config as plain data (``OmegaConf.to_container(cfg, resolve=True)``).
        path: the dotted name of ``node`` (for messages).

    Raises:
        ConfigError: the first seed outside the range, named with its dotted key.

    """
    if isinstance(node, Mapping):
        for key, value in node.items():
            name = f"{path}.{key}" if path else str(key)
            is_seed = isinstance(key, str) and (key == "seed" or key.endswith("_seed"))
            if is_seed and isinstance(value, int) and not isinstance(value, bool):
                if not 0 <= value <= SEED_MAX:
                    raise ConfigError(f"{name}={value}: must be an integer in [0, 2**63-1]")
            else:
                check_seeds(value, name)
    elif isinstance(node, list | tuple):
        for index, item in enumerate(node):
            check_seeds(item, f"{path}[{index}]")
