"""Cutting-plane regret surrogate for training ([lemma2026solver] §5.3 (iii)): witness deviations.

For every training profile the attacker keeps the last ``witnesses`` misreports found for each
bidder (a growing set of violated incentive constraints). Each call evaluates all of them on the
current mechanism, in one batched forward pass without gradients, and returns each bidder's
best witness: the trainer then penalises the largest utility gain among the known witnesses
instead of differentiating through a fresh inner maximisation. Every ``refresh_every`` calls
(and whenever a profile has no witness yet) a PGD search from the best witness (and the
truth, when asked) adds a new witness, so the set follows the latest mechanism.

Profiles are recognised by a fingerprint (their values dotted with a fixed random vector, in
float64), looked up in a sorted table with ``searchsorted``: no per-profile Python loop, and
no change to the training loop's interface.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auctionlab.attackers.base import Attacker, AttackResult, deviation_utility
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.errors import ConfigError
from auctionlab.types import Types


class CuttingPlaneAttacker(Attacker):
    """Witness sets per profile, refreshed by PGD (see the module docstring).

    Args:
        restarts: PGD starts when refreshing (the truth counts when ``include_truthful``).
        steps: PGD steps when refreshing.
        step_size: PGD first step (fraction of each coordinate's range).
        final_step_size: PGD last step.
        include_truthful: PGD also starts from the truth.
        witnesses: witnesses kept per profile and bidder (oldest replaced first).
        refresh_every: PGD runs on every ``refresh_every``-th call.
        max_profiles: most profiles remembered (the table is reset beyond it).
        chunk_size: accepted for config compatibility (profiles per batch of PGD).
        curve_restarts: accepted for config compatibility.
        curve_steps: accepted for config compatibility.
        progress: accepted for config compatibility.

    """

    name = "cutting_plane"

    def __init__(
        self,
        restarts: int = 1,
        steps: int = 25,
        step_size: float = 0.1,
        final_step_size: float | None = None,
        include_truthful: bool = False,
        witnesses: int = 4,
        refresh_every: int = 2,
        max_profiles: int = 1_000_000,
        chunk_size: int | None = None,
        curve_restarts: tuple = (),
        curve_steps: tuple = (),
        progress: bool = False,
    ) -> None:
        if witnesses < 1 or refresh_every < 1 or max_profiles < 1:
            raise ConfigError(
                "attacker: need witnesses >= 1, refresh_every >= 1 and max_profiles >= 1 "
                f"(got {witnesses}, {refresh_every}, {max_profiles})"
            )
        self.pgd = PGDAttacker(
            restarts=restarts,
            steps=steps,
            step_size=step_size,
            final_step_size=final_step_size,
            include_truthful=include_truthful,
            chunk_size=chunk_size,
        )
        self.witnesses, self.refresh_every = int(witnesses), int(refresh_every)
        self.max_profiles, self.progress = int(max_profiles), progress
        self.curve_restarts, self.curve_steps = list(curve_restarts), list(curve_steps)
        self.calls = 0
        self.keys: Tensor | None = None  # [N] sorted fingerprints
        self.pool: Tensor | None = None  # [N, W, n, d] witnesses
        self.filled: Tensor | None = None  # [N, W] bool
        self.cursor: Tensor | None = None  # [N] next slot to overwrite
        self._direction: Tensor | None = None

    restarts = property(
        lambda self: self.pgd.restarts, lambda self, v: setattr(self.pgd, "restarts", int(v))
    )
    steps = property(
        lambda self: self.pgd.steps, lambda self, v: setattr(self.pgd, "steps", int(v))
    )

    step_size = property(lambda self: self.pgd.step_size)

    def chunk_profiles(self) -> None:
        """Every profile at once: the witness table is keyed by profile; PGD chunks itself."""
        return None

    def as_cutting_plane(self) -> Attacker:
        """Already one."""
        return self

    @property
    def budget(self) -> dict:
        """The attacker budget, logged next to every regret it produces."""
        return dict(
            self.pgd.budget,
            attacker=self.name,
            witnesses=self.witnesses,
            refresh_every=self.refresh_every,
        )

    def describe(self) -> str:
        """Short human-readable budget."""
        return (
            f"cutting plane: {self.witnesses} witnesses, PGD {self.pgd.restarts}x{self.pgd.steps} "
            f"every {self.refresh_every} calls"
        )

    def _fingerprints(self, values: Tensor) -> Tensor:
        flat = values.reshape(values.shape[0], -1).to(torch.float64)
        if self._direction is None or self._direction.numel() != flat.shape[1]:
            generator = torch.Generator().manual_seed(12345)
            self._direction = torch.rand(flat.shape[1], generator=generator, dtype=torch.float64)
        return flat @ self._direction.to(flat.device)

    def _rows(self, values: Tensor) -> Tensor:
        """``[B]`` rows of the witness table for these profiles (new ones added, empty)."""
        keys = self._fingerprints(values)
        B, shape = values.shape[0], values.shape[1:]
        if self.keys is None or len(self.keys) + B > self.max_profiles:
            self.keys = keys.new_empty(0)
            self.pool = values.new_empty(0, self.witnesses, *shape)
            self.filled = torch.zeros(0, self.witnesses, dtype=torch.bool, device=values.device)
            self.cursor = torch.zeros(0, dtype=torch.long, device=values.device)
        position = torch.searchsorted(self.keys, keys).clamp_max(max(len(self.keys) - 1, 0))
        known = (self.keys[position] == keys) if len(self.keys) else torch.zeros_like(keys).bool()
        if not bool(known.all()):
            new_keys = torch.unique(keys[~known])
            self.keys = torch.cat([self.keys, new_keys])
            order = torch.argsort(self.keys)
            self.keys = self.keys[order]
            count = len(new_keys)
            self.pool = torch.cat([self.pool, values.new_zeros(count, self.witnesses, *shape)])
            self.pool = self.pool[order]
            extra = torch.zeros(count, self.witnesses, dtype=torch.bool, device=values.device)
            self.filled = torch.cat([self.filled, extra])[order]
            cursor = torch.zeros(count, dtype=torch.long, device=values.device)
            self.cursor = torch.cat([self.cursor, cursor])[order]
            position = torch.searchsorted(self.keys, keys)
        return position

    def attack_chunk(
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        """Each bidder's best witness on the current mechanism (refreshing the set first).

        Returns:
            Misreports ``[B, n, d]`` and utilities ``[B, n]`` of the best witness (no curve).

        """
        values = types.values
        rows = self._rows(values)
        unseen = not bool(self.filled[rows].any(-1).all())
        if self.calls % self.refresh_every == 0 or unseen:
            found = self.pgd.attack(mechanism, env, types, generator, init=init, truthful=False)
            slot = self.cursor[rows]
            self.pool[rows, slot] = found.misreports.detach()
            self.filled[rows, slot] = True
            self.cursor[rows] = (slot + 1) % self.witnesses
        self.calls += 1
        witnesses = self.pool[rows].transpose(0, 1)  # [W, B, n, d]
        filled = self.filled[rows].transpose(0, 1)  # [W, B]
        with torch.no_grad():
            utility = deviation_utility(mechanism, env, types, witnesses)  # [W, B, n]
        utility = torch.where(filled[..., None], utility, -math.inf)
        best, pick = utility.max(0)  # [B, n]
        index = pick.view(1, *pick.shape, 1).expand(1, *pick.shape, witnesses.shape[-1])
        misreports = witnesses.gather(0, index).squeeze(0)
        truthful_utility = self.truthful_utility(mechanism, env, types) if truthful else None
        return AttackResult(misreports, best, truthful_utility, self.budget)
