"""Multi-item auctions with additive or unit-demand bidders (the RegretNet settings)."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from auctionlab.envs.base import Env, ReportSpace
from auctionlab.envs.distributions import ValueDistribution
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types

DEMANDS = ("additive", "unit")


class AuctionEnv(Env):
    """``n`` bidders with private values for ``m`` items, quasi-linear utilities.

    Args:
        name: the setting's name as in the literature (``2x2``, ``1x2_asym``...); a plain
            ``<n>x<m>`` name is rewritten to the actual ``n_bidders x n_items``.
        n_bidders: number of bidders ``n``.
        n_items: number of items ``m``.
        distribution: the value distribution.
        demand: ``additive`` or ``unit`` (each bidder wants at most one item; the
            mechanism's allocation head must then keep each bidder's total at most one).

    """

    family = "auction"

    def headline_metrics(self) -> tuple[str, ...]:
        """Revenue and regret (mean per bidder): what an auction is judged by."""
        return ("revenue", "regret_mean")

    def __init__(
        self,
        name: str,
        n_bidders: int,
        n_items: int,
        distribution: ValueDistribution,
        demand: str = "additive",
    ) -> None:
        for key, count in (("n_bidders", n_bidders), ("n_items", n_items)):
            if count < 1:
                raise ConfigError(f"env.{key}={count} must be >= 1 (env {name})")
        if demand not in DEMANDS:
            raise ConfigError(
                f"env.demand={demand} is not valid; choose one of {', '.join(DEMANDS)}"
            )
        if re.fullmatch(r"\d+x\d+", name) and name != f"{n_bidders}x{n_items}":
            # env=2x2 env.n_bidders=4 env.n_items=4 (sweeps over n and m): the plain shape
            # name follows the overrides, so run names and tables say what ran.
            name = f"{n_bidders}x{n_items}"
        self.name, self.n_bidders, self.n_items, self.demand = name, n_bidders, n_items, demand
        self.distribution = distribution
        distribution.bind(n_bidders, n_items)
        self.report_space = ReportSpace(distribution)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, m)``: bidders and items."""
        return self.n_bidders, self.n_items

    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """Draw ``batch`` value profiles: ``Types.values`` is ``[batch, n, m]``."""
        return Types(self.distribution.sample(batch, generator))

    @staticmethod
    def utility(outcome: Outcome, values: Tensor) -> Tensor:
        """Quasi-linear utility ``sum_j v_ij a_ij - p_i``.

        Args:
            outcome: allocation ``[..., n, m]`` and payment ``[..., n]``.
            values: true values ``[..., n, m]``.

        Returns:
            ``[..., n]`` utilities.

        """
        return (outcome.allocation * values).sum(-1) - outcome.payment

    def __repr__(self) -> str:
        return f"AuctionEnv({self.name}: {self.n_bidders}x{self.n_items} {self.demand})"
