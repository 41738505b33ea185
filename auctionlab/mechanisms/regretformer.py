"""RegretFormer (Ivanov et al. 2022): attention across items and across bidders."""

from __future__ import annotations

from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.layers.exchangeable import (
    HEAD_CHANNELS,
    GridAttentionBlock,
    equivariant_outcome,
)
from auctionlab.mechanisms.base import Mechanism
from auctionlab.mechanisms.equivariant import GridNormalizer
from auctionlab.types import Outcome


class RegretFormer(Mechanism):
    """Per-cell embeddings refined by item-wise and bidder-wise self-attention blocks.

    No positional encodings: permuting bidders (or items) permutes the outcome exactly, and
    one network serves any ``n x m``.

    Args:
        env: the auction environment (additive or unit demand).
        width: embedding width ``d``.
        heads: attention heads (divides ``width``).
        layers: attention blocks.
        feedforward: hidden width of each block's feed-forward layer.
        normalize_inputs: rescale reports to ``[0, 1]`` with the report space's box.

    """

    config_name = "regretformer"
    ir_by_design = True
    symmetric_in = ("bidders", "items")
    any_size = True

    def __init__(
        self,
        env,
        width: int = 32,
        heads: int = 4,
        layers: int = 2,
        feedforward: int = 64,
        normalize_inputs: bool = True,
    ) -> None:
        super().__init__(env)
        if width < 1 or heads < 1 or width % heads:
            raise ConfigError(
                f"mechanism.width={width} must be a positive multiple of mechanism.heads={heads}"
            )
        if layers < 1 or feedforward < 1:
            raise ConfigError(
                f"mechanism.layers={layers} and mechanism.feedforward={feedforward} must be >= 1"
            )
        self.normalize = GridNormalizer(env, normalize_inputs)
        self.embed = nn.Linear(1, width)
        self.blocks = nn.Sequential(
            *[GridAttentionBlock(width, heads, feedforward) for _ in range(layers)]
        )
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, HEAD_CHANNELS))

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        features = self.head(self.blocks(self.embed(self.normalize(reports))))
        return equivariant_outcome(features, reports, self.demand)
