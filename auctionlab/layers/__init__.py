"""Building blocks: MLP trunks, feasibility heads and payment heads."""

from auctionlab.layers.feasibility import additive_allocation, unit_demand_allocation
from auctionlab.layers.mlp import mlp

__all__ = ["additive_allocation", "mlp", "unit_demand_allocation"]
