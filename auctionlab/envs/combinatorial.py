"""Combinatorial auctions over a bundle language ([lemma2026solver] §3, §7.1).

Every bidder reports a value per bundle of its language ``K_i`` (``[B, n, k]``); an allocation
gives each bidder at most one bundle and each item to at most one bidder. Outcomes use the
same tensors as item auctions with bundles in place of items: ``allocation [B, n, k]`` (one-hot
of the bidder's bundle, or zeros) and ``payment [B, n]``, so the attackers, the trainer and the
evaluation apply unchanged; item-level feasibility uses ``membership [n, k, m]``.

Values (§7.1): base item values ``a_ij ~ U[base_low_i, base_high_i]``, pairwise synergies
``gamma_{i,jl} ~ U[-synergy_i, synergy_i]``, ``v_iS = min(v_max, max(0, sum_{j in S} a_ij +
sum_{{j,l} in S} gamma_{i,jl}))``; with probability ``single_minded_prob`` a bidder is
single-minded instead: a target bundle ``T`` (uniform over the language's bundles with at least
two items) and ``v_iS = v* [S contains T]`` with ``v* ~ U[single_minded_low, 1] * v_max``.
The RegretNet 2x2 bundle settings are the case ``synergy`` = the half-width of the bundle's
complementarity ``C_i`` and no single-minded bidders.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.envs.base import Env, ReportSpace
from auctionlab.envs.distributions import ValueDistribution
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types

LANGUAGES = ("powerset", "pairs", "sampled")
PerBidder = float | Sequence[float]


def bundle_language(
    n: int,
    m: int,
    language: str = "powerset",
    bundles_per_bidder: int = 0,
    max_bundle_size: int = 3,
    seed: int = 0,
) -> Tensor:
    """``[n, k, m]`` bool membership of each bidder's bundles.

    Args:
        n: bidders.
        m: items.
        language: ``powerset`` (all non-empty bundles, by size then lexicographic),
            ``pairs`` (singletons and pairs) or ``sampled`` (singletons plus
            ``bundles_per_bidder`` distinct random bundles of 2..``max_bundle_size`` items per
            bidder, drawn from ``seed``).
        bundles_per_bidder: sampled bundles per bidder (``sampled`` only).
        max_bundle_size: largest sampled bundle.
        seed: seed of the sampled bundles.

    """
    if language not in LANGUAGES:
        raise ConfigError(
            f"env.language={language} is not valid; choose one of {', '.join(LANGUAGES)}"
        )
    if language == "powerset" and m > 12:
        raise ConfigError(f"env.language=powerset with {m} items is too large; use pairs/sampled")
    sizes = range(1, m + 1) if language == "powerset" else range(1, 3)
    if language == "sampled":
        sizes = range(1, 2)
    shared = [c for size in sizes for c in itertools.combinations(range(m), size)]
    rows = []
    if language == "sampled":
        top = min(max_bundle_size, m)
        pool = [c for size in range(2, top + 1) for c in itertools.combinations(range(m), size)]
        if bundles_per_bidder < 1 or bundles_per_bidder > len(pool):
            raise ConfigError(
                f"env.bundles_per_bidder={bundles_per_bidder} must be in 1..{len(pool)} for "
                f"{m} items and bundles of at most {top} items"
            )
        generator = torch.Generator().manual_seed(int(seed))
        for _ in range(n):
            picked = torch.randperm(len(pool), generator=generator)[:bundles_per_bidder]
            rows.append(shared + [pool[p] for p in sorted(picked.tolist())])
    else:
        rows = [shared] * n
    membership = torch.zeros(n, len(rows[0]), m, dtype=torch.bool)
    for i, bundles in enumerate(rows):
        for s, items in enumerate(bundles):
            membership[i, s, list(items)] = True
    return membership


def _per_bidder(value: PerBidder, n: int, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() not in (1, n):
        raise ConfigError(f"env.{name}={value}: give one number or one per bidder ({n})")
    return t.expand(n).clone()


class BundleValues(ValueDistribution):
    """The §7.1 value model over a fixed bundle language (see the module docstring)."""

    independent = True  # independent across bidders; restarts are uniform over the box

    def __init__(
        self,
        membership: Tensor,
        base_low: Tensor,
        base_high: Tensor,
        synergy: Tensor,
        v_max: float,
        single_minded_prob: float,
        single_minded_low: float,
    ) -> None:
        self.membership = membership
        self.n, self.k, self.m = membership.shape
        self.base_low, self.base_high, self.synergy = base_low, base_high, synergy
        self.v_max, self.single_minded_prob = v_max, single_minded_prob
        self.single_minded_low = single_minded_low
        size = membership.sum(-1).float()  # [n, k]
        pairs = size * (size - 1) / 2
        low = size * base_low[:, None] - pairs * synergy[:, None]
        high = size * base_high[:, None] + pairs * synergy[:, None]
        self.low = low.clamp(0.0, v_max)
        self.high = high.clamp(0.0, v_max)
        if single_minded_prob > 0:
            self.low = torch.zeros_like(self.low)
            self.high = torch.full_like(self.high, v_max)
        members = membership.float()
        # contains[i, T, S]: bundle S of bidder i holds every item of its bundle T
        overlap = torch.einsum("itm,ism->its", members, members)
        self.contains = overlap == size[:, :, None]
        eligible = (size >= 2).float()
        self.target_weights = torch.where(eligible.sum(-1, keepdim=True) > 0, eligible, 1.0)

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        """``[batch, n, k]`` bundle values."""
        device = generator.device
        n, m = self.n, self.m
        members = self.membership.to(device).float()
        low, high = self.base_low.to(device), self.base_high.to(device)
        base = low[:, None] + (high - low)[:, None] * torch.rand(
            batch, n, m, generator=generator, device=device
        )
        values = torch.einsum("bnm,nkm->bnk", base, members)
        if bool((self.synergy > 0).any()):
            gamma = torch.rand(batch, n, m, m, generator=generator, device=device) * 2 - 1
            gamma = gamma * self.synergy.to(device)[:, None, None]
            gamma = torch.triu(gamma, diagonal=1)
            values = values + torch.einsum("bnjl,nkj,nkl->bnk", gamma, members, members)
        values = values.clamp(0.0, self.v_max)
        if self.single_minded_prob > 0:
            single = (
                torch.rand(batch, n, generator=generator, device=device) < self.single_minded_prob
            )
            weights = self.target_weights.to(device)
            target = torch.multinomial(weights.repeat(batch, 1), 1, generator=generator).view(
                batch, n
            )
            top = self.v_max * (
                self.single_minded_low
                + (1 - self.single_minded_low)
                * torch.rand(batch, n, 1, generator=generator, device=device)
            )
            contains = self.contains.to(device)[torch.arange(n, device=device), target]
            values = torch.where(single[..., None], top * contains.float(), values)
        return values


class CombinatorialEnv(Env):
    """``n`` bidders, ``m`` items, one bundle per bidder from its language, quasi-linear utility.

    Attributes ``n_goods`` (``m``, the items) and ``n_bundles`` (``k``); ``n_items`` is the
    outcome width of the shared env contract (reports and allocations are ``[B, n, k]``), so
    here it equals ``k``.

    Args:
        name: the setting's name (``ca_2x3``...).
        n_bidders: ``n``.
        n_items: ``m``.
        language: ``powerset``, ``pairs`` or ``sampled`` (see ``bundle_language``).
        bundles_per_bidder: sampled bundles per bidder (``sampled``).
        max_bundle_size: largest sampled bundle (``sampled``).
        language_seed: seed of the sampled bundles.
        base_low: lower end of the base item values (one number or one per bidder).
        base_high: upper end of the base item values.
        synergy: half-width of the pairwise synergies (one number or one per bidder).
        v_max: value cap ``V_max``.
        single_minded_prob: probability that a bidder is single-minded.
        single_minded_low: a single-minded bidder's value is ``U[single_minded_low, 1] * v_max``.

    """

    family = "combinatorial"

    def headline_metrics(self) -> tuple[str, ...]:
        """Revenue, welfare and regret: a combinatorial auction trades one for the other."""
        return ("revenue", "welfare", "regret_mean")

    demand = "bundles"

    def __init__(
        self,
        name: str,
        n_bidders: int,
        n_items: int,
        language: str = "powerset",
        bundles_per_bidder: int = 0,
        max_bundle_size: int = 3,
        language_seed: int = 0,
        base_low: PerBidder = 0.0,
        base_high: PerBidder = 1.0,
        synergy: PerBidder = 0.0,
        v_max: float | None = None,
        single_minded_prob: float = 0.0,
        single_minded_low: float = 0.5,
    ) -> None:
        if n_bidders < 1 or n_items < 1:
            raise ConfigError(
                f"env {name}: n_bidders={n_bidders} and n_items={n_items} must be >= 1"
            )
        lo = _per_bidder(base_low, n_bidders, "base_low")
        hi = _per_bidder(base_high, n_bidders, "base_high")
        syn = _per_bidder(synergy, n_bidders, "synergy")
        if bool((lo < 0).any()) or bool((lo >= hi).any()):
            raise ConfigError(f"env: need 0 <= base_low < base_high, got {base_low}, {base_high}")
        if bool((syn < 0).any()):
            raise ConfigError(f"env.synergy={synergy} must be >= 0")
        if not 0 <= single_minded_prob <= 1:
            raise ConfigError(f"env.single_minded_prob={single_minded_prob} must be in [0, 1]")
        if not 0 <= single_minded_low <= 1:
            raise ConfigError(f"env.single_minded_low={single_minded_low} must be in [0, 1]")
        membership = bundle_language(
            n_bidders, n_items, language, bundles_per_bidder, max_bundle_size, language_seed
        )
        size = membership.sum(-1).float()
        natural = float((size * hi[:, None] + size * (size - 1) / 2 * syn[:, None]).max())
        v_max = natural if v_max is None else float(v_max)
        if not (math.isfinite(v_max) and v_max > 0):
            raise ConfigError(f"env.v_max={v_max} must be > 0 and finite")
        self.name, self.n_bidders, self.n_goods = name, int(n_bidders), int(n_items)
        self.language, self.v_max = language, v_max
        self.membership = membership
        self.n_bundles = membership.shape[1]
        # The shared contract's outcome width: allocations and reports are [B, n, k].
        self.n_items = self.n_bundles
        self.distribution = BundleValues(
            membership, lo, hi, syn, v_max, float(single_minded_prob), float(single_minded_low)
        )
        self.report_space = ReportSpace(self.distribution)

    @property
    def bundle_names(self) -> list[list[str]]:
        """``[n][k]`` labels such as ``0_2`` (items of the bundle joined by ``_``)."""
        return [
            ["_".join(str(j) for j in row.nonzero().flatten().tolist()) for row in bidder]
            for bidder in self.membership
        ]

    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """Draw ``batch`` profiles: ``Types.values`` is ``[batch, n, k]``."""
        return Types(self.distribution.sample(batch, generator))

    @staticmethod
    def utility(outcome: Outcome, values: Tensor) -> Tensor:
        """``sum_S x_iS v_iS - p_i``: allocation ``[..., n, k]``, values ``[..., n, k]``."""
        return (outcome.allocation * values).sum(-1) - outcome.payment

    def welfare(self, outcome: Outcome, values: Tensor) -> Tensor:
        """``[B]`` social welfare of the allocation at ``values``."""
        return (outcome.allocation * values).sum((-1, -2))

    def __repr__(self) -> str:
        return (
            f"CombinatorialEnv({self.name}: {self.n_bidders} bidders x {self.n_goods} items, "
            f"{self.n_bundles} bundles per bidder, {self.language})"
        )
