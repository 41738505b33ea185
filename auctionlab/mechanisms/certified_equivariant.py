"""Certified equivariant mechanism ([lemma2026certified] §4): bidder-equivariant, Lipschitz.

The class the statistical certificate is meant for: feasibility by construction (softmax over
bidders plus a dummy per item, eq. 9, or a Sinkhorn layer with slack for unit-demand / exposure
caps), permutation equivariance in bidders (shared weights with mean pooling, eqs. 7-8, or
shared-weight self-attention over bidders), bounded payments (``B * sigmoid(g)``, eq. 10, or the
exact-zero variant) and an a priori Lipschitz constant ``L`` of eq. (11),

    ||p(b) - p(b')||_1 + ||t(b) - t(b')||_1 <= L ||b - b'||_1   for all report profiles b, b',

computed from the layers (spectral or l1 weight control, tanh-bounded scores, 1-Lipschitz
activations) and stored with the weights (buffer ``lipschitz_l1``, refreshed whenever the
state dict is taken). ``encoder=mlp`` (a plain MLP on the flattened profile) is the
no-equivariance ablation of §9: same heads, same control, no symmetry.
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
    AttentionLayer,
    ControlledLinear,
    DeepSetsLayer,
    check_weight_norm,
    l1_operator_norm,
)
from auctionlab.layers.sinkhorn import check_sinkhorn, sinkhorn_allocation, sinkhorn_lipschitz
from auctionlab.mechanisms.base import Mechanism
from auctionlab.types import Outcome

#: Payment heads: ``sigmoid`` (B * sigmoid(g), eq. 10), ``zero_floor`` (B * r / (1 + r) with
#: r = relu(g): exact zeros), ``fractional`` (sigmoid(g) * reported value won: IR by design).
PAYMENTS = ("sigmoid", "zero_floor", "fractional")
#: Trunks: ``deepsets`` (mean pooling, eq. 8), ``attention`` (shared-weight self-attention over
#: bidders), ``mlp`` (flattened profile: the no-equivariance ablation).
ENCODERS = ("deepsets", "attention", "mlp")
#: Feasibility layers: ``softmax`` (per item over bidders + dummy, eq. 9), ``sinkhorn``
#: (dummy row and column as slack; bidder rows capped at 1 for unit demand).
ALLOCATIONS = ("softmax", "sinkhorn")


def _l1(linear: ControlledLinear) -> float:
    """l1 -> l1 operator norm of a controlled linear map's effective weight."""
    return float(l1_operator_norm(linear.weight()))


