"""What every environment shares: the report space the attackers search over."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

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

    def draw(self, count: int, generator: torch.Generator) -> Tensor:
        """``[count, n, m]`` restart points: uniform over a bounded space, else from the prior."""
        if self.bounded and self.distribution.independent:
            device = generator.device
            u = torch.rand(count, *self.low.shape, generator=generator, device=device)
            return self.low.to(device) + (self.high - self.low).to(device) * u
        return self.distribution.sample(count, generator)


class Env(Protocol):
    """The contract every environment meets."""

    family: str
    name: str
    n_bidders: int
    n_items: int
    report_space: ReportSpace

    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """Draw a batch of types."""

    def utility(self, outcome: Outcome, values: Tensor) -> Tensor:
        """``[..., n]`` utilities of ``outcome`` for agents with ``values``."""

    def headline_metrics(self) -> tuple[str, ...]:
        """The metrics that summarise a run on this env, most important first.

        Names as ``metrics.json`` writes them for ``evaluate`` (``train`` prefixes them with
        ``val_``). Summaries (``train``, ``evaluate``, ``auctionlab runs``) print them, each
        regret with the attacker budget that measured it, and always the IR violation next to
        them: a family that does not measure revenue must not be summarised by revenue.
        """
