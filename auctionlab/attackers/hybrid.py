"""Hybrid misreport search for integral mechanisms ([lemma2026solver] §7.6).

Gradients through a piecewise-constant allocation only see the surrogate, so the stress test
adds gradient-free search on top of projected gradient ascent, all bidders at once:

1. PGD (``restarts`` x ``steps``, truthful start included) through the mechanism's surrogate;
2. random search: ``random_samples`` uniform draws from the report box;
3. local random search around the incumbent at each scale of ``local_scales`` (fractions of
   each coordinate's range), ``local_samples`` draws per scale;
4. ``coordinate_rounds`` rounds of coordinate search: every coordinate of the incumbent set to
   each of ``grid`` evenly spaced levels of its range, to the truth and to 0 (the box's low).

Every candidate set is one batched forward of ``[R, B, n, k]`` deviations; the best utility
per bidder is kept, so each phase can only raise the measured regret.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.attackers.base import (
    Attacker,
    AttackResult,
    deviation_utility,
    require_at_least,
)
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.errors import ConfigError
from auctionlab.types import Types


class HybridAttacker(Attacker):
    """PGD + random + local random + coordinate search (see the module docstring).

    Args:
        restarts: PGD starts per bidder (the truthful report is one of them).
        steps: PGD steps.
        step_size: PGD first step, as a fraction of each coordinate's range.
        final_step_size: PGD last step (geometric decay).
        random_samples: uniform draws per bidder.
        local_samples: draws per local scale.
        local_scales: local search radii (fractions of the range).
        coordinate_rounds: rounds of coordinate search.
        grid: levels per coordinate in coordinate search.
        candidates_per_pass: most candidates per forward pass (memory bound).
        chunk_size: profiles per batch.
        curve_restarts: PGD restart counts recorded in the regret-vs-budget curve.
        curve_steps: PGD step counts recorded in the curve.
        progress: show a progress bar over chunks.

    """

    name = "hybrid"

    def __init__(
        self,
        restarts: int = 8,
        steps: int = 100,
        step_size: float = 0.05,
        final_step_size: float | None = 0.001,
        random_samples: int = 256,
        local_samples: int = 64,
        local_scales: Sequence[float] = (0.3, 0.1, 0.03, 0.01),
        coordinate_rounds: int = 2,
        grid: int = 11,
        candidates_per_pass: int = 256,
        chunk_size: int | None = 256,
        curve_restarts: Sequence[int] = (),
        curve_steps: Sequence[int] = (),
        progress: bool = False,
    ) -> None:
        require_at_least(
            [
                ("random_samples", random_samples, 0),
                ("local_samples", local_samples, 0),
                ("coordinate_rounds", coordinate_rounds, 0),
                ("grid", grid, 2),
                ("candidates_per_pass", candidates_per_pass, 1),
            ]
        )
        if any(s <= 0 for s in local_scales):
            raise ConfigError(f"attacker.local_scales={list(local_scales)} must all be > 0")
        self.pgd = PGDAttacker(
            restarts=restarts,
            steps=steps,
            step_size=step_size,
            final_step_size=final_step_size,
            include_truthful=True,
            curve_restarts=curve_restarts,
            curve_steps=curve_steps,
        )
        self.random_samples, self.local_samples = int(random_samples), int(local_samples)
        self.local_scales = [float(s) for s in local_scales]
        self.coordinate_rounds, self.grid = int(coordinate_rounds), int(grid)
        self.candidates_per_pass, self.chunk_size = int(candidates_per_pass), chunk_size
        self.progress = progress

    # The PGD phase's settings, read and set as on a PGDAttacker.
    step_size = property(lambda self: self.pgd.step_size)
    restarts = property(
        lambda self: self.pgd.restarts, lambda self, v: setattr(self.pgd, "restarts", int(v))
    )
    steps = property(
        lambda self: self.pgd.steps, lambda self, v: setattr(self.pgd, "steps", int(v))
    )
    curve_restarts = property(
        lambda self: self.pgd.curve_restarts,
        lambda self, v: setattr(self.pgd, "curve_restarts", sorted({int(r) for r in v})),
    )
    curve_steps = property(
        lambda self: self.pgd.curve_steps,
        lambda self, v: setattr(self.pgd, "curve_steps", sorted({int(s) for s in v})),
    )

    @property
    def budget(self) -> dict:
        """The attacker budget, logged next to every regret it produces."""
        return dict(
            self.pgd.budget,
            attacker=self.name,
            random_samples=self.random_samples,
            local_samples=self.local_samples,
            local_scales=list(self.local_scales),
            coordinate_rounds=self.coordinate_rounds,
            grid=self.grid,
        )

    def describe(self) -> str:
        """Short human-readable budget."""
        return (
            f"hybrid: pgd {self.pgd.restarts}x{self.pgd.steps} + {self.random_samples} random + "
            f"{self.local_samples}x{len(self.local_scales)} local + "
            f"{self.coordinate_rounds} coordinate rounds x {self.grid} levels"
        )

    def _better(self, mechanism, env, types, candidates: Tensor, best_x, best_u):
        """Evaluate ``[R, B, n, k]`` candidates in passes; keep each bidder's best."""
        with torch.no_grad():
            for lo in range(0, candidates.shape[0], self.candidates_per_pass):
                part = env.report_space.project(candidates[lo : lo + self.candidates_per_pass])
                u = deviation_utility(mechanism, env, types, part)  # [R, B, n]
                best_u, best_x = self.fold_best(u, part, best_u, best_x)
        return best_x, best_u

    def attack_chunk(
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        """The four phases of the module docstring on one chunk of profiles.

        The curve holds the PGD phase alone (restarts x steps); the misreports ``[B, n, m]``
        and utilities ``[B, n]`` are the full search's.
        """
        values = types.values
        space = env.report_space
        low, high = space.low.to(values), space.high.to(values)
        width = space.width(values.device).to(values)
        pgd = self.pgd.attack(mechanism, env, types, generator, init=init, truthful=truthful)
        best_x, best_u = pgd.misreports.detach(), pgd.utility.detach()
        B, n, k = values.shape
        if self.random_samples:
            draws = space.draw(self.random_samples * B, generator).to(values)
            best_x, best_u = self._better(
                mechanism, env, types, draws.view(self.random_samples, B, n, k), best_x, best_u
            )
        for scale in self.local_scales:
            if not self.local_samples:
                break
            noise = torch.randn(
                self.local_samples, B, n, k, generator=generator, device=values.device
            ).to(values)
            candidates = best_x.unsqueeze(0) + scale * width * noise
            best_x, best_u = self._better(mechanism, env, types, candidates, best_x, best_u)
        levels = torch.linspace(0, 1, self.grid, device=values.device, dtype=values.dtype)
        for _ in range(self.coordinate_rounds):
            for c in range(k):
                grid = low[..., c] + (high[..., c] - low[..., c]) * levels[:, None]  # [G, n]
                options = torch.cat(
                    [
                        grid[:, None, :].expand(-1, B, -1),
                        values[None, :, :, c],
                        low[None, None, :, c].expand(1, B, n),
                    ]
                )  # [G + 2, B, n]
                candidates = best_x.unsqueeze(0).repeat(options.shape[0], 1, 1, 1)
                candidates[..., c] = options
                best_x, best_u = self._better(mechanism, env, types, candidates, best_x, best_u)
        # The gradient-free phases' candidates, on top of what the PGD phase spent.
        extra = self.random_samples + self.local_samples * len(self.local_scales)
        extra += self.coordinate_rounds * k * (self.grid + 2)
        spent = pgd.budget.get("deviation_steps", 0.0) + float(extra * B * n)
        budget = dict(self.budget, deviation_steps=spent)
        return AttackResult(best_x, best_u, pgd.truthful_utility, budget, pgd.curve, pgd.curve_cost)
