"""Projected gradient ascent on misreports, every bidder and every restart in one batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.attackers.base import Attacker, AttackResult, deviation_utility
from auctionlab.errors import ConfigError
from auctionlab.types import Types

OPTIMIZERS = ("adam", "sgd")


class PGDAttacker(Attacker):
    """Multi-start projected gradient ascent on each bidder's utility.

    The start portfolio is: the truthful report (if ``include_truthful``), then any explicit
    starts passed to ``attack`` (e.g. cached misreports), then uniform draws from the report
    space until ``restarts`` starts are reached. All ``restarts x n`` deviations of a profile
    are evaluated in one forward pass. The best iterate of every start is kept, so the result
    never gets worse with more steps; with ``steps=0`` this is random search.

    Args:
        restarts: number of starting points per bidder and profile.
        steps: gradient steps from each start.
        step_size: first step size, as a fraction of each coordinate's report range.
        final_step_size: last step size (geometric decay from ``step_size``); ``None`` keeps
            the step size constant.
        optimizer: ``adam`` (moment-normalised steps, as in the original recipe) or ``sgd``.
        include_truthful: whether the truthful report is among the starts.
        chunk_size: profiles per batch when attacking many profiles (memory bound).
        curve_restarts: restart counts at which the regret-vs-budget curve is recorded.
        curve_steps: step counts at which the regret-vs-budget curve is recorded.
        progress: show a progress bar over chunks.

    """

    name = "pgd"

    def __init__(
        self,
        restarts: int = 1,
        steps: int = 25,
        step_size: float = 0.1,
        final_step_size: float | None = None,
        optimizer: str = "adam",
        include_truthful: bool = False,
        chunk_size: int | None = None,
        curve_restarts: Sequence[int] = (),
        curve_steps: Sequence[int] = (),
        progress: bool = False,
    ) -> None:
        if restarts < 1:
            raise ConfigError(f"attacker.restarts={restarts} must be >= 1")
        if steps < 0:
            raise ConfigError(f"attacker.steps={steps} must be >= 0")
        if step_size <= 0 or (final_step_size is not None and final_step_size <= 0):
            raise ConfigError("attacker.step_size and attacker.final_step_size must be > 0")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"attacker.optimizer={optimizer} is not valid; "
                f"choose one of {', '.join(OPTIMIZERS)}"
            )
        self.restarts, self.steps, self.optimizer = int(restarts), int(steps), optimizer
        self.step_size = float(step_size)
        self.final_step_size = None if final_step_size is None else float(final_step_size)
        self.include_truthful = include_truthful
        self.chunk_size = chunk_size
        self.curve_restarts = sorted({int(r) for r in curve_restarts if 0 < r <= restarts})
        self.curve_steps = sorted({int(s) for s in curve_steps if 0 <= s <= steps})
        self.progress = progress

    @property
    def budget(self) -> dict:
        """The attacker budget, logged next to every regret it produces."""
        # Named, not super(): random search (zero-step PGD) reuses this property.
        return dict(
            Attacker.budget.fget(self),
            final_step_size=self.final_step_size,
            optimizer=self.optimizer,
            include_truthful=self.include_truthful,
        )

    def describe(self) -> str:
        """Short human-readable budget, e.g. ``pgd 100x1000``."""
        return f"{self.name} {self.restarts} restarts x {self.steps} steps ({self.optimizer})"

    def step_sizes(self) -> list[float]:
        """The step size of every step."""
        if self.steps == 0:
            return []
        if self.final_step_size is None or self.steps == 1:
            return [self.step_size] * self.steps
        ratio = (self.final_step_size / self.step_size) ** (1.0 / (self.steps - 1))
        return [self.step_size * ratio**t for t in range(self.steps)]

    def as_cutting_plane(self) -> Attacker:
        """A ``CuttingPlaneAttacker`` refreshing its witnesses with this PGD budget."""
        # Looked up, not imported: the cutting-plane attacker builds on this module.
        cutting_plane = Attacker.by_name["cutting_plane"]
        return cutting_plane(
            restarts=self.restarts,
            steps=self.steps,
            step_size=self.step_size,
            final_step_size=self.final_step_size,
            include_truthful=self.include_truthful,
            chunk_size=self.chunk_size,
        )

    def _fill_curve(self, curve_best: dict[int, Tensor], best_u: Tensor, t: int) -> None:
        """Record the curve at the checkpoints after step ``t`` when the search has stalled."""
        for s in self.curve_steps:
            if s > t:
                curve_best[s] = best_u.clone()

    def attack_chunk(  # noqa: D102 - the search of the class docstring on one chunk
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        values = types.values
        x = env.report_space.project(self.starts(env, types, generator, init))
        scale = env.report_space.width(values.device)  # [n, m]
        best_x = x.clone()
        best_u = self.no_utility(x)  # [R, B, n]
        curve_best: dict[int, Tensor] = {}
        differentiable = True
        m1 = torch.zeros_like(x)
        m2 = torch.zeros_like(x)
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        sizes = self.step_sizes()
        for t in range(self.steps + 1):
            last = t == self.steps
            with torch.enable_grad():
                x.requires_grad_(not last)
                u = deviation_utility(mechanism, env, types, x)  # [R, B, n]
                grad = None
                if not last and u.requires_grad:
                    (grad,) = torch.autograd.grad(u.sum(), x, allow_unused=True)
            u = u.detach()
            best_u, best_x = self.keep_best(u, x.detach(), best_u, best_x)
            if t in self.curve_steps:
                curve_best[t] = best_u.clone()
            if last:
                break
            if grad is None:  # the utility does not depend on the report at all here
                differentiable = False
                self._fill_curve(curve_best, best_u, t)
                break
            if self.optimizer == "adam":
                m1 = beta1 * m1 + (1 - beta1) * grad
                m2 = beta2 * m2 + (1 - beta2) * grad * grad
                direction = (m1 / (1 - beta1 ** (t + 1))) / (
                    (m2 / (1 - beta2 ** (t + 1))).sqrt() + eps
                )
            else:
                direction = grad
            if t == 0 and not bool(direction.any()):
                # Flat at every start (zero gradient, zero momentum): every later iterate is
                # the start again. Checked once, so the loop has no per-step host sync.
                self._fill_curve(curve_best, best_u, t)
                break
            x = env.report_space.project(x.detach() + sizes[t] * scale * direction)
        misreports, utility = self.pick_best(best_u, best_x)
        truthful_utility = None
        curve: dict[tuple[int, int], Tensor] = {}
        if truthful:
            truthful_utility = self.truthful_utility(mechanism, env, types)
            curve = self.regret_curve(curve_best, truthful_utility)
        # t + 1 evaluations per start (the last one scores the final iterate).
        spent = float(x.shape[0] * (t + 1) * values.shape[0] * values.shape[1])
        budget = dict(self.budget, gradient=differentiable, deviation_steps=spent)
        cost = {(r, s): float(r * (min(s, t) + 1)) for r, s in curve}
        return AttackResult(misreports, utility, truthful_utility, budget, curve, cost)
