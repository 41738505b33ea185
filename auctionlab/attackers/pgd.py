"""Projected gradient ascent on misreports, every bidder and every restart in one batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.attackers.base import AttackResult, deviation_utility
from auctionlab.errors import ConfigError
from auctionlab.types import Types

OPTIMIZERS = ("adam", "sgd")


class PGDAttacker:
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
        return {
            "attacker": self.name,
            "restarts": self.restarts,
            "steps": self.steps,
            "step_size": self.step_size,
            "final_step_size": self.final_step_size,
            "optimizer": self.optimizer,
            "include_truthful": self.include_truthful,
        }

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

    def starts(self, env, types: Types, generator: torch.Generator, init: Tensor | None) -> Tensor:
        """``[R, B, n, m]`` starting misreports (the portfolio described in the class doc)."""
        values = types.values
        parts = [values.unsqueeze(0)] if self.include_truthful else []
        if init is not None:
            parts.append(init.to(values))
        have = sum(p.shape[0] for p in parts)
        if have < self.restarts:
            count = (self.restarts - have) * values.shape[0]
            draws = env.report_space.draw(count, generator).to(values)
            parts.append(draws.view(self.restarts - have, *values.shape))
        return torch.cat(parts)[: self.restarts]

    def attack(
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None = None,
        truthful: bool = True,
    ) -> AttackResult:
        """Search misreports for every bidder of every profile in ``types``.

        Args:
            mechanism: the mechanism under attack (its parameters are not updated).
            env: the environment (utility, report space).
            types: ``B`` true profiles.
            generator: source of the random restarts.
            init: optional ``[R0, B, n, m]`` explicit starting misreports.
            truthful: also compute the truthful utility (needed for regret).

        Returns:
            The best misreport and utility per bidder, with the budget that found them.

        """
        B = types.batch_size
        chunk = self.chunk_size or B
        pieces = []
        chunks = range(0, B, chunk)
        if self.progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"attack ({self.describe()})", unit="chunk", leave=False)
        for lo in chunks:
            sub = types[lo : lo + chunk]
            sub_init = None if init is None else init[:, lo : lo + chunk]
            pieces.append(self._attack_chunk(mechanism, env, sub, generator, sub_init, truthful))
        if len(pieces) == 1:
            return pieces[0]
        return AttackResult(
            misreports=torch.cat([p.misreports for p in pieces]),
            utility=torch.cat([p.utility for p in pieces]),
            truthful_utility=None
            if not truthful
            else torch.cat([p.truthful_utility for p in pieces]),
            budget=dict(self.budget, gradient=all(p.budget["gradient"] for p in pieces)),
            curve={k: torch.cat([p.curve[k] for p in pieces]) for k in pieces[0].curve},
        )

    def _fill_curve(self, curve_best: dict[int, Tensor], best_u: Tensor, t: int) -> None:
        """Record the curve at the checkpoints after step ``t`` when the search has stalled."""
        for s in self.curve_steps:
            if s > t:
                curve_best[s] = best_u.clone()

    def _attack_chunk(self, mechanism, env, types, generator, init, truthful) -> AttackResult:
        values = types.values
        x = env.report_space.project(self.starts(env, types, generator, init))
        scale = env.report_space.width(values.device)  # [n, m]
        best_x = x.clone()
        best_u = torch.full(x.shape[:-1], -math.inf, device=x.device, dtype=x.dtype)  # [R, B, n]
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
            better = u > best_u
            best_u = torch.where(better, u, best_u)
            best_x = torch.where(better.unsqueeze(-1), x.detach(), best_x)
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
        pick = best_u.argmax(0)  # [B, n]
        utility = best_u.gather(0, pick.unsqueeze(0)).squeeze(0)
        index = pick.view(1, *pick.shape, 1).expand(1, *pick.shape, x.shape[-1])
        misreports = best_x.gather(0, index).squeeze(0)
        truthful_utility = None
        curve: dict[tuple[int, int], Tensor] = {}
        if truthful:
            with torch.no_grad():
                truthful_utility = env.utility(mechanism(values, types.public), values)
            for s, u_s in curve_best.items():
                for r in self.curve_restarts:
                    curve[(r, s)] = (u_s[:r].max(0).values - truthful_utility).clamp_min(0.0)
        budget = dict(self.budget, gradient=differentiable)
        return AttackResult(misreports, utility, truthful_utility, budget, curve)
