"""Certified equivariant mechanism (seed 000 §4): DeepSets over bidders, Lipschitz by design.

The class the statistical certificate is meant for: feasibility by construction (softmax over
bidders plus a dummy per item, eq. 9), permutation equivariance in bidders (shared weights and
mean pooling, eqs. 7-8), bounded payments (``B * sigmoid(g)``, eq. 10, or the exact-zero
variant) and an a priori Lipschitz constant ``L`` of eq. (11),

    ||p(b) - p(b')||_1 + ||t(b) - t(b')||_1 <= L ||b - b'||_1   for all report profiles b, b',

computed from the layers (spectral or l1 weight control, tanh-bounded scores, 1-Lipschitz
activations) and stored with the weights (buffer ``lipschitz_l1``, refreshed whenever the
state dict is taken).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.layers.feasibility import additive_allocation
from auctionlab.layers.lipschitz import (
    ACTIVATION_LIPSCHITZ,
    ACTIVATION_MODULES,
    ControlledLinear,
    DeepSetsLayer,
    check_weight_norm,
)
from auctionlab.mechanisms.base import Mechanism
from auctionlab.types import Outcome

#: Payment heads: ``sigmoid`` (B * sigmoid(g), eq. 10), ``zero_floor`` (B * r / (1 + r) with
#: r = relu(g): exact zeros), ``fractional`` (sigmoid(g) * reported value won: IR by design).
PAYMENTS = ("sigmoid", "zero_floor", "fractional")


class CertifiedEquivariant(Mechanism):
    """DeepSets trunk over bidders; softmax-plus-dummy allocation; bounded payments.

    Per bidder, reports are rescaled to ``[0, 1]`` with the report box (shared by all bidders),
    joined by the public context ``[B, d]`` when the env has one (``env.context_dim``),
    passed through ``DeepSetsLayer``s with a 1-Lipschitz activation, then three heads: the
    bidder's item scores (a DeepSets layer), the dummy's item scores (a linear map of the pooled
    features) and the bidder's payment logit. Scores are bounded as ``S * tanh(a / S)``
    (1-Lipschitz, values in ``[-S, S]``).

    Args:
        env: an additive auction environment whose report box is the same for every bidder.
        hidden: per-bidder feature widths of the trunk.
        activation: ``tanh``, ``relu``, ``leaky_relu``, ``softplus``, ``elu`` or ``gelu``.
        weight_norm: ``spectral`` (the default), ``l1`` or ``none`` (the no-Lipschitz ablation).
        weight_bound: norm bound of every weight matrix.
        score_bound: ``S``; ``None`` leaves scores unbounded (ablation).
        payment: ``sigmoid``, ``zero_floor`` or ``fractional`` (see ``PAYMENTS``).
        payment_bound: ``B``, the payment cap of ``sigmoid`` / ``zero_floor``; ``None`` uses the
            largest possible reported value of the bundle (``sum_j high_j``).

    """

    config_name = "certified_equivariant"
    symmetric_in = ("bidders",)
    demands = ("additive",)
    #: Also a reverse auction (procurement: payments are transfers to suppliers).
    families = ("auction", "procurement")

    def check_env(self, env) -> None:  # noqa: D102 - auctions and procurement
        self.family = env.family if env.family in self.families else self.family
        super().check_env(env)

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        weight_norm: str = "spectral",
        weight_bound: float = 1.0,
        score_bound: float | None = 5.0,
        payment: str = "sigmoid",
        payment_bound: float | None = None,
    ) -> None:
        super().__init__(env)
        if activation not in ACTIVATION_MODULES:
            raise ConfigError(
                f"mechanism.activation={activation} is not valid; choose one of "
                + ", ".join(ACTIVATION_MODULES)
            )
        check_weight_norm(weight_norm, float(weight_bound))
        if not hidden or any(int(w) < 1 for w in hidden):
            raise ConfigError(f"mechanism.hidden={list(hidden)} needs at least one width >= 1")
        if score_bound is not None and not (math.isfinite(score_bound) and score_bound > 0):
            raise ConfigError(f"mechanism.score_bound={score_bound} must be > 0 (or null)")
        if payment not in PAYMENTS:
            raise ConfigError(
                f"mechanism.payment={payment} is not valid; choose one of {', '.join(PAYMENTS)}"
            )
        if env.family == "procurement" and payment == "fractional":
            raise ConfigError(
                f"mechanism.payment=fractional pays a share of reported value: not for "
                f"env={env.name} (procurement); choose sigmoid or zero_floor"
            )
        low, high = env.report_space.low, env.report_space.high
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ConfigError(
                f"mechanism=certified_equivariant needs a bounded report space; env={env.name} "
                "is unbounded"
            )
        if not (bool((low == low[:1]).all()) and bool((high == high[:1]).all())):
            raise ConfigError(
                f"mechanism=certified_equivariant treats bidders symmetrically; env={env.name} "
                "gives bidders different report ranges"
            )
        default_bound = float(high[0].abs().sum())
        if payment_bound is not None and not (math.isfinite(payment_bound) and payment_bound > 0):
            raise ConfigError(f"mechanism.payment_bound={payment_bound} must be > 0 (or null)")
        self.payment_kind = payment
        self.payment_bound = float(payment_bound) if payment_bound is not None else default_bound
        self.score_bound = None if score_bound is None else float(score_bound)
        self.activation_name = activation
        self.ir_by_design = payment == "fractional"
        self.register_buffer("input_shift", low[0].clone())
        self.register_buffer("input_scale", 1.0 / (high[0] - low[0]))
        #: Largest |report| coordinate (bounds the fractional payment's sensitivity).
        self.report_max = float(torch.maximum(low.abs(), high.abs()).max())
        self.report_bundle_max = float(torch.maximum(low[0].abs(), high[0].abs()).sum())
        m = self.n_items
        #: Public context features appended to every bidder's input (contextual envs).
        self.context_dim = int(getattr(env, "context_dim", 0))
        widths = [m + self.context_dim, *[int(w) for w in hidden]]
        self.trunk = nn.ModuleList(
            DeepSetsLayer(a, b, weight_norm, weight_bound)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.act = ACTIVATION_MODULES[activation]()
        last = widths[-1]
        self.score_head = DeepSetsLayer(last, m, weight_norm, weight_bound)
        self.dummy_head = ControlledLinear(last, m, weight_norm, weight_bound)
        self.payment_head = DeepSetsLayer(last, 1, weight_norm, weight_bound)
        self.register_buffer("lipschitz_l1", torch.tensor(float("nan")))
        self.refresh_lipschitz()

    # -- forward ------------------------------------------------------------------------------
    def _bounded(self, scores: Tensor) -> Tensor:
        if self.score_bound is None:
            return scores
        return self.score_bound * torch.tanh(scores / self.score_bound)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        h = (reports - self.input_shift) * self.input_scale  # [B, n, m]
        if self.context_dim:  # the same public context for every bidder: equivariance kept
            context = (public or {}).get("context")
            if context is None:
                context = h.new_zeros(h.shape[0], self.context_dim)
            h = torch.cat([h, context.to(h).unsqueeze(1).expand(-1, h.shape[1], -1)], dim=-1)
        for layer in self.trunk:
            h = self.act(layer(h))  # [B, n, d]
        scores = self._bounded(self.score_head(h))  # [B, n, m]
        dummy = self._bounded(self.dummy_head(h.mean(1, keepdim=True)))  # [B, 1, m]
        allocation = additive_allocation(torch.cat([scores, dummy], dim=1))
        logit = self.payment_head(h).squeeze(-1)  # [B, n]
        if self.payment_kind == "sigmoid":
            payment = self.payment_bound * torch.sigmoid(logit)
        elif self.payment_kind == "zero_floor":
            r = torch.relu(logit)
            payment = self.payment_bound * r / (1.0 + r)
        else:
            payment = torch.sigmoid(logit) * (allocation * reports).sum(-1)
        return Outcome(allocation, payment)

    # -- the a priori Lipschitz constant --------------------------------------------------------
    def lipschitz_terms(self) -> dict[str, float]:
        """The factors behind ``L`` (all l1 -> l1), from the current weights.

        Returns:
            ``input`` (rescaling), ``trunk`` (product of layers x activation), ``scores``,
            ``dummy``, ``allocation`` (softmax: 1/2), ``payment`` and the total ``L``.

        """
        with torch.no_grad():
            was = self.training
            self.eval()  # no power-iteration update while measuring
            try:
                act = ACTIVATION_LIPSCHITZ[self.activation_name]
                lip_in = float(self.input_scale.abs().max())
                lip_trunk = 1.0
                for layer in self.trunk:
                    lip_trunk *= float(layer.l1_factor()) * act
                lip_h = lip_in * lip_trunk
                lip_scores = float(self.score_head.l1_factor())  # tanh(./S)*S is 1-Lipschitz
                # mean over bidders then a linear map: ||W mean(dH)||_1 <= ||W|| ||dH||_1 / n
                lip_dummy = (
                    float(
                        self.dummy_head.block_l1_norms([self.dummy_head.raw_weight.shape[1]]).sum()
                    )
                    / self.n_bidders
                )
                # softmax Jacobian diag(p) - p p^T has l1 -> l1 norm max_j 2 p_j (1 - p_j) <= 1/2
                lip_alloc = 0.5 * (lip_scores + lip_dummy) * lip_h
                lip_g = float(self.payment_head.l1_factor()) * lip_h
                if self.payment_kind == "sigmoid":
                    lip_pay = 0.25 * self.payment_bound * lip_g
                elif self.payment_kind == "zero_floor":
                    lip_pay = self.payment_bound * lip_g  # d/dr r/(1+r) <= 1, relu 1-Lipschitz
                else:
                    # t_i = sigmoid(g_i) q_i, q_i = sum_j p_ij b_ij in [0, bundle max]:
                    # |dt_i| <= |dq_i| + q_max |dg_i| / 4, sum_i |dq_i| <= V ||dp||_1 + ||db||_1
                    lip_pay = (
                        self.report_max * lip_alloc + 1.0 + 0.25 * self.report_bundle_max * lip_g
                    )
            finally:
                self.train(was)
        return {
            "input": lip_in,
            "trunk": lip_trunk,
            "scores": lip_scores,
            "dummy": lip_dummy,
            "allocation": lip_alloc,
            "payment": lip_pay,
            "L": lip_alloc + lip_pay,
        }

    def lipschitz_constant(self) -> float:
        """``L`` of eq. (11) in l1 norms, w.r.t. raw reports, from the current weights."""
        return self.lipschitz_terms()["L"]

    def refresh_lipschitz(self) -> float:
        """Recompute ``L`` and store it in the ``lipschitz_l1`` buffer; returns it."""
        value = self.lipschitz_constant()
        self.lipschitz_l1.fill_(value)
        return value

    def state_dict(self, *args, **kwargs):  # noqa: D102 - L is refreshed before it is saved
        self.refresh_lipschitz()
        return super().state_dict(*args, **kwargs)

    def describe(self) -> dict[str, object]:
        """Architecture facts a certificate reports next to ``L``."""
        return {
            "class": "DeepSets over bidders (mean pooling), softmax with dummy per item",
            "activation": self.activation_name,
            "weight_norm": self.trunk[0].linear.weight_norm,
            "weight_bound": self.trunk[0].linear.bound,
            "score_bound": self.score_bound,
            "payment": self.payment_kind,
            "payment_bound": None if self.payment_kind == "fractional" else self.payment_bound,
        }
