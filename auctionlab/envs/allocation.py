"""Payment-free allocation of divisible resources ([zeng2025rpf]: PF, PA, ExS-Net, RPF-Net).

An agent's type is a value and a demand per resource; its utility is
``u_i(a) = sum_m v_im * min(a_im, x_im)`` (eq. 1). Types, reports and misreports are laid out
as one tensor ``[B, n, 2m]``: values in ``[..., :m]``, demands in ``[..., m:]``, so the
attackers' and the trainer's machinery (deviation profiles, report-space projection and draws)
applies unchanged. Public inputs: ``budgets [B, m]`` and ``weights [B, n]``.

Convention for draws in which an agent demands nothing (eq. 17 gives one in ~44% of 2x2
draws; its log-NSW is then ``-inf``): ``empty_demand=resample`` (default) redraws that agent's
demands until it demands something, i.e. samples eq. 17 conditioned on every agent demanding
something; ``keep`` keeps such draws, the agent's utility is 0, the draw's NSW is 0 and its
log-NSW (the training objective) sums over the agents that demand something.
"""

from __future__ import annotations

import torch
from torch import Tensor

from auctionlab.envs.base import Env, ReportSpace
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types

EMPTY_DEMAND = ("resample", "keep")
VARIANTS = ("truthful", "cauchy", "adversarial_pf")
OBJECTIVES = ("log_nsw", "nsw")


def split_reports(reports: Tensor) -> tuple[Tensor, Tensor]:
    """``[..., n, 2m]`` reports -> values ``[..., n, m]`` and demands ``[..., n, m]``."""
    m = reports.shape[-1] // 2
    return reports[..., :m], reports[..., m:]


class AllocationBox:
    """Report box of an allocation env: values in ``[v_low, v_high]``, demands in ``[0, d_high]``.

    Duck-types the part of ``ValueDistribution`` that ``ReportSpace`` uses (bounds,
    ``project``, ``independent``, ``sample``).

    Args:
        n_agents: ``n``.
        n_resources: ``m``.
        value_low: lowest value an agent may report.
        value_high: highest value.
        demand_high: highest demand (the lowest is 0: asking for nothing).

    """

    independent = True

    def __init__(
        self,
        n_agents: int,
        n_resources: int,
        value_low: float,
        value_high: float,
        demand_high: float,
    ) -> None:
        ones = torch.ones(n_agents, n_resources)
        self.low = torch.cat([value_low * ones, 0.0 * ones], -1)  # [n, 2m]
        self.high = torch.cat([value_high * ones, demand_high * ones], -1)

    def project(self, reports: Tensor) -> Tensor:
        """Clamp ``[..., n, 2m]`` reports into the box."""
        return torch.maximum(torch.minimum(reports, self.high.to(reports)), self.low.to(reports))

    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        """``[count, n, 2m]`` uniform draws from the box."""
        u = torch.rand(count, *self.low.shape, generator=generator, device=generator.device)
        return self.low.to(u) + (self.high - self.low).to(u) * u


