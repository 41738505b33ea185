"""Additive auctions with private budgets ([lemma2026certified] §8): types ``tau_i = (v_i, B_i)``.

Bidder ``i`` has additive values ``v_i in [v_low, v_high]^m`` and a budget
``B_i ~ U[budget_low, budget_high]``; both are private and reported. Types, reports and
misreports are one tensor ``[B, n, m + 1]``: values in ``[..., :m]``, the budget in
``[..., m]``, so the attackers' and the trainer's machinery (deviation profiles, report-space
projection and restart draws) applies unchanged; allocations stay ``[B, n, m]``.

Hard budgets: paying more than the *true* budget is infeasible for the bidder. Infeasibility
is modelled as a large linear penalty (not ``-inf``, which would poison means and gradients):

    u_i = sum_j a_ij v_ij - t_i - overbudget_penalty * [t_i - B_i]_+ .

A mechanism whose payments are capped at the *reported* budget (``mechanism=budgeted``) never
triggers the penalty for a truthful bidder, nor for one that under-reports its budget; only an
over-reported budget can make a bidder pay above its true budget.

Deviation models (``budget_reports``):

* ``verifiable``: the platform can check budgets, a bidder may report ``B'_i <= B_i`` only.
  The report space's ``restrict`` maps every misreport into that set (budget coordinate
  clamped to the truth); the attackers evaluate deviations through it
  (``auctionlab.attackers.base.project_deviations``).
* ``cheap_talk``: any ``B'_i in [0, budget_high]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auctionlab.envs.base import Env, ReportSpace
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types

BUDGET_REPORTS = ("verifiable", "cheap_talk")


def split_types(reports: Tensor) -> tuple[Tensor, Tensor]:
    """``[..., n, m + 1]`` reports -> values ``[..., n, m]`` and budgets ``[..., n]``."""
    return reports[..., :-1], reports[..., -1]


class BudgetBox:
    """Report box of a budgets env: values in ``[v_low, v_high]``, budget in ``[0, B_bar]``.

    Duck-types the part of ``ValueDistribution`` that ``ReportSpace`` uses (bounds,
    ``project``, ``independent``, ``sample``).

    Args:
        n_bidders: ``n``.
        n_items: ``m``.
        value_low: lowest value a bidder may report.
        value_high: highest value.
        budget_high: ``B_bar``, the highest budget (the lowest report is 0).

    """

    independent = True

    def __init__(
        self, n_bidders: int, n_items: int, value_low: float, value_high: float, budget_high: float
    ) -> None:
        ones = torch.ones(n_bidders, n_items)
        self.low = torch.cat([value_low * ones, torch.zeros(n_bidders, 1)], -1)  # [n, m+1]
        self.high = torch.cat([value_high * ones, torch.full((n_bidders, 1), budget_high)], -1)

    def project(self, reports: Tensor) -> Tensor:
        """Clamp ``[..., n, m + 1]`` reports into the box."""
        return torch.maximum(torch.minimum(reports, self.high.to(reports)), self.low.to(reports))

    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        """``[count, n, m + 1]`` uniform draws from the box."""
        u = torch.rand(count, *self.low.shape, generator=generator, device=generator.device)
        return self.low.to(u) + (self.high - self.low).to(u) * u


class BudgetReportSpace(ReportSpace):
    """The box, plus the truth-dependent deviation set of verifiable budgets.

    Args:
        box: the report box.
        verifiable: restrict deviations to ``B' <= B`` (``budget_reports=verifiable``).

    """

    def __init__(self, box: BudgetBox, verifiable: bool) -> None:
        super().__init__(box)  # type: ignore[arg-type] - duck-typed distribution
        self.verifiable = verifiable

    def restrict(self, misreports: Tensor, truth: Tensor) -> Tensor:
        """Map misreports into the deviation set of the true types.

        Args:
            misreports: ``[..., B, n, m + 1]`` (any leading axes, e.g. restarts).
            truth: ``[B, n, m + 1]`` true types.

        Returns:
            The box projection, with the budget report clamped to ``<= B_i`` when verifiable
            (the Euclidean projection onto ``box ∩ {B' <= B}``: the constraint is separable).

        """
        box = self.project(misreports)
        if not self.verifiable:
            return box
        budget = torch.minimum(box[..., -1], truth[..., -1].to(box))
        return torch.cat([box[..., :-1], budget.unsqueeze(-1)], dim=-1)


class BudgetEnv(Env):
    """``n`` additive bidders, ``m`` items, private budgets (types ``[B, n, m + 1]``).

    Args:
        name: the option's name (``budgets/2x2``).
        n_bidders: bidders ``n``.
        n_items: items ``m``.
        value_low: lower end of the i.i.d. uniform values.
        value_high: upper end.
        budget_low: lower end of the i.i.d. uniform budgets (> 0).
        budget_high: ``B_bar``, upper end of the budgets and of budget reports.
        budget_reports: ``verifiable`` (deviations report ``B' <= B``) or ``cheap_talk``.
        overbudget_penalty: utility lost per unit paid above the true budget (the hard budget;
            must exceed any marginal gain of paying more, e.g. ``> m * v_high / budget_low``).

    """

    family = "budgets"

    def headline_metrics(self) -> tuple[str, ...]:
        """Revenue, regret and the largest payment-to-budget ratio (budget feasibility)."""
        return ("revenue", "regret_mean", "max_payment_budget_ratio")

    demand = "additive"

    def __init__(
        self,
        name: str = "budgets/2x2",
        n_bidders: int = 2,
        n_items: int = 2,
        value_low: float = 0.0,
        value_high: float = 1.0,
        budget_low: float = 0.2,
        budget_high: float = 1.0,
        budget_reports: str = "verifiable",
        overbudget_penalty: float = 100.0,
    ) -> None:
        for key, count in (("n_bidders", n_bidders), ("n_items", n_items)):
            if count < 1:
                raise ConfigError(f"env.{key}={count} must be >= 1 (env {name})")
        if not value_low < value_high:
            raise ConfigError(f"env.value_low={value_low} must be < env.value_high={value_high}")
        if not 0 < budget_low < budget_high:
            raise ConfigError(
                f"env.budget_low={budget_low}, env.budget_high={budget_high}: need "
                "0 < budget_low < budget_high"
            )
        if budget_reports not in BUDGET_REPORTS:
            raise ConfigError(
                f"env.budget_reports={budget_reports} is not valid; choose one of "
                + ", ".join(BUDGET_REPORTS)
            )
        if not (math.isfinite(overbudget_penalty) and overbudget_penalty > 0):
            raise ConfigError(f"env.overbudget_penalty={overbudget_penalty} must be > 0")
        self.name, self.n_bidders, self.n_items = name, int(n_bidders), int(n_items)
        self.value_low, self.value_high = float(value_low), float(value_high)
        self.budget_low, self.budget_high = float(budget_low), float(budget_high)
        self.budget_reports = budget_reports
        self.overbudget_penalty = float(overbudget_penalty)
        self.box = BudgetBox(
            self.n_bidders, self.n_items, self.value_low, self.value_high, self.budget_high
        )
        self.report_space = BudgetReportSpace(self.box, budget_reports == "verifiable")
        #: The prior's box, under the name the other envs use (fuzz tests, report draws).
        self.distribution = self.box

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, m)``: bidders and items (reports have ``m + 1`` coordinates)."""
        return self.n_bidders, self.n_items

    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """``batch`` type profiles ``[B, n, m + 1]`` (values, then the budget)."""
        device = generator.device
        n, m = self.n_bidders, self.n_items
        u = torch.rand(batch, n, m + 1, generator=generator, device=device)
        low = torch.tensor([self.value_low] * m + [self.budget_low], device=device)
        high = torch.tensor([self.value_high] * m + [self.budget_high], device=device)
        return Types(low + (high - low) * u)

    def utility(self, outcome: Outcome, values: Tensor) -> Tensor:
        """Quasi-linear utility with a hard budget: ``[..., n]``.

        Args:
            outcome: allocation ``[..., n, m]`` and payment ``[..., n]``.
            values: true types ``[..., n, m + 1]`` (values, budget).

        Returns:
            ``sum_j a_ij v_ij - t_i - overbudget_penalty * [t_i - B_i]_+``.

        """
        value, budget = split_types(values)
        over = (outcome.payment - budget).clamp_min(0.0)
        return (
            (outcome.allocation * value).sum(-1) - outcome.payment - self.overbudget_penalty * over
        )

    def welfare(self, outcome: Outcome, values: Tensor) -> Tensor:
        """``[B]`` allocative welfare ``sum_ij a_ij v_ij`` (the budget column is no value)."""
        return (outcome.allocation * split_types(values)[0]).sum((-1, -2))

    def outcome_metrics(self, outcome: Outcome, types: Types) -> dict[str, Tensor]:
        """Per-profile budget checks (evaluate): the largest payment-to-budget ratio."""
        _, budget = split_types(types.values)
        ratio = outcome.payment / budget.clamp_min(1e-12)
        return {
            "max_payment_budget_ratio": ratio.max(-1).values,
            "budget_binding_share": (ratio >= 1 - 1e-6).double().mean(-1),
        }

    def __repr__(self) -> str:
        return (
            f"BudgetEnv({self.name}: {self.n_bidders}x{self.n_items}, budgets "
            f"U[{self.budget_low}, {self.budget_high}], {self.budget_reports})"
        )
