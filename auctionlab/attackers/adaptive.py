"""Adaptive misreport search: a global gradient-free sweep, then successive-halving refinement.

Gradient ascent alone misses narrow high-gain regions of a misreport's utility (attention-based
nets have them), and most of a fixed ``restarts x steps`` budget is spent on profiles where
nothing is left to find. The adaptive search spends its budget where it pays, every bidder of
every profile (an *instance*) in one batch:

1. **Global sweep**: ``samples`` low-discrepancy reports per instance (a scrambled Sobol set,
   shifted per instance; draws from the prior where the report space is unbounded), plus the
   truthful report and any explicit starts, scored without gradients; the best ``starts`` are
   kept.
2. **Coordinate search**: ``coordinate_rounds`` rounds in which every coordinate of the
   incumbent is set to each of ``coordinate_levels`` evenly spaced levels of its range.
3. **Gradient refinement with successive halving**: Adam ascent from the truthful report, the
   incumbent and the best sweep candidates; after each of ``rounds`` rounds the best ``keep``
   fraction of starts per instance survives and the next round runs ``1 / keep`` times more
   steps, so every round costs the same. Every ``check_every`` steps, an instance whose best
   utility rose by less than ``stall_tolerance`` stops (the batch is compacted: no work is
   spent on it afterwards).
4. **Polish**: ``polish_starts`` Adam starts around each instance's incumbent (the incumbent
   itself and copies jittered by ``polish_step_size`` of the report range) run
   ``polish_steps`` steps with a step size decaying to ``polish_final_step_size``. On
   piecewise-linear nets the incumbent often sits next to a kink it cannot cross with the
   refinement's last step size; the small jittered starts reach the kink from the other
   side (without it the mean regret stays ~0.3% below PGD 100 x 1000 on such nets).

Every evaluation of a deviation's utility counts as one *deviation-step* (a gradient step is
one, a scored candidate is one); the total actually spent is in the budget next to every regret,
and the regret-vs-budget curve is recorded after each stage against the deviation-steps spent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from auctionlab.attackers.base import Attacker, AttackResult, expand_public, require_at_least
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types


def instance_utility(
    mechanism, env, types: Types, profile: Tensor, bidder: Tensor, misreports: Tensor
) -> Tensor:
    """True utility of one deviating bidder per instance, for many candidate reports.

    An instance is a (profile, bidder) pair: the bidder misreports, the others report
    truthfully. Instances of one batch may come from different profiles and bidders, so a
    search can drop the instances it has finished with.

    Args:
        mechanism: the mechanism under attack.
        env: gives the utility function and the report space.
        types: the true profiles; ``values`` is ``[B, n, d]``.
        profile: ``[K]`` profile index of each instance.
        bidder: ``[K]`` deviating bidder of each instance.
        misreports: ``[R, K, d]`` candidate reports of each instance's bidder.

    Returns:
        ``[R, K]`` the deviator's true utility at each candidate (its report mapped into the
        deviation set of its true type first, as in ``deviation_utility``).

    """
    values = types.values[profile]  # [K, n, d]
    R, K, d = misreports.shape
    n = values.shape[1]
    own = F.one_hot(bidder, n).bool().view(1, K, n, 1)
    reports = torch.where(own, misreports.unsqueeze(2), values.unsqueeze(0))  # [R, K, n, d]
    reports = env.report_space.restrict(reports, values)
    public = {k: v[profile] for k, v in types.public.items()}
    outcome = mechanism(reports.reshape(R * K, n, d), expand_public(public, R))
    pick = bidder.view(1, K, 1, 1)
    allocation = outcome.allocation.view(R, K, n, -1)
    allocation = allocation.gather(2, pick.expand(R, K, 1, allocation.shape[-1]))  # [R, K, 1, a]
    payment = outcome.payment.view(R, K, n).gather(2, bidder.view(1, K, 1).expand(R, K, 1))
    own_values = values.gather(1, bidder.view(K, 1, 1).expand(K, 1, d))  # [K, 1, d]
    return env.utility(Outcome(allocation, payment), own_values.unsqueeze(0)).squeeze(-1)


def project_instances(
    env, types: Types, profile: Tensor, bidder: Tensor, reports: Tensor
) -> Tensor:
    """Project each instance's candidate reports onto its bidder's report space.

    A report space projects whole ``[..., n, d]`` profiles (its support need not be a box),
    so each candidate is placed in its profile's row, projected, and read back.

    Args:
        env: gives the report space.
        types: the true profiles; ``values`` is ``[B, n, d]``.
        profile: ``[K]`` profile index of each instance.
        bidder: ``[K]`` deviating bidder of each instance.
        reports: ``[R, K, d]`` candidate reports.

    Returns:
        ``[R, K, d]`` projected reports.

    """
    values = types.values[profile]  # [K, n, d]
    R, K, d = reports.shape
    own = F.one_hot(bidder, values.shape[1]).bool().view(1, K, -1, 1)
    full = env.report_space.project(torch.where(own, reports.unsqueeze(2), values.unsqueeze(0)))
    return full.gather(2, bidder.view(1, K, 1, 1).expand(R, K, 1, d)).squeeze(2)


def utility_and_gradient(
    mechanism, env, types: Types, profile: Tensor, bidder: Tensor, x: Tensor, gradient: bool
) -> tuple[Tensor, Tensor | None]:
    """``instance_utility`` of ``[R, K, d]`` reports and, if asked, its gradient in them.

    Returns:
        ``[R, K]`` utilities (detached) and ``[R, K, d]`` gradients, or ``None`` where not
        asked for or where the utility does not depend on the report.

    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(gradient)
        u = instance_utility(mechanism, env, types, profile, bidder, x)
        grad = None
        if gradient and u.requires_grad:
            (grad,) = torch.autograd.grad(u.sum(), x, allow_unused=True)
    return u.detach(), grad


