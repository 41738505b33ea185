"""Exhaustive grid search of each bidder's report: a near-exact best-response oracle.

For reports of at most two dimensions (``1x2``, ``2x2``, their unit-demand variants) a grid
of the whole report box is affordable, and it finds what gradient search misses: narrow
regions of high utility that no ascent path from the starts leads into, and utilities that are
flat or piecewise constant in the report. For every profile and bidder the candidates are

1. the truthful report, then any explicit starts (``init``, e.g. another attacker's
   misreports, so the oracle is never below that attacker);
2. every point of a grid of ``points`` levels per report dimension over the report box;
3. ``refinements`` local grids of ``refine_points`` levels per dimension over +-1 cell of the
   previous level around the incumbent (each one ``(refine_points - 1) / 2`` times finer).

All candidates of all profiles and bidders are scored with ``deviation_utility`` in passes of
at most ``candidates_per_pass`` candidates; each bidder keeps its best. The best misreport is
then re-scored alone (its own forward pass) and that utility is the one reported.
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
from auctionlab.errors import ConfigError
from auctionlab.types import Types

#: The most report dimensions per bidder the grid searches (``points ** d`` candidates).
MAX_DIMENSIONS = 2
#: What to use where the grid does not apply.
ALTERNATIVES = "use attacker=adaptive or attacker=pgd"


def unit_grid(points: int, dims: int, like: Tensor, low: float = 0.0) -> Tensor:
    """``[points ** dims, dims]``: every point of a grid of ``points`` levels per axis.

    Args:
        points: levels per axis, evenly spaced from ``low`` to 1.
        dims: axes.
        like: gives the dtype and device.
        low: the first level (0: the unit box; -1: offsets around a centre).

    """
    levels = torch.linspace(low, 1.0, points, dtype=like.dtype, device=like.device)
    mesh = torch.meshgrid(*([levels] * dims), indexing="ij")
    return torch.stack(mesh, -1).reshape(-1, dims)


class GridAttacker(Attacker):
    """Exhaustive grid + local refinements of each bidder's report (see the module docstring).

    Only for report boxes of at most ``MAX_DIMENSIONS`` dimensions per bidder (``unsupported``
    says why elsewhere). Its budget reads as ``restarts`` = grid candidates (``points ** d``),
    ``steps`` = 0 and ``step_size`` = one grid cell; ``deviation_steps`` counts every
    deviation utility it computed (candidates x profiles x bidders). It records no curve.

    Args:
        points: grid levels per report dimension over the report box (81: the reference
            density, a cell of 1/80 of the range).
        refinements: local refinements around the incumbent.
        refine_points: levels per dimension of each refinement over +-1 previous cell.
        candidates_per_pass: most candidates per forward pass (memory bound).
        chunk_size: profiles per batch.
        curve_restarts: accepted for config compatibility; the grid records no curve.
        curve_steps: accepted for config compatibility; the grid records no curve.
        progress: show a progress bar over chunks.

    """

    name = "grid"
    include_truthful = True
    uses_init = True

    def __init__(
        self,
        points: int = 81,
        refinements: int = 2,
        refine_points: int = 21,
        candidates_per_pass: int = 128,
        chunk_size: int | None = 250,
        curve_restarts: Sequence[int] = (),
        curve_steps: Sequence[int] = (),
        progress: bool = False,
    ) -> None:
        require_at_least(
            [
                ("points", points, 2),
                ("refinements", refinements, 0),
                ("refine_points", refine_points, 2),
                ("candidates_per_pass", candidates_per_pass, 1),
            ]
        )
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"attacker.chunk_size={chunk_size} must be >= 1 or null")
        self.points, self.refinements = int(points), int(refinements)
        self.refine_points, self.candidates_per_pass = int(refine_points), int(candidates_per_pass)
        self.chunk_size = chunk_size
        #: Report dimensions of the last env searched (the grid's shape in ``describe``).
        self.dims = MAX_DIMENSIONS
        self.restarts, self.steps = self.points**self.dims, 0
        self.step_size = 1.0 / (self.points - 1)
        self.curve_restarts, self.curve_steps = [], []
        self.progress = progress

    @property
    def budget(self) -> dict:
        """The attacker budget, logged next to every regret it produces."""
        return dict(
            Attacker.budget.fget(self),
            points=self.points,
            refinements=self.refinements,
            refine_points=self.refine_points,
        )

    def describe(self) -> str:
        """Short human-readable budget, e.g. ``grid 81x81 + 2 refinements (21 per dim)``."""
        shape = "x".join([str(self.points)] * self.dims)
        return (
            f"{self.name} {shape} + {self.refinements} refinements ({self.refine_points} per dim)"
        )

    def unsupported(self, env) -> str | None:
        """Why the grid cannot search ``env``: more than two report dimensions, or no box."""
        space = env.report_space
        dims = int(space.low.shape[-1])
        if dims > MAX_DIMENSIONS:
            return (
                f"attacker={self.name} searches every bidder's report on a grid and needs at "
                f"most {MAX_DIMENSIONS} report dimensions; env {env.name} has {dims} "
                f"({ALTERNATIVES})"
            )
        if not space.bounded:
            return (
                f"attacker={self.name} searches a grid over the report box; env {env.name}'s "
                f"reports are unbounded ({ALTERNATIVES})"
            )
        return None

    def _score(
        self, mechanism, env, types: Types, candidates: Tensor, best_x: Tensor, best_u: Tensor
    ) -> tuple[Tensor, Tensor, int]:
        """Score candidates in passes; keep each bidder's best (the first of equals).

        Args:
            mechanism: the mechanism under attack.
            env: the environment.
            types: the chunk's profiles, values ``[B, n, d]``.
            candidates: ``[K, n, d]`` (the same for every profile) or ``[K, B, n, d]``.
            best_x: ``[B, n, d]`` incumbents.
            best_u: ``[B, n]`` their utilities.

        Returns:
            The new ``(best_x, best_u)`` and the number of candidates scored.

        """
        B, n, d = types.values.shape
        count = candidates.shape[0]
        for lo in range(0, count, self.candidates_per_pass):
            part = candidates[lo : lo + self.candidates_per_pass]
            if part.dim() == 3:
                part = part.unsqueeze(1).expand(-1, B, n, d)
            part = env.report_space.project(part)
            u = deviation_utility(mechanism, env, types, part)  # [R, B, n]
            best_u, best_x = self.fold_best(u, part, best_u, best_x)
        return best_x, best_u, count

    def attack_chunk(
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        """Truthful and explicit starts, the grid, its refinements, then the re-check.

        Raises:
            ConfigError: ``env``'s reports are not a box of at most two dimensions.

        """
        reason = self.unsupported(env)
        if reason is not None:
            raise ConfigError(reason)
        values = types.values
        B, n, d = values.shape
        self.dims = d
        self.restarts = self.points**d
        space = env.report_space
        low, high = space.low.to(values), space.high.to(values)  # [n, d]
        with torch.no_grad():
            best_x = values.detach().clone()
            best_u = self.no_utility(values)  # [B, n]
            starts = values.unsqueeze(0)
            if init is not None:
                starts = torch.cat([starts, init.to(values)])
            best_x, best_u, scored = self._score(mechanism, env, types, starts, best_x, best_u)
            grid = low + (high - low) * unit_grid(self.points, d, values).unsqueeze(1)  # [G, n, d]
            best_x, best_u, count = self._score(mechanism, env, types, grid, best_x, best_u)
            scored += count
            cell = (high - low) / (self.points - 1)  # [n, d]
            offsets = unit_grid(self.refine_points, d, values, low=-1.0)  # [K, d]
            for _ in range(self.refinements):
                around = best_x.unsqueeze(0) + offsets.view(-1, 1, 1, d) * cell  # [K, B, n, d]
                best_x, best_u, count = self._score(mechanism, env, types, around, best_x, best_u)
                scored += count
                cell = cell * (2.0 / (self.refine_points - 1))
            # The re-check: each best misreport scored alone, as a bidder would submit it.
            utility = deviation_utility(mechanism, env, types, best_x.unsqueeze(0))[0]
            scored += 1
        truthful_utility = self.truthful_utility(mechanism, env, types) if truthful else None
        budget = dict(self.budget, deviation_steps=float(scored * B * n))
        return AttackResult(best_x, utility, truthful_utility, budget)
