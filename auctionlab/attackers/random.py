"""Random search: the best of many uniform draws from the report space (no gradients)."""

from __future__ import annotations

from collections.abc import Sequence

from auctionlab.attackers.pgd import PGDAttacker


class RandomAttacker(PGDAttacker):
    """``samples`` uniform misreports per bidder (plus the truthful report); keeps the best.

    Args:
        samples: number of random reports tried per bidder and profile.
        include_truthful: whether the truthful report is among the tries.
        chunk_size: profiles per batch.
        curve_restarts: sample counts at which the regret-vs-budget curve is recorded.
        curve_steps: accepted for config compatibility; random search has only step 0.
        progress: show a progress bar over chunks.

    """

    name = "random"

    def __init__(
        self,
        samples: int = 1000,
        include_truthful: bool = True,
        chunk_size: int | None = None,
        curve_restarts: Sequence[int] = (),
        curve_steps: Sequence[int] = (0,),
        progress: bool = False,
    ) -> None:
        super().__init__(
            restarts=samples,
            steps=0,
            include_truthful=include_truthful,
            chunk_size=chunk_size,
            curve_restarts=curve_restarts,
            curve_steps=(0,),
            progress=progress,
        )
