"""Combinatorial-auction mechanisms over a bundle language, and the [lemma2026solver] baselines.

Every mechanism here maps bids ``[B, n, k]`` to ``Outcome(allocation [B, n, k], payment
[B, n])`` with an integral, feasible allocation (each bidder one bundle at most, each item
once at most). ``CombinatorialMechanism`` holds the winner determination (``backend``:
``enumeration`` batched in torch, or ``highs``) and its deterministic tie rule, and the
smooth surrogate whose Jacobian stands in for the argmax's when an attacker or the trainer
differentiates (values stay exact: ``x + x_soft - x_soft.detach()``).

Baselines ([lemma2026solver] §7.3, §4.5):

* ``PayYourBid``: welfare-maximising (``allocation=exact``) or greedy (``allocation=greedy``)
  winner determination on the bids, payment ``alpha * b_iS*`` (``alpha=1``: pay as bid); with
  ``learn_alpha`` the one number ``alpha`` is fitted by the trainer under the same regret
  constraint as the learned mechanisms (the "fixed alpha chosen on data" baseline).
* ``AffineMaximizer``: maximise ``sum_i w_i b_i(x) + sum_(i,S) in x kappa_iS``, charge the
  affine VCG payments (DSIC and IR); ``weights=1, boosts=0`` is VCG on bundles.
* ``ItemPrices``: posted item prices, bidders served in index order, each buys its favourite
  affordable bundle of the items still available (DSIC); prices fitted to revenue on samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.mechanisms.base import Mechanism
from auctionlab.solvers.relaxation import allocation_softmax, entropic_lp
from auctionlab.solvers.wdp import (
    ExactWDP,
    HighsWDP,
    WDPResult,
    choice_to_allocation,
    greedy_choice,
)
from auctionlab.types import Outcome

BACKENDS = ("enumeration", "highs")
SURROGATES = ("softmax", "lp")


class CombinatorialMechanism(Mechanism):
    """Base of the combinatorial mechanisms: winner determination and its surrogate.

    Auditable: ``winner_scores`` and ``payment_fractions`` say what the audit log records.

    Args:
        env: a ``CombinatorialEnv``.
        backend: ``enumeration`` (batched exact, small markets) or ``highs`` (MIP per instance).
        tie_tol: allocations within this of the best score total are tied (absolute).
        priority_seed: seed of the tie-break priorities (part of the mechanism's spec).
        mip_rel_gap: relative gap eta (> 0: an eta-optimal solver): HiGHS's ``mip_rel_gap``
            (``backend=highs``), or the eta-optimal tie rule of ``ExactWDP`` (enumeration).
        surrogate: ``softmax`` (over enumerated allocations) or ``lp`` (entropic LP
            relaxation): whose Jacobian gradients see in place of the argmax's.
        temperature: the surrogate's temperature.
        lp_iterations: sweeps of the entropic LP.

    """

    family = "combinatorial"
    demands = ("bundles",)
    config_name = "combinatorial"
    auditable = True

    def __init__(
        self,
        env,
        backend: str = "enumeration",
        tie_tol: float = 1e-6,
        priority_seed: int = 0,
        mip_rel_gap: float = 0.0,
        surrogate: str = "softmax",
        temperature: float = 0.05,
        lp_iterations: int = 30,
    ) -> None:
        super().__init__(env)
        if backend not in BACKENDS:
            raise ConfigError(
                f"mechanism.backend={backend} is not valid; choose one of {', '.join(BACKENDS)}"
            )
        if surrogate not in SURROGATES:
            raise ConfigError(
                f"mechanism.surrogate={surrogate} is not valid; choose one of "
                f"{', '.join(SURROGATES)}"
            )
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"mechanism.temperature={temperature} must be > 0")
        if lp_iterations < 1:
            raise ConfigError(f"mechanism.lp_iterations={lp_iterations} must be >= 1")
        self.n_bundles, self.n_goods = env.n_bundles, env.n_goods
        self.register_buffer("membership", env.membership.clone(), persistent=False)
        self.backend, self.surrogate, self.temperature = backend, surrogate, float(temperature)
        self.lp_iterations = int(lp_iterations)
        self.tie_tol, self.priority_seed, self.mip_rel_gap = tie_tol, priority_seed, mip_rel_gap
        if backend == "enumeration":
            self.wdp = ExactWDP(env.membership, tie_tol, priority_seed, rel_gap=mip_rel_gap)
        else:
            self.wdp = HighsWDP(env.membership, tie_tol, priority_seed, mip_rel_gap)
            if surrogate == "softmax":
                self.surrogate = "lp"  # no enumeration to take a softmax over
        #: The last forward's winner determination (for audit logs and solver statistics).
        self.last_wdp: WDPResult | None = None
        #: Whether the allocation is the tie-ruled maximiser of the scores (audits re-solve it).
        self.argmax_allocation = True

    def wdp_membership(self) -> Tensor:
        """``[n, k, m]`` the env's bundle membership (``last_wdp`` is re-solvable)."""
        return self.membership

    def winners(self, scores: Tensor) -> WDPResult:
        """Exact winner determination on ``[B, n, k]`` scores (no gradient)."""
        result = self.wdp.solve(scores.detach())
        self.last_wdp = result
        return result

    def soft_allocation(self, scores: Tensor) -> Tensor:
        """``[B, n, k]`` surrogate allocation (differentiable in ``scores``)."""
        if self.surrogate == "softmax":
            indicator = self.wdp._on(scores.device)[0]
            return allocation_softmax(scores, indicator, self.temperature)
        return entropic_lp(scores, self.membership, self.temperature, self.lp_iterations)

    def allocate(self, scores: Tensor, relaxed: bool = False) -> Tensor:
        """Allocation on ``scores``: exact values, surrogate gradient when one is needed.

        Args:
            scores: ``[B, n, k]``.
            relaxed: return the surrogate itself (training on the relaxation, ``grad=lp``).

        """
        exact = self.winners(scores).allocation(self.n_bundles).to(scores)
        return self.straight_through(exact, scores, relaxed)

    def straight_through(self, exact: Tensor, scores: Tensor, relaxed: bool = False) -> Tensor:
        """``exact`` in value, the surrogate's gradient in ``scores`` (when one is needed).

        Args:
            exact: ``[B, n, k]`` the integral allocation.
            scores: ``[B, n, k]`` the scores the surrogate is taken at.
            relaxed: return the surrogate itself instead.

        """
        if not (torch.is_grad_enabled() and scores.requires_grad):
            return exact
        soft = self.soft_allocation(scores)
        return soft if relaxed else exact + (soft - soft.detach())  # == exact, bit for bit

    def winner_scores(self, reports: Tensor) -> Tensor:
        """``[B, n, k]`` the scores winner determination maximised on ``reports`` (the bids).

        A mechanism that scores bids (a learned score net, an affine maximiser) overrides it.
        """
        return reports

    def payment_fractions(self, outcome: Outcome) -> Tensor | None:
        """``[B, n]`` payment fractions where the payment rule has them (default: none)."""
        return None


class PayYourBid(CombinatorialMechanism):
    """Winner determination on the bids, payment ``alpha * b_iS*`` (IR by design).

    Args:
        env: a ``CombinatorialEnv``.
        allocation: ``exact`` (welfare-maximising on bids) or ``greedy``.
        rank: the greedy order: ``bid``, ``bid_per_item`` or ``bid_per_sqrt_item``.
        alpha: the payment fraction in ``[0, 1]`` (1: pay as bid).
        learn_alpha: let the trainer fit ``alpha`` (one parameter).
        **kwargs: ``CombinatorialMechanism`` options (backend, tie rule, surrogate).

    """

    ir_by_design = True
    symmetric_in = ("bidders",)
    config_name = "ca_pay_your_bid"

    def __init__(
        self,
        env,
        allocation: str = "exact",
        rank: str = "bid",
        alpha: float = 1.0,
        learn_alpha: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(env, **kwargs)
        if allocation not in ("exact", "greedy"):
            raise ConfigError(
                f"mechanism.allocation={allocation} is not valid; choose one of exact, greedy"
            )
        if not 0 <= alpha <= 1:
            raise ConfigError(f"mechanism.alpha={alpha} must be in [0, 1]")
        greedy_choice(torch.zeros(1, self.n_bidders, self.n_bundles), env.membership, rank=rank)
        self.allocation_rule, self.rank = allocation, rank
        self.argmax_allocation = allocation == "exact"
        self.learnable = bool(learn_alpha)
        logit = torch.logit(torch.tensor(float(alpha)).clamp(1e-4, 1 - 1e-4))
        if learn_alpha:
            self.alpha_logit = nn.Parameter(logit)
        else:
            self.register_buffer("alpha_value", torch.tensor(float(alpha)))

    @property
    def alpha(self) -> Tensor:
        """The payment fraction (scalar tensor)."""
        if self.learnable:
            return torch.sigmoid(self.alpha_logit)
        return self.alpha_value

    def payment_fractions(self, outcome: Outcome) -> Tensor:
        """``[B, n]``: every winner pays ``alpha`` of its bid."""
        return self.alpha.detach().expand(outcome.payment.shape)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Allocation and payments for ``[B, n, k]`` bids."""
        if self.allocation_rule == "greedy":
            choice = greedy_choice(reports.detach(), self.membership, rank=self.rank)
            exact = choice_to_allocation(choice, self.n_bundles).to(reports)
            self.last_wdp = WDPResult(choice, (exact * reports.detach()).sum((-1, -2)).double())
            allocation = self.straight_through(exact, reports)
        else:
            allocation = self.allocate(reports)
        payment = self.alpha * (allocation * reports).sum(-1)
        return Outcome(allocation, payment)


class AffineMaximizer(CombinatorialMechanism):
    """Affine maximiser with affine VCG payments on bundles (DSIC and IR; [lemma2026solver] §4.5).

    Allocation: maximise ``sum_i w_i b_i(x) + sum_(i,S) in x kappa_iS`` (tie rule as usual);
    payment ``p_i = (h_i - sum_{j != i} w_j b_j(x*) - lambda(x*)) / w_i`` with
    ``h_i = max_x sum_{j != i} w_j b_j(x) + lambda(x)`` (bidder ``i``'s bids set to 0).

    Args:
        env: a ``CombinatorialEnv`` (enumeration backend).
        weights: ``w_i > 0``, one number or one per bidder.
        boosts: ``kappa``, one number (every bundle), one per bundle (``[k]``) or per bidder
            and bundle (``[n][k]``).
        **kwargs: ``CombinatorialMechanism`` options.

    """

    learnable = False
    ir_by_design = True
    config_name = "ca_affine"

    def __init__(
        self,
        env,
        weights: float | Sequence[float] = 1.0,
        boosts: float | Sequence[float] | Sequence[Sequence[float]] = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(env, **kwargs)
        if self.backend != "enumeration":
            raise ConfigError("mechanism.backend=highs: affine VCG payments need enumeration")
        n, k = self.n_bidders, self.n_bundles
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() not in (1, n) or bool((w <= 0).any()):
            raise ConfigError(f"mechanism.weights={weights}: one or {n} numbers, all > 0")
        try:
            kappa = torch.broadcast_to(torch.as_tensor(boosts, dtype=torch.float64), (n, k))
        except RuntimeError:
            raise ConfigError(
                f"mechanism.boosts={boosts} does not fit {n} bidders x {k} bundles"
            ) from None
        self.register_buffer("weights", w.expand(n).clone())
        self.register_buffer("boosts", kappa.clone())
        equal = bool((w == w[0]).all()) and bool((kappa == kappa[0]).all())
        self.symmetric_in = ("bidders",) if equal else ()

    def winner_scores(self, reports: Tensor) -> Tensor:
        """``[B, n, k]`` the affine scores ``w_i b_iS + lambda_iS`` (float64, as solved)."""
        return reports.double() * self.weights[:, None] + self.boosts

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Allocation and affine VCG payments for ``[B, n, k]`` bids."""
        bids = reports.detach().double()
        weighted = bids * self.weights[:, None] + self.boosts  # affine scores [B, n, k]
        result = self.winners(weighted)
        indicator = self.wdp._on(reports.device)[0].view(-1, self.n_bidders, self.n_bundles)
        # own[b, a, i]: bidder i's weighted bid in allocation a (score without the boost)
        own = torch.einsum("bnk,ank->ban", bids * self.weights[:, None], indicator)
        totals = self.wdp.totals(weighted)  # [B, A]
        h = (totals[..., None] - own).max(1).values  # [B, n]
        chosen = result.allocation(self.n_bundles).to(bids)
        own_chosen = (chosen * bids).sum(-1) * self.weights  # [B, n]
        payment = (h - (result.objective[:, None] - own_chosen)) / self.weights
        differentiable = reports * self.weights[:, None].to(reports) + self.boosts.to(reports)
        allocation = self.straight_through(chosen.to(reports), differentiable)
        return Outcome(allocation, payment.to(reports.dtype))


class ItemPrices(CombinatorialMechanism):
    """Posted item prices; bidders in index order buy their favourite affordable bundle.

    Args:
        env: a ``CombinatorialEnv``.
        prices: one price for every item, or one per item.
        fit_samples: when > 0, fit the prices to revenue on this many env samples
            (coordinate search on a grid; ``prices`` is the start).
        fit_seed: seed of those samples.
        grid: price levels tried per coordinate, as fractions of ``v_max``.
        **kwargs: ``CombinatorialMechanism`` options.

    """

    learnable = False
    ir_by_design = True
    config_name = "ca_item_prices"

    def __init__(
        self,
        env,
        prices: float | Sequence[float] = 0.5,
        fit_samples: int = 0,
        fit_seed: int = 0,
        grid: int = 21,
        **kwargs,
    ) -> None:
        super().__init__(env, **kwargs)
        m = self.n_goods
        p = torch.as_tensor(prices, dtype=torch.float32).flatten()
        if p.numel() not in (1, m) or bool((p < 0).any()):
            raise ConfigError(f"mechanism.prices={prices}: one or {m} numbers, all >= 0")
        if fit_samples < 0 or grid < 2:
            raise ConfigError("mechanism: need fit_samples >= 0 and grid >= 2")
        self.register_buffer("prices", p.expand(m).clone())
        self.argmax_allocation = False
        if fit_samples:
            generator = torch.Generator().manual_seed(int(fit_seed))
            values = env.sample(int(fit_samples), generator).values
            self.prices.copy_(self._fit(values, torch.linspace(0, env.v_max, grid)))

    def _fit(self, values: Tensor, levels: Tensor) -> Tensor:
        """Coordinate search: each item's price over ``levels``, three passes."""
        best = self.prices.clone()
        for _ in range(3):
            for j in range(self.n_goods):
                trial = best.expand(len(levels), -1).clone()
                trial[:, j] = levels
                B = values.shape[0]
                stacked = values.repeat(len(levels), 1, 1)  # [G * B, n, k], trial-major
                payment = self._sell(stacked, trial.repeat_interleave(B, 0))[1]
                revenue = payment.sum(-1).view(len(levels), B).mean(1)
                best = trial[int(revenue.argmax())]
        return best

    def _sell(self, reports: Tensor, prices: Tensor) -> tuple[Tensor, Tensor]:
        """Allocation ``[B, n, k]`` and payments ``[B, n]`` at prices ``[m]`` or ``[B, m]``."""
        B, n, k = reports.shape
        members = self.membership.to(reports.device)
        prices = prices.to(reports).expand(B, self.n_goods)  # [B, m]
        cost = torch.einsum("nkm,bm->bnk", members.to(reports.dtype), prices)
        used = torch.zeros(B, self.n_goods, dtype=torch.bool, device=reports.device)
        allocation = reports.new_zeros(B, n, k)
        payment = reports.new_zeros(B, n)
        for i in range(n):  # bidders in a fixed order, batched over profiles
            available = ~(members[i][None] & used[:, None, :]).any(-1)  # [B, k]
            surplus = torch.where(available, reports[:, i] - cost[:, i], -torch.inf)
            best = surplus.argmax(-1)  # first maximiser on ties
            buys = surplus.gather(1, best[:, None]).squeeze(1) > 0
            allocation[:, i] = torch.nn.functional.one_hot(best, k).to(reports) * buys[:, None]
            payment[:, i] = cost[:, i].gather(1, best[:, None]).squeeze(1) * buys
            used |= members[i][best] & buys[:, None]
        return allocation, payment

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Sequential posted-price outcome for ``[B, n, k]`` bids."""
        allocation, payment = self._sell(reports.detach(), self.prices)
        has = allocation.sum(-1) > 0
        choice = torch.where(has, allocation.argmax(-1), torch.full_like(has, -1, dtype=torch.long))
        self.last_wdp = WDPResult(choice, (allocation * reports.detach()).sum((-1, -2)).double())
        return Outcome(allocation, payment)
