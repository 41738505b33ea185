"""Myerson's optimal auction (with ironing), item by item or on the grand bundle.

Each bidder's ironed virtual value is tabulated once, at construction, on a fine value grid:
in quantile space ``q = F(v)`` the integrated virtual value is ``H(q) = low - v (1 - q)`` (minus
the revenue of posting price ``v``, so only the CDF is needed), its lower convex hull is taken,
and the hull's slope is the ironed virtual value. The table is piecewise linear in ``v`` and
exactly constant on ironed intervals, so bidders with the same marginal tie with positive
probability there; ties are split uniformly. Payments are the exact threshold payments of
that randomized rule, ``p_i = v_i x_i(v_i) - int_low^{v_i} x_i(z) dz``, which for the step
function ``x_i`` is a sum over its (at most two) jumps, each found by inverting the table.
The rule is therefore DSIC up to float rounding whatever the grid resolution; the grid only
affects how close to optimal the revenue is.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from auctionlab.errors import ConfigError
from auctionlab.mechanisms.base import ClassicalMechanism
from auctionlab.mechanisms.classical import highest_share, others_best
from auctionlab.types import Outcome

#: Mass left beyond the grid's top for unbounded distributions.
TAIL = 1e-7
#: Bins of the discretised bundle-value distribution before convolution (all items together).
BUNDLE_BINS = 2**18
#: Monte Carlo draws for the bundle value of a correlated distribution (fixed seed 0).
BUNDLE_DRAWS = 2**20


def ironed_virtual_values(values: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """Ironed virtual value at each grid point, from the CDF alone.

    Args:
        values: ``[K]`` increasing value grid, ``values[0]`` the bottom of the support.
        cdf: ``[K]`` nondecreasing ``F(values)``.

    Returns:
        ``[K]`` nondecreasing ironed virtual values (float64); exactly equal on ironed intervals.
    """
    q = np.clip(cdf.astype(np.float64), 0.0, 1.0)
    q = np.maximum.accumulate(q)  # guard against rounding in user-supplied CDFs
    h = -values * (1.0 - q)
    # Where F is flat (gaps in the support) keep the lowest point of each quantile: the hull's.
    uq, start = np.unique(q, return_index=True)
    uh = np.minimum.reduceat(h, start)
    hull: list[int] = []
    for k in range(len(uq)):  # Andrew's monotone chain, lower hull; collinear points dropped
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (uq[a] - uq[o]) * (uh[k] - uh[o]) - (uh[a] - uh[o]) * (uq[k] - uq[o])
            if cross > 0:
                break
            hull.pop()
        hull.append(k)
    hq, hh = uq[hull], uh[hull]
    if len(hull) == 1:  # a point mass: the virtual value is the value itself
        return values.astype(np.float64).copy()
    slopes = np.diff(hh) / np.diff(hq)
    last = len(slopes) - 1
    # Slope left and right of each quantile; inside a hull segment both are that segment's, so
    # every grid point of an ironed interval gets the identical float (ties stay exact).
    left = slopes[np.clip(np.searchsorted(hq, uq, side="left") - 1, 0, last)]
    right = slopes[np.clip(np.searchsorted(hq, uq, side="right") - 1, 0, last)]
    phi = np.maximum.accumulate(0.5 * (left + right))
    return phi[np.searchsorted(uq, q)]


def upper_end(distribution, bidder: int, item: int) -> float:
    """Top of the value grid: the support's top, or the ``1 - TAIL`` quantile if unbounded."""
    high = float(distribution.high[bidder, item])
    if math.isfinite(high):
        return high
    low = float(distribution.low[bidder, item])

    def survival(x: float) -> float:
        return 1.0 - float(distribution.cdf(torch.tensor([x], dtype=torch.float64), bidder, item))

    top = low + 1.0
    while survival(top) > TAIL:
        top = low + 2.0 * (top - low)
    lo = low
    for _ in range(80):  # bisection to the quantile
        mid = 0.5 * (lo + top)
        lo, top = (mid, top) if survival(mid) > TAIL else (lo, mid)
    return top


