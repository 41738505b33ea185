"""Local regret ([okada2025lic] §3.3): a few gradient steps started at the true valuation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.attackers.base import (
    Attacker,
    AttackResult,
    deviation_profiles,
    deviation_utility,
    expand_public,
    own_utility,
)
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types


class LocalAttacker(PGDAttacker):
    """Gradient ascent from the truthful report only: the "local regret" of [okada2025lic].

    One start (the true valuation), ``steps`` projected Adam steps (the paper: one), the best
    iterate kept. What it finds is a lower bound on global regret; the evaluation attacker
    (``pgd`` with many restarts) must be used for the regret a mechanism is reported with.
    Cached misreports are ignored (``uses_init``), so the trainer keeps no cache.

    Args:
        steps: gradient steps from the truth (1 in the paper).
        step_size: step size, as a fraction of each coordinate's report range (the size of
            the neighbourhood searched).
        optimizer: ``adam`` (one Adam step moves every coordinate by ``step_size``) or ``sgd``.
        radius: ``fixed`` (every step has length ``step_size``, the paper) or ``uniform``
            (training only: each bidder's step is scaled by a fresh U(0, 1] draw, so the
            neighbourhood is probed at every distance up to ``step_size`` rather than on its
            boundary only).
        two_sided: training only: the trainer's regret also counts the reverse LIC condition
            ([okada2025lic] §3.1, condition 2) at the same nearby report ``b_i``:
            ``max(0, u(b_i; M(v)) - u(b_i; M(b_i, v_-i)))``, from the two outcomes the
            trainer computes anyway.
        chunk_size: profiles per batch when attacking many profiles.
        curve_restarts: accepted for config compatibility; there is one start.
        curve_steps: step counts at which the regret-vs-budget curve is recorded.
        progress: show a progress bar over chunks.

    """

    name = "local"
    training_only = "searches only next to the truth (a training device)"
    uses_init = False

    def __init__(
        self,
        steps: int = 1,
        step_size: float = 0.1,
        optimizer: str = "adam",
        radius: str = "fixed",
        two_sided: bool = False,
        chunk_size: int | None = None,
        curve_restarts: Sequence[int] = (1,),
        curve_steps: Sequence[int] = (),
        progress: bool = False,
    ) -> None:
        super().__init__(
            restarts=1,
            steps=steps,
            step_size=step_size,
            optimizer=optimizer,
            include_truthful=True,
            chunk_size=chunk_size,
            curve_restarts=(1,),
            curve_steps=curve_steps,
            progress=progress,
        )
        if radius not in ("fixed", "uniform"):
            raise ConfigError(
                f"attacker.radius={radius!r} is not an option; choose one of: fixed, uniform"
            )
        self.radius = radius
        self.two_sided = bool(two_sided)

    @property
    def budget(self) -> dict:
        """The PGD budget plus the neighbourhood ``radius`` rule (and ``two_sided`` if set)."""
        extra = {"two_sided": True} if self.two_sided else {}
        return dict(super().budget, radius=self.radius, **extra)

    def starts(self, env, types: Types, generator: torch.Generator, init: Tensor | None) -> Tensor:
        """``[1, B, n, m]``: the truthful report (``init`` is ignored)."""
        return types.values.unsqueeze(0).clone()

    def as_cutting_plane(self) -> Attacker:
        """Refused: a local search has no PGD budget to refresh witnesses with."""
        return Attacker.as_cutting_plane(self)

    def attack_chunk(  # noqa: D102 - PGD from the truth; training skips the best-iterate pass
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        if truthful:  # evaluation: best iterate, truthful utility, curve
            return super().attack_chunk(mechanism, env, types, generator, init, truthful)
        # Training: the trainer evaluates the misreport itself (and floors regret at 0), so
        # the last iterate is returned without the extra forward pass that picks the best one.
        x = types.values.unsqueeze(0).detach()
        scale = env.report_space.width(x.device)
        sizes = self.step_sizes()
        if self.radius == "uniform":
            draws = torch.rand((1, *x.shape[1:3], 1), generator=generator, dtype=x.dtype)
            scale = scale * (1.0 - draws).to(x.device)
        m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
        for t in range(self.steps):
            with torch.enable_grad():
                x.requires_grad_(True)
                u = deviation_utility(mechanism, env, types, x)
                if not u.requires_grad:
                    break
                (grad,) = torch.autograd.grad(u.sum(), x, allow_unused=True)
            if grad is None:
                break
            direction = grad
            if self.optimizer == "adam":  # the same update as PGDAttacker's
                m1 = 0.9 * m1 + 0.1 * grad
                m2 = 0.999 * m2 + 0.001 * grad * grad
                direction = (m1 / (1 - 0.9 ** (t + 1))) / (
                    (m2 / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8
                )
            x = env.report_space.project(x.detach() + sizes[t] * scale * direction)
        x = x.detach()
        return AttackResult(x[0], torch.full(x.shape[1:3], torch.nan), None, dict(self.budget))


def reverse_lic_violation(mechanism, env, types: Types, misreports: Tensor) -> Tensor:
    """Condition 2 of LIC ([okada2025lic] §3.1): does the type ``b_i`` prefer its own outcome?

    For each bidder ``i`` with misreport ``b_i`` (others truthful), the violation is
    ``max(0, u(b_i; outcome(v)) - u(b_i; outcome(b_i, v_-i)))``: how much a bidder whose true
    type were ``b_i`` would gain by reporting ``v_i`` instead.

    Args:
        mechanism: the mechanism.
        env: gives the utility function.
        types: true types, values ``[B, n, m]``.
        misreports: ``[B, n, m]`` one nearby report per bidder (e.g. a local attack's).

    Returns:
        ``[B, n]`` violations (0 where the reverse condition holds).

    """
    values = types.values
    B, n, m = values.shape
    with torch.no_grad():
        truthful = mechanism(values, types.public)
        profiles = deviation_profiles(values, misreports.unsqueeze(0)).reshape(n * B, n, m)
        deviating = mechanism(profiles, expand_public(types.public, n))
        # Utility of type b_i at its own outcome (profile i) ...
        own = own_utility(env, deviating, misreports, 1)[0]  # [B, n]
        # ... and at the truthful profile's outcome for bidder i.
        at_truth = env.utility(Outcome(truthful.allocation, truthful.payment), misreports)
    return (at_truth - own).clamp_min(0.0)


def reverse_lic_search(
    mechanism, env, types: Types, steps: int = 1, step_size: float = 0.1
) -> Tensor:
    """The largest violation of LIC condition 2 a local search from the truth finds.

    Searches nearby types ``b_i`` (others truthful) that would rather have the truthful
    report's outcome than their own: maximises
    ``u(b_i; outcome(v)) - u(b_i; outcome(b_i, v_-i))`` with ``steps`` signed-gradient steps of
    ``step_size`` x the report range from ``b_i = v_i`` (where it is 0), all bidders at once.

    Args:
        mechanism: the mechanism.
        env: gives the utility function and the report space.
        types: true types, values ``[B, n, m]``.
        steps: gradient steps from the truth.
        step_size: step, as a fraction of each coordinate's report range.

    Returns:
        ``[B, n]`` the best violation found (0 where none was).

    """
    values = types.values
    B, n, m = values.shape
    with torch.no_grad():
        truthful = mechanism(values, types.public)
    scale = env.report_space.width(values.device)
    x = values.detach().clone()
    best = torch.zeros(B, n, device=values.device, dtype=values.dtype)
    for t in range(steps + 1):
        with torch.enable_grad():
            x.requires_grad_(t < steps)
            profiles = deviation_profiles(values, x.unsqueeze(0)).reshape(n * B, n, m)
            deviating = mechanism(profiles, expand_public(types.public, n))
            gap = env.utility(truthful, x) - own_utility(env, deviating, x, 1)[0]
            grad = None
            if t < steps and gap.requires_grad:
                (grad,) = torch.autograd.grad(gap.sum(), x, allow_unused=True)
        best = torch.maximum(best, gap.detach())
        if grad is None:
            break
        x = env.report_space.project(x.detach() + step_size * scale * grad.sign())
    return best.clamp_min(0.0)
