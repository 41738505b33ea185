"""Constraint handlers: how regret enters the loss and how the multipliers move.

The ``ConstraintHandler`` contract (see ``auctionlab.core``): each iteration the trainer calls
``loss(objective, violations)`` with the batch objective and the measured violations
(per-bidder regret ``[n]``, and IR / fairness where the handler asks for them), minimises the
result, then calls ``dual_step(state)`` with a ``DualState``: the iteration, the detached
objective and regret, and the mechanism / env / attacker a handler may measure held-out data
with. A handler never sees the trainer itself. ``state_dict``/``load_state_dict`` make
handlers checkpointable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from auctionlab.core.component import Component
from auctionlab.errors import ConfigError

#: What ``loss`` takes as ``violations``: ``{"regret": [n], "ir": [n], "fairness": []}``
#: (``ir`` and ``fairness`` only for handlers with ``needs_violations``), or the bare regret.
Violations = Mapping[str, Tensor] | Tensor


def violation_terms(violations: Violations) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(regret [n], ir [n] or None, fairness [] or None)`` from a ``Violations`` value."""
    if isinstance(violations, Tensor):
        return violations, None, None
    return violations["regret"], violations.get("ir"), violations.get("fairness")


@dataclass
class DualState:
    """What a handler's ``dual_step`` may read after a primal step.

    Attributes:
        iteration: the iteration just taken (0-based; the trainer's counter before it moves).
        objective: ``[]`` the batch objective (detached).
        regret: ``[n]`` the batch's per-bidder regret (detached).
        mechanism: the mechanism being trained (``None`` outside a trainer).
        env: the environment (``None`` outside a trainer).
        attacker: the trainer's attacker, for held-out regret (``None`` outside a trainer).

    """

    iteration: int
    objective: Tensor
    regret: Tensor
    mechanism: Any = None
    env: Any = None
    attacker: Any = None


class ConstraintHandler(Component):
    """Base: the loss is minus the objective; no regret term, nothing to update.

    Attributes:
        name: the handler's config name.
        needs_regret: the trainer must estimate regret (an attacker runs every step).
        needs_violations: the trainer also passes IR ``[n]`` and fairness ``[]``
            violations of the batch to ``loss``.

    """

    name = "none"
    needs_regret = True
    needs_violations = False

    def setup(self, n_bidders: int, iterations: int, device: torch.device) -> None:
        """Called once before training with the problem size and the iteration budget."""
        self.n_bidders, self.iterations, self.device = n_bidders, iterations, device

    def loss(self, objective: Tensor, violations: Violations) -> Tensor:
        """Scalar loss to minimise.

        Args:
            objective: ``[]`` batch objective (revenue unless the env defines its own).
            violations: ``{"regret": [n], ...}`` (see ``Violations``) or the regret ``[n]``.

        """
        return -objective

    def dual_step(self, state: DualState) -> None:
        """Multiplier / schedule update after the primal step (default: none)."""

    def update(self, revenue: Tensor, regret: Tensor, iteration: int) -> None:
        """``dual_step`` from the batch numbers alone (no held-out measurement possible)."""
        self.dual_step(DualState(iteration, revenue, regret))

    def metrics(self) -> dict[str, float]:
        """Multipliers and schedules to log."""
        return {}

    def state_dict(self) -> dict:
        """Checkpointable state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` output."""