def marginal_table(distribution, bidder: int, item: int, points: int) -> tuple[np.ndarray, ...]:
    """``(grid [K], cdf [K])`` of one bidder's value for one item."""
    low = float(distribution.low[bidder, item])
    grid = torch.linspace(low, upper_end(distribution, bidder, item), points, dtype=torch.float64)
    return grid.numpy(), distribution.cdf(grid, bidder, item).double().numpy()


def bundle_table(distribution, bidder: int, points: int) -> tuple[np.ndarray, ...]:
    """``(grid [K], cdf [K])`` of one bidder's bundle value ``sum_j v_ij``.

    Independent items: each marginal is binned (exact bin masses from the CDF) and the bins are
    convolved by FFT. Correlated items: empirical CDF of ``BUNDLE_DRAWS`` seeded draws.
    """
    m = distribution.m
    if not distribution.independent:
        generator = torch.Generator().manual_seed(0)
        sums = distribution.sample(BUNDLE_DRAWS, generator)[:, bidder, :].double().sum(-1)
        sums = torch.sort(sums).values
        low = float(distribution.low[bidder].sum())
        high = float(distribution.high[bidder].sum())
        high = high if math.isfinite(high) else float(sums[-1])
        grid = torch.linspace(low, high, points, dtype=torch.float64)
        cdf = torch.searchsorted(sums, grid, right=True).double() / BUNDLE_DRAWS
        return grid.numpy(), cdf.numpy()
    lows = [float(distribution.low[bidder, j]) for j in range(m)]
    tops = [upper_end(distribution, bidder, j) for j in range(m)]
    width = sum(t - lo for t, lo in zip(tops, lows, strict=True)) / BUNDLE_BINS
    length, spectrum = 1, None
    masses = []
    for j in range(m):
        bins = max(1, math.ceil((tops[j] - lows[j]) / width))
        edges = lows[j] + width * torch.arange(bins + 1, dtype=torch.float64)
        masses.append(torch.diff(distribution.cdf(edges, bidder, j).double()))
        length += bins - 1
    size = 1 << (length - 1).bit_length()
    for mass in masses:
        f = torch.fft.rfft(mass, size)
        spectrum = f if spectrum is None else spectrum * f
    mass = torch.fft.irfft(spectrum, size)[:length].clamp_min(0.0)
    # Bin k of the sum is centred at sum_j low_j + (k + m/2) width; spread it over that bin.
    bottom = sum(lows)
    edges = bottom + width * (torch.arange(length + 1, dtype=torch.float64) + 0.5 * (m - 1))
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(mass, 0)])
    cdf = cdf / cdf[-1]
    grid = torch.linspace(bottom, float(edges[-1]), points, dtype=torch.float64)
    return grid.numpy(), np.interp(grid.numpy(), edges.numpy(), cdf.numpy(), left=0.0)


def _tables(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor]:
    """Stack ``(grid, cdf)`` pairs into ``grid`` and ironed-virtual-value tables ``[P, K]``."""
    cache: dict[bytes, np.ndarray] = {}  # identical marginals are ironed once
    phis = []
    for grid, cdf in pairs:
        key = grid.tobytes() + cdf.tobytes()
        if key not in cache:
            cache[key] = ironed_virtual_values(grid, cdf)
        phis.append(cache[key])
    grids = torch.from_numpy(np.stack([g for g, _ in pairs])).float()
    return grids, torch.from_numpy(np.stack(phis)).float()


def _interpolate(x: Tensor, xs: Tensor, ys: Tensor, right: bool) -> tuple[Tensor, Tensor]:
    """Piecewise-linear ``ys(x)`` per row, extrapolated linearly past both ends.

    Args:
        x: ``[P, B]`` query points.
        xs: ``[P, K]`` nondecreasing knots (the ones searched).
        ys: ``[P, K]`` values at the knots.
        right: search side: first knot ``> x`` (True) or ``>= x`` (False).

    Returns:
        The interpolated ``[P, B]`` values and the ``[P, B]`` search index (0..K).
    """
    K = xs.shape[-1]
    index = torch.searchsorted(xs, x.contiguous(), right=right)
    hi = index.clamp(1, K - 1)
    lo = hi - 1
    x0, x1, y0, y1 = xs.gather(1, lo), xs.gather(1, hi), ys.gather(1, lo), ys.gather(1, hi)
    span = x1 - x0
    flat = span <= 0
    # Safe denominator: a flat segment is only reached by extrapolation, handled by callers.
    weight = (x - x0) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, y1, y0 + weight * (y1 - y0)), index


