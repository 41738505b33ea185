"""ProportionNet-style baseline ([lemma2026certified] §9; [kuo2020proportionnet]).

[lemma2026certified] describes ProportionNet as "a fairness-oriented baseline that hard-codes
proportional allocation heuristics (or their smooth relaxations) and then learns payments"; Kuo et
al. train RegretNet under a total-variation fairness constraint. This module is the former, and
training it with ``trainer=constrained_erm`` on an env with a fairness functional (``env=ads_4x2``,
``trainer.constraint.eps_fairness``) adds the latter.

Allocation: item ``j`` goes to bidder ``i`` with probability

    p_ij = w_ij / (sum_k w_kj + c_j),   w_ij = (x_ij + eps)^gamma_j,

with ``x`` the reports rescaled to ``[0, 1]`` by the report box (clamped at 0), a learned exponent
``gamma_j > 0`` per item (1 = proportional to the bid; larger approaches the highest bidder) and
a learned reserve weight ``c_j > 0`` (the seller keeps the rest). Written as a softmax over
``gamma_j log(x_ij + eps)`` and the dummy logit ``log c_j``: feasible for every input, symmetric
in bidders, monotone in each bidder's own bid. Payments: RegretNet's fractional head,
``sigmoid(q_i(b)) * sum_j b_ij p_ij``, so truthful utility is never negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.layers import additive_allocation, mlp
from auctionlab.mechanisms.base import Mechanism
from auctionlab.types import Outcome

#: Offset inside the log: a zero report keeps a finite logit (ties at zero share equally).
EPS = 1e-3


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class ProportionNet(Mechanism):
    """Smooth proportional allocation per item (learned exponent and reserve), learned payments.

    Args:
        env: an additive auction environment.
        hidden: hidden widths of the payment network.
        activation: ``tanh``, ``relu``, ``elu`` or ``gelu`` (payment network).
        exponent: initial ``gamma`` of every item (> 0).
        reserve: initial reserve weight ``c`` of every item (> 0), in units of ``w``.
        normalize_inputs: rescale reports to ``[0, 1]`` with the report box (where finite).

    """

    config_name = "proportionnet"
    demands = ("additive",)
    ir_by_design = True

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (100, 100, 100),
        activation: str = "tanh",
        exponent: float = 1.0,
        reserve: float = 0.1,
        normalize_inputs: bool = True,
    ) -> None:
        super().__init__(env)
        for name, value in (("exponent", exponent), ("reserve", reserve)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"mechanism.{name}={value} must be > 0 and finite")
        n, m = self.n_bidders, self.n_items
        self.payment_net = mlp(n * m, hidden, n, activation)
        self.raw_exponent = nn.Parameter(torch.full((m,), _inverse_softplus(float(exponent))))
        self.raw_reserve = nn.Parameter(torch.full((m,), _inverse_softplus(float(reserve))))
        low, high = env.report_space.low, env.report_space.high
        finite = torch.isfinite(low) & torch.isfinite(high) & normalize_inputs
        self.register_buffer("input_shift", torch.where(finite, low, 0.0))
        self.register_buffer("input_scale", torch.where(finite, 1.0 / (high - low), 1.0))

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        batch, n, m = reports.shape
        x = ((reports - self.input_shift) * self.input_scale).clamp_min(0.0)  # [B, n, m]
        gamma = F.softplus(self.raw_exponent)  # [m]
        logits = gamma * torch.log(x + EPS)  # [B, n, m]
        reserve = torch.log(F.softplus(self.raw_reserve) + 1e-12).expand(batch, 1, m)
        allocation = additive_allocation(torch.cat([logits, reserve], dim=1))
        fraction = torch.sigmoid(self.payment_net(x.reshape(batch, n * m)))  # [B, n]
        payment = fraction * (allocation * reports).sum(-1)
        return Outcome(allocation, payment)
