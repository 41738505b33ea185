"""Constrained ERM ([lemma2026certified] §5, eq. 12-13): augmented Lagrangian: regret, IR, fairness.

The primal loss on the training minibatch is

    L_rho = -REV + sum_i lambda_i (RGT_i - eps_r) + sum_i mu_i (IRV_i - eps_ir) + nu (FR - eps_f)
            + rho/2 (sum_i [RGT_i - eps_r]_+^2 + sum_i [IRV_i - eps_ir]_+^2 + [FR - eps_f]_+^2),

and every ``dual_every`` iterations the multipliers take a projected ascent step measured on a
*held-out* minibatch (a pool drawn from its own seed, never trained on):
``lambda_i <- [lambda_i + dual_lr (RGT_mb,i - eps_r)]_+`` and likewise ``mu``, ``nu``. The
held-out regret uses the trainer's attacker (budget logged). Fairness enters only for envs that
define a per-profile fairness statistic ``env.fairness(outcome, types) -> [B]``.

Random bidder subsets (§5, "practical approximations"): with ``bidder_subset=k`` each primal
step and each dual step draws ``k`` of the ``n`` bidders uniformly without replacement; only
their regret terms (and, in a dual step, their multipliers) enter, each weighted ``n / k``, so
the regret part of the loss and the multiplier increments are unbiased for the full-sum ones
(``E[w_i] = 1``). The attacker still searches every bidder's misreport (the deviation profiles
are one batch), so this changes the training signal's variance, not its cost here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auctionlab.errors import ConfigError
from auctionlab.training.constraints import (
    ConstraintHandler,
    DualState,
    Violations,
    violation_terms,
)
from auctionlab.types import Outcome, Types


def violations(env, outcome: Outcome, types: Types) -> dict[str, Tensor]:
    """Per-bidder IR violation ``[n]`` and fairness violation (scalar) of a batch.

    Args:
        env: the environment (its ``fairness``, unless ``None``, gives ``[B]`` statistics).
        outcome: the mechanism's outcome on the truthful reports (with gradients).
        types: the batch.

    Returns:
        ``{"ir": [n], "fairness": []}`` (fairness 0 when the env defines none).

    """
    utility = env.utility(outcome, types.values)  # [B, n]
    ir = (-utility).clamp_min(0.0).mean(0)
    fairness = (
        env.fairness(outcome, types).mean() if env.fairness is not None else utility.new_zeros(())
    )
    return {"ir": ir, "fairness": fairness}


class ConstrainedERM(ConstraintHandler):
    """Augmented Lagrangian of eq. (13) with multipliers updated on a held-out minibatch.

    Args:
        eps_regret: regret tolerance per bidder (training tolerance: set it below the
            deployment tolerance the certificate must clear).
        eps_ir: IR-violation tolerance per bidder.
        eps_fairness: fairness tolerance.
        rho: quadratic penalty weight ``rho``.
        rho_increment: added to ``rho`` every ``rho_every`` iterations (0 keeps it fixed).
        rho_every: iterations between ``rho`` increments.
        dual_lr: dual step sizes ``alpha_lambda = alpha_mu = alpha_nu``.
        dual_every: iterations between dual steps.
        lambda_init: initial regret multipliers.
        mu_init: initial IR multipliers.
        nu_init: initial fairness multiplier.
        heldout_profiles: size of the held-out pool the duals are measured on.
        heldout_batch: profiles per held-out minibatch.
        heldout_seed: seed of the held-out pool and of its attacker restarts
            (``heldout_seed + 2`` draws the bidder subsets).
        bidder_subset: ``k``: regret terms and multipliers of a random subset of ``k`` bidders
            per step, rescaled by ``n / k`` (``None``: every bidder).

    """

    name = "constrained_erm"
    #: The training loop passes IR and fairness violations to ``loss``.
    needs_violations = True

    def __init__(
        self,
        eps_regret: float = 1e-3,
        eps_ir: float = 1e-3,
        eps_fairness: float = 1e-2,
        rho: float = 1.0,
        rho_increment: float = 1.0,
        rho_every: int = 2000,
        dual_lr: float = 1.0,
        dual_every: int = 10,
        lambda_init: float = 1.0,
        mu_init: float = 1.0,
        nu_init: float = 1.0,
        heldout_profiles: int = 4096,
        heldout_batch: int = 256,
        heldout_seed: int = 700001,
        bidder_subset: int | None = None,
    ) -> None:
        for key, value in (
            ("eps_regret", eps_regret),
            ("eps_ir", eps_ir),
            ("eps_fairness", eps_fairness),
            ("rho_increment", rho_increment),
            ("lambda_init", lambda_init),
            ("mu_init", mu_init),
            ("nu_init", nu_init),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"trainer.constraint.{key}={value} must be >= 0 and finite")
        for key, value in (("rho", rho), ("dual_lr", dual_lr)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"trainer.constraint.{key}={value} must be > 0 and finite")
        for key, value in (
            ("rho_every", rho_every),
            ("dual_every", dual_every),
            ("heldout_batch", heldout_batch),
        ):
            if value < 1:
                raise ConfigError(f"trainer.constraint.{key}={value} must be >= 1")
        if bidder_subset is not None and bidder_subset < 1:
            raise ConfigError(
                f"trainer.constraint.bidder_subset={bidder_subset} must be >= 1 (or null: all)"
            )
        if heldout_profiles < heldout_batch:
            raise ConfigError(
                f"trainer.constraint.heldout_profiles={heldout_profiles} must be >= "
                f"heldout_batch={heldout_batch}"
            )
        self.eps_regret, self.eps_ir, self.eps_fairness = eps_regret, eps_ir, eps_fairness
        self.rho_init, self.rho_increment, self.rho_every = float(rho), rho_increment, rho_every
        self.dual_lr, self.dual_every = float(dual_lr), int(dual_every)
        self.lambda_init, self.mu_init, self.nu_init = lambda_init, mu_init, nu_init
        self.heldout_profiles, self.heldout_batch = int(heldout_profiles), int(heldout_batch)
        self.heldout_seed = int(heldout_seed)
        self.bidder_subset = None if bidder_subset is None else int(bidder_subset)

    def setup(self, n_bidders: int, iterations: int, device: torch.device) -> None:  # noqa: D102
        super().setup(n_bidders, iterations, device)
        self.rho = self.rho_init
        self.lambdas = torch.full((n_bidders,), float(self.lambda_init), device=device)
        self.mus = torch.full((n_bidders,), float(self.mu_init), device=device)
        self.nu = torch.tensor(float(self.nu_init), device=device)
        self.cursor = 0
        self.last: dict[str, float] = {}
        self.pool: Types | None = None
        self.generator = torch.Generator(device=device).manual_seed(self.heldout_seed + 1)
        if self.bidder_subset is not None and self.bidder_subset > n_bidders:
            raise ConfigError(
                f"trainer.constraint.bidder_subset={self.bidder_subset} must be <= the env's "
                f"{n_bidders} bidders (or null: all)"
            )
        self.subset_generator = torch.Generator().manual_seed(self.heldout_seed + 2)
        self.last_weights = torch.ones(n_bidders, device=device)

    def subset_weights(self) -> Tensor:
        """``[n]`` weights of the bidders' regret terms for one step.

        ``n / k`` on ``k`` bidders drawn uniformly without replacement, 0 elsewhere (so each
        weight has mean 1); all ones without ``bidder_subset``.
        """
        n = self.lambdas.shape[0]
        if self.bidder_subset is None or self.bidder_subset == n:
            weights = torch.ones(n, device=self.device)
        else:
            chosen = torch.randperm(n, generator=self.subset_generator)[: self.bidder_subset]
            weights = torch.zeros(n, device=self.device)
            weights[chosen.to(self.device)] = n / self.bidder_subset
        self.last_weights = weights
        return weights

    def loss(self, objective: Tensor, violations: Violations) -> Tensor:  # noqa: D102 - eq. (13)
        revenue = objective
        regret, ir, fairness = violation_terms(violations)
        ir = regret.new_zeros(regret.shape) if ir is None else ir
        fairness = regret.new_zeros(()) if fairness is None else fairness
        hinge = lambda z: z.clamp_min(0.0).pow(2)  # noqa: E731
        weights = self.subset_weights()  # [n]: n/k on the step's bidders (ones: all)
        return (
            -revenue
            + (weights * self.lambdas * (regret - self.eps_regret)).sum()
            + (self.mus * (ir - self.eps_ir)).sum()
            + self.nu * (fairness - self.eps_fairness)
            + 0.5
            * self.rho
            * (
                (weights * hinge(regret - self.eps_regret)).sum()
                + hinge(ir - self.eps_ir).sum()
                + hinge(fairness - self.eps_fairness).sum()
            )
        )

    def _heldout(self, env) -> Types:
        if self.pool is None:
            generator = torch.Generator(device=self.device).manual_seed(self.heldout_seed)
            self.pool = env.sample(self.heldout_profiles, generator)
        lo = self.cursor
        self.cursor = (self.cursor + self.heldout_batch) % (
            self.heldout_profiles - self.heldout_batch + 1
        )
        return self.pool[slice(lo, lo + self.heldout_batch)]

    def dual_step(self, state: DualState) -> None:
        """The ``rho`` schedule, then every ``dual_every`` iterations projected dual ascent.

        The multipliers move on a held-out minibatch attacked with ``state.attacker``; without
        one (``update`` outside a trainer) only the schedule moves.

        Args:
            state: the iteration and the mechanism, env and attacker to measure with.

        """
        if self.rho_increment and (state.iteration + 1) % self.rho_every == 0:
            self.rho += self.rho_increment
        if state.attacker is None or state.iteration % self.dual_every != 0:
            return
        env, mechanism = state.env, state.mechanism
        types = self._heldout(env)
        attack = state.attacker.attack(mechanism, env, types, self.generator)
        regret = attack.gain.mean(0)  # [n]
        with torch.no_grad():
            measured = violations(env, mechanism(types.values, types.public), types)
        weights = self.subset_weights()  # only the step's bidders' multipliers move
        self.lambdas = (
            self.lambdas + self.dual_lr * weights * (regret - self.eps_regret)
        ).clamp_min(0.0)
        self.mus = (self.mus + self.dual_lr * (measured["ir"] - self.eps_ir)).clamp_min(0.0)
        self.nu = (self.nu + self.dual_lr * (measured["fairness"] - self.eps_fairness)).clamp_min(
            0.0
        )
        self.last = {
            "heldout_regret": float(regret.mean()),
            "heldout_ir_violation": float(measured["ir"].mean()),
            "heldout_fairness": float(measured["fairness"]),
        }

    def metrics(self) -> dict[str, float]:  # noqa: D102
        return {
            "lambda_mean": float(self.lambdas.mean()),
            "mu_mean": float(self.mus.mean()),
            "nu": float(self.nu),
            "rho": self.rho,
            **self.last,
        }

    def state_dict(self) -> dict:  # noqa: D102
        return {
            "lambdas": self.lambdas,
            "mus": self.mus,
            "nu": self.nu,
            "rho": self.rho,
            "cursor": self.cursor,
            "generator": self.generator.get_state(),
            "subset_generator": self.subset_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.lambdas = state["lambdas"].to(self.device).clone()
        self.mus = state["mus"].to(self.device).clone()
        self.nu = state["nu"].to(self.device).clone()
        self.rho, self.cursor = float(state["rho"]), int(state["cursor"])
        self.generator.set_state(state["generator"])
        if "subset_generator" in state:  # checkpoints from before bidder subsets lack it
            self.subset_generator.set_state(state["subset_generator"])