class AugmentedLagrangian(ConstraintHandler):
    """RegretNet's original recipe: ``-rev + sum_i lambda_i rgt_i + rho/2 sum_i rgt_i^2``.

    ``lambda_i += rho * mean(rgt_i)`` every ``lambda_every`` iterations (mean over that
    window) and ``rho += rho_increment`` every ``rho_every`` iterations.

    Args:
        lambda_init: initial multiplier of every bidder.
        rho_init: initial quadratic penalty.
        rho_increment: added to ``rho`` every ``rho_every`` iterations.
        rho_every: iterations between ``rho`` increments.
        lambda_every: iterations between multiplier updates.

    """

    name = "lagrangian"

    def __init__(
        self,
        lambda_init: float = 5.0,
        rho_init: float = 1.0,
        rho_increment: float = 1.0,
        rho_every: int = 2000,
        lambda_every: int = 100,
    ) -> None:
        if rho_init <= 0 or lambda_init < 0 or rho_every < 1 or lambda_every < 1:
            raise ConfigError(
                "trainer.constraint: need rho_init > 0, lambda_init >= 0, rho_every >= 1, "
                "lambda_every >= 1"
            )
        self.lambda_init, self.rho = float(lambda_init), float(rho_init)
        self.rho_increment, self.rho_every, self.lambda_every = (
            rho_increment,
            rho_every,
            lambda_every,
        )

    def setup(self, n_bidders: int, iterations: int, device: torch.device) -> None:  # noqa: D102
        super().setup(n_bidders, iterations, device)
        self.lambdas = torch.full((n_bidders,), self.lambda_init, device=device)
        self.window = torch.zeros(n_bidders, device=device)
        self.window_count = 0

    def loss(self, objective: Tensor, violations: Violations) -> Tensor:  # noqa: D102
        regret = violation_terms(violations)[0]
        return -objective + (self.lambdas * regret).sum() + 0.5 * self.rho * (regret**2).sum()

    def dual_step(self, state: DualState) -> None:  # noqa: D102
        regret, iteration = state.regret, state.iteration
        self.window += regret
        self.window_count += 1
        if (iteration + 1) % self.lambda_every == 0:
            self.lambdas += self.rho * self.window / self.window_count
            self.window.zero_()
            self.window_count = 0
        if (iteration + 1) % self.rho_every == 0:
            self.rho += self.rho_increment

    def metrics(self) -> dict[str, float]:  # noqa: D102
        return {"lambda_mean": float(self.lambdas.mean()), "rho": self.rho}

    def state_dict(self) -> dict:  # noqa: D102
        return {
            "lambdas": self.lambdas,
            "rho": self.rho,
            "window": self.window,
            "window_count": self.window_count,
        }

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.lambdas, self.rho = state["lambdas"].to(self.device).clone(), float(state["rho"])
        self.window = state["window"].to(self.device).clone()
        self.window_count = int(state["window_count"])


class RegretBudget(ConstraintHandler):
    """Regret budget (Ivanov et al. 2022; [okada2025lic] §2.4): one multiplier ``gamma``.

    Loss ``-rev + gamma * (sum_i rgt_i - R_max)``. Dual step on the log ratio
    ``gamma <- max(0, gamma + dual_lr * (log sum_i rgt_i - log rev - log R_max))``: the budget
    is relative to revenue. ``R_max`` anneals geometrically from ``budget_start`` to
    ``budget_end``, reached after ``anneal_fraction`` of the iterations.

    Two guards on the dual signal ``d = log sum_i rgt_i - log rev - log R_max``: a batch with
    no regret and no revenue (nothing sold) satisfies the constraint, so ``gamma`` falls
    there (the plain formula reads ``log 0 - log 0 = 0 > log R_max`` and drives ``gamma`` up
    for ever); and with ``signal_clip = c`` the step uses ``c tanh(d / c)``: the same near
    the budget, at most ``c`` in size, so one batch whose regret is exactly 0 (``d`` about -27)
    no longer resets ``gamma`` to 0 in one step and one batch with almost no revenue no longer
    throws it up by as much: the swings that let the multiplier push every score below zero
    (nothing sold, no gradient left to recover from).

    Args:
        budget_start: initial relative budget ``R_max``.
        budget_end: final relative budget.
        anneal_fraction: share of the iterations spent annealing.
        dual_lr: step size ``eta_gamma`` of the dual update.
        gamma_init: initial multiplier.
        signal_clip: bound ``c`` on the dual signal (``None``: unbounded, the original rule).

    """

    name = "regret_budget"

    def __init__(
        self,
        budget_start: float = 0.1,
        budget_end: float = 1e-3,
        anneal_fraction: float = 2.0 / 3.0,
        dual_lr: float = 0.1,
        gamma_init: float = 1.0,
        signal_clip: float | None = None,
    ) -> None:
        if signal_clip is not None and not (math.isfinite(signal_clip) and signal_clip > 0):
            raise ConfigError(
                f"trainer.constraint.signal_clip={signal_clip} must be > 0 (or null: unbounded)"
            )
        if not (budget_start > 0 and budget_end > 0):
            key, value = (
                ("budget_start", budget_start) if budget_start <= 0 else ("budget_end", budget_end)
            )
            raise ConfigError(f"trainer.constraint.{key}={value} must be > 0")
        if not 0 < anneal_fraction <= 1:
            raise ConfigError(
                f"trainer.constraint.anneal_fraction={anneal_fraction} must be in (0, 1]"
            )
        if dual_lr <= 0 or gamma_init < 0:
            raise ConfigError("trainer.constraint: need dual_lr > 0 and gamma_init >= 0")
        self.budget_start, self.budget_end = float(budget_start), float(budget_end)
        self.anneal_fraction, self.dual_lr, self.gamma_init = anneal_fraction, dual_lr, gamma_init
        self.signal_clip = None if signal_clip is None else float(signal_clip)

    def setup(self, n_bidders: int, iterations: int, device: torch.device) -> None:  # noqa: D102
        super().setup(n_bidders, iterations, device)
        anneal_steps = max(1, round(self.anneal_fraction * iterations))
        self.budget_mult = (self.budget_end / self.budget_start) ** (1.0 / anneal_steps)
        self.budget = self.budget_start
        self.gamma = float(self.gamma_init)

    def loss(self, objective: Tensor, violations: Violations) -> Tensor:  # noqa: D102
        regret = violation_terms(violations)[0]
        return -objective + self.gamma * (regret.sum() - self.budget)

    def dual_step(self, state: DualState) -> None:  # noqa: D102
        revenue, regret = state.objective, state.regret
        tiny = 1e-12  # a zero regret or revenue must not give log(0)
        total, sold = float(regret.sum()), float(revenue)
        # nothing sold and no regret: the constraint holds; read the revenue as 1, not 0
        reference = 1.0 if sold <= tiny and total <= tiny else max(sold, tiny)
        signal = math.log(total + tiny) - math.log(reference) - math.log(self.budget)
        if self.signal_clip is not None:
            signal = self.signal_clip * math.tanh(signal / self.signal_clip)
        self.gamma = max(0.0, self.gamma + self.dual_lr * signal)
        self.budget = max(self.budget_end, self.budget * self.budget_mult)

    def metrics(self) -> dict[str, float]:  # noqa: D102
        return {"gamma": self.gamma, "regret_budget": self.budget}

    def state_dict(self) -> dict:  # noqa: D102
        return {"gamma": self.gamma, "budget": self.budget}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.gamma, self.budget = float(state["gamma"]), float(state["budget"])


