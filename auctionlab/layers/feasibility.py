"""Feasibility heads: logits in, allocations that can never over-allocate out."""

from __future__ import annotations

import torch
from torch import Tensor


def additive_allocation(logits: Tensor) -> Tensor:
    """Softmax over bidders plus a dummy bidder, per item.

    Args:
        logits: ``[B, n + 1, m]``; row ``n`` is the dummy (item kept by the seller).

    Returns:
        ``[B, n, m]`` allocation with every item's column summing to at most one.

    """
    return torch.softmax(logits, dim=-2)[..., :-1, :]


def unit_demand_allocation(item_logits: Tensor, bidder_logits: Tensor) -> Tensor:
    """RegretNet's unit-demand head: the minimum of a per-item and a per-bidder softmax.

    Args:
        item_logits: ``[B, n + 1, m]``, softmax over bidders (with dummy) for each item.
        bidder_logits: ``[B, n, m + 1]``, softmax over items (with dummy) for each bidder.

    Returns:
        ``[B, n, m]`` allocation; columns and rows each sum to at most one.

    """
    per_item = torch.softmax(item_logits, dim=-2)[..., :-1, :]
    per_bidder = torch.softmax(bidder_logits, dim=-1)[..., :-1]
    return torch.minimum(per_item, per_bidder)
