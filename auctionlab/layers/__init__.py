"""Building blocks: MLP trunks, feasibility heads and payment heads."""

from auctionlab.layers.exchangeable import (
    ExchangeableLayer,
    GridAttentionBlock,
    SetAttention,
    equivariant_outcome,
)
from auctionlab.layers.feasibility import additive_allocation, unit_demand_allocation
from auctionlab.layers.mlp import mlp
from auctionlab.layers.sparsemax import sparsemax, sparsemax_allocation

__all__ = [
    "ExchangeableLayer",
    "GridAttentionBlock",
    "SetAttention",
    "additive_allocation",
    "equivariant_outcome",
    "mlp",
    "sparsemax",
    "sparsemax_allocation",
    "unit_demand_allocation",
]
