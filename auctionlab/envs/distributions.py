"""Valuation distributions for auction environments.

Every distribution draws a ``[B, n, m]`` tensor of values with a seeded generator and describes
its support as a box (``low``/``high``, ``[n, m]``, possibly infinite) so the report space and the
attackers' restart portfolio can be derived from it. Independent distributions also expose the
1-D marginal CDF/PDF that Myerson-style classical mechanisms need.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.core.component import Component
from auctionlab.errors import ConfigError

Bound = float | Sequence[float] | Sequence[Sequence[float]]


def _grid(bound: Bound, n: int, m: int, name: str) -> Tensor:
    """Broadcast a scalar, per-item list or per-bidder-per-item list to ``[n, m]``."""
    t = torch.as_tensor(bound, dtype=torch.float32)
    if not bool(torch.isfinite(t).all()):  # else every value, revenue and regret is NaN / inf
        raise ConfigError(
            f"env.distribution.{name}={bound} must be finite (a uniform range is bounded; "
            "values are float32, at most 3.4e38)"
        )
    if t.dim() == 1 and t.numel() not in (1, m):
        raise ConfigError(f"env.distribution.{name} has {t.numel()} entries; the env has {m} items")
    try:
        return torch.broadcast_to(t, (n, m)).clone()
    except RuntimeError as err:
        raise ConfigError(
            f"env.distribution.{name}={bound} does not fit {n} bidders x {m} items"
        ) from err


class ValueDistribution(Component, ABC):
    """Base class; subclasses fill ``low``/``high`` in ``bind`` and implement ``sample``."""

    independent: bool = True
    low: Tensor
    high: Tensor

    def bind(self, n: int, m: int) -> None:
        """Fix the shape ``n`` bidders x ``m`` items (called by the env)."""
        self.n, self.m = n, m

    @abstractmethod
    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        """Draw ``[batch, n, m]`` values on ``generator.device``."""

    def cdf(self, x: Tensor, bidder: int = 0, item: int = 0) -> Tensor:
        """Marginal CDF of one bidder's value for one item (independent distributions)."""
        raise ConfigError(f"{type(self).__name__} has no independent marginals")

    def pdf(self, x: Tensor, bidder: int = 0, item: int = 0) -> Tensor:
        """Marginal density of one bidder's value for one item (independent distributions)."""
        raise ConfigError(f"{type(self).__name__} has no independent marginals")

    def project(self, reports: Tensor) -> Tensor:
        """Euclidean projection of ``[..., n, m]`` reports onto the support."""
        low, high = self.low.to(reports.device), self.high.to(reports.device)
        return torch.maximum(torch.minimum(reports, high), low)


class Uniform(ValueDistribution):
    """Independent ``U[low, high]`` values; bounds are scalars, per item or per bidder and item."""

    def __init__(self, low: Bound = 0.0, high: Bound = 1.0) -> None:
        self._low, self._high = low, high

    def bind(self, n: int, m: int) -> None:  # noqa: D102
        super().bind(n, m)
        self.low = _grid(self._low, n, m, "low")
        self.high = _grid(self._high, n, m, "high")
        if bool((self.low >= self.high).any()):
            raise ConfigError(
                f"env.distribution: need low < high, got low={self._low} high={self._high}"
            )

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:  # noqa: D102
        device = generator.device
        u = torch.rand(batch, self.n, self.m, generator=generator, device=device)
        low, high = self.low.to(device), self.high.to(device)
        return low + (high - low) * u

    def cdf(self, x: Tensor, bidder: int = 0, item: int = 0) -> Tensor:  # noqa: D102
        lo, hi = float(self.low[bidder, item]), float(self.high[bidder, item])
        return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)

    def pdf(self, x: Tensor, bidder: int = 0, item: int = 0) -> Tensor:  # noqa: D102
        lo, hi = float(self.low[bidder, item]), float(self.high[bidder, item])
        inside = (x >= lo) & (x <= hi)
        return inside.to(x.dtype) / (hi - lo)


