"""Device selection, threads and seeding."""

from __future__ import annotations

import os
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


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(parallel_jobs: int | None = None) -> int:
    """Torch intra-op threads when ``threads`` is unset.

    Jobs that run side by side (a parallel launcher's ``n_jobs``) share the cores evenly, one
    thread at least: more threads than free cores make torch's threads wait on each other, and
    throughput then collapses instead of degrading in proportion to the cores taken.

    Args:
        parallel_jobs: jobs running at once on this machine (``None``: this one alone;
            ``-1``: one per core, joblib's convention).

    Returns:
        The thread count.

    """
    cores = available_cores()
    if parallel_jobs is None:
        return cores
    jobs = cores if parallel_jobs < 0 else max(1, parallel_jobs)
    return max(1, cores // jobs)


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