class CertifiedEquivariant(Mechanism):
    """Equivariant Lipschitz trunk over bidders; softmax or Sinkhorn allocation; bounded payments.

    Per bidder, reports are rescaled to ``[0, 1]`` with the report box (shared by all bidders),
    joined by the public context ``[B, d]`` when the env has one (``env.context_dim``), passed
    through the trunk with a 1-Lipschitz activation (``DeepSetsLayer``s or ``AttentionLayer``s,
    or, for ``encoder=mlp``, ``ControlledLinear`` layers on the flattened ``[B, n (m + d)]``
    profile), then three heads: the bidders' item scores (plus, for ``sinkhorn``, each bidder's
    slack logit), the dummy's item scores and the bidders' payment logits. Equivariant encoders
    use DeepSets heads and a linear map of the pooled features for the dummy; ``mlp`` uses linear
    heads on the flat features. Scores are bounded as ``S * tanh(a / S)`` (1-Lipschitz, values in
    ``[-S, S]``).

    Args:
        env: an additive auction environment whose report box is the same for every bidder
            (unit demand too with ``allocation=sinkhorn``).
        hidden: feature widths of the trunk (per bidder; of the whole profile for ``mlp``).
        activation: ``tanh``, ``relu``, ``leaky_relu``, ``softplus``, ``elu`` or ``gelu``.
        weight_norm: ``spectral`` (the default), ``l1`` or ``none`` (the no-Lipschitz ablation).
        weight_bound: norm bound of every weight matrix.
        score_bound: ``S``; ``None`` leaves scores unbounded (ablation).
        payment: ``sigmoid``, ``zero_floor`` or ``fractional`` (see ``PAYMENTS``).
        payment_bound: ``B``, the payment cap of ``sigmoid`` / ``zero_floor``; ``None`` uses the
            largest possible reported value of the bundle (``sum_j high_j``).
        encoder: ``deepsets``, ``attention`` or ``mlp`` (see ``ENCODERS``).
        attention_heads: heads of every ``AttentionLayer`` (``encoder=attention``).
        attention_dim: query / key / value width per head (``encoder=attention``).
        allocation: ``softmax`` or ``sinkhorn`` (see ``ALLOCATIONS``).
        sinkhorn_iterations: Sinkhorn iterations ``T`` (``allocation=sinkhorn``).
        sinkhorn_temperature: ``tau`` of the Sinkhorn kernel ``exp(scores / tau)``.

    """

    config_name = "certified_equivariant"
    symmetric_in = ("bidders",)
    demands = ("additive",)
    #: Also a reverse auction (procurement: payments are transfers to suppliers).
    families = ("auction", "procurement")

    def check_env(self, env) -> None:  # noqa: D102 - auctions and procurement; unit via Sinkhorn
        self.family = env.family if env.family in self.families else self.family
        if env.demand == "unit" and self.allocation_kind == "softmax":
            raise ConfigError(
                f"mechanism=certified_equivariant with allocation=softmax supports demand "
                f"additive; env={env.name} is unit (use mechanism.allocation=sinkhorn)"
            )
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
        encoder: str = "deepsets",
        attention_heads: int = 2,
        attention_dim: int = 8,
        allocation: str = "softmax",
        sinkhorn_iterations: int = 20,
        sinkhorn_temperature: float = 1.0,
    ) -> None:
        if allocation not in ALLOCATIONS:
            raise ConfigError(
                f"mechanism.allocation={allocation} is not valid; choose one of "
                + ", ".join(ALLOCATIONS)
            )
        # check_env (run by the base constructor) needs it; a plain attribute, set first.
        self.allocation_kind = allocation
        self.demands = ("additive", "unit") if allocation == "sinkhorn" else ("additive",)
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
        if encoder not in ENCODERS:
            raise ConfigError(
                f"mechanism.encoder={encoder} is not valid; choose one of {', '.join(ENCODERS)}"
            )
        for name, value in (("attention_heads", attention_heads), ("attention_dim", attention_dim)):
            if int(value) != value or value < 1:
                raise ConfigError(f"mechanism.{name}={value} must be an integer >= 1")
        check_sinkhorn(sinkhorn_iterations, float(sinkhorn_temperature))
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
        self.encoder_kind = encoder
        self.ir_by_design = payment == "fractional"
        if encoder == "mlp":
            self.symmetric_in = ()  # the ablation: bidder labels matter
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.sinkhorn_temperature = float(sinkhorn_temperature)
        #: Sinkhorn row cap: one unit for unit demand, otherwise no cap beyond the m items.
        self.row_capacity = 1.0 if self.demand == "unit" else float(self.n_items)
        self.register_buffer("input_shift", low[0].clone())
        self.register_buffer("input_scale", 1.0 / (high[0] - low[0]))
        #: Largest |report| coordinate (bounds the fractional payment's sensitivity).
        self.report_max = float(torch.maximum(low.abs(), high.abs()).max())
        self.report_bundle_max = float(torch.maximum(low[0].abs(), high[0].abs()).sum())
        n, m = self.n_bidders, self.n_items
        #: Public context features appended to every bidder's input (contextual envs).
        self.context_dim = int(env.context_dim)
        #: Score channels per bidder: its items, plus its slack (unused capacity) for Sinkhorn.
        self.score_width = m + (1 if allocation == "sinkhorn" else 0)
        width_in = m + self.context_dim
        if encoder == "mlp":
            widths = [n * width_in, *[int(w) for w in hidden]]
            self.trunk = nn.ModuleList(
                ControlledLinear(a, b, weight_norm, weight_bound)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
        else:
            widths = [width_in, *[int(w) for w in hidden]]
            self.trunk = nn.ModuleList(
                DeepSetsLayer(a, b, weight_norm, weight_bound)
                if encoder == "deepsets"
                else AttentionLayer(
                    a, b, int(attention_heads), int(attention_dim), weight_norm, weight_bound
                )
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
        self.act = ACTIVATION_MODULES[activation]()
        last = widths[-1]
        if encoder == "mlp":
            self.score_head = ControlledLinear(
                last, n * self.score_width, weight_norm, weight_bound
            )
            self.dummy_head = ControlledLinear(last, m, weight_norm, weight_bound)
            self.payment_head = ControlledLinear(last, n, weight_norm, weight_bound)
        else:
            self.score_head = DeepSetsLayer(last, self.score_width, weight_norm, weight_bound)
            self.dummy_head = ControlledLinear(last, m, weight_norm, weight_bound)
            self.payment_head = DeepSetsLayer(last, 1, weight_norm, weight_bound)
        self.register_buffer("lipschitz_l1", torch.tensor(float("nan")))
        self.refresh_lipschitz()

    # -- forward ------------------------------------------------------------------------------
    def _bounded(self, scores: Tensor) -> Tensor:
        if self.score_bound is None:
            return scores
        return self.score_bound * torch.tanh(scores / self.score_bound)

    def _heads(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Scores ``[B, n, score_width]``, dummy scores ``[B, 1, m]``, payment logits ``[B, n]``.

        Args:
            h: ``[B, n, m + d]`` rescaled per-bidder inputs.

        """
        B, n, _ = h.shape
        if self.encoder_kind == "mlp":
            z = h.reshape(B, -1)  # [B, n (m + d)]
            for layer in self.trunk:
                z = self.act(layer(z))
            scores = self.score_head(z).view(B, n, self.score_width)
            return scores, self.dummy_head(z).unsqueeze(1), self.payment_head(z)
        for layer in self.trunk:
            h = self.act(layer(h))  # [B, n, hidden]
        dummy = self.dummy_head(h.mean(1, keepdim=True))  # [B, 1, m]
        return self.score_head(h), dummy, self.payment_head(h).squeeze(-1)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        h = (reports - self.input_shift) * self.input_scale  # [B, n, m]
        if self.context_dim:  # the same public context for every bidder: equivariance kept
            context = (public or {}).get("context")
            if context is None:
                context = h.new_zeros(h.shape[0], self.context_dim)
            h = torch.cat([h, context.to(h).unsqueeze(1).expand(-1, h.shape[1], -1)], dim=-1)
        scores, dummy, logit = self._heads(h)
        scores, dummy = self._bounded(scores), self._bounded(dummy)
        if self.allocation_kind == "sinkhorn":
            m = self.n_items
            allocation = sinkhorn_allocation(
                scores[..., :m],
                dummy.squeeze(1),
                scores[..., m],
                self.row_capacity,
                self.sinkhorn_iterations,
                self.sinkhorn_temperature,
            )
        else:
            allocation = additive_allocation(torch.cat([scores, dummy], dim=1))
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
            ``dummy``, ``allocation`` (softmax: 1/2 x score factors; Sinkhorn: see
            ``sinkhorn_lipschitz``), ``payment`` and the total ``L``.

        """
        with torch.no_grad():
            was = self.training
            self.eval()  # no power-iteration update while measuring
            try:
                act = ACTIVATION_LIPSCHITZ[self.activation_name]
                lip_in = float(self.input_scale.abs().max())
                lip_trunk = 1.0
                for layer in self.trunk:
                    if self.encoder_kind == "mlp":
                        factor = _l1(layer)
                    elif self.encoder_kind == "attention":
                        factor = layer.l1_factor(self.n_bidders)
                    else:
                        factor = layer.l1_factor()
                    lip_trunk *= float(factor) * act
                lip_h = lip_in * lip_trunk
                if self.encoder_kind == "mlp":  # linear heads on the flat features
                    lip_scores = float(_l1(self.score_head))
                    lip_dummy = float(_l1(self.dummy_head))
                    lip_g = float(_l1(self.payment_head)) * lip_h
                else:
                    lip_scores = float(self.score_head.l1_factor())  # tanh(./S)*S: 1-Lipschitz
                    # mean over bidders then a linear map: ||W mean(dH)||_1 <= ||W|| ||dH||_1 / n
                    lip_dummy = float(_l1(self.dummy_head)) / self.n_bidders
                    lip_g = float(self.payment_head.l1_factor()) * lip_h
                if self.allocation_kind == "sinkhorn":
                    lip_layer = sinkhorn_lipschitz(
                        self.n_items,
                        self.row_capacity,
                        self.sinkhorn_iterations,
                        self.sinkhorn_temperature,
                    )
                else:
                    # softmax Jacobian diag(p) - p p^T: l1 -> l1 norm max_j 2 p_j (1 - p_j) <= 1/2
                    lip_layer = 0.5
                lip_alloc = lip_layer * (lip_scores + lip_dummy) * lip_h
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
        trunk = {
            "deepsets": "DeepSets over bidders (mean pooling)",
            "attention": "shared-weight self-attention over bidders (tanh-bounded q, k, v)",
            "mlp": "MLP on the flattened profile (no equivariance)",
        }[self.encoder_kind]
        layer = (
            "softmax with dummy per item"
            if self.allocation_kind == "softmax"
            else f"Sinkhorn with slack ({self.sinkhorn_iterations} iterations, "
            f"tau {self.sinkhorn_temperature}, row cap {self.row_capacity:g})"
        )
        first = self.trunk[0]
        linear = first if isinstance(first, ControlledLinear) else first.linear
        return {
            "class": f"{trunk}, {layer}",
            "activation": self.activation_name,
            "weight_norm": linear.weight_norm,
            "weight_bound": linear.bound,
            "score_bound": self.score_bound,
            "payment": self.payment_kind,
            "payment_bound": None if self.payment_kind == "fractional" else self.payment_bound,
        }
