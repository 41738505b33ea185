"""EquivariantNet (Rahme et al. 2021): exchangeable layers over the bidder x item grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.layers.exchangeable import HEAD_CHANNELS, ExchangeableLayer, equivariant_outcome
from auctionlab.layers.mlp import ACTIVATIONS
from auctionlab.mechanisms.base import Mechanism
from auctionlab.types import Outcome


class GridNormalizer(nn.Module):
    """Rescale reports to ``[0, 1]`` with the report space's box (identity where unbounded).

    A box that is the same for every bidder and item is stored as two scalars, so the network
    also runs on other market sizes; a per-cell box ties it to the env's ``n x m``.
    """

    def __init__(self, env, enabled: bool) -> None:
        super().__init__()
        low, high = env.report_space.low, env.report_space.high
        finite = torch.isfinite(low) & torch.isfinite(high) & enabled
        shift = torch.where(finite, low, 0.0)
        scale = torch.where(finite, 1.0 / (high - low), 1.0)
        if bool((shift == shift.flatten()[0]).all() and (scale == scale.flatten()[0]).all()):
            shift, scale = shift.flatten()[0], scale.flatten()[0]
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    def forward(self, reports: Tensor) -> Tensor:
        """``[B, n, m] -> [B, n, m, 1]``."""
        return ((reports - self.shift) * self.scale).unsqueeze(-1)


class EquivariantNet(Mechanism):
    """Exchangeable matrix layers; allocation and IR payment heads that keep equivariance.

    Permuting the bidders (or the items) of the reports permutes the outcome the same way,
    whatever the weights; one network serves any number of bidders and items.

    Args:
        env: the auction environment (additive or unit demand).
        hidden: channels of each exchangeable layer.
        activation: ``tanh``, ``relu``, ``elu`` or ``gelu``.
        normalize_inputs: rescale reports to ``[0, 1]`` with the report space's box (keeps
            equivariance when the box is the same for every bidder and item).

    """

    config_name = "equivariant_net"
    ir_by_design = True
    symmetric_in = ("bidders", "items")
    any_size = True

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (64, 64, 64),
        activation: str = "tanh",
        normalize_inputs: bool = True,
    ) -> None:
        super().__init__(env)
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"mechanism.activation={activation} is not valid; "
                f"choose one of {', '.join(ACTIVATIONS)}"
            )
        if not hidden or any(int(w) < 1 for w in hidden):
            raise ConfigError(f"mechanism.hidden={list(hidden)} needs widths >= 1")
        self.normalize = GridNormalizer(env, normalize_inputs)
        layers: list[nn.Module] = []
        last = 1
        for width in hidden:
            layers += [ExchangeableLayer(last, int(width)), ACTIVATIONS[activation]()]
            last = int(width)
        layers.append(ExchangeableLayer(last, HEAD_CHANNELS))
        self.net = nn.Sequential(*layers)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        return equivariant_outcome(self.net(self.normalize(reports)), reports, self.demand)
