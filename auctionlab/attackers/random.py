"""Random search: the best of many uniform draws from the report space (no gradients)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.attackers.base import Attacker, AttackResult, deviation_utility
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.errors import ConfigError
from auctionlab.types import Types


class RandomAttacker(Attacker):
    """``samples`` uniform misreports per bidder (plus the truthful report); keeps the best.

    The candidates are the start portfolio of ``Attacker.starts`` (truthful report, explicit
    starts, then draws from the report space), all evaluated in one batched forward pass.
    Its budget reads as a PGD budget with ``restarts = samples`` and ``steps = 0`` (how it
    has always been reported, so regret tables stay comparable).

    Args:
        samples: number of random reports tried per bidder and profile.
        include_truthful: whether the truthful report is among the tries.
        chunk_size: profiles per batch.
        curve_restarts: sample counts at which the regret-vs-budget curve is recorded.
        curve_steps: accepted for config compatibility; random search has only step 0.
        progress: show a progress bar over chunks.

    """

    name = "random"
    #: Reported step size and optimizer: the PGD defaults of a zero-step search.
    step_size = 0.1
    optimizer = "adam"
    final_step_size = None

    def __init__(
        self,
        samples: int = 1000,
        include_truthful: bool = True,
        chunk_size: int | None = None,
        curve_restarts: Sequence[int] = (),
        curve_steps: Sequence[int] = (0,),
        progress: bool = False,
    ) -> None:
        if samples < 1:
            raise ConfigError(f"attacker.restarts={samples} must be >= 1")
        self.restarts, self.steps = int(samples), 0
        self.include_truthful = include_truthful
        self.chunk_size = chunk_size
        self.curve_restarts = sorted({int(r) for r in curve_restarts if 0 < r <= samples})
        self.curve_steps = [0]
        self.progress = progress

    @property
    def samples(self) -> int:
        """Random reports tried per bidder and profile (``restarts``)."""
        return self.restarts

    # Zero-step PGD's budget and description: the same numbers, logged the same way.
    budget = PGDAttacker.budget
    describe = PGDAttacker.describe

    def attack_chunk(  # noqa: D102 - one batched evaluation of every candidate
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        x = env.report_space.project(self.starts(env, types, generator, init))
        best_x = x.clone()
        best_u = self.no_utility(x)  # [R, B, n]
        # The same autograd mode as a zero-step PGD, so the forward pass is the same one.
        with torch.enable_grad():
            x.requires_grad_(False)
            u = deviation_utility(mechanism, env, types, x)  # [R, B, n]
        best_u, best_x = self.keep_best(u.detach(), x.detach(), best_u, best_x)
        curve_best = {0: best_u.clone()}
        misreports, utility = self.pick_best(best_u, best_x)
        truthful_utility = None
        curve: dict[tuple[int, int], Tensor] = {}
        if truthful:
            truthful_utility = self.truthful_utility(mechanism, env, types)
            curve = self.regret_curve(curve_best, truthful_utility)
        spent = float(x.shape[0] * x.shape[1] * x.shape[2])
        budget = dict(self.budget, gradient=True, deviation_steps=spent)
        cost = {(r, s): float(r) for r, s in curve}
        return AttackResult(misreports, utility, truthful_utility, budget, curve, cost)
