"""RegretNet (Dütting et al., 2019): fully connected allocation and payment networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.layers import additive_allocation, mlp, unit_demand_allocation
from auctionlab.mechanisms.base import Mechanism
from auctionlab.types import Outcome


class RegretNet(Mechanism):
    """Allocation network with a softmax-plus-dummy head and a fractional IR payment head.

    The payment of bidder ``i`` is ``sigmoid(q_i(b)) * sum_j b_ij a_ij(b)``, so a truthful
    bidder's utility is never negative (IR by construction). Unit-demand envs get the
    min-of-two-softmaxes head, so no bidder's allocations sum above one.

    Args:
        env: the auction environment (gives ``n``, ``m``, demand and report ranges).
        hidden: hidden layer widths of each network.
        activation: ``tanh`` (the original), ``relu``, ``elu`` or ``gelu``.
        normalize_inputs: rescale reports to ``[0, 1]`` using the report space's box
            (helps settings such as U[4,16]; the mechanism remains a function of the reports).

    """

    ir_by_design = True
    config_name = "regretnet"

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (100, 100, 100),
        activation: str = "tanh",
        normalize_inputs: bool = True,
    ) -> None:
        super().__init__(env)
        n, m = self.n_bidders, self.n_items
        alloc_out = (n + 1) * m + (n * (m + 1) if self.demand == "unit" else 0)
        self.allocation_net = mlp(n * m, hidden, alloc_out, activation)
        self.payment_net = mlp(n * m, hidden, n, activation)
        low, high = env.report_space.low, env.report_space.high
        finite = torch.isfinite(low) & torch.isfinite(high) & normalize_inputs
        self.register_buffer("input_shift", torch.where(finite, low, 0.0).flatten())
        self.register_buffer("input_scale", torch.where(finite, 1.0 / (high - low), 1.0).flatten())

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        batch, n, m = reports.shape
        x = (reports.reshape(batch, n * m) - self.input_shift) * self.input_scale
        logits = self.allocation_net(x)
        item_logits = logits[:, : (n + 1) * m].view(batch, n + 1, m)
        if self.demand == "unit":
            bidder_logits = logits[:, (n + 1) * m :].view(batch, n, m + 1)
            allocation = unit_demand_allocation(item_logits, bidder_logits)
        else:
            allocation = additive_allocation(item_logits)
        fraction = torch.sigmoid(self.payment_net(x))
        payment = fraction * (allocation * reports).sum(-1)
        return Outcome(allocation, payment)
