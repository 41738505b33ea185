"""Classical auctions with closed-form rules: VCG / second price, first price and fixed menus.

Everything is batched torch code that runs on the reports' device. Allocations are piecewise
constant in a bidder's own report, so their gradients are zero almost everywhere; payments keep
their autograd path (first price pays the own bid, so an attacker's gradient is informative there).
The Myerson family lives in :mod:`auctionlab.mechanisms.myerson`.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.base import ClassicalMechanism
from auctionlab.types import Outcome


def others_best(scores: Tensor) -> tuple[Tensor, Tensor]:
    """For every bidder, the best score among the *other* bidders and how many others reach it.

    Args:
        scores: ``[B, n, m]`` per-bidder, per-item scores (bids or virtual values).

    Returns:
        ``best`` ``[B, n, m]`` (``-inf`` when there is no other bidder) and ``count``
        ``[B, n, m]`` (float) of other bidders whose score equals ``best``.
    """
    n = scores.shape[1]
    if n == 1:
        return torch.full_like(scores, -math.inf), torch.zeros_like(scores)
    # Top two per item instead of an n x n mask: O(n m) memory and a cheap backward.
    top = scores.topk(2, dim=1).values  # [B, 2, m]
    first, second = top[:, :1], top[:, 1:]
    is_top = scores == first
    n_first = is_top.sum(1, keepdim=True)
    n_second = (scores == second).sum(1, keepdim=True)
    unique_top = is_top & (n_first == 1)  # then the others' best is the runner-up
    best = torch.where(unique_top, second, first)
    count = torch.where(unique_top, n_second, n_first - is_top.long())
    return best, count.to(scores.dtype)


def highest_share(scores: Tensor, best: Tensor, count: Tensor) -> Tensor:
    """Allocation of the highest score, ties split uniformly.

    Args:
        scores: ``[B, n, m]`` own scores.
        best: ``[B, n, m]`` best score of the others (or a reserve, whichever is higher).
        count: ``[B, n, m]`` others tied at ``best``.

    Returns:
        ``[B, n, m]`` probability that bidder ``i`` gets item ``j``.
    """
    # The same comparisons decide allocation and (in callers) payment, so they stay consistent.
    tie = (scores == best).to(scores.dtype) / (count + 1.0)
    return torch.where(scores > best, torch.ones_like(scores), tie)


def _allow_unit_single_item(mechanism: ClassicalMechanism, env) -> None:
    """Item-wise rules are infeasible for unit demand unless there is only one item."""
    if env.demand == "unit" and env.n_items > 1:
        raise ConfigError(
            f"mechanism={mechanism.config_name} sells items separately, which breaks unit demand; "
            f"env={env.name} is unit-demand with {env.n_items} items (use mechanism=vcg)"
        )


class VCG(ClassicalMechanism):
    """Vickrey-Clarke-Groves with Clarke pivot payments (no reserve).

    Additive bidders: each item goes to its highest bidder (ties split uniformly), who pays the
    highest competing bid, i.e. item-wise second price. Revenue for ``n`` i.i.d. U[0,1] bidders
    is ``m (n-1)/(n+1)`` (2x2: 0.6667).

    Unit-demand bidders: a max-weight assignment found by enumerating every partial matching
    in one batched tensor op (ties go to the first assignment in enumeration order), and each
    bidder pays the externality it imposes on the others.

    Args:
        env: the auction environment.
        max_assignments: largest number of unit-demand assignments to enumerate.
    """

    ir_by_design = True
    symmetric_in = ("bidders", "items")
    config_name = "vcg"
    dsic_by_design = True

    def __init__(self, env, max_assignments: int = 50_000) -> None:
        super().__init__(env)
        if self.demand == "unit" and self.n_items > 1:
            n, m = self.n_bidders, self.n_items
            count = sum(math.comb(n, k) * math.perm(m, k) for k in range(min(n, m) + 1))
            if count > max_assignments:
                raise ConfigError(
                    f"mechanism={self.config_name} enumerates the {count} assignments of "
                    f"unit-demand env={env.name}; that exceeds "
                    f"mechanism.max_assignments={max_assignments} (use a smaller env or raise it)"
                )
            # Row k gives each bidder's item, with index m meaning "nothing".
            rows = [
                a
                for a in itertools.product(range(m + 1), repeat=n)
                if len([j for j in a if j < m]) == len({j for j in a if j < m})
            ]
            self.register_buffer("assignments", torch.tensor(rows, dtype=torch.long))

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        if self.demand == "unit" and self.n_items > 1:
            return self._matching(reports)
        best, count = others_best(reports)
        allocation = highest_share(reports, best, count)
        # One bidder alone imposes no externality: it pays nothing.
        price = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
        return Outcome(allocation, (allocation * price).sum(-1))

    def _matching(self, reports: Tensor) -> Outcome:
        """Unit-demand VCG by enumeration; ``[B, n, m]`` reports."""
        B, n, m = reports.shape
        table = self.assignments.to(reports.device)  # [K, n]
        padded = torch.cat([reports, reports.new_zeros(B, n, 1)], -1)  # [B, n, m+1]
        own = padded.gather(2, table.T.unsqueeze(0).expand(B, -1, -1))  # [B, n, K]
        welfare = own.sum(1)  # [B, K]
        chosen = welfare.argmax(-1)  # [B]
        picked = table[chosen]  # [B, n]
        allocation = torch.nn.functional.one_hot(picked, m + 1)[..., :m].to(reports.dtype)
        # Clarke pivot: best welfare of the others without i, minus their welfare at the choice.
        without = (table == m).T.unsqueeze(0)  # [1, n, K]: assignments where i gets nothing
        alone = welfare.unsqueeze(1).masked_fill(~without, -math.inf).amax(-1)  # [B, n]
        at_choice = welfare.gather(1, chosen[:, None]) - own.gather(
            2, chosen.view(B, 1, 1).expand(B, n, 1)
        ).squeeze(-1)
        return Outcome(allocation, (alone - at_choice).clamp_min(0.0))


class SecondPrice(VCG):
    """Second-price (Vickrey) auction, item by item; identical to VCG for additive bidders.

    Revenue with ``n`` i.i.d. U[0,1] bidders per item: ``(n-1)/(n+1)``.
    """

    config_name = "second_price"

    def check_env(self, env) -> None:  # noqa: D102
        super().check_env(env)
        _allow_unit_single_item(self, env)


class FirstPrice(ClassicalMechanism):
    """Item-wise first-price auction: the highest bid wins each item (ties split) and pays its bid.

    Not truthful: with two U[0,1] bidders a bidder gains ``E[(v_i - v_j)^+] = 1/6`` per item by
    shading its bid down to just above the other bid. Truthful revenue equals the expected
    highest value (2x2: 4/3).

    Args:
        env: the auction environment (additive, or unit-demand with one item).
    """

    ir_by_design = True
    symmetric_in = ("bidders", "items")
    config_name = "first_price"

    def check_env(self, env) -> None:  # noqa: D102
        super().check_env(env)
        _allow_unit_single_item(self, env)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        best, count = others_best(reports)
        allocation = highest_share(reports, best, count)
        return Outcome(allocation, (allocation * reports).sum(-1))

    def exact_regret(self, values: Tensor) -> Tensor:
        """Exact per-sample regret ``[B, n]`` at true values ``[B, n, m]`` (others truthful).

        Truthful bidders pay their value, so truthful utility is 0; on each item, bidding just
        above the best other bid wins it at that price, so the supremum gain is
        ``sum_j (v_ij - max_{k != i} v_kj)^+`` (not attained at a tie, approached from above).
        """
        n = values.shape[1]
        if n == 1:
            return values.sum(-1)  # alone: bid 0 and win everything for free
        mask = torch.eye(n, dtype=torch.bool, device=values.device).view(1, n, n, 1)
        others = values.unsqueeze(1).expand(-1, n, n, -1).masked_fill(mask, -math.inf)
        best_other = others.max(2).values  # [B, n, m]
        return (values - best_other).clamp_min(0.0).sum(-1)


def _one_bidder_two_unit_uniform_items(env, demand: str) -> bool:
    """Whether ``env`` is one ``demand`` bidder with two items, values i.i.d. U[0,1]."""
    if (env.n_bidders, env.n_items, env.demand) != (1, 2, demand):
        return False
    distribution = env.report_space.distribution
    return isinstance(distribution, Uniform) and bool(
        (distribution.low == 0).all() and (distribution.high == 1).all()
    )


class MenuMechanism(ClassicalMechanism):
    """A single bidder picks the utility-maximising entry of a fixed menu (DSIC and IR).

    The null option (nothing, price 0) is always on the menu. Ties are broken towards the
    more expensive entry (the seller's favourite), which only matters on a null set.

    Args:
        env: a one-bidder environment.
        allocations: ``[K, m]`` menu allocations.
        prices: ``[K]`` menu prices.
    """

    ir_by_design = True
    symmetric_in = ("items",)
    dsic_by_design = True
    demand_needed = "additive"
    needs_items = 2

    def __init__(self, env, allocations: Tensor, prices: Tensor) -> None:
        super().__init__(env)
        allocations = torch.cat([allocations, allocations.new_zeros(1, allocations.shape[1])])
        prices = torch.cat([prices, prices.new_zeros(1)])
        order = torch.argsort(prices, descending=True, stable=True)
        self.register_buffer("menu_allocations", allocations[order])
        self.register_buffer("menu_prices", prices[order])

    def check_env(self, env) -> None:  # noqa: D102
        super().check_env(env)
        wanted = f"1 bidder, {self.needs_items} items, {self.demand_needed} demand"
        if env.n_bidders != 1:
            raise ConfigError(
                f"mechanism={self.config_name} is a menu for {wanted}; "
                f"env={env.name} has {env.n_bidders} bidders"
            )
        if env.n_items != self.needs_items:
            raise ConfigError(
                f"mechanism={self.config_name} is a menu for {wanted}; "
                f"env={env.name} has {env.n_items} items"
            )
        if env.demand != self.demand_needed:
            raise ConfigError(
                f"mechanism={self.config_name} is a menu for {wanted}; "
                f"env={env.name} is {env.demand}"
            )

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, 1, m]`` reports: allocation ``[B, 1, m]``, payment ``[B, 1]``."""
        allocations = self.menu_allocations.to(reports)
        prices = self.menu_prices.to(reports)
        utility = reports[:, 0, :] @ allocations.T - prices  # [B, K+1]
        pick = torch.nn.functional.one_hot(utility.argmax(-1), prices.shape[0]).to(reports.dtype)
        return Outcome((pick @ allocations)[:, None, :], (pick @ prices)[:, None])


class ManelliVincent(MenuMechanism):
    """Optimal mechanism for one additive bidder with two U[0,1] items (Manelli & Vincent 2006).

    Menu: each item at ``2/3``, the bundle at ``(4 - sqrt 2)/3``; revenue ``0.5491`` (papers
    round to 0.550). On other 1x2 distributions it is still DSIC and IR, just not optimal.

    Args:
        env: a 1-bidder, 2-item additive environment.
        item_price: price of each single item.
        bundle_price: price of both items.
    """

    config_name = "manelli_vincent"

    @classmethod
    def optimal_for(cls, env) -> bool:
        """[manelli2006bundling]: one additive bidder, two items with values i.i.d. U[0,1]."""
        return _one_bidder_two_unit_uniform_items(env, "additive")

    def __init__(
        self,
        env,
        item_price: float = 2.0 / 3.0,
        bundle_price: float = (4.0 - math.sqrt(2.0)) / 3.0,
    ) -> None:
        allocations = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        prices = torch.tensor([item_price, item_price, bundle_price])
        super().__init__(env, allocations, prices)


class Pavlov(MenuMechanism):
    """Optimal mechanism for one unit-demand bidder with two U[0,1] items (Pavlov 2011).

    Each item is posted at ``1/sqrt 3``; the bidder buys at most one. Revenue
    ``(1 - p^2) p = 2/(3 sqrt 3) = 0.3849``.

    Args:
        env: a 1-bidder, 2-item unit-demand environment.
        item_price: the posted price of each item.
    """

    config_name = "pavlov"
    demand_needed = "unit"

    @classmethod
    def optimal_for(cls, env) -> bool:
        """[pavlov2011optimal]: one unit-demand bidder, two items with values i.i.d. U[0,1]."""
        return _one_bidder_two_unit_uniform_items(env, "unit")

    def __init__(self, env, item_price: float = 1.0 / math.sqrt(3.0)) -> None:
        allocations = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        super().__init__(env, allocations, torch.tensor([item_price, item_price]))