def adam_direction(
    grad: Tensor, m1: Tensor, m2: Tensor, t: int, beta1: float = 0.9, beta2: float = 0.999
) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam ascent direction (bias-corrected) at step ``t`` (from 0), with the new moments."""
    m1 = beta1 * m1 + (1 - beta1) * grad
    m2 = beta2 * m2 + (1 - beta2) * grad * grad
    direction = (m1 / (1 - beta1 ** (t + 1))) / ((m2 / (1 - beta2 ** (t + 1))).sqrt() + 1e-8)
    return direction, m1, m2


class AdaptiveAttacker(Attacker):
    """Global sweep + coordinate search + successive-halving gradient ascent (module docstring).

    Args:
        samples: global-sweep candidates per instance (0: no sweep).
        coordinate_rounds: rounds of coordinate search around the incumbent (0: none).
        coordinate_levels: levels per coordinate in coordinate search (>= 2).
        starts: gradient starts per instance in the first round (truthful + incumbent + best
            sweep candidates).
        rounds: successive-halving rounds (0: no gradient refinement).
        steps: Adam steps of the first round; round ``r`` runs ``steps / keep**r``.
        keep: fraction of starts kept after each round (at least one start survives).
        step_size: first step size, as a fraction of each coordinate's report range.
        final_step_size: last step size of a start that survives every round (geometric decay).
        stall_tolerance: an instance stops when its best utility rose by less than this over
            ``check_every`` steps.
        check_every: steps between stall checks (``None``: ``steps``).
        candidates_per_pass: most candidates per instance scored in one forward pass.
        chunk_size: profiles per chunk.
        curve_restarts: accepted for config compatibility (the curve has one point per stage).
        curve_steps: accepted for config compatibility.
        progress: show a progress bar over chunks.
        polish_starts: starts of the polish stage (the incumbent + jittered copies; 0: none).
        polish_steps: Adam steps of the polish stage.
        polish_step_size: first polish step size and the jitter's standard deviation, as a
            fraction of each coordinate's report range.
        polish_final_step_size: last polish step size (geometric decay).

    """

    name = "adaptive"
    include_truthful = True
    curve_phase = None  # its curve is the whole search, not a gradient phase

    def __init__(
        self,
        samples: int = 512,
        coordinate_rounds: int = 1,
        coordinate_levels: int = 21,
        starts: int = 32,
        rounds: int = 3,
        steps: int = 40,
        keep: float = 0.25,
        step_size: float = 0.05,
        final_step_size: float | None = 0.001,
        stall_tolerance: float = 1.0e-6,
        check_every: int | None = None,
        candidates_per_pass: int = 128,
        chunk_size: int | None = None,
        curve_restarts: Sequence[int] = (),
        curve_steps: Sequence[int] = (),
        progress: bool = False,
        polish_starts: int = 8,
        polish_steps: int = 200,
        polish_step_size: float = 0.01,
        polish_final_step_size: float = 1.0e-4,
    ) -> None:
        require_at_least(
            [
                ("samples", samples, 0),
                ("coordinate_rounds", coordinate_rounds, 0),
                ("coordinate_levels", coordinate_levels, 2),
                ("starts", starts, 1),
                ("rounds", rounds, 0),
                ("steps", steps, 1),
                ("candidates_per_pass", candidates_per_pass, 1),
                ("polish_starts", polish_starts, 0),
                ("polish_steps", polish_steps, 1),
            ]
        )
        if polish_step_size <= 0 or polish_final_step_size <= 0:
            raise ConfigError(
                "attacker.polish_step_size and attacker.polish_final_step_size must be > 0"
            )
        if not 0.0 < keep <= 1.0:
            raise ConfigError(f"attacker.keep={keep} must be in (0, 1]")
        if step_size <= 0 or (final_step_size is not None and final_step_size <= 0):
            raise ConfigError("attacker.step_size and attacker.final_step_size must be > 0")
        if stall_tolerance < 0:
            raise ConfigError(f"attacker.stall_tolerance={stall_tolerance} must be >= 0")
        if check_every is not None and check_every < 1:
            raise ConfigError(f"attacker.check_every={check_every} must be >= 1 (or null)")
        self.samples = int(samples)
        self.coordinate_rounds, self.coordinate_levels = (
            int(coordinate_rounds),
            int(coordinate_levels),
        )
        self.starts_count, self.rounds, self.first_steps = int(starts), int(rounds), int(steps)
        self.keep = float(keep)
        self.step_size = float(step_size)
        self.final_step_size = None if final_step_size is None else float(final_step_size)
        self.stall_tolerance = float(stall_tolerance)
        self.check_every = int(check_every or steps)
        self.candidates_per_pass = int(candidates_per_pass)
        self.chunk_size = chunk_size
        self.curve_restarts, self.curve_steps = list(curve_restarts), list(curve_steps)
        self.progress = progress
        self.polish_starts, self.polish_steps = int(polish_starts), int(polish_steps)
        self.polish_step_size = float(polish_step_size)
        self.polish_final_step_size = float(polish_final_step_size)
        # What the base class reports as ``attack_restarts`` / ``attack_steps``.
        self.restarts = self.starts_count
        self.steps = sum(self.round_steps()) + (self.polish_steps if self.polish_starts else 0)

    # -- budget ---------------------------------------------------------------------------
    def round_steps(self) -> list[int]:
        """Adam steps of each round (equal cost per round under successive halving)."""
        return [max(1, round(self.first_steps / self.keep**r)) for r in range(self.rounds)]

    def round_starts(self) -> list[int]:
        """Starts alive in each round."""
        alive, out = self.starts_count, []
        for _ in range(self.rounds):
            out.append(alive)
            alive = max(1, math.ceil(alive * self.keep))
        return out

    def max_deviation_steps(self, dimensions: int, extra_starts: int = 0) -> int:
        """Most deviation-steps one instance may spend (no instance stops early).

        Args:
            dimensions: ``d``, report coordinates per bidder.
            extra_starts: explicit starts scored with the sweep.

        """
        sweep = self.samples + 1 + extra_starts
        coordinate = self.coordinate_rounds * dimensions * self.coordinate_levels
        gradient = sum(r * s for r, s in zip(self.round_starts(), self.round_steps(), strict=True))
        polish = self.polish_starts * (self.polish_steps + 1)
        return sweep + coordinate + gradient + (self.starts_count if self.rounds else 0) + polish

    @property
    def budget(self) -> dict:
        """The search's knobs, logged next to every regret it produces."""
        return {
            "attacker": self.name,
            "samples": self.samples,
            "coordinate_rounds": self.coordinate_rounds,
            "coordinate_levels": self.coordinate_levels,
            "restarts": self.starts_count,
            "starts": self.starts_count,
            "rounds": self.rounds,
            "round_steps": self.round_steps(),
            "round_starts": self.round_starts(),
            "steps": self.steps,
            "keep": self.keep,
            "step_size": self.step_size,
            "final_step_size": self.final_step_size,
            "optimizer": "adam",
            "stall_tolerance": self.stall_tolerance,
            "check_every": self.check_every,
            "polish_starts": self.polish_starts,
            "polish_steps": self.polish_steps,
            "polish_step_size": self.polish_step_size,
            "polish_final_step_size": self.polish_final_step_size,
            "include_truthful": True,
        }

    def describe(self) -> str:
        """Short budget text, e.g. ``adaptive: 512 sweep + ... + 32 starts x 3 rounds``."""
        rounds = " / ".join(
            f"{r}x{s}" for r, s in zip(self.round_starts(), self.round_steps(), strict=True)
        )
        polish = f" + polish {self.polish_starts}x{self.polish_steps}" if self.polish_starts else ""
        return (
            f"adaptive: {self.samples} sweep + {self.coordinate_rounds} coordinate round(s) x "
            f"{self.coordinate_levels} levels + Adam {rounds}{polish} "
            f"(stall {self.stall_tolerance:g})"
        )

    # -- the search -----------------------------------------------------------------------
    def _sweep_points(
        self, env, types: Types, bidder: Tensor, generator: torch.Generator
    ) -> Tensor:
        """``[samples, K, d]`` sweep candidates of each instance's bidder."""
        space = env.report_space
        values = types.values
        K, d = bidder.shape[0], values.shape[-1]
        device = values.device
        if space.bounded and space.distribution.independent:
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=device))
            sobol = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed)
            base = sobol.draw(self.samples).to(device=device, dtype=values.dtype)  # [S, d]
            shift = torch.rand(K, d, generator=generator, device=device).to(values.dtype)
            unit = (base.unsqueeze(1) + shift.unsqueeze(0)) % 1.0  # [S, K, d]
            low = space.low.to(values)[bidder]  # [K, d]
            return low + (space.high.to(values)[bidder] - low) * unit
        draws = space.draw(self.samples * K, generator).to(values)  # [S * K, n, d]
        draws = draws.view(self.samples, K, -1, d)
        return draws.gather(2, bidder.view(1, K, 1, 1).expand(self.samples, K, 1, d)).squeeze(2)

    def _score(self, mechanism, env, types, profile, bidder, candidates: Tensor) -> Tensor:
        """``[C, K]`` utilities of ``[C, K, d]`` candidates, in passes, without gradients."""
        with torch.no_grad():
            return torch.cat(
                [
                    instance_utility(
                        mechanism,
                        env,
                        types,
                        profile,
                        bidder,
                        candidates[lo : lo + self.candidates_per_pass],
                    )
                    for lo in range(0, candidates.shape[0], self.candidates_per_pass)
                ]
            )

    def attack_chunk(  # noqa: C901, PLR0915 - the three stages of the module docstring
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        """The sweep, coordinate search and refinement on one chunk of profiles.

        Returns:
            Misreports ``[B, n, d]`` and utilities ``[B, n]``; the curve is keyed by
            ``(starts, Adam steps of the survivors so far)`` after the sweep and after each
            round, with the mean deviation-steps per instance spent up to that point in
            ``curve_cost``.

        """
        space = env.report_space
        values = types.values
        B, n, d = values.shape
        device = values.device
        K = B * n
        profile = torch.arange(B, device=device).repeat_interleave(n)  # instance k = (b, i)
        bidder = torch.arange(n, device=device).repeat(B)
        truth = values.reshape(K, d)
        spent = torch.zeros(K, device=device, dtype=torch.float64)  # deviation-steps
        pool = [truth.unsqueeze(0)]
        if init is not None:
            pool.append(init.to(values).reshape(init.shape[0], K, d))
        if self.samples:
            pool.append(self._sweep_points(env, types, bidder, generator))
        candidates = project_instances(env, types, profile, bidder, torch.cat(pool))  # [C, K, d]
        utility = self._score(mechanism, env, types, profile, bidder, candidates)  # [C, K]
        spent += candidates.shape[0]
        top = min(self.starts_count, candidates.shape[0])
        top_u, top_i = utility.topk(top, dim=0)  # [top, K]
        top_x = candidates.gather(0, top_i.unsqueeze(-1).expand(top, K, d))
        best_x, best_u = top_x[0].clone(), top_u[0].clone()  # incumbent [K, d], [K]
        if self.coordinate_rounds and space.bounded:
            low, high = space.low.to(values)[bidder], space.high.to(values)[bidder]  # [K, d]
            levels = torch.linspace(0, 1, self.coordinate_levels, device=device).to(values)
            for _ in range(self.coordinate_rounds):
                for c in range(d):
                    trial = best_x.unsqueeze(0).repeat(self.coordinate_levels, 1, 1)
                    trial[..., c] = low[:, c] + (high[:, c] - low[:, c]) * levels[:, None]
                    trial = project_instances(env, types, profile, bidder, trial)
                    u = self._score(mechanism, env, types, profile, bidder, trial)
                    spent += trial.shape[0]
                    best_u, best_x = self.fold_best(u, trial, best_u, best_x)
        truthful_utility = self.truthful_utility(mechanism, env, types) if truthful else None
        curve_u: dict[tuple[int, int], Tensor] = {(self.starts_count, 0): best_u.clone()}
        curve_cost: dict[tuple[int, int], float] = {(self.starts_count, 0): float(spent.mean())}

        if self.rounds:
            # Starts: the truthful report, the incumbent, then the best sweep candidates.
            starts = torch.cat([truth.unsqueeze(0), best_x.unsqueeze(0), top_x[1:]])
            x = project_instances(env, types, profile, bidder, starts[: self.starts_count])
            active = torch.arange(K, device=device)
            run_x, run_u = x.clone(), torch.full(x.shape[:2], -math.inf).to(values)
            m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
            width = space.width(device).to(values)[bidder]  # [K, d]
            sizes = self._step_sizes()
            t, last_check = 0, best_u.clone()
            for r, steps in enumerate(self.round_steps()):
                final_round = r == self.rounds - 1
                for s in range(steps + (1 if final_round else 0)):
                    if active.numel() == 0:
                        break
                    last_step = final_round and s == steps
                    p, b = profile[active], bidder[active]
                    u, grad = utility_and_gradient(
                        mechanism, env, types, p, b, x, not last_step
                    )  # [R, A]
                    spent[active] += x.shape[0]
                    better = u > run_u
                    run_u = torch.where(better, u, run_u)
                    run_x = torch.where(better.unsqueeze(-1), x, run_x)
                    if last_step:
                        break
                    if grad is None:  # the utility does not depend on the report here
                        break
                    direction, m1, m2 = adam_direction(grad, m1, m2, t)
                    x = project_instances(
                        env, types, p, b, x + sizes[t] * width[active] * direction
                    )
                    t += 1
                    if t % self.check_every == 0:
                        # Instances whose best utility stalled stop here.
                        now = run_u.max(0).values
                        grew = torch.maximum(now, best_u[active]) - last_check[active]
                        self._merge(best_x, best_u, active, run_x, run_u)
                        last_check[active] = best_u[active]
                        alive = grew > self.stall_tolerance
                        if not bool(alive.all()):
                            active = active[alive]
                            x, run_x, run_u = x[:, alive], run_x[:, alive], run_u[:, alive]
                            m1, m2 = m1[:, alive], m2[:, alive]
                self._merge(best_x, best_u, active, run_x, run_u)
                # Nominal keys (every chunk has the same), the spent cost beside them.
                key = (self.starts_count, sum(self.round_steps()[: r + 1]))
                curve_u[key] = best_u.clone()
                curve_cost[key] = float(spent.mean())
                if not final_round and active.numel():
                    kept = max(1, math.ceil(x.shape[0] * self.keep))
                    order = run_u.topk(kept, dim=0).indices  # [kept, A]
                    pick = order.unsqueeze(-1).expand(kept, order.shape[1], d)
                    x, run_x = x.gather(0, pick), run_x.gather(0, pick)
                    m1, m2 = m1.gather(0, pick), m2.gather(0, pick)
                    run_u = run_u.gather(0, order)

        if self.polish_starts:
            self._polish(mechanism, env, types, profile, bidder, best_x, best_u, spent, generator)
            key = (self.starts_count, self.steps)
            curve_u[key] = best_u.clone()
            curve_cost[key] = float(spent.mean())

        misreports, utility = best_x.view(B, n, d), best_u.view(B, n)
        curve: dict[tuple[int, int], Tensor] = {}
        if truthful_utility is not None:
            curve = {
                k: (u.view(B, n) - truthful_utility).clamp_min(0.0) for k, u in curve_u.items()
            }
        budget = dict(self.budget, gradient=True, deviation_steps=float(spent.sum()))
        return AttackResult(
            misreports, utility, truthful_utility, budget, curve, curve_cost=curve_cost
        )

    def _polish(  # noqa: PLR0913 - the search state of attack_chunk
        self,
        mechanism,
        env,
        types: Types,
        profile: Tensor,
        bidder: Tensor,
        best_x: Tensor,
        best_u: Tensor,
        spent: Tensor,
        generator: torch.Generator,
    ) -> None:
        """Adam from the incumbents and jittered copies; updates ``best_x``/``best_u`` in place.

        Args:
            mechanism: the mechanism under attack.
            env: gives the utility function and the report space.
            types: the true profiles.
            profile: ``[K]`` profile index of each instance.
            bidder: ``[K]`` deviating bidder of each instance.
            best_x: ``[K, d]`` incumbents.
            best_u: ``[K]`` their utilities.
            spent: ``[K]`` deviation-steps spent so far (incremented in place).
            generator: draws the jitter.

        """
        K, d = best_x.shape
        width = env.report_space.width(best_x.device).to(best_x)[bidder]  # [K, d]
        noise = torch.randn(
            self.polish_starts - 1, K, d, generator=generator, device=best_x.device
        ).to(best_x)
        x = torch.cat([best_x.unsqueeze(0), best_x + self.polish_step_size * width * noise])
        x = project_instances(env, types, profile, bidder, x)  # [P, K, d]
        m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
        # No stall stopping here: on piecewise-linear nets the gains come late, at small steps.
        steps = self.polish_steps
        ratio = (self.polish_final_step_size / self.polish_step_size) ** (1.0 / max(steps - 1, 1))
        for t in range(steps + 1):
            last_step = t == steps
            u, grad = utility_and_gradient(mechanism, env, types, profile, bidder, x, not last_step)
            spent += x.shape[0]
            best_u[:], best_x[:] = self.fold_best(u, x, best_u, best_x)
            if last_step or grad is None:
                break
            direction, m1, m2 = adam_direction(grad, m1, m2, t)
            size = self.polish_step_size * ratio**t
            x = project_instances(env, types, profile, bidder, x + size * width * direction)

    def _merge(self, best_x: Tensor, best_u: Tensor, active: Tensor, run_x: Tensor, run_u: Tensor):
        """Fold the running starts' best ``[R, A]`` into the instances' incumbents (in place)."""
        if active.numel() == 0:
            return
        best_u[active], best_x[active] = self.fold_best(
            run_u, run_x, best_u[active], best_x[active]
        )

    def _step_sizes(self) -> list[float]:
        """Step size of every Adam step along the path of a start that survives every round."""
        total = sum(self.round_steps())
        if self.final_step_size is None or total <= 1:
            return [self.step_size] * max(total, 1)
        ratio = (self.final_step_size / self.step_size) ** (1.0 / (total - 1))
        return [self.step_size * ratio**t for t in range(total)]