class Exponential(ValueDistribution):
    """Independent exponential values with mean ``scale`` (MyersonNet's setting uses 3)."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ConfigError(f"env.distribution.scale={scale} must be > 0")
        self.scale = float(scale)

    def bind(self, n: int, m: int) -> None:  # noqa: D102
        super().bind(n, m)
        self.low = torch.zeros(n, m)
        self.high = torch.full((n, m), math.inf)

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:  # noqa: D102
        u = torch.rand(batch, self.n, self.m, generator=generator, device=generator.device)
        return -self.scale * torch.log1p(-u)

    def cdf(self, x: Tensor, bidder: int = 0, item: int = 0) -> Tensor:  # noqa: D102
        return 1.0 - torch.exp(-x.clamp_min(0.0) / self.scale)

    def pdf(self, x: Tensor, bidder: int = 0, item: int = 0) -> Tensor:  # noqa: D102
        return torch.where(x >= 0, torch.exp(-x.clamp_min(0.0) / self.scale) / self.scale, 0.0)


class UniformMixture(ValueDistribution):
    """Independent mixture of uniforms, e.g. MyersonNet's irregular ``3/4 U[0,3] + 1/4 U[3,8]``.

    Args:
        weights: mixture weights (normalised here).
        lows: lower end of each component.
        highs: upper end of each component.

    """

    def __init__(self, weights: Sequence[float], lows: Sequence[float], highs: Sequence[float]):
        if not (len(weights) == len(lows) == len(highs)) or len(weights) == 0:
            raise ConfigError(
                "env.distribution: weights, lows and highs need the same non-zero length"
            )
        w = torch.as_tensor(weights, dtype=torch.float64)
        if bool((w <= 0).any()):
            raise ConfigError(f"env.distribution.weights={list(weights)} must be positive")
        self.weights = (w / w.sum()).float()
        self.lows = torch.as_tensor(lows, dtype=torch.float32)
        self.highs = torch.as_tensor(highs, dtype=torch.float32)
        if bool((self.lows >= self.highs).any()):
            raise ConfigError("env.distribution: every component needs low < high")

    def bind(self, n: int, m: int) -> None:  # noqa: D102
        super().bind(n, m)
        self.low = torch.full((n, m), float(self.lows.min()))
        self.high = torch.full((n, m), float(self.highs.max()))

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:  # noqa: D102
        device = generator.device
        shape = (batch, self.n, self.m)
        comp = torch.multinomial(
            self.weights.to(device), batch * self.n * self.m, replacement=True, generator=generator
        ).view(shape)
        u = torch.rand(shape, generator=generator, device=device)
        lows, highs = self.lows.to(device)[comp], self.highs.to(device)[comp]
        return lows + (highs - lows) * u

    def cdf(self, x: Tensor, bidder: int = 0, item: int = 0) -> Tensor:  # noqa: D102
        parts = ((x[..., None] - self.lows) / (self.highs - self.lows)).clamp(0.0, 1.0)
        return (parts * self.weights).sum(-1)

    def pdf(self, x: Tensor, bidder: int = 0, item: int = 0) -> Tensor:  # noqa: D102
        x = x[..., None]
        inside = ((x >= self.lows) & (x <= self.highs)).to(x.dtype)
        return (inside * self.weights / (self.highs - self.lows)).sum(-1)


class Triangle(ValueDistribution):
    """One bidder, two items, uniform on ``{v1/c + v2 <= 2, v1 >= 0, v2 >= 1}`` (correlated).

    The triangle setting of Dütting et al. (2019); its vertices are ``(0, 1)``, ``(0, 2)`` and
    ``(c, 1)``. Reports are projected onto the triangle exactly, not onto its bounding box.
    """

    independent = False

    def __init__(self, c: float = 0.5) -> None:
        if c <= 0:
            raise ConfigError(f"env.distribution.c={c} must be > 0")
        self.c = float(c)
        self.vertices = torch.tensor([[0.0, 1.0], [0.0, 2.0], [self.c, 1.0]])

    def bind(self, n: int, m: int) -> None:  # noqa: D102
        if (n, m) != (1, 2):
            raise ConfigError(f"env.distribution: Triangle needs 1 bidder x 2 items, got {n}x{m}")
        super().bind(n, m)
        self.low = torch.tensor([[0.0, 1.0]])
        self.high = torch.tensor([[self.c, 2.0]])

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:  # noqa: D102
        device = generator.device
        u = torch.rand(batch, 2, generator=generator, device=device)
        flip = u.sum(-1, keepdim=True) > 1  # reflect the upper half onto the lower triangle
        u = torch.where(flip, 1.0 - u, u)
        a, b, c = self.vertices.to(device)
        return (a + u[:, :1] * (b - a) + u[:, 1:] * (c - a)).view(batch, 1, 2)

    def project(self, reports: Tensor) -> Tensor:  # noqa: D102
        x = reports[..., 0, :]
        v = self.vertices.to(reports.device)
        inside = (x[..., 0] >= 0) & (x[..., 1] >= 1) & (x[..., 0] / self.c + x[..., 1] <= 2)
        best, best_d = x, torch.full(x.shape[:-1], math.inf, device=x.device, dtype=x.dtype)
        for a, b in ((v[0], v[1]), (v[1], v[2]), (v[2], v[0])):
            ab = b - a
            t = (((x - a) * ab).sum(-1) / (ab * ab).sum()).clamp(0.0, 1.0)
            p = a + t[..., None] * ab
            d = ((x - p) ** 2).sum(-1)
            closer = d < best_d
            best = torch.where(closer[..., None], p, best)
            best_d = torch.where(closer, d, best_d)
        return torch.where(inside[..., None], x, best).unsqueeze(-2)
