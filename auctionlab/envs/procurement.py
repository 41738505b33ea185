"""Volume-discount procurement ([lemma2026certified] §9 iii): a reverse auction for ``m`` units.

Supplier ``i`` privately knows per-unit costs ``c_ij ~ U[low, high]`` and reports them (reports
``[B, n, m]``). The mechanism awards unit ``j`` to supplier ``i`` with probability ``p_ij``
(softmax with a dummy "not procured" option, so ``sum_i p_ij <= 1``) and pays ``t_i >= 0``.
Costs have a volume discount: with ``s_i = sum_j p_ij`` units won,

    C_i(p_i) = (sum_j c_ij p_ij) * (1 - kappa * s_i / m),     0 <= kappa < 1,

so the marginal cost falls with volume (the "convexities in value" of the selling view). The
supplier's utility is ``t_i - C_i``. The buyer minimises procurement cost plus a penalty per
unit left unprocured: ``objective = -(sum_i t_i + shortfall_cost * sum_j (1 - sum_i p_ij))``.
Supplier diversification (the fairness-like constraint of §9 iii): the Herfindahl index of the
award shares minus its floor, ``psi = sum_i (s_i / sum_k s_k)^2 - 1/n`` in ``[0, 1 - 1/n]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auctionlab.envs.base import Env, ReportSpace
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types


class ProcurementEnv(Env):
    """Suppliers x demand units with private volume-discount costs.

    Args:
        name: the option's name.
        n_bidders: suppliers ``n``.
        n_items: demand units ``m``.
        cost_low: lower end of the per-unit cost distribution.
        cost_high: upper end.
        discount: ``kappa``, the volume discount (0 = linear costs).
        shortfall_cost: the buyer's cost per unit not procured.

    """

    family = "procurement"

    def headline_metrics(self) -> tuple[str, ...]:
        """The buyer's cost, the units left unprocured and the suppliers' regret."""
        return ("procurement_cost", "shortfall", "regret_mean")

    demand = "additive"
    objective_name = "neg_procurement_cost"

    def __init__(
        self,
        name: str = "vd_3x2",
        n_bidders: int = 3,
        n_items: int = 2,
        cost_low: float = 0.0,
        cost_high: float = 1.0,
        discount: float = 0.3,
        shortfall_cost: float = 2.0,
    ) -> None:
        for key, count in (("n_bidders", n_bidders), ("n_items", n_items)):
            if count < 1:
                raise ConfigError(f"env.{key}={count} must be >= 1 (env {name})")
        if not 0 <= discount < 1:
            raise ConfigError(f"env.discount={discount} must be in [0, 1)")
        if not (math.isfinite(shortfall_cost) and shortfall_cost > cost_high):
            raise ConfigError(
                f"env.shortfall_cost={shortfall_cost} must exceed cost_high={cost_high} "
                "(buying must beat leaving demand unmet)"
            )
        self.name, self.n_bidders, self.n_items = name, int(n_bidders), int(n_items)
        self.distribution = Uniform(cost_low, cost_high)
        self.distribution.bind(self.n_bidders, self.n_items)
        self.report_space = ReportSpace(self.distribution)
        self.discount, self.shortfall_cost = float(discount), float(shortfall_cost)
        #: IR violation ``max(0, C_i - t_i)`` is at most the largest cost ``m * cost_high``.
        self.ir_violation_range = self.n_items * float(cost_high)
        #: The diversification statistic lies in ``[0, 1 - 1/n]``.
        self.fairness_range = 1.0 - 1.0 / self.n_bidders

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, m)``: suppliers and units."""
        return self.n_bidders, self.n_items

    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """``batch`` cost profiles ``[B, n, m]``."""
        return Types(self.distribution.sample(batch, generator))

    def cost(self, allocation: Tensor, costs: Tensor) -> Tensor:
        """``[..., n]`` volume-discounted costs ``C_i`` of ``allocation`` ``[..., n, m]``."""
        volume = allocation.sum(-1)
        return (allocation * costs).sum(-1) * (1.0 - self.discount * volume / self.n_items)

    def utility(self, outcome: Outcome, values: Tensor) -> Tensor:
        """Supplier utility ``t_i - C_i(p_i)``: ``[..., n]`` (``values`` are true costs)."""
        return outcome.payment - self.cost(outcome.allocation, values)

    def objective(self, outcome: Outcome, types: Types) -> Tensor:
        """Minus the buyer's mean cost: payments plus the penalty for unprocured units."""
        shortfall = (1.0 - outcome.allocation.sum(-2)).clamp_min(0.0).sum(-1)  # [B]
        return -(outcome.payment.sum(-1) + self.shortfall_cost * shortfall).mean()

    def outcome_metrics(self, outcome: Outcome, types: Types) -> dict[str, Tensor]:
        """Per-profile procurement cost, shortfall and supplier concentration (evaluate)."""
        shortfall = (1.0 - outcome.allocation.sum(-2)).clamp_min(0.0).sum(-1)
        return {
            "procurement_cost": outcome.payment.sum(-1) + self.shortfall_cost * shortfall,
            "shortfall": shortfall,
            "production_cost": self.cost(outcome.allocation, types.values).sum(-1),
        }

    def fairness(self, outcome: Outcome, types: Types) -> Tensor:
        """``[B]`` supplier concentration above the equal split (Herfindahl - 1/n)."""
        volume = outcome.allocation.sum(-1)  # [B, n]
        share = volume / volume.sum(-1, keepdim=True).clamp_min(1e-12)
        return (share.pow(2).sum(-1) - 1.0 / self.n_bidders).clamp_min(0.0)

    def regret_range(self, payment_bound: float | None) -> float:
        """A priori bound ``U_r`` on a supplier's per-sample regret (certificates).

        A deviator's utility is at most its transfer ``t_i <= payment_bound``; a truthful
        supplier's is at least ``-C_i >= -ir_violation_range``. Unbounded without a cap.
        """
        if payment_bound is None:
            return math.inf
        return float(payment_bound) + float(self.ir_violation_range)

    def __repr__(self) -> str:
        return f"ProcurementEnv({self.name}: {self.n_bidders} suppliers x {self.n_items} units)"
