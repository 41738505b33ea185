"""Shared machinery: utilities of unilateral deviations for all bidders at once."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from auctionlab.types import Outcome, Types


def deviation_profiles(values: Tensor, misreports: Tensor) -> Tensor:
    """Stack the ``n`` unilateral-deviation profiles.

    Args:
        values: ``[B, n, m]`` true reports of everyone.
        misreports: ``[R, B, n, m]``; row ``i`` is bidder ``i``'s misreport.

    Returns:
        ``[n, R, B, n, m]``: profile ``k`` has bidder ``k``'s row replaced by its misreport.

    """
    n = values.shape[1]
    mask = torch.eye(n, dtype=torch.bool, device=values.device).view(n, 1, 1, n, 1)
    return torch.where(mask, misreports.unsqueeze(0), values.unsqueeze(0).unsqueeze(0))


def expand_public(public: dict[str, Tensor], copies: int) -> dict[str, Tensor]:
    """Repeat each public input ``copies`` times along a new leading axis, then flatten."""
    return {
        k: v.unsqueeze(0).expand(copies, *v.shape).reshape(copies * v.shape[0], *v.shape[1:])
        for k, v in public.items()
    }


def project_deviations(env, types: Types, misreports: Tensor) -> Tensor:
    """Map misreports into the deviation set of the true types, where it depends on them.

    Most report spaces are boxes (the attackers' own projection suffices); an env whose
    report space defines ``restrict(misreports, truth)`` narrows the set per profile, e.g.
    verifiable budgets (``B' <= B``, seed 000 §8). Maximising utility at the restricted
    point over the box is maximising it over the deviation set (``restrict`` is onto it and
    the identity on it), so every attacker applies unchanged.

    Args:
        env: the environment.
        types: true types; ``values`` is ``[B, n, d]``.
        misreports: ``[..., B, n, d]``.

    Returns:
        Misreports of the same shape inside the deviation set.

    """
    restrict = getattr(env.report_space, "restrict", None)
    return misreports if restrict is None else restrict(misreports, types.values)


def deviation_utility(mechanism, env, types: Types, misreports: Tensor) -> Tensor:
    """Utility of each bidder when it alone misreports.

    Args:
        mechanism: the mechanism under attack.
        env: gives the utility function.
        types: true types; ``values`` is ``[B, n, m]``.
        misreports: ``[R, B, n, m]``.

    Returns:
        ``[R, B, n]``: entry ``(r, b, i)`` is bidder ``i``'s true utility when it reports
        ``misreports[r, b, i]`` (through ``project_deviations``) and the others report
        truthfully.

    """
    values = types.values
    misreports = project_deviations(env, types, misreports)
    R, B, n, m = misreports.shape
    profiles = deviation_profiles(values, misreports).reshape(n * R * B, n, m)
    outcome = mechanism(profiles, expand_public(types.public, n * R))
    return own_utility(env, outcome, values, R)


def own_utility(env, outcome: Outcome, values: Tensor, copies: int) -> Tensor:
    """Each deviator's true utility in a stack of deviation profiles.

    Args:
        env: gives the utility function.
        outcome: the mechanism's outcome on ``deviation_profiles(values, .)`` flattened:
            allocation ``[n * copies * B, n, m]``, payment ``[n * copies * B, n]``.
        values: ``[B, n, m]`` true values.
        copies: ``R``, the number of misreports per bidder in the stack.

    Returns:
        ``[R, B, n]``: bidder ``k``'s utility in its own deviation profile.
    """
    B, n, m = values.shape
    index = torch.arange(n, device=values.device)
    # Only bidder k's part of profile k matters: gather it before the utility to save work.
    # The allocation may be narrower than the reports (allocation envs report values+demands).
    allocation = outcome.allocation.view(n, copies, B, n, -1)[index, :, :, index]  # [n, R, B, .]
    payment = outcome.payment.view(n, copies, B, n)[index, :, :, index]  # [n, R, B]
    own_values = values.permute(1, 0, 2).unsqueeze(1)  # [n, 1, B, m]
    own = Outcome(allocation.unsqueeze(-2), payment.unsqueeze(-1))  # one "bidder" each
    utility = env.utility(own, own_values.unsqueeze(-2)).squeeze(-1)  # [n, R, B]
    return utility.permute(1, 2, 0)


@dataclass
class AttackResult:
    """What an attack found.

    Attributes:
        misreports: ``[B, n, m]`` the best misreport found for each bidder.
        utility: ``[B, n]`` each bidder's utility at its best misreport.
        truthful_utility: ``[B, n]`` utility when everyone reports truthfully, or ``None``
            where the attacker was not asked for it (training).
        budget: the attacker budget that produced these numbers.
        curve: gains ``[B, n]`` keyed by ``(restarts, steps)`` budgets below the full one.

    """

    misreports: Tensor
    utility: Tensor
    truthful_utility: Tensor | None
    budget: dict
    curve: dict[tuple[int, int], Tensor] = field(default_factory=dict)

    @property
    def gain(self) -> Tensor:
        """``[B, n]`` regret: best misreport utility minus truthful utility, floored at 0."""
        if self.truthful_utility is None:
            raise ValueError("this attack was run without the truthful utility")
        return (self.utility - self.truthful_utility).clamp_min(0.0)
