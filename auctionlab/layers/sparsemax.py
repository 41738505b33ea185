"""Sparsemax (Martins & Astudillo, 2016): Euclidean projection onto the simplex.

Piecewise linear, hence exactly representable in a mixed-integer program through its KKT
conditions ([curry2020certifying] §3.1, eq. 6); see ``auctionlab.solvers.mip_encoding``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sparsemax_threshold(logits: Tensor, dim: int = -1) -> Tensor:
    """The threshold ``tau`` with ``sparsemax(x) = max(x - tau, 0)`` along ``dim``.

    Args:
        logits: any shape; ``dim`` is projected onto the simplex.
        dim: the simplex axis.

    Returns:
        ``tau`` with ``dim`` kept as a size-one axis.

    """
    x = logits.movedim(dim, -1)
    k = x.shape[-1]
    z, _ = torch.sort(x, dim=-1, descending=True)
    ranks = torch.arange(1, k + 1, device=x.device, dtype=x.dtype)
    cumulative = z.cumsum(-1)
    support = 1 + ranks * z > cumulative  # prefix of the sorted entries in the support
    size = support.sum(-1, keepdim=True)  # >= 1 always
    tau = (cumulative.gather(-1, size - 1) - 1) / size.to(x.dtype)
    return tau.movedim(-1, dim)


def sparsemax(logits: Tensor, dim: int = -1) -> Tensor:
    """``argmin_z 0.5 ||x - z||^2`` over the probability simplex along ``dim``.

    Autograd differentiates through ``max(x - tau, 0)`` (``tau`` from a sort): on the
    support the Jacobian is ``I - 11^T / |S|``, as in the paper's closed form.

    Args:
        logits: any shape.
        dim: the simplex axis.

    Returns:
        Same shape as ``logits``: non-negative, summing to one along ``dim``.

    """
    return torch.clamp(logits - sparsemax_threshold(logits, dim), min=0.0)


def sparsemax_allocation(logits: Tensor) -> Tensor:
    """Sparsemax over bidders plus a dummy bidder, per item.

    Args:
        logits: ``[B, n + 1, m]``; row ``n`` is the dummy (item kept by the seller).

    Returns:
        ``[B, n, m]`` allocation with every item's column summing to at most one.

    """
    return sparsemax(logits, dim=-2)[..., :-1, :]
