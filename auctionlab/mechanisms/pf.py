"""Payment-free allocation rules: PF (program 4), PA (Cole et al. 2013; App. A), PF-PA mixture.

Reports are ``[B, n, 2m]`` (values, then demands; see ``auctionlab.envs.allocation``); public
inputs ``budgets [B, m]`` and ``weights [B, n]`` default to the env's when absent. Every rule
returns ``Outcome(allocation [B, n, m], payment = zeros [B, n])`` with ``0 <= a <= x`` and
``sum_i a_im <= b_m`` by construction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from auctionlab.envs.allocation import split_reports
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.base import Mechanism
from auctionlab.solvers.pf import pf_allocate
from auctionlab.types import Outcome


class AllocationMechanism(Mechanism):
    """Base of the allocation family: splits reports, fills default public inputs.

    Args:
        env: an ``AllocationEnv``.
        tol: KKT tolerance of every PF / RPF solve (``PFSolveError`` above it).
        max_iter: interior-point iteration cap per solve.

    """

    family = "allocation"
    demands = ("capped_linear",)
    learnable = False
    #: Agents only: permuting resources must move values and demands together, which the
    #: generic fuzz permutation (one axis of the report tensor) cannot express.
    symmetric_in = ("bidders",)

    def __init__(self, env, tol: float = 1e-7, max_iter: int = 200) -> None:
        super().__init__(env)
        if not 0 < tol <= 1e-3:
            raise ConfigError(f"mechanism.tol={tol} must be in (0, 1e-3]")
        if max_iter < 1:
            raise ConfigError(f"mechanism.max_iter={max_iter} must be >= 1")
        self.tol, self.max_iter = float(tol), int(max_iter)
        self.default_budget = float(env.budget_per_agent * env.n_bidders)

    def inputs(
        self, reports: Tensor, public: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Values ``[B, n, m]``, demands ``[B, n, m]``, budgets ``[B, m]``, weights ``[B, n]``."""
        values, demands = split_reports(reports)
        B, n, m = values.shape
        public = public or {}
        budgets = public.get("budgets")
        if budgets is None:
            budgets = torch.full(
                (B, m), self.default_budget, dtype=values.dtype, device=values.device
            )
        weights = public.get("weights")
        if weights is None:
            weights = torch.ones(B, n, dtype=values.dtype, device=values.device)
        return values, demands, budgets.to(values), weights.to(values)

    def pf(self, values, demands, budgets, weights, z=None) -> Tensor:
        """Differentiable PF / RPF allocation ``[B, n, m]`` at this mechanism's tolerance."""
        return pf_allocate(
            values, demands, budgets, weights, z, tol=self.tol, max_iter=self.max_iter
        )

    @staticmethod
    def outcome(allocation: Tensor) -> Outcome:
        """Wrap an allocation with zero payments."""
        return Outcome(allocation, allocation.new_zeros(allocation.shape[:-1]))


class ProportionalFairness(AllocationMechanism):
    """PF mechanism (program 4): the allocation maximising weighted log-NSW of the reports."""

    config_name = "pf"

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """``[B, n, 2m]`` reports -> PF allocation."""
        return self.outcome(self.pf(*self.inputs(reports, public)))


def _reported_utility(allocation: Tensor, values: Tensor, demands: Tensor) -> Tensor:
    return (values * torch.minimum(allocation, demands.clamp_min(0))).sum(-1)


def partial_allocation(mech: AllocationMechanism, reports: Tensor, public) -> tuple[Tensor, Tensor]:
    """PA (App. A) and PF allocations ``[B, n, m]`` with the ``n`` extra PF solves batched.

    ``r_i = (prod_{j != i} u_j(a*)^{w_j} / prod_{j != i} u_j(a^{-i})^{w_j})^{1/w_i}`` over the
    agents that demand something (an agent that demands nothing has utility 0 either way and
    is left out of both products).
    """
    values, demands, budgets, weights = mech.inputs(reports, public)
    B, n, m = values.shape
    eye = torch.eye(n, dtype=torch.bool, device=values.device).view(n, 1, n, 1)
    # Profile k: agent k's demands zeroed (it is absent). One batched solve of (n + 1) B programs.
    without = torch.where(eye, torch.zeros_like(demands).unsqueeze(0), demands.unsqueeze(0))
    stacked = mech.pf(
        values.repeat(n + 1, 1, 1),
        torch.cat([demands, without.reshape(n * B, n, m)]),
        budgets.repeat(n + 1, 1),
        weights.repeat(n + 1, 1),
    )
    a_pf, a_without = stacked[:B], stacked[B:].view(n, B, n, m)
    u_pf = _reported_utility(a_pf, values, demands)  # [B, n]
    u_without = _reported_utility(a_without, values.unsqueeze(0), demands.unsqueeze(0))  # [n,B,n]
    present = (demands.clamp_min(0).sum(-1) > 0) & (weights > 0)  # [B, n]
    others = present.unsqueeze(0) & ~torch.eye(n, dtype=torch.bool, device=values.device).view(
        n, 1, n
    )
    tiny = 1e-300 if values.dtype == torch.float64 else 1e-30
    log_ratio = torch.where(
        others,
        weights.unsqueeze(0)
        * (u_pf.unsqueeze(0).clamp_min(tiny).log() - u_without.clamp_min(tiny).log()),
        torch.zeros_like(u_without),
    ).sum(-1)  # [n, B]: agent k's externality
    ratio = torch.exp(log_ratio.T / weights.clamp_min(tiny)).clamp(0.0, 1.0)  # [B, n]
    return ratio.unsqueeze(-1) * a_pf, a_pf


class PartialAllocation(AllocationMechanism):
    """PA mechanism (Cole et al. 2013, App. A): PF scaled by each agent's externality ratio."""

    config_name = "pa"

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """``[B, n, 2m]`` reports -> PA allocation."""
        return self.outcome(partial_allocation(self, reports, public)[0])


class PFPAMixture(AllocationMechanism):
    """PF with probability ``rho``, else PA (§6): returns the *expected* allocation.

    The lottery's expected allocation ``rho a_PF + (1 - rho) a_PA`` is returned, so truthful
    utilities are exact expectations. Under a misreported demand above the true one,
    ``u(E a) >= E u(a)`` (``min`` is concave): exploitability measured on it is an upper bound
    on the lottery's. NSW of the expected allocation is not the expected NSW; the reproduction
    reports the expected NSW as ``rho NSW(PF) + (1 - rho) NSW(PA)`` from the two rows.

    Args:
        env: an ``AllocationEnv``.
        rho: probability of PF.
        tol: KKT tolerance of the solves.
        max_iter: interior-point iteration cap.

    """

    config_name = "pf_pa_mixture"

    def __init__(self, env, rho: float = 0.5, tol: float = 1e-7, max_iter: int = 200) -> None:
        super().__init__(env, tol=tol, max_iter=max_iter)
        if not 0.0 <= rho <= 1.0:
            raise ConfigError(f"mechanism.rho={rho} must be in [0, 1]")
        self.rho = float(rho)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """``[B, n, 2m]`` reports -> expected allocation of the PF/PA lottery."""
        a_pa, a_pf = partial_allocation(self, reports, public)
        return self.outcome(self.rho * a_pf + (1.0 - self.rho) * a_pa)
