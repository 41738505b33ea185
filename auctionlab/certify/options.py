"""One-line ``ConfigError`` checks of certifier options (each names its ``certifier.*`` key)."""

from __future__ import annotations

import math
from typing import Any

from auctionlab.errors import ConfigError
from auctionlab.utils import integer_option as integer  # noqa: F401 (opt.integer)


def number(value: Any, key: str, minimum: float = 0.0) -> float:
    """``value`` as a float ``> minimum`` (``0`` allowed when ``minimum`` is 0)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} must be a number") from None
    if not out > minimum and not (out == minimum == 0.0):
        raise ConfigError(f"{key}={value} must be > {minimum}")
    return out


def positive(value: Any, key: str) -> float:
    """``value`` as a float ``> 0``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} must be a number > 0") from None
    if not out > 0:
        raise ConfigError(f"{key}={value} must be > 0")
    return out


def fraction(value: Any, key: str, low_open: bool = True) -> float:
    """``value`` in ``(0, 1)`` (``low_open``) or ``[0, 1]``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} must be a number in (0, 1)") from None
    if not (0 < out < 1 if low_open else 0 <= out <= 1):
        raise ConfigError(f"{key}={value} must be in {'(0, 1)' if low_open else '[0, 1]'}")
    return out


def choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    """``value`` as one of ``allowed``."""
    text = str(value)
    if text not in allowed:
        raise ConfigError(f"{key}={text} is not valid; choose one of {', '.join(allowed)}")
    return text


def seconds(value: Any, key: str) -> float:
    """A time limit: ``None`` is no limit (``inf``), else a number ``>= 0``."""
    return math.inf if value is None else number(value, key)
