"""Permutation-equivariant blocks over the bidder x item grid, and the heads they feed.

Both EquivariantNet (exchangeable matrix layers, Hartford et al. 2018 / Rahme et al. 2021) and
RegretFormer (attention over items and over bidders, Ivanov et al. 2022) map reports
``[B, n, m]`` to per-cell features ``[B, n, m, 5]``; :func:`equivariant_outcome` turns those
into a feasible outcome so that permuting bidders (or items) permutes the outcome exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from auctionlab.layers.feasibility import additive_allocation, unit_demand_allocation
from auctionlab.types import Outcome

#: Channels of the per-cell output features, in order.
HEAD_CHANNELS = 5


class ExchangeableLayer(nn.Module):
    """``y = W [x, mean over bidders, mean over items, mean over both] + b`` per cell.

    Args:
        c_in: input channels per cell.
        c_out: output channels per cell.

    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(4 * c_in, c_out)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, n, m, c_in] -> [B, n, m, c_out]``."""
        over_bidders = x.mean(1, keepdim=True).expand_as(x)
        over_items = x.mean(2, keepdim=True).expand_as(x)
        over_all = x.mean((1, 2), keepdim=True).expand_as(x)
        return self.linear(torch.cat([x, over_bidders, over_items, over_all], dim=-1))


class SetAttention(nn.Module):
    """Multi-head self-attention over a short set, written for sets of a few elements.

    Auction grids attend over a handful of bidders or items; at that length the generic
    attention kernels cost more in dispatch and copies than in arithmetic, so the scores are
    broadcast products (about 2x faster than ``nn.MultiheadAttention`` at length 2 on CPU).
    No positional information: the output commutes with permutations of the set.

    Args:
        width: feature width ``d``.
        heads: heads (must divide ``width``).

    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, L, d] -> [N, L, d]``."""
        N, L, d = x.shape
        e = d // self.heads
        q, k, v = self.qkv(x).view(N, L, 3, self.heads, e).unbind(2)
        scores = (q.unsqueeze(2) * k.unsqueeze(1)).sum(-1) * e**-0.5  # [N, L, L, heads]
        mixed = (scores.softmax(2).unsqueeze(-1) * v.unsqueeze(1)).sum(2)  # [N, L, heads, e]
        return self.out(mixed.reshape(N, L, d))


class GridAttentionBlock(nn.Module):
    """Self-attention across items (per bidder), then across bidders (per item), then MLP.

    Pre-norm, residual connections throughout. No positional encodings, so the block commutes
    with permutations of bidders and of items.

    Args:
        width: feature width ``d``.
        heads: attention heads (must divide ``width``).
        feedforward: hidden width of the feed-forward layer.

    """

    def __init__(self, width: int, heads: int, feedforward: int) -> None:
        super().__init__()
        self.norm_items = nn.LayerNorm(width)
        self.items = SetAttention(width, heads)
        self.norm_bidders = nn.LayerNorm(width)
        self.bidders = SetAttention(width, heads)
        self.norm_ff = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, feedforward), nn.GELU(), nn.Linear(feedforward, width)
        )

    def forward(self, h: Tensor) -> Tensor:
        """``[B, n, m, d] -> [B, n, m, d]``."""
        B, n, m, d = h.shape
        x = self.norm_items(h).reshape(B * n, m, d)
        h = h + self.items(x).view(B, n, m, d)
        x = self.norm_bidders(h).transpose(1, 2).reshape(B * m, n, d)
        h = h + self.bidders(x).view(B, m, n, d).transpose(1, 2)
        return h + self.ff(self.norm_ff(h))


def equivariant_outcome(features: Tensor, reports: Tensor, demand: str) -> Outcome:
    """Feasible outcome from per-cell features; equivariant in bidders and items.

    Channels: 0 the cell's logit in its item's softmax over bidders; 1, averaged over bidders,
    the item's dummy logit (the seller keeps it); 2, averaged over items, the bidder's payment
    fraction (sigmoid); 3 and 4 (unit demand) the cell's logit in its bidder's softmax over
    items and, averaged over items, the bidder's "no item" logit.

    Args:
        features: ``[B, n, m, 5]``.
        reports: ``[B, n, m]`` (the payment is a fraction of the reported value won: IR).
        demand: ``additive`` or ``unit``.

    Returns:
        Allocation ``[B, n, m]`` and payment ``[B, n]``.

    """
    item_logits = torch.cat([features[..., 0], features[..., 1].mean(1, keepdim=True)], dim=1)
    if demand == "unit":
        bidder_logits = torch.cat([features[..., 3], features[..., 4].mean(2, keepdim=True)], dim=2)
        allocation = unit_demand_allocation(item_logits, bidder_logits)
    else:
        allocation = additive_allocation(item_logits)
    fraction = torch.sigmoid(features[..., 2].mean(2))
    return Outcome(allocation, fraction * (allocation * reports).sum(-1))
