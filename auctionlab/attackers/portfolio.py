"""The strengthened best-response oracle of the statistical certificate ([lemma2026certified] §6).

PGD from a portfolio of starts (the truthful report, corners of the report box, uniform
restarts), one run per step size; the best utility over all runs is kept per profile and
bidder.
"""

from __future__ import annotations

import torch
from torch import Tensor

from auctionlab.attackers.base import Attacker, AttackResult
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.errors import ConfigError
from auctionlab.types import Types


def boundary_starts(env, types: Types, count: int, generator: torch.Generator) -> Tensor:
    """``[count, B, n, m]`` corner reports of each bidder's report box.

    All ``2^m`` corners when ``count`` allows, else all-low, all-high, then pseudo-random
    corners from fixed seeds (part of the oracle's configuration, not of the run's
    randomness). An unbounded box has no corners: ``[0, B, n, m]``.

    Args:
        env: gives the report box.
        types: the profiles; ``values`` is ``[B, n, m]``.
        count: corners per bidder.
        generator: unused (the corners are fixed); kept for a uniform start-maker signature.

    """
    low = env.report_space.low.to(types.values)
    high = env.report_space.high.to(types.values)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()) or count == 0:
        return types.values.new_zeros((0, *types.values.shape))
    B = types.batch_size
    n, m = low.shape
    corners = [torch.zeros(n, m), torch.ones(n, m)]
    if 2**m <= count:
        codes = torch.arange(2**m)
        bits = ((codes.view(-1, 1) >> torch.arange(m)) & 1).float()  # [2^m, m]
        corners = [b.expand(n, m) for b in bits]
    while len(corners) < count:
        fixed = torch.Generator().manual_seed(len(corners))
        corners.append(torch.randint(0, 2, (n, m), generator=fixed).float())
    unit = torch.stack(corners[:count]).to(types.values)  # [count, n, m]
    reports = low + (high - low) * unit
    return reports.unsqueeze(1).expand(count, B, n, m).contiguous()


class PortfolioOracle(Attacker):
    """PGD runs from a portfolio of starts, one per step size; the best result is kept.

    Every run starts from the truthful report, ``corners`` box corners and ``restarts``
    uniform draws (plus any explicit starts passed to ``attack``). Each run chunks the
    profiles itself, so the oracle attacks all of them in one piece (the runs' order over
    the generator is: run 1 on every chunk, then run 2...).

    Args:
        restarts: uniform random starts per run (on top of truthful and corners).
        steps: gradient steps per start.
        step_sizes: first step sizes (fraction of the report range), one run each.
        final_step_size: last step size of every run (geometric decay).
        corners: box-corner starts per bidder.
        chunk_size: profiles per batch of each run.
        progress: show progress bars.

    """

    name = "pgd_portfolio"
    include_truthful = True

    def __init__(
        self,
        restarts: int,
        steps: int,
        step_sizes: list[float],
        final_step_size: float | None,
        corners: int,
        chunk_size: int | None = None,
        progress: bool = False,
    ) -> None:
        if not step_sizes:
            raise ConfigError("certifier.step_sizes must list at least one step size")
        self.corners = int(corners)
        self.runs = [
            PGDAttacker(
                restarts=int(restarts) + 1 + self.corners,
                steps=int(steps),
                step_size=float(s),
                final_step_size=final_step_size,
                include_truthful=True,
                chunk_size=chunk_size,
                progress=progress,
            )
            for s in step_sizes
        ]
        self.restarts, self.steps = int(restarts), int(steps)
        self.step_sizes = [float(s) for s in step_sizes]
        self.step_size = self.step_sizes[0]
        self.final_step_size = final_step_size
        self.chunk_size, self.progress = chunk_size, progress

    @property
    def budget(self) -> dict:
        """The oracle configuration reported with every regret it produces."""
        return {
            "attacker": self.name,
            "restarts": self.restarts,
            "starts_per_run": self.restarts + 1 + self.corners,
            "truthful_start": True,
            "corner_starts": self.corners,
            "steps": self.steps,
            "step_sizes": self.step_sizes,
            "final_step_size": self.final_step_size,
            "optimizer": "adam",
            "runs": len(self.runs),
        }

    def describe(self) -> str:
        """Short budget text."""
        return (
            f"PGD portfolio: {len(self.runs)} step sizes {self.step_sizes} x "
            f"(truthful + {self.corners} corners + {self.restarts} random) starts x "
            f"{self.steps} steps"
        )

    def chunk_profiles(self) -> None:
        """Every profile at once: each PGD run chunks the profiles itself."""
        return None

    def attack(
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None = None,
        truthful: bool = True,
    ) -> AttackResult:
        """Best misreport per profile and bidder over the whole portfolio.

        Args:
            mechanism: the mechanism (eval mode).
            env: the environment.
            types: ``B`` profiles; ``values`` is ``[B, n, m]``.
            generator: randomness of the restarts.
            init: optional ``[R0, B, n, m]`` extra starts (e.g. a weaker oracle's misreports).
            truthful: accepted for the attacker call API; the truthful utility is always
                computed (the certificate needs regret).

        Returns:
            Misreports ``[B, n, m]``, utilities and truthful utilities ``[B, n]``.

        """
        return super().attack(mechanism, env, types, generator, init=init, truthful=True)

    def attack_chunk(  # noqa: D102 - every run of the portfolio on the profiles
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        starts = boundary_starts(env, types, self.corners, generator)
        if init is not None:
            starts = torch.cat([init.to(starts), starts])
        best: AttackResult | None = None
        spent = 0.0
        for run in self.runs:
            if init is not None:
                run.restarts = self.restarts + 1 + self.corners + init.shape[0]
            result = run.attack(mechanism, env, types, generator, init=starts)
            spent += result.budget.get("deviation_steps", 0.0)
            if best is None:
                best = result
                continue
            better = result.utility > best.utility
            best = AttackResult(
                misreports=torch.where(better.unsqueeze(-1), result.misreports, best.misreports),
                utility=torch.maximum(result.utility, best.utility),
                truthful_utility=best.truthful_utility,
                budget=self.budget,
            )
        best.budget = dict(self.budget, deviation_steps=spent)
        return best