class AllocationEnv(Env):
    """``n`` agents, ``m`` divisible resources, no money (eq. 17 of [zeng2025rpf]).

    Values ``v_im ~ U(value_low, value_high)``; demands ``x_im = Bern(demand_prob) *
    U(value_low, value_high)``; budget ``budget_per_agent * n`` per resource (``N/2`` in the
    paper); weights 1.

    Args:
        name: the setting's name (``2x2``, ``10x3``...).
        n_agents: number of agents ``n`` (``n_bidders`` in the shared contract).
        n_resources: number of resources ``m`` (``n_items``).
        value_low: lower end of values and of positive demands (0.1 in the paper).
        value_high: upper end (1.0).
        demand_prob: probability that an agent demands a resource at all (0.5).
        budget_per_agent: budget of each resource per agent (0.5, so ``b_m = N/2``).
        empty_demand: ``resample`` or ``keep`` draws in which an agent demands nothing (see the
            module docstring).
        variant: training-data distribution: ``truthful`` (eq. 17), ``cauchy`` (eq. 18,
            Cauchy(0, ``cauchy_scale``) noise, projected to [value_low, value_high]) or
            ``adversarial_pf`` (eq. 19: each agent's PF best response, found by the attacker
            below; only ``sample_training`` uses it, test draws are always eq. 17).
        cauchy_scale: scale of the Cauchy perturbation (0.01).
        adversarial_restarts: restarts of the attacker that builds eq. 19 data.
        adversarial_steps: its steps.
        objective: what training maximises: ``log_nsw`` (mean log-NSW, [zeng2025rpf]'s Algorithm 1)
            or ``nsw`` (mean NSW, the reported metric itself).

    """

    family = "allocation"
    demand = "capped_linear"
    #: What summaries call ``regret_mean`` here ([zeng2025rpf]'s word: there is no money).
    regret_label = "exploitability"
    #: ``evaluate``'s extra figures for this env (``auctionlab.reporting.figures.FIGURES``):
    #: [zeng2025rpf] Table 2's inference time and Figures 1 and 5 (2 agents x 2 resources only).
    evaluation_figures = ("inference_time", "allocation_example")

    def headline_metrics(self) -> tuple[str, ...]:
        """NSW, efficiency and exploitability (mean regret): [zeng2025rpf]'s Table 1 columns."""
        return ("nsw", "efficiency", "regret_mean")

    def __init__(
        self,
        name: str,
        n_agents: int,
        n_resources: int,
        value_low: float = 0.1,
        value_high: float = 1.0,
        demand_prob: float = 0.5,
        budget_per_agent: float = 0.5,
        empty_demand: str = "resample",
        variant: str = "truthful",
        cauchy_scale: float = 0.01,
        adversarial_restarts: int = 4,
        adversarial_steps: int = 50,
        objective: str = "log_nsw",
    ) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(
                f"env.objective={objective} is not valid; choose one of {', '.join(OBJECTIVES)}"
            )
        self.objective_name = objective
        if n_agents < 1 or n_resources < 1:
            raise ConfigError(
                f"env {name}: n_agents={n_agents} and n_resources={n_resources} must be >= 1"
            )
        if not 0 < value_low < value_high:
            raise ConfigError(
                f"env.value_low={value_low}, env.value_high={value_high}: need 0 < low < high"
            )
        if not 0 < demand_prob <= 1:
            raise ConfigError(f"env.demand_prob={demand_prob} must be in (0, 1]")
        if budget_per_agent <= 0:
            raise ConfigError(f"env.budget_per_agent={budget_per_agent} must be > 0")
        if empty_demand not in EMPTY_DEMAND:
            raise ConfigError(
                f"env.empty_demand={empty_demand} is not valid; choose one of "
                f"{', '.join(EMPTY_DEMAND)}"
            )
        if variant not in VARIANTS:
            raise ConfigError(
                f"env.variant={variant} is not valid; choose one of {', '.join(VARIANTS)}"
            )
        if cauchy_scale <= 0:
            raise ConfigError(f"env.cauchy_scale={cauchy_scale} must be > 0")
        if adversarial_restarts < 1 or adversarial_steps < 0:
            raise ConfigError(
                f"env.adversarial_restarts={adversarial_restarts} must be >= 1 and "
                f"env.adversarial_steps={adversarial_steps} >= 0"
            )
        self.name, self.n_bidders, self.n_items = name, int(n_agents), int(n_resources)
        self.value_low, self.value_high = float(value_low), float(value_high)
        self.demand_prob, self.budget_per_agent = float(demand_prob), float(budget_per_agent)
        self.empty_demand, self.variant, self.cauchy_scale = empty_demand, variant, cauchy_scale
        self.adversarial_restarts, self.adversarial_steps = adversarial_restarts, adversarial_steps
        self.distribution = AllocationBox(
            self.n_bidders, self.n_items, self.value_low, self.value_high, self.value_high
        )
        self.report_space = ReportSpace(self.distribution)

    # -- sampling -------------------------------------------------------------------------
    def public_inputs(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        """Budgets ``[B, m]`` (``budget_per_agent * n``) and weights ``[B, n]`` (ones)."""
        dtype = torch.get_default_dtype()
        budget = self.budget_per_agent * self.n_bidders
        return {
            "budgets": torch.full((batch, self.n_items), budget, device=device, dtype=dtype),
            "weights": torch.ones(batch, self.n_bidders, device=device, dtype=dtype),
        }

    def _uniform(self, shape, generator: torch.Generator) -> Tensor:
        u = torch.rand(*shape, generator=generator, device=generator.device)
        return self.value_low + (self.value_high - self.value_low) * u

    def _demand_mask(self, shape, generator: torch.Generator) -> Tensor:
        """Bern(demand_prob) mask ``[B, n, m]``; under ``resample`` no agent's row is all zero."""
        mask = torch.rand(*shape, generator=generator, device=generator.device) < self.demand_prob
        if self.empty_demand == "keep":
            return mask
        # Redraw the empty rows only, a bounded number of rounds of full-size draws (no
        # per-sample Python loop); P(empty row) <= 0.5^m so 64 rounds never run out in practice.
        for _ in range(64):
            empty = ~mask.any(-1, keepdim=True)  # [B, n, 1]
            if not bool(empty.any()):
                return mask
            redraw = torch.rand(*shape, generator=generator, device=generator.device)
            mask = torch.where(empty, redraw < self.demand_prob, mask)
        raise RuntimeError("could not draw a non-empty demand for every agent in 64 rounds")

    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """Draw ``batch`` test profiles from eq. 17: ``Types.values`` is ``[B, n, 2m]``."""
        shape = (batch, self.n_bidders, self.n_items)
        values = self._uniform(shape, generator)
        demands = self._uniform(shape, generator) * self._demand_mask(shape, generator)
        return Types(torch.cat([values, demands], -1), self.public_inputs(batch, values.device))

    def sample_training(self, batch: int, generator: torch.Generator) -> Types:
        """Draw training profiles from ``variant`` (eq. 17, 18 or 19)."""
        if self.variant == "truthful":
            return self.sample(batch, generator)
        if self.variant == "cauchy":
            shape = (batch, self.n_bidders, self.n_items)
            values = self._uniform(shape, generator) + self._cauchy(shape, generator)
            demands = self._uniform(shape, generator) + self._cauchy(shape, generator)
            values = values.clamp(self.value_low, self.value_high)
            demands = demands.clamp(self.value_low, self.value_high)
            demands = demands * self._demand_mask(shape, generator)
            return Types(torch.cat([values, demands], -1), self.public_inputs(batch, values.device))
        return self._adversarial_pf(batch, generator)

    def _cauchy(self, shape, generator: torch.Generator) -> Tensor:
        u = torch.rand(*shape, generator=generator, device=generator.device)
        return self.cauchy_scale * torch.tan(torch.pi * (u - 0.5))

    def training_adversary(self) -> dict | None:
        """Eq. 19 (``variant=adversarial_pf``): best responses to PF found by PGD; else ``None``."""
        if self.variant != "adversarial_pf":
            return None
        return {
            "mechanism": "auctionlab.mechanisms.pf.ProportionalFairness",
            "attacker": {
                "restarts": self.adversarial_restarts,
                "steps": self.adversarial_steps,
                "step_size": 0.05,
                "final_step_size": 0.002,
                "include_truthful": True,
            },
        }

    def _adversarial_pf(self, batch: int, generator: torch.Generator) -> Types:
        """Eq. 19: every agent reports its best response to PF against the others' truth."""
        if self.best_response is None:
            raise ConfigError(
                f"env={self.name}: variant=adversarial_pf training data need the best-response "
                "search of training_adversary(); install it with set_best_response "
                "(auctionlab.attackers.best_response.install_best_response)"
            )
        truth = self.sample(batch, generator)
        return Types(self.best_response(truth, generator).detach(), truth.public)

    # -- outcomes -------------------------------------------------------------------------
    @staticmethod
    def utility(outcome: Outcome, values: Tensor) -> Tensor:
        """Eq. 1: ``u_i = sum_m v_im min(a_im, x_im)`` (no money).

        Args:
            outcome: allocation ``[..., n, m]`` (payment ignored: it is zero).
            values: true types ``[..., n, 2m]`` (values, then demands).

        Returns:
            ``[..., n]`` utilities.

        """
        v, x = split_reports(values)
        return (v * torch.minimum(outcome.allocation, x)).sum(-1)

    @staticmethod
    def demanding(values: Tensor) -> Tensor:
        """``[..., n]`` whether each agent demands anything at all."""
        return split_reports(values)[1].sum(-1) > 0

    def log_nsw(self, outcome: Outcome, types: Types) -> Tensor:
        """``[B]`` weighted log-NSW ``sum_i w_i log u_i`` over the agents that demand something."""
        utility = self.utility(outcome, types.values)
        weights = types.public["weights"]
        active = self.demanding(types.values)
        logs = torch.where(active, utility.clamp_min(1e-30).log(), torch.zeros_like(utility))
        return (weights * logs).sum(-1)

    def objective(self, outcome: Outcome, types: Types) -> Tensor:
        """The training objective: mean log-NSW (or NSW, ``objective=nsw``) of the batch."""
        if self.objective_name == "nsw":
            return self.outcome_metrics(outcome, types)["nsw"].mean()
        return self.log_nsw(outcome, types).mean()

    def welfare(self, outcome: Outcome, values: Tensor) -> Tensor:
        """``[B]`` utilitarian welfare ``sum_i u_i`` (for the shared evaluation's ``welfare``)."""
        return self.utility(outcome, values).sum(-1)

    def outcome_metrics(self, outcome: Outcome, types: Types) -> dict[str, Tensor]:
        """Per-profile NSW, log-NSW and efficiency, each ``[B]``.

        NSW is ``prod_i u_i^{w_i}`` over all agents (0 when one demands nothing, under
        ``keep``); efficiency is allocated total over budget total ([zeng2025rpf] §6).
        """
        utility = self.utility(outcome, types.values)
        weights = types.public["weights"]
        nsw = (utility.clamp_min(0.0) ** weights).prod(-1)
        efficiency = outcome.allocation.sum((-1, -2)) / types.public["budgets"].sum(-1)
        return {"nsw": nsw, "log_nsw": self.log_nsw(outcome, types), "efficiency": efficiency}

    def __repr__(self) -> str:
        return f"AllocationEnv({self.name}: {self.n_bidders} agents x {self.n_items} resources)"
