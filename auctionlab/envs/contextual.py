"""Contextual ad allocation with a TV fairness functional ([lemma2026certified] §9 ii, eq. 6).

A user context ``x ~ U[0,1]^d`` arrives with ``m`` ad slots of decreasing quality ``q_j``;
advertiser ``i`` belongs to class ``c(i) = i mod C`` and has random coefficients
``beta_i ~ N(mu_c(i), sigma^2 I)`` (semi-synthetic values from covariates), so its value for
slot ``j`` is ``v_ij = q_j * sigmoid(beta_i . x + bias + eps_i)``, in ``[0, 1]``. Reports live
in ``[0, 1]^{n x m}``; the context is public (``Types.public["context"]``, ``[B, d]``).

Fairness (eq. 6 with ``U`` the holdout users, pairs formed by a fixed scheme): profiles are
paired ``(0, 1), (2, 3), ...`` and each pair ``(u, u')`` contributes

    psi(u, u') = sum_c max(0, sum_{i in C_c} |p_i(u) - p_i(u')| - L_f ||x_u - x_u'||_1 / d),

with ``p_i`` advertiser ``i``'s exposure (allocation summed over slots). The pairs are disjoint,
so the ``B / 2`` statistics are i.i.d. and ``psi`` lies in ``[0, 2m]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auctionlab.envs.additive import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types


class ContextualAdEnv(AuctionEnv):
    """Advertisers x slots with user contexts, classes and the TV fairness statistic.

    Args:
        name: the option's name.
        n_bidders: advertisers ``n``.
        n_items: slots ``m``.
        n_classes: advertiser classes ``C`` (advertiser ``i`` is in class ``i mod C``).
        context_dim: user features ``d``.
        slot_decay: slot ``j`` has quality ``slot_decay ** j``.
        coefficient_sd: ``sigma`` of the advertisers' random coefficients.
        class_shift: class ``c``'s mean coefficients are ``class_shift * (c - (C-1)/2)`` on
            the first feature (classes value users differently), ``0`` elsewhere.
        bias: intercept inside the sigmoid.
        fairness_lipschitz: ``L_f``: allowed exposure disparity per unit of context distance.

    """

    def __init__(
        self,
        name: str = "ads_4x2",
        n_bidders: int = 4,
        n_items: int = 2,
        n_classes: int = 2,
        context_dim: int = 3,
        slot_decay: float = 0.7,
        coefficient_sd: float = 1.0,
        class_shift: float = 2.0,
        bias: float = 0.0,
        fairness_lipschitz: float = 0.5,
    ) -> None:
        super().__init__(name, n_bidders, n_items, Uniform(0.0, 1.0))
        if not 1 <= n_classes <= n_bidders:
            raise ConfigError(f"env.n_classes={n_classes} must be in [1, n_bidders={n_bidders}]")
        if context_dim < 1:
            raise ConfigError(f"env.context_dim={context_dim} must be >= 1")
        if not 0 < slot_decay <= 1:
            raise ConfigError(f"env.slot_decay={slot_decay} must be in (0, 1]")
        if not (math.isfinite(coefficient_sd) and coefficient_sd >= 0):
            raise ConfigError(f"env.coefficient_sd={coefficient_sd} must be >= 0")
        if not (math.isfinite(fairness_lipschitz) and fairness_lipschitz >= 0):
            raise ConfigError(f"env.fairness_lipschitz={fairness_lipschitz} must be >= 0")
        self.n_classes, self.context_dim = int(n_classes), int(context_dim)
        self.coefficient_sd, self.bias = float(coefficient_sd), float(bias)
        self.fairness_lipschitz = float(fairness_lipschitz)
        self.slot_quality = slot_decay ** torch.arange(n_items, dtype=torch.float32)  # [m]
        self.classes = torch.arange(n_bidders) % self.n_classes  # [n]
        centres = class_shift * (torch.arange(self.n_classes) - (self.n_classes - 1) / 2)
        self.class_means = torch.zeros(self.n_classes, self.context_dim)
        self.class_means[:, 0] = centres
        #: ``psi`` lies in ``[0, fairness_range]``: the summed exposure changes are <= 2m.
        self.fairness_range = 2.0 * n_items

    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """``batch`` users: values ``[B, n, m]`` and public ``context`` ``[B, d]``."""
        device = generator.device
        n, d = self.n_bidders, self.context_dim
        context = torch.rand(batch, d, generator=generator, device=device)
        means = self.class_means.to(device)[self.classes.to(device)]  # [n, d]
        noise = torch.randn(batch, n, d, generator=generator, device=device)
        beta = means + self.coefficient_sd * noise  # [B, n, d]
        shock = 0.5 * torch.randn(batch, n, generator=generator, device=device)
        score = (beta * context.unsqueeze(1)).sum(-1) + self.bias + shock  # [B, n]
        values = torch.sigmoid(score).unsqueeze(-1) * self.slot_quality.to(device)  # [B, n, m]
        return Types(values, {"context": context})

    def fairness(self, outcome: Outcome, types: Types) -> Tensor:
        """``[B // 2]`` TV-fairness violations of the disjoint pairs ``(2k, 2k + 1)``.

        Args:
            outcome: allocation ``[B, n, m]`` of the (truthful) reports.
            types: the batch (its ``context`` gives the allowed disparity).

        """
        pairs = outcome.allocation.shape[0] // 2
        exposure = outcome.allocation[: 2 * pairs].sum(-1).view(pairs, 2, -1)  # [P, 2, n]
        context = types.public["context"][: 2 * pairs].view(pairs, 2, -1)
        allowed = self.fairness_lipschitz * (context[:, 0] - context[:, 1]).abs().mean(-1)
        change = (exposure[:, 0] - exposure[:, 1]).abs()  # [P, n]
        one_hot = torch.nn.functional.one_hot(self.classes.to(change.device), self.n_classes)
        per_class = change @ one_hot.to(change.dtype)  # [P, C]
        return (per_class - allowed.unsqueeze(-1)).clamp_min(0.0).sum(-1)

    def __repr__(self) -> str:
        return (
            f"ContextualAdEnv({self.name}: {self.n_bidders} advertisers in {self.n_classes} "
            f"classes x {self.n_items} slots, context {self.context_dim})"
        )
