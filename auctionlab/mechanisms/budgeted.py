"""Payments capped at the reported budget ([lemma2026certified] §8), around a learned mechanism.

For a budgets env (``env=budgets/...``: reports ``[B, n, m + 1]`` = values then budget), the
wrapper builds a *base* mechanism on a shadow additive env and caps its payments:

    t_i = min(t~_i, B'_i)          (cap=exact)
    t_i = [-T log(exp(-t~_i / T) + exp(-B'_i / T))]_+   (cap=smooth: a soft minimum, <= min)

so ``0 <= t_i <= B'_i`` for every report profile, by construction. With
``budget_feature=true`` the base sees the whole report (the budget as an extra "item" column
of its input, in ``[0, B_bar]``) and its allocation for that phantom column is dropped (each
real item's allocation is untouched, so feasibility is kept); with ``false`` it sees the values
only and the budget acts through the cap alone.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from auctionlab.envs.additive import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.base import Mechanism
from auctionlab.types import Outcome

#: Learned auction mechanisms the wrapper can hold (``mechanism.base``).
BASES = {
    "certified_equivariant": "auctionlab.mechanisms.certified_equivariant.CertifiedEquivariant",
    "regretnet": "auctionlab.mechanisms.regretnet.RegretNet",
    "equivariant_net": "auctionlab.mechanisms.equivariant.EquivariantNet",
    "regretformer": "auctionlab.mechanisms.regretformer.RegretFormer",
}
CAPS = ("exact", "smooth")


def cap_payment(raw: Tensor, budget: Tensor, kind: str, temperature: float) -> Tensor:
    """Payments ``[..., n]`` capped at ``budget`` ``[..., n]``: in ``[0, budget]`` always.

    Args:
        raw: the base mechanism's payments ``t~`` (``>= 0``).
        budget: the reported budgets ``B'`` (``>= 0``).
        kind: ``exact`` (``min``) or ``smooth`` (soft minimum at ``temperature``, floored at 0).
        temperature: ``T`` of the soft minimum.

    """
    raw, budget = raw.clamp_min(0.0), budget.clamp_min(0.0)
    if kind == "exact":
        return torch.minimum(raw, budget)
    soft = -temperature * torch.logaddexp(-raw / temperature, -budget / temperature)
    # logaddexp >= max, so soft <= min(raw, budget); the floor keeps payments >= 0.
    return soft.clamp_min(0.0)


class Budgeted(Mechanism):
    """A learned mechanism whose payments never exceed the reported budget.

    Args:
        env: a budgets env (``family == "budgets"``; reports ``[B, n, m + 1]``).
        base: the wrapped mechanism, one of ``BASES``.
        base_options: the base's constructor options (e.g. ``{hidden: [32, 32]}``).
        budget_feature: the base sees the reported budget as an input (else values only).
        cap: ``exact`` or ``smooth`` (see the module docstring).
        cap_temperature: ``T`` of the smooth cap.

    """

    family = "budgets"
    config_name = "budgeted"
    demands = ("additive",)

    def __init__(
        self,
        env,
        base: str = "certified_equivariant",
        base_options: Mapping[str, Any] | None = None,
        budget_feature: bool = True,
        cap: str = "exact",
        cap_temperature: float = 0.01,
    ) -> None:
        super().__init__(env)
        if base not in BASES:
            raise ConfigError(
                f"mechanism.base={base} is not valid; choose one of {', '.join(BASES)}"
            )
        if cap not in CAPS:
            raise ConfigError(f"mechanism.cap={cap} is not valid; choose one of {', '.join(CAPS)}")
        if not (math.isfinite(cap_temperature) and cap_temperature > 0):
            raise ConfigError(f"mechanism.cap_temperature={cap_temperature} must be > 0")
        module_name, _, class_name = BASES[base].rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        # The builder checks base_options against the base's schema first
        # (``config_children``); a direct construction still gets a ConfigError.
        options = dict(base_options or {})
        m = env.n_items
        low, high = [env.value_low] * m, [env.value_high] * m
        if budget_feature:  # the budget is one more input column, in [0, B_bar]
            low, high = [*low, 0.0], [*high, env.budget_high]
        shadow = AuctionEnv(
            env.name, env.n_bidders, len(low), Uniform([low], [high]), demand="additive"
        )
        try:
            self.base = cls(shadow, **options)
        except TypeError as err:
            raise ConfigError(f"mechanism.base_options: {err}") from None
        self.base_name, self.budget_feature = base, bool(budget_feature)
        self.cap_kind, self.cap_temperature = cap, float(cap_temperature)
        self.budget_high = float(env.budget_high)
        #: Payments are at most the largest reportable budget (what the certifier's ranges use).
        base_bound = self.base.payment_bound
        self.payment_bound = min(
            math.inf if base_bound is None else float(base_bound), self.budget_high
        )
        # The cap keeps a base's IR (t <= t~); a phantom budget column can break it (a
        # fractional payment would then charge for the phantom "item").
        self.ir_by_design = bool(self.base.ir_by_design) and not budget_feature
        self.symmetric_in = tuple(self.base.symmetric_in)

    @classmethod
    def config_children(cls, node: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """``mechanism.base_options`` as a node of the base class (an unknown base: none)."""
        base = node.get("base", "certified_equivariant")
        if base not in BASES:
            return {}  # the constructor names the valid bases
        return {
            "mechanism.base_options": {"_target_": BASES[base], **(node.get("base_options") or {})}
        }

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m + 1]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        m = self.n_items
        inputs = reports if self.budget_feature else reports[..., :m]
        inner = self.base(inputs, public)
        payment = cap_payment(inner.payment, reports[..., m], self.cap_kind, self.cap_temperature)
        return Outcome(inner.allocation[..., :m], payment)

    def auxiliary_loss(self, reports: Tensor, outcome: Outcome) -> Tensor | None:  # noqa: D102
        return None  # base regularisers would need the base's own outcome; none of BASES has one

    @property
    def lipschitz_terms(self) -> Callable[[], dict[str, float]] | None:
        """The base's l1 Lipschitz terms plus the cap's (``None`` when the base has none).

        ``min(t~, B')`` and the soft minimum are 1-Lipschitz in ``(t~, B')`` jointly in l1,
        and dropping the phantom allocation column cannot increase ``||dp||_1``, so
        ``L <= L_base + 1`` w.r.t. the full report (values and budget).
        """
        inner = self.base.lipschitz_terms
        if inner is None:
            return None

        def terms() -> dict[str, float]:
            out = dict(inner())
            out["base_L"] = out["L"]
            out["budget_cap"] = 1.0
            out["L"] = out["L"] + 1.0
            return out

        return terms

    @property
    def lipschitz_l1(self) -> Tensor:
        """The stored base constant plus the cap's 1 (see ``lipschitz_terms``)."""
        if not hasattr(self.base, "lipschitz_l1"):
            raise AttributeError("the base mechanism has no Lipschitz constant")
        return self.base.lipschitz_l1 + 1.0

    def describe(self) -> dict[str, object]:
        """Architecture facts for the certificate."""
        inner = self.base.describe() or {}
        return {
            "class": f"budget-capped {self.base_name}",
            "budget_feature": self.budget_feature,
            "cap": self.cap_kind,
            "payment_bound": self.payment_bound,
            "base": inner,
        }
