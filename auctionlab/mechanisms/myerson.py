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
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.mechanisms.base import ClassicalMechanism
from auctionlab.mechanisms.classical import highest_share, others_best
from auctionlab.types import Outcome

#: Mass left beyond the grid's top for unbounded distributions.
TAIL = 1e-7
#: Bins of the discretised bundle-value distribution before convolution (all items together).
BUNDLE_BINS = 2**16
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
    masses = []
    for j in range(m):
        bins = max(1, math.ceil((tops[j] - lows[j]) / width))
        edges = lows[j] + width * torch.arange(bins + 1, dtype=torch.float64)
        masses.append(np.diff(distribution.cdf(edges, bidder, j).double().numpy()))
    length = sum(len(mass) for mass in masses) - m + 1
    size = 1 << (length - 1).bit_length()
    spectra: dict[bytes, np.ndarray] = {}  # i.i.d. items share one transform
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    for mass in masses:
        key = mass.tobytes()
        if key not in spectra:
            spectra[key] = np.fft.rfft(mass, size)
        spectrum = spectrum * spectra[key]
    mass = np.clip(np.fft.irfft(spectrum, size)[:length], 0.0, None)
    # Bin k of the sum is centred at sum_j low_j + (k + m/2) width; spread it over that bin.
    bottom = sum(lows)
    edges = bottom + width * (np.arange(length + 1, dtype=np.float64) + 0.5 * (m - 1))
    cdf = np.concatenate([[0.0], np.cumsum(mass)])
    cdf = cdf / cdf[-1]
    grid = np.linspace(bottom, edges[-1], points)
    return grid, np.interp(grid, edges, cdf, left=0.0)