class Unconstrained(ConstraintHandler):
    """For mechanisms that are DSIC by design (RochetNet): maximise revenue, skip regret."""

    name = "unconstrained"
    needs_regret = False


class PrimalDual(ConstraintHandler):
    """Primal-dual descent-ascent of [zeng2025rpf], Algorithm 1: one multiplier per agent.

    Loss ``-objective + sum_i gamma_i expl_i``; after each primal step
    ``gamma_i <- max(0, gamma_i + dual_lr * (expl_i - epsilon))``. The objective is whatever
    the env trains on (log-NSW for allocation envs, revenue for auctions).

    Args:
        epsilon: exploitability (regret) level each agent's constraint allows.
        dual_lr: dual step size ``beta``.
        gamma_init: initial multipliers.

    """

    name = "primal_dual"

    def __init__(
        self, epsilon: float = 1e-4, dual_lr: float = 1.0, gamma_init: float = 1.0
    ) -> None:
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise ConfigError(f"trainer.constraint.epsilon={epsilon} must be >= 0 and finite")
        if not (math.isfinite(dual_lr) and dual_lr > 0):
            raise ConfigError(f"trainer.constraint.dual_lr={dual_lr} must be > 0 and finite")
        if not (math.isfinite(gamma_init) and gamma_init >= 0):
            raise ConfigError(f"trainer.constraint.gamma_init={gamma_init} must be >= 0")
        self.epsilon, self.dual_lr, self.gamma_init = float(epsilon), float(dual_lr), gamma_init

    def setup(self, n_bidders: int, iterations: int, device: torch.device) -> None:  # noqa: D102
        super().setup(n_bidders, iterations, device)
        self.gammas = torch.full((n_bidders,), float(self.gamma_init), device=device)

    def loss(self, objective: Tensor, violations: Violations) -> Tensor:  # noqa: D102
        regret = violation_terms(violations)[0]
        return -objective + (self.gammas * regret).sum()

    def dual_step(self, state: DualState) -> None:  # noqa: D102
        self.gammas = (self.gammas + self.dual_lr * (state.regret - self.epsilon)).clamp_min(0.0)

    def metrics(self) -> dict[str, float]:  # noqa: D102
        return {"gamma_mean": float(self.gammas.mean()), "gamma_max": float(self.gammas.max())}

    def state_dict(self) -> dict:  # noqa: D102
        return {"gammas": self.gammas}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.gammas = state["gammas"].to(self.device).clone()
