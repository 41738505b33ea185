"""The environment contract: the ``Env`` base class and the report space attackers search.

Every optional capability of an environment is declared here with its default, so shared
code (trainer, evaluation, attackers) calls it instead of probing for it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from auctionlab.core.component import Component
from auctionlab.envs.distributions import ValueDistribution
from auctionlab.types import Outcome, Types


class ReportSpace:
    """The set of reports a bidder may submit: the support of its value distribution.

    Attributes:
        low: ``[n, m]`` lower bounds (may be ``-inf``).
        high: ``[n, m]`` upper bounds (may be ``inf``).

    """

    def __init__(self, distribution: ValueDistribution) -> None:
        self.distribution = distribution
        self.low, self.high = distribution.low, distribution.high

    @property
    def bounded(self) -> bool:
        """Whether every coordinate has a finite range."""
        return bool(torch.isfinite(self.low).all() and torch.isfinite(self.high).all())

    def width(self, device: torch.device) -> Tensor:
        """``[n, m]`` coordinate ranges used to scale attacker step sizes (1 where unbounded)."""
        w = (self.high - self.low).to(device)
        return torch.where(torch.isfinite(w), w, torch.ones_like(w))

    def project(self, reports: Tensor) -> Tensor:
        """Project ``[..., n, m]`` reports onto the report space."""
        return self.distribution.project(reports)

    def restrict(self, misreports: Tensor, truth: Tensor) -> Tensor:
        """Map misreports into the deviation set of the true types (default: all of them).

        A report space whose deviation set depends on the truth (verifiable budgets,
        ``B' <= B``) overrides this; it must be onto that set and the identity on it.

        Args:
            misreports: ``[..., B, n, m]`` (any leading axes, e.g. restarts).
            truth: ``[B, n, m]`` true types.

        Returns:
            Misreports of the same shape; the default returns ``misreports`` itself.

        """
        return misreports

    def draw(self, count: int, generator: torch.Generator) -> Tensor:
        """``[count, n, m]`` restart points: uniform over a bounded space, else from the prior."""
        if self.bounded and self.distribution.independent:
            device = generator.device
            u = torch.rand(count, *self.low.shape, generator=generator, device=device)
            return self.low.to(device) + (self.high - self.low).to(device) * u
        return self.distribution.sample(count, generator)


class Env(Component, ABC):
    """Base class of every environment (the ``Env`` contract of ``auctionlab.core``).

    Subclasses set the attributes below and implement ``sample`` and ``utility``; the other
    methods and attributes are optional capabilities with a default here.

    Attributes:
        family: the problem family (``auction``, ``allocation``, ``budgets``...); mechanisms
            declare the family they solve.
        name: the env's config name.
        n_bidders: ``n``.
        n_items: ``m``, the allocation's last axis.
        demand: demand type (``additive``, ``unit``, ``capped_linear``, ``bundles``...).
        report_space: the reports a bidder may submit (``[n, d]`` bounds).
        objective: ``None``, or ``objective(outcome, types) -> []`` the scalar batch
            objective the trainer maximises instead of revenue (allocation: weighted
            log-NSW). An attribute, not a method, so that "no objective" is visible.
        objective_name: metric name of ``objective``.
        fairness: ``None``, or ``fairness(outcome, types) -> [B]`` a per-profile fairness
            statistic that constrained ERM bounds ([lemma2026certified] §5).
        fairness_range: a priori bound on ``fairness`` (certificates); ``inf`` if unknown.
        ir_violation_range: a priori bound on a bidder's IR violation, or ``None``.
        context_dim: width ``d`` of the public context ``[B, d]`` (0: none).

    """

    family: str = "auction"
    name: str
    n_bidders: int
    n_items: int
    demand: str = "additive"
    report_space: ReportSpace
    objective: Callable[[Outcome, Types], Tensor] | None = None
    objective_name: str = "objective"
    fairness: Callable[[Outcome, Types], Tensor] | None = None
    fairness_range: float = math.inf
    ir_violation_range: float | None = None
    context_dim: int = 0
    #: What the family calls regret in summaries (allocation: ``exploitability``).
    regret_label: str = "regret"
    #: Figures ``evaluate`` draws for this env by default (names in ``reporting.figures``).
    evaluation_figures: tuple[str, ...] = ()
    #: The search installed by ``set_best_response`` (``None``: none).
    best_response: Callable[[Types, torch.Generator], Tensor] | None = None

    @abstractmethod
    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """Draw ``batch`` test profiles; ``Types.values`` is ``[batch, n, d]``."""

    def sample_training(self, batch: int, generator: torch.Generator) -> Types:
        """Draw ``batch`` training profiles ``[batch, n, d]`` (default: ``sample``).

        An env may train on another distribution than it is tested on ([zeng2025rpf]'s perturbed
        or adversarial training data).
        """
        return self.sample(batch, generator)

    def training_adversary(self) -> dict | None:
        """What ``sample_training`` needs a best-response search for, or ``None`` (default).

        An env whose training data are best responses to a reference mechanism ([zeng2025rpf],
        eq. 19) names it here instead of importing it (envs sit below mechanisms and
        attackers): ``{"mechanism": <dotted class path>, "attacker": <PGDAttacker kwargs>}``.
        The caller that trains (``Trainer``) builds the search and hands it over with
        ``set_best_response``.
        """
        return None

    def set_best_response(self, search: Callable[[Types, torch.Generator], Tensor] | None) -> None:
        """Install the best-response search of ``training_adversary`` (``None``: remove it).

        Args:
            search: ``search(types, generator) -> [B, n, d]`` misreports of every bidder
                against the others' true reports.

        """
        self.best_response = search

    @abstractmethod
    def utility(self, outcome: Outcome, values: Tensor) -> Tensor:
        """``[..., n]`` utilities of ``outcome`` (``[..., n, m]`` / ``[..., n]``) at ``values``."""

    def welfare(self, outcome: Outcome, values: Tensor) -> Tensor:
        """``[B]`` welfare of each profile (default: ``sum_ij a_ij v_ij``).

        Args:
            outcome: allocation ``[B, n, m]``, payment ``[B, n]``.
            values: ``[B, n, m]`` true values.

        """
        return (outcome.allocation * values).sum((-1, -2))

    def outcome_metrics(self, outcome: Outcome, types: Types) -> dict[str, Tensor]:
        """Family-specific per-profile outcome metrics ``{name: [B]}`` (default: none).

        Args:
            outcome: the mechanism's truthful outcome on ``types``.
            types: the profiles.

        """
        return {}

    def regret_range(self, payment_bound: float | None) -> float | None:
        """A priori bound on a bidder's per-sample regret when the env states its own.

        Certificates use it where utility is not value minus payment (procurement: transfer
        minus cost). Default ``None``: the certifier derives it from the report bounds.

        Args:
            payment_bound: the mechanism's payment cap (``None``: uncapped).

        """
        return None

    def headline_metrics(self) -> tuple[str, ...]:
        """The metrics that summarise a run on this env, most important first.

        Names as ``metrics.json`` writes them for ``evaluate`` (``train`` prefixes them with
        ``val_``). Summaries (``train``, ``evaluate``, ``auctionlab runs``) print them, each
        regret with the attacker budget that measured it, and always the IR violation next to
        them: a family that does not measure revenue must not be summarised by revenue.
        Default: revenue and mean regret (auctions with money).
        """
        return ("revenue", "regret_mean")
