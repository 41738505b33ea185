"""Soft-feasibility learned combinatorial auction with its own rounding (CANet / CAFormer spirit).

The [lemma2026solver] §7.2 baseline: a bidder-equivariant network outputs a *fractional* bundle
allocation that is feasible by construction, trained like RegretNet on that relaxation, and
deployed through its own rounding (no winner determination solver anywhere).

Network (same DeepSets template as ``solver_backed``): ``e_l = psi(b_l)``,
``h_i = phi(b_i, mean_{l != i} e_l)``. Per bidder, a softmax over its ``k`` bundles and a
"nothing" option, ``q_i = softmax([g * b_i / v_max + rho(h_i), null(h_i)])[:k]``, so each bidder
gets at most one bundle in total. Items are then made feasible by rescaling every bundle with
the largest load among its items::

    load_j = sum_{(i, S) : j in S} q_iS,      x_iS = q_iS / max(1, max_{j in S} load_j)

which gives ``sum_{(i, S) : j in S} x_iS <= load_j / max(1, load_j) <= 1`` for every item.
Payments are a fraction of the bid for what is allocated, ``p_i = alpha_i(b) sum_S x_iS b_iS``
with ``alpha_i = sigmoid(a(h_i)) in [0, 1]`` (IR by design, as for ``solver_backed``).

Deployment (``eval()``): ``rounding=greedy`` rounds the fractional allocation into an integral
feasible one: each bidder proposes its most likely option under ``q_i`` (a bundle, or nothing
when "nothing" is likelier); proposals are taken in decreasing ``x_iS`` (ties: lower
``i * k + S`` first) and accepted when they share no item with an accepted bundle; a winner
pays ``alpha_i b_iS*`` for its bundle (the same fraction of its bid, so IR still holds).
``rounding=none`` deploys the fractional mechanism itself. In both
cases training uses the fractional allocation; gradients of the deployed (rounded) mechanism,
e.g. an attacker's, are those of the fractional one (straight-through: values exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.layers import mlp
from auctionlab.mechanisms.base import Mechanism
from auctionlab.solvers.wdp import WDPResult, choice_to_allocation, greedy_choice
from auctionlab.types import Outcome

ROUNDINGS = ("greedy", "none")


class SoftCombinatorial(Mechanism):
    """Fractional feasible-by-construction bundle allocation + greedy rounding at deployment.

    Args:
        env: a ``CombinatorialEnv``.
        hidden: hidden widths of ``phi`` (and of ``psi``).
        embedding: width of the others' summary ``e_l``.
        activation: ``tanh`` or ``relu``.
        bid_gain: starting weight ``g`` of the bids in the bundle logits (learned).
        alpha_init: the payment fraction at initialisation, in ``(0, 1)``.
        rounding: ``greedy`` (deployed allocation integral) or ``none`` (deploy the
            fractional allocation).

    """

    family = "combinatorial"
    demands = ("bundles",)
    ir_by_design = True
    symmetric_in = ("bidders",)
    config_name = "ca_soft"

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (64, 64),
        embedding: int = 32,
        activation: str = "tanh",
        bid_gain: float = 4.0,
        alpha_init: float = 0.5,
        rounding: str = "greedy",
    ) -> None:
        super().__init__(env)
        if rounding not in ROUNDINGS:
            raise ConfigError(
                f"mechanism.rounding={rounding} is not valid; choose one of {', '.join(ROUNDINGS)}"
            )
        if not 0 < alpha_init < 1:
            raise ConfigError(f"mechanism.alpha_init={alpha_init} must be in (0, 1)")
        if activation not in ("tanh", "relu"):
            raise ConfigError(f"mechanism.activation={activation} is not valid; choose tanh, relu")
        if embedding < 1 or not hidden or min(hidden) < 1:
            raise ConfigError("mechanism: embedding and every hidden width must be >= 1")
        if not math.isfinite(bid_gain):
            raise ConfigError(f"mechanism.bid_gain={bid_gain} must be finite")
        k = env.n_bundles
        self.n_bundles, self.n_goods = k, env.n_goods
        self.rounding = rounding
        self.register_buffer("membership", env.membership.clone(), persistent=False)
        self.register_buffer("members", env.membership.to(torch.float32), persistent=False)
        self.others = mlp(k, hidden, embedding, activation)
        self.trunk = mlp(k + embedding, hidden[:-1], hidden[-1], activation)
        self.activation = nn.Tanh() if activation == "tanh" else nn.ReLU()
        self.bundle_head = nn.Linear(hidden[-1], k)
        self.null_head = nn.Linear(hidden[-1], 1)
        self.alpha_head = nn.Linear(hidden[-1], 1)
        self.bid_gain = nn.Parameter(torch.tensor(float(bid_gain)))
        # Start from "allocate by bids" (the learned corrections are zero) and a fixed alpha.
        for head in (self.bundle_head, self.null_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        nn.init.zeros_(self.alpha_head.weight)
        nn.init.constant_(self.alpha_head.bias, math.log(alpha_init / (1 - alpha_init)))
        low, high = env.report_space.low, env.report_space.high
        self.register_buffer("input_shift", low.clone())
        self.register_buffer("input_scale", 1.0 / (high - low).clamp_min(1e-6))
        #: The last deployed (rounded) allocation as a winner-determination record (audits,
        #: evaluation statistics); ``None`` while fractional.
        self.last_wdp: WDPResult | None = None
        self.argmax_allocation = False

    def wdp_membership(self) -> Tensor:
        """``[n, k, m]`` the env's bundle membership (``last_wdp`` is re-solvable)."""
        return self.membership

    def fractional(self, reports: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fractional allocation ``x [B, n, k]``, payment fractions ``alpha [B, n]`` and ``q``.

        Args:
            reports: ``[B, n, k]`` bids.

        Returns:
            ``x``, ``alpha`` and each bidder's distribution over its bundles and "nothing"
            before the item rescaling, ``q [B, n, k + 1]`` ("nothing" last).

        """
        x = (reports - self.input_shift) * self.input_scale  # [B, n, k], about [0, 1]
        embedded = self.others(x)  # [B, n, e]
        n = reports.shape[1]
        others = (embedded.sum(1, keepdim=True) - embedded) / max(n - 1, 1)
        h = self.activation(self.trunk(torch.cat([x, others], -1)))  # [B, n, hidden]
        logits = self.bid_gain * x + self.bundle_head(h)
        options = torch.softmax(torch.cat([logits, self.null_head(h)], -1), -1)
        q = options[..., :-1]
        members = self.members.to(q.dtype)  # [n, k, m]
        load = torch.einsum("bnk,nkm->bm", q, members)  # [B, m] expected units of each item
        # each bundle shrinks by the largest load among its items: item loads end up <= 1
        worst = (load[:, None, None, :] * members).amax(-1)  # [B, n, k]
        allocation = q / worst.clamp_min(1.0)
        alpha = torch.sigmoid(self.alpha_head(h)).squeeze(-1)
        return allocation, alpha, options

    def round(self, allocation: Tensor, options: Tensor) -> Tensor:
        """Greedy rounding (module docstring): ``[B, n]`` bundle per bidder or -1.

        Args:
            allocation: ``[B, n, k]`` the fractional allocation (the greedy order).
            options: ``[B, n, k + 1]`` each bidder's ``q`` with "nothing" last.

        """
        mode = options.detach().argmax(-1)  # [B, n]: first of the likeliest options
        proposed = torch.nn.functional.one_hot(mode, self.n_bundles + 1)[..., :-1].bool()
        return greedy_choice(allocation.detach(), self.membership, accept=proposed)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Fractional (training, ``rounding=none``) or rounded allocation; ``alpha`` x bid."""
        fractional, alpha, options = self.fractional(reports)
        if self.training or self.rounding == "none":
            self.last_wdp = None
            allocation = fractional
        else:
            choice = self.round(fractional, options)
            exact = choice_to_allocation(choice, self.n_bundles).to(fractional)
            total = (exact * reports.detach()).sum((-1, -2)).double()
            self.last_wdp = WDPResult(choice, total)
            if torch.is_grad_enabled() and fractional.requires_grad:
                # the rounded values, the fractional allocation's gradient (attackers)
                allocation = exact + (fractional - fractional.detach())
            else:
                allocation = exact
        payment = alpha * (allocation * reports).sum(-1)
        return Outcome(allocation, payment)