class IronedTables(nn.Module):
    """Piecewise-linear ironed virtual values of ``P`` (bidder, item) marginals on uniform grids.

    Args:
        pairs: ``P`` pairs ``(grid [K], cdf [K])`` with ``grid`` an increasing linspace whose
            first point is the bottom of the support.
    """

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__()
        cache: dict[bytes, np.ndarray] = {}  # identical marginals are ironed once
        phis = []
        for grid, cdf in pairs:
            key = grid.tobytes() + cdf.tobytes()
            if key not in cache:
                cache[key] = ironed_virtual_values(grid, cdf).astype(np.float32)
            phis.append(cache[key])
        phi = np.stack(phis)
        # First knot strictly above each knot's level: turns a ">=" search into a ">" one.
        next_up = np.stack([np.searchsorted(row, row, side="right") for row in phi])
        self.register_buffer("grid", torch.from_numpy(np.stack([g for g, _ in pairs])).float())
        self.register_buffer("phi", torch.from_numpy(phi))
        self.register_buffer("next_up", torch.from_numpy(next_up).long())

    def score(self, x: Tensor) -> Tensor:
        """``[P, B]`` ironed virtual values of ``[P, B]`` reports (``-inf`` below the support).

        The grid is uniform, so the segment index is arithmetic rather than a search.
        """
        grid, phi = self.grid.to(x), self.phi.to(x)
        K = grid.shape[-1]
        start = grid[:, :1]
        step = (grid[:, -1:] - start) / (K - 1)
        # An index one knot off through rounding only extrapolates a neighbouring piece by an ulp.
        lo = torch.floor((x.detach() - start) / step).clamp(0, K - 2).long()
        g0, g1 = grid.gather(1, lo), grid.gather(1, lo + 1)
        p0, p1 = phi.gather(1, lo), phi.gather(1, lo + 1)
        # Equal knots on an ironed interval give exactly equal scores: ties stay exact.
        value = p0 + (x - g0) / (g1 - g0) * (p1 - p0)
        return torch.where(x < start, torch.full_like(value, -math.inf), value)

    def thresholds(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Smallest reports whose ironed virtual value is ``>= t`` and ``> t``.

        Args:
            t: ``[P, B]`` virtual-value levels.

        Returns:
            Two ``[P, B]`` tensors (``inf`` where the level is never reached), each at least the
            bottom of the support.
        """
        grid, phi = self.grid.to(t), self.phi.to(t)
        K = grid.shape[-1]
        weak = torch.searchsorted(phi, t.contiguous())  # first knot with phi >= t
        clipped = weak.clamp(max=K - 1)
        on_level = (weak < K) & (phi.gather(1, clipped) == t)
        strict = torch.where(on_level, self.next_up.to(t.device).gather(1, clipped), weak)
        bottom = grid[:, :1].expand_as(t)
        out = []
        for index in (weak, strict):
            hi = index.clamp(1, K - 1)
            p0, p1 = phi.gather(1, hi - 1), phi.gather(1, hi)
            g0, g1 = grid.gather(1, hi - 1), grid.gather(1, hi)
            # Inside the table p0 < t <= p1 (or p0 <= t < p1), so span > 0; a flat piece is only
            # met past the top, where the level is never reached.
            span = p1 - p0
            flat = span <= 0
            z = g0 + (t - p0) / torch.where(flat, torch.ones_like(span), span) * (g1 - g0)
            z = torch.where(flat, torch.full_like(z, math.inf), z)
            out.append(torch.where(index == 0, bottom, torch.maximum(z, bottom)))
        return out[0], out[1]

    def reserve(self) -> Tensor:
        """``[P]`` lowest report with ironed virtual value ``>= 0``."""
        return self.thresholds(self.grid.new_zeros(self.grid.shape[0], 1))[0][:, 0]


def myerson_rule(values: Tensor, tables: IronedTables) -> tuple[Tensor, Tensor]:
    """Myerson's auction run separately on each column of ``values``.

    Args:
        values: ``[B, n, c]`` reports, one single-item auction per column ``c``.
        tables: the ``P = n * c`` virtual-value tables, bidder-major.

    Returns:
        Allocation ``[B, n, c]`` and payment ``[B, n, c]`` (threshold payments).
    """
    B, n, c = values.shape

    def rows(x: Tensor) -> Tensor:  # [B, n, c] -> [n * c, B]
        return x.permute(1, 2, 0).reshape(n * c, B)

    def back(x: Tensor) -> Tensor:  # [n * c, B] -> [B, n, c]
        return x.reshape(n, c, B).permute(2, 0, 1)

    score = back(tables.score(rows(values)))
    best, count = others_best(score)
    # The seller keeps the item unless some virtual value is >= 0: a reserve at phi = 0.
    reserve_binds = best < 0
    best = torch.where(reserve_binds, torch.zeros_like(best), best)
    count = torch.where(reserve_binds, torch.zeros_like(count), count)
    allocation = highest_share(score, best, count)
    # x_i jumps by 1/(k+1) where phi_i reaches best and by k/(k+1) where it passes best; the
    # minimum with the report only absorbs rounding (mathematically the jump is below it).
    lower, upper = tables.thresholds(rows(best))
    share = 1.0 / (count + 1.0)
    tied = share * torch.minimum(back(lower), values)
    won = tied + (1.0 - share) * torch.minimum(back(upper), values)
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
    3x1_irregular: 2.3749 (ironed on [2.382, 4.382], reserve 2).

    Args:
        env: a single-item environment with independent values.
        grid_points: size ``K`` of each bidder's virtual-value table.
    """

    ir_by_design = True
    symmetric_in = ("bidders",)
    config_name = "myerson"
    dsic_by_design = True

    def __init__(self, env, grid_points: int = 2**15) -> None:
        super().__init__(env)
        if grid_points < 3:
            raise ConfigError(f"mechanism.grid_points={grid_points} must be >= 3")
        pairs = [
            marginal_table(env.distribution, i, j, grid_points)
            for i in range(self.n_bidders)
            for j in range(self.n_items)
        ]
        self.tables = IronedTables(pairs)

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
        return self.tables.reserve().view(self.n_bidders, self.n_items)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        allocation, payment = myerson_rule(reports, self.tables)
        return Outcome(allocation, payment.sum(-1))


class MyersonItemwise(Myerson):
    """Myerson's optimal auction run separately for every item on its marginal distributions.

    U[0,1] values: item-wise second price with reserve 0.5. Revenue 2x2 0.8333, 2x3 1.25,
    2x5 2.0833, 3x10 5.3125, 5x10 6.7188.
    """

    symmetric_in = ("bidders", "items")
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

    ir_by_design = True
    symmetric_in = ("bidders", "items")
    config_name = "bundled_myerson"
    dsic_by_design = True

    def __init__(self, env, grid_points: int = 2**15) -> None:
        super().__init__(env)
        if grid_points < 3:
            raise ConfigError(f"mechanism.grid_points={grid_points} must be >= 3")
        pairs = [bundle_table(env.distribution, i, grid_points) for i in range(self.n_bidders)]
        self.tables = IronedTables(pairs)

    def check_env(self, env) -> None:  # noqa: D102
        super().check_env(env)
        if env.demand == "unit" and env.n_items > 1:
            raise ConfigError(
                f"mechanism={self.config_name} sells all items together, which breaks unit demand; "
                f"env={env.name} is unit-demand with {env.n_items} items"
            )

    @property
    def reserve(self) -> Tensor:
        """``[n]`` reserve prices on the bundle value."""
        return self.tables.reserve()

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        allocation, payment = myerson_rule(reports.sum(-1, keepdim=True), self.tables)
        # Materialised (not a stride-0 view) so callers may write into it.
        return Outcome(allocation.expand_as(reports).contiguous(), payment[..., 0])
