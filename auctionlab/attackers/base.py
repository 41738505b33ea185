"""The attacker contract and its shared machinery.

``Attacker`` is the base of every misreport search: it owns the loop over chunks of profiles,
the progress bar, the budget report and the regret-vs-budget curve; a subclass implements
``attack_chunk`` (its search on one chunk). The module also holds the deviation arithmetic
every attacker and the trainer share: utilities of unilateral deviations for all bidders at
once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from auctionlab.core.component import Component
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types


def require_at_least(checks: Iterable[tuple[str, float, float]]) -> None:
    """Refuse the first ``(option, value, minimum)`` whose value is below its minimum.

    Raises:
        ConfigError: one line naming ``attacker.<option>``, its value and the minimum.

    """
    for key, value, low in checks:
        if value < low:
            raise ConfigError(f"attacker.{key}={value} must be >= {low}")


def deviation_profiles(values: Tensor, misreports: Tensor) -> Tensor:
    """Stack the ``n`` unilateral-deviation profiles.

    Args:
        values: ``[B, n, m]`` true reports of everyone.
        misreports: ``[R, B, n, m]``; row ``i`` is bidder ``i``'s misreport.

    Returns:
        ``[n, R, B, n, m]``: profile ``k`` has bidder ``k``'s row replaced by its misreport.

    """
    n = values.shape[1]
    mask = torch.eye(n, dtype=torch.bool, device=values.device).view(n, 1, 1, n, 1)
    return torch.where(mask, misreports.unsqueeze(0), values.unsqueeze(0).unsqueeze(0))


def expand_public(public: dict[str, Tensor], copies: int) -> dict[str, Tensor]:
    """Repeat each public input ``copies`` times along a new leading axis, then flatten."""
    return {
        k: v.unsqueeze(0).expand(copies, *v.shape).reshape(copies * v.shape[0], *v.shape[1:])
        for k, v in public.items()
    }


def project_deviations(env, types: Types, misreports: Tensor) -> Tensor:
    """Map misreports into the deviation set of the true types, where it depends on them.

    Most report spaces are boxes (the attackers' own projection suffices); an env whose
    report space overrides ``restrict(misreports, truth)`` narrows the set per profile, e.g.
    verifiable budgets (``B' <= B``, [lemma2026certified] §8). Maximising utility at the restricted
    point over the box is maximising it over the deviation set (``restrict`` is onto it and
    the identity on it), so every attacker applies unchanged.

    Args:
        env: the environment.
        types: true types; ``values`` is ``[B, n, d]``.
        misreports: ``[..., B, n, d]``.

    Returns:
        Misreports of the same shape inside the deviation set.

    """
    return env.report_space.restrict(misreports, types.values)


def deviation_utility(mechanism, env, types: Types, misreports: Tensor) -> Tensor:
    """Utility of each bidder when it alone misreports.

    Args:
        mechanism: the mechanism under attack.
        env: gives the utility function.
        types: true types; ``values`` is ``[B, n, m]``.
        misreports: ``[R, B, n, m]``.

    Returns:
        ``[R, B, n]``: entry ``(r, b, i)`` is bidder ``i``'s true utility when it reports
        ``misreports[r, b, i]`` (through ``project_deviations``) and the others report
        truthfully.

    """
    values = types.values
    misreports = project_deviations(env, types, misreports)
    R, B, n, m = misreports.shape
    profiles = deviation_profiles(values, misreports).reshape(n * R * B, n, m)
    outcome = mechanism(profiles, expand_public(types.public, n * R))
    return own_utility(env, outcome, values, R)


def own_utility(env, outcome: Outcome, values: Tensor, copies: int) -> Tensor:
    """Each deviator's true utility in a stack of deviation profiles.

    Args:
        env: gives the utility function.
        outcome: the mechanism's outcome on ``deviation_profiles(values, .)`` flattened:
            allocation ``[n * copies * B, n, m]``, payment ``[n * copies * B, n]``.
        values: ``[B, n, m]`` true values.
        copies: ``R``, the number of misreports per bidder in the stack.

    Returns:
        ``[R, B, n]``: bidder ``k``'s utility in its own deviation profile.
    """
    B, n, m = values.shape
    index = torch.arange(n, device=values.device)
    # Only bidder k's part of profile k matters: gather it before the utility to save work.
    # The allocation may be narrower than the reports (allocation envs report values+demands).
    allocation = outcome.allocation.view(n, copies, B, n, -1)[index, :, :, index]  # [n, R, B, .]
    payment = outcome.payment.view(n, copies, B, n)[index, :, :, index]  # [n, R, B]
    own_values = values.permute(1, 0, 2).unsqueeze(1)  # [n, 1, B, m]
    own = Outcome(allocation.unsqueeze(-2), payment.unsqueeze(-1))  # one "bidder" each
    utility = env.utility(own, own_values.unsqueeze(-2)).squeeze(-1)  # [n, R, B]
    return utility.permute(1, 2, 0)


@dataclass
class AttackResult:
    """What an attack found.

    Attributes:
        misreports: ``[B, n, m]`` the best misreport found for each bidder.
        utility: ``[B, n]`` each bidder's utility at its best misreport.
        truthful_utility: ``[B, n]`` utility when everyone reports truthfully, or ``None``
            where the attacker was not asked for it (training).
        budget: the attacker budget that produced these numbers.
        curve: gains ``[B, n]`` keyed by ``(restarts, steps)`` budgets below the full one.
        curve_cost: mean deviation-steps per (profile, bidder) spent to reach each curve point,
            where the attacker counts them (one per deviation-utility evaluation).

    """

    misreports: Tensor
    utility: Tensor
    truthful_utility: Tensor | None
    budget: dict
    curve: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    curve_cost: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def gain(self) -> Tensor:
        """``[B, n]`` regret: best misreport utility minus truthful utility, floored at 0."""
        if self.truthful_utility is None:
            raise ValueError("this attack was run without the truthful utility")
        return (self.utility - self.truthful_utility).clamp_min(0.0)


class Attacker(Component, ABC):
    """Base class of every misreport search (the ``Attacker`` contract of ``auctionlab.core``).

    ``attack`` splits the profiles into chunks of ``chunk_profiles()`` (all at once when
    ``None``), shows a progress bar over them when ``progress`` is set, runs
    ``attack_chunk`` on each, in order, with the same generator, and concatenates the
    results. Subclasses implement ``attack_chunk`` and, where their budget has more knobs
    than restarts / steps / step size, extend ``budget`` and ``describe``.

    Attributes:
        name: the attacker's name in budgets and messages.
        exact: the search is an exact best-response oracle (its regret is not a lower bound).
        uses_init: explicit starts (the trainer's cached misreports) are used; when ``False``
            the trainer keeps no cache.
        two_sided: training only: the trainer's regret also counts the reverse LIC condition
            at the misreport found ([okada2025lic] §3.1).
        include_truthful: the truthful report is among the starts.
        restarts: starts per bidder and profile.
        steps: search steps from each start.
        step_size: first step size, as a fraction of each coordinate's report range.
        chunk_size: profiles per chunk (``None``: all at once).
        curve_restarts: restart counts at which the regret-vs-budget curve is recorded.
        curve_steps: step counts at which the regret-vs-budget curve is recorded.
        progress: show a progress bar over chunks.

    """

    name: str = "attacker"
    exact: bool = False
    #: The search phase the regret-vs-budget curve measures, repeated in stress tests under
    #: this prefix at the curve's largest budget (``pgd_regret_mean``...); ``None``: the curve
    #: is the whole search, already reported as ``regret_*``.
    curve_phase: str | None = "pgd"
    #: Why the search is for training only (``None``: it may stress-test, the default).
    training_only: str | None = None
    #: Every attacker class by ``name``, filled as subclasses are defined: a search that converts
    #: itself into another (PGD into cutting planes) looks it up here rather than importing it.
    by_name: ClassVar[dict[str, type[Attacker]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Attacker.by_name[cls.name] = cls

    uses_init: bool = True
    two_sided: bool = False
    include_truthful: bool = False
    restarts: int = 1
    steps: int = 0
    step_size: float = 0.0
    chunk_size: int | None = None
    curve_restarts: list[int] = []  # noqa: RUF012 - read-only default, set per instance
    curve_steps: list[int] = []  # noqa: RUF012 - read-only default, set per instance
    progress: bool = False

    # -- budget ---------------------------------------------------------------------------
    @property
    def budget(self) -> dict:
        """The attacker budget, logged next to every regret it produces."""
        return {
            "attacker": self.name,
            "restarts": self.restarts,
            "steps": self.steps,
            "step_size": self.step_size,
        }

    def describe(self) -> str:
        """Short human-readable budget, e.g. ``pgd 100 restarts x 1000 steps``."""
        return f"{self.name} {self.restarts} restarts x {self.steps} steps"

    def as_cutting_plane(self) -> Attacker:
        """A cutting-plane training attacker whose witness refresh has this attacker's budget.

        Used by mechanisms with a ``cutting_plane`` gradient strategy (``trainer.grad``).

        Raises:
            ConfigError: this attacker has no PGD budget to refresh witnesses with.

        """
        raise ConfigError(
            f"trainer.grad=cutting_plane refreshes its witnesses with PGD; "
            f"attacker={self.name} is not pgd "
            "(use attacker=pgd or attacker=cutting_plane)"
        )

    def unsupported(self, env) -> str | None:
        """Why this attacker cannot search ``env``'s reports, or ``None`` (it can; the default).

        Tasks ask before any work: a stress test is refused with the reason, a reference
        search (``evaluate``'s oracle) is skipped with it. The reason is one line naming the
        attacker, the env and what to use instead.

        Args:
            env: the environment to be searched.

        """
        return None

    # -- the search -----------------------------------------------------------------------
    def chunk_profiles(self) -> int | None:
        """Profiles per chunk of ``attack`` (``None``: every profile in one chunk)."""
        return self.chunk_size

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
            types: ``B`` true profiles; ``values`` is ``[B, n, m]``.
            generator: source of the random restarts.
            init: optional ``[R0, B, n, m]`` explicit starting misreports.
            truthful: also compute the truthful utility (needed for regret).

        Returns:
            The best misreport ``[B, n, m]`` and utility ``[B, n]`` per bidder, with the
            budget that found them and the regret-vs-budget curve.

        """
        B = types.batch_size
        chunk = self.chunk_profiles() or B
        chunks: Iterable[int] = range(0, B, chunk)
        if self.progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"attack ({self.describe()})", unit="chunk", leave=False)
        pieces = []
        for lo in chunks:
            sub = types[lo : lo + chunk]
            sub_init = None if init is None else init[:, lo : lo + chunk]
            pieces.append(self.attack_chunk(mechanism, env, sub, generator, sub_init, truthful))
        if len(pieces) == 1:
            return pieces[0]
        budget = dict(self.budget)
        if all("gradient" in p.budget for p in pieces):
            budget["gradient"] = all(p.budget["gradient"] for p in pieces)
        if all("deviation_steps" in p.budget for p in pieces):
            budget["deviation_steps"] = float(sum(p.budget["deviation_steps"] for p in pieces))
        sizes = [p.utility.shape[0] for p in pieces]
        curve_cost = {
            k: sum(p.curve_cost[k] * size for p, size in zip(pieces, sizes, strict=True)) / B
            for k in pieces[0].curve_cost
        }
        return AttackResult(
            misreports=torch.cat([p.misreports for p in pieces]),
            utility=torch.cat([p.utility for p in pieces]),
            truthful_utility=None
            if not truthful
            else torch.cat([p.truthful_utility for p in pieces]),
            budget=budget,
            curve={k: torch.cat([p.curve[k] for p in pieces]) for k in pieces[0].curve},
            curve_cost=curve_cost,
        )

    @abstractmethod
    def attack_chunk(
        self,
        mechanism,
        env,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None,
        truthful: bool,
    ) -> AttackResult:
        """The search on one chunk of profiles (arguments as in ``attack``).

        Returns:
            ``AttackResult`` with misreports ``[B, n, m]``, utilities ``[B, n]`` and, when
            ``truthful``, truthful utilities ``[B, n]`` and the curve.

        """

    # -- helpers for subclasses -------------------------------------------------------------
    def starts(self, env, types: Types, generator: torch.Generator, init: Tensor | None) -> Tensor:
        """``[R, B, n, m]`` starting misreports, ``R = restarts``.

        The portfolio: the truthful report (if ``include_truthful``), then the explicit starts
        ``init`` (e.g. cached misreports), then draws from the report space until ``restarts``
        starts are reached.
        """
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

    @staticmethod
    def no_utility(x: Tensor) -> Tensor:
        """``[R, B, n]`` of ``-inf``: the best utility before any candidate of ``x`` is tried."""
        return torch.full(x.shape[:-1], -math.inf, device=x.device, dtype=x.dtype)

    @staticmethod
    def keep_best(u: Tensor, x: Tensor, best_u: Tensor, best_x: Tensor) -> tuple[Tensor, Tensor]:
        """Per start, keep the better of the incumbent and the candidate.

        Args:
            u: ``[R, B, n]`` utilities of the candidates ``x`` ``[R, B, n, m]``.
            x: the candidates.
            best_u: ``[R, B, n]`` incumbent utilities.
            best_x: ``[R, B, n, m]`` incumbents.

        Returns:
            The new ``(best_u, best_x)``.

        """
        better = u > best_u
        return torch.where(better, u, best_u), torch.where(better.unsqueeze(-1), x, best_x)

    @staticmethod
    def pick_best(best_u: Tensor, best_x: Tensor) -> tuple[Tensor, Tensor]:
        """Best start per bidder: ``[R, B, n]`` / ``[R, B, n, m]`` -> ``[B, n, m]``, ``[B, n]``."""
        pick = best_u.argmax(0)  # [B, n]
        utility = best_u.gather(0, pick.unsqueeze(0)).squeeze(0)
        index = pick.view(1, *pick.shape, 1).expand(1, *pick.shape, best_x.shape[-1])
        return best_x.gather(0, index).squeeze(0), utility

    @classmethod
    def fold_best(
        cls, u: Tensor, x: Tensor, best_u: Tensor, best_x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Fold scored candidates into the incumbents: the best one wins where it is better.

        Args:
            u: ``[C, *S]`` utilities of the candidates ``x`` ``[C, *S, d]`` (``S``: the
                incumbents' shape, e.g. ``[B, n]`` or instances ``[K]``).
            x: the candidates.
            best_u: ``[*S]`` incumbent utilities.
            best_x: ``[*S, d]`` incumbents.

        Returns:
            The new ``(best_u, best_x)``.

        """
        chosen, top = cls.pick_best(u, x)
        return cls.keep_best(top, chosen, best_u, best_x)

    @staticmethod
    def truthful_utility(mechanism, env, types: Types) -> Tensor:
        """``[B, n]`` utilities when everyone reports truthfully (no gradient)."""
        with torch.no_grad():
            return env.utility(mechanism(types.values, types.public), types.values)

    def regret_curve(
        self, curve_best: dict[int, Tensor], truthful_utility: Tensor
    ) -> dict[tuple[int, int], Tensor]:
        """The regret-vs-budget curve from the best utilities recorded after some steps.

        Args:
            curve_best: ``{steps: [R, B, n]}`` best utility per start after that many steps.
            truthful_utility: ``[B, n]``.

        Returns:
            ``{(restarts, steps): [B, n]}`` regret using the first ``restarts`` starts, for
            every ``restarts`` in ``curve_restarts``.

        """
        curve: dict[tuple[int, int], Tensor] = {}
        for s, u_s in curve_best.items():
            for r in self.curve_restarts:
                curve[(r, s)] = (u_s[:r].max(0).values - truthful_utility).clamp_min(0.0)
        return curve