def threshold(t: Tensor, grid: Tensor, phi: Tensor, right: bool) -> Tensor:
    """Smallest report whose ironed virtual value is ``>= t`` (``> t`` if ``right``).

    Args:
        t: ``[P, B]`` virtual-value levels.
        grid: ``[P, K]`` value grid (``grid[:, 0]`` = support bottom, the smallest answer).
        phi: ``[P, K]`` nondecreasing ironed virtual values on the grid.
        right: strict (``>``) rather than weak (``>=``) inequality.

    Returns:
        ``[P, B]`` thresholds, ``inf`` where the level is never reached.
    """
    z, index = _interpolate(t, phi, grid, right=right)
    K = phi.shape[-1]
    # Beyond the table's top with a flat last piece the level is never reached.
    top_flat = (phi[:, -1:] <= phi[:, -2:-1]) & (index == K)
    z = torch.where(top_flat, torch.full_like(z, math.inf), z)
    bottom = grid[:, :1].expand_as(z)
    return torch.where(index == 0, bottom, torch.maximum(z, bottom))


def myerson_rule(values: Tensor, grid: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    """Myerson's auction run separately on each column of ``values``.

    Args:
        values: ``[B, n, c]`` reports, one single-item auction per column ``c``.
        grid: ``[n, c, K]`` value grid of each bidder's table (``grid[..., 0]`` = support bottom).
        phi: ``[n, c, K]`` ironed virtual values on the grid.

    Returns:
        Allocation ``[B, n, c]`` and payment ``[B, n, c]`` (threshold payments).
    """
    B, n, c = values.shape
    grid, phi = grid.to(values), phi.to(values)
    flat_grid, flat_phi = grid.reshape(n * c, -1), phi.reshape(n * c, -1)
    x = values.permute(1, 2, 0).reshape(n * c, B)
    score, _ = _interpolate(x, flat_grid, flat_phi, right=True)
    bottom = flat_grid[:, :1]
    # Below the support a report never wins, so thresholds are clamped to the bottom.
    score = torch.where(x < bottom, torch.full_like(score, -math.inf), score)
    score = score.reshape(n, c, B).permute(2, 0, 1)  # [B, n, c]
    best, count = others_best(score)
    # The seller keeps the item unless some virtual value is >= 0: a reserve at phi = 0.
    reserve_binds = best < 0
    best = torch.where(reserve_binds, torch.zeros_like(best), best)
    count = torch.where(reserve_binds, torch.zeros_like(count), count)
    allocation = highest_share(score, best, count)

    def at(right: bool) -> Tensor:
        t = best.permute(1, 2, 0).reshape(n * c, B)
        return threshold(t, flat_grid, flat_phi, right).reshape(n, c, B).permute(2, 0, 1)

    # x_i jumps by 1/(k+1) where phi_i reaches best and by k/(k+1) where it passes best.
    share = 1.0 / (count + 1.0)
    lower = torch.minimum(at(right=False), values)
    upper = torch.minimum(at(right=True), values)
    tied = share * lower
    won = tied + (1.0 - share) * upper
    zero = torch.zeros_like(values)
    payment = torch.where(score > best, won, torch.where(score == best, tied, zero))
    return allocation, payment


def _need_independent(mechanism: ClassicalMechanism, env) -> None:
    if not env.distribution.independent:
        raise ConfigError(
            f"mechanism={mechanism.config_name} needs independent marginal values; "
            f"env={env.name} uses the correlated {type(env.distribution).__name__} distribution"
        )


class Myerson(ClassicalMechanism):
    """Myerson's optimal single-item auction with ironing.

    The item goes to the highest ironed virtual value if it is nonnegative (ties split
    uniformly); each bidder pays its threshold. U[0,1]: second price with reserve 0.5,
    revenue ``(n-1)/(n+1) + 2^-n/(n+1)`` (3x1: 0.5313, 5x1: 0.6719); 3x1_exp: 2.7517;
    3x1_irregular: about 2.38.

    Args:
        env: a single-item environment with independent values.
        grid_points: size ``K`` of each bidder's virtual-value table.
    """

    config_name = "myerson"
    dsic_by_design = True

    def __init__(self, env, grid_points: int = 2**15) -> None:
        super().__init__(env)
        if grid_points < 3:
            raise ConfigError(f"mechanism.grid_points={grid_points} must be >= 3")
        n, m = self.n_bidders, self.n_items
        pairs = [marginal_table(env.distribution, i, j, grid_points) for i in range(n) for j in range(m)]
        grid, phi = _tables(pairs)
        self.register_buffer("grid", grid.view(n, m, -1))
        self.register_buffer("phi", phi.view(n, m, -1))

    def check_env(self, env) -> None:  # noqa: D102
        super().check_env(env)
        if env.n_items != 1:
            raise ConfigError(
                f"mechanism={self.config_name} is the single-item optimal auction; env={env.name} "
                f"has {env.n_items} items (use mechanism=myerson_itemwise or bundled_myerson)"
            )
        _need_independent(self, env)

    @property
    def reserve(self) -> Tensor:
        """``[n, m]`` reserve prices: the lowest value whose ironed virtual value is >= 0."""
        n, m, K = self.grid.shape
        zero = self.grid.new_zeros(n * m, 1)
        return threshold(zero, self.grid.view(n * m, K), self.phi.view(n * m, K), False).view(n, m)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        allocation, payment = myerson_rule(reports, self.grid, self.phi)
        return Outcome(allocation, payment.sum(-1))


class MyersonItemwise(Myerson):
    """Myerson's optimal auction run separately for every item on its marginal distributions.

    U[0,1] values: item-wise second price with reserve 0.5. Revenue 2x2 0.8333, 2x3 1.25,
    2x5 2.0833, 3x10 5.3125, 5x10 6.7188.
    """

    config_name = "myerson_itemwise"

    def check_env(self, env) -> None:  # noqa: D102
        ClassicalMechanism.check_env(self, env)
        if env.demand == "unit" and env.n_items > 1:
            raise ConfigError(
                f"mechanism={self.config_name} sells items separately, which breaks unit demand; "
                f"env={env.name} is unit-demand with {env.n_items} items"
            )
        _need_independent(self, env)


class BundledMyerson(ClassicalMechanism):
    """The grand bundle sold by Myerson's optimal auction on bundle values ``s_i = sum_j v_ij``.

    For i.i.d. bidders with a regular bundle distribution this is a second-price auction on
    bundle values with the monopoly reserve of ``s_i``. Revenue (U[0,1]): 2x2 0.8392,
    2x3 1.2776, 2x5 2.1885, 3x10 5.0027, 5x10 5.4560.

    Args:
        env: an additive environment (any distribution; correlated ones use seeded draws).
        grid_points: size ``K`` of each bidder's bundle virtual-value table.
    """

    config_name = "bundled_myerson"
    dsic_by_design = True

    def __init__(self, env, grid_points: int = 2**15) -> None:
        super().__init__(env)
        if grid_points < 3:
            raise ConfigError(f"mechanism.grid_points={grid_points} must be >= 3")
        n = self.n_bidders
        grid, phi = _tables([bundle_table(env.distribution, i, grid_points) for i in range(n)])
        self.register_buffer("grid", grid.view(n, 1, -1))
        self.register_buffer("phi", phi.view(n, 1, -1))

    def check_env(self, env) -> None:  # noqa: D102
        super().check_env(env)
        if env.demand == "unit" and env.n_items > 1:
            raise ConfigError(
                f"mechanism={self.config_name} sells all items together, which breaks unit demand; "
                f"env={env.name} is unit-demand with {env.n_items} items"
            )

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        allocation, payment = myerson_rule(reports.sum(-1, keepdim=True), self.grid, self.phi)
        return Outcome(allocation.expand_as(reports), payment[..., 0])
