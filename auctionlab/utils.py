"""Device selection and seeding."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from auctionlab.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


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
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} must be an integer") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return number
