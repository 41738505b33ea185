"""Sinkhorn allocation layer with slack ([lemma2026certified] §4): rows and columns capped.

Scores of ``n`` bidders x ``m`` items are completed to an ``(n + 1) x (m + 1)`` matrix: a dummy
row (the item stays with the seller) and a dummy column (the bidder leaves capacity unused),
with marginals

    rows    a = (r, ..., r, m)        (bidder capacity r; the dummy row can take every item)
    columns b = (1, ..., 1, n r)      (item supply 1; the dummy column can absorb every bidder)

so both sides sum to ``n r + m`` and the problem is always balanced whatever the scores. A fixed
number of Sinkhorn iterations runs in log space (log-sum-exp, no under- or overflow), ending
with a column update, so item columns hold at most one unit up to rounding. A final rescale
divides each bidder row by ``max(1, row sum / r)`` (only when ``r < m``: with ``r >= m`` columns
already cap rows at ``m <= r``) and then each item column by ``max(1, column sum)``; the column
pass only shrinks rows, so after it both caps hold for every input (``0``, ``1``, ties,
unconverged iterations), to floating-point rounding.

Unit demand is ``r = 1``; exposure budgets are ``r < m``; additive bidders are ``r = m``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auctionlab.errors import ConfigError


def check_sinkhorn(iterations: int, temperature: float) -> None:
    """One-line ``ConfigError`` for bad ``mechanism.sinkhorn_iterations`` / ``_temperature``."""
    if int(iterations) != iterations or iterations < 1:
        raise ConfigError(f"mechanism.sinkhorn_iterations={iterations} must be an integer >= 1")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"mechanism.sinkhorn_temperature={temperature} must be > 0 and finite")


def sinkhorn_allocation(
    scores: Tensor,
    dummy_row: Tensor,
    slack: Tensor,
    row_capacity: float = 1.0,
    iterations: int = 20,
    temperature: float = 1.0,
) -> Tensor:
    """Batched log-space Sinkhorn with a dummy row and column, then a feasibility rescale.

    Args:
        scores: ``[B, n, m]`` bidder-item logits.
        dummy_row: ``[B, m]`` logits of "item ``j`` stays unallocated".
        slack: ``[B, n]`` logits of "bidder ``i`` leaves capacity unused".
        row_capacity: ``r``, the most any bidder receives in total (1 for unit demand).
        iterations: Sinkhorn iterations (row then column update each).
        temperature: ``tau``; the kernel is ``exp(logits / tau)``.

    Returns:
        ``[B, n, m]`` allocation with entries in ``[0, 1]``, every column sum ``<= 1`` and every
        row sum ``<= r`` (to rounding). Permuting bidders (items) permutes its rows (columns).

    """
    B, n, m = scores.shape
    dtype = scores.dtype
    corner = scores.new_zeros(B, 1, 1)
    top = torch.cat([scores, slack.unsqueeze(-1)], dim=-1)  # [B, n, m + 1]
    bottom = torch.cat([dummy_row.unsqueeze(1), corner], dim=-1)  # [B, 1, m + 1]
    log_kernel = torch.cat([top, bottom], dim=1) / temperature  # [B, n + 1, m + 1]
    log_a = torch.log(
        torch.tensor([float(row_capacity)] * n + [float(m)], dtype=dtype, device=scores.device)
    )
    log_b = torch.log(
        torch.tensor([1.0] * m + [float(n * row_capacity)], dtype=dtype, device=scores.device)
    )
    g = scores.new_zeros(B, 1, m + 1)
    for _ in range(int(iterations)):
        f = log_a.view(1, -1, 1) - torch.logsumexp(log_kernel + g, dim=2, keepdim=True)
        g = log_b.view(1, 1, -1) - torch.logsumexp(log_kernel + f, dim=1, keepdim=True)
    plan = torch.exp(log_kernel + f + g)[:, :n, :m]  # [B, n, m]
    if row_capacity < m:  # with r >= m the column caps already keep rows below m <= r
        plan = plan / torch.clamp(plan.sum(-1, keepdim=True) / row_capacity, min=1.0)
    return plan / torch.clamp(plan.sum(-2, keepdim=True), min=1.0)


def sinkhorn_lipschitz(n_items: int, row_capacity: float, iterations: int, temperature: float):
    """A priori l1 Lipschitz factor of ``sinkhorn_allocation`` w.r.t. its logits.

    Bound on ``||dP||_1 / ||dz||_1`` with ``z`` all logits (scores, dummy row and slack column):

    * iterations: with ``K = z / tau`` and potentials ``f_i = log a_i - LSE_j(K_ij + g_j)``,
      ``g_j = log b_j - LSE_i(K_ij + f_i)`` (``g = 0`` at the start), log-sum-exp is
      1-Lipschitz in the max norm, so ``||df^t|| <= ||dK|| + ||dg^{t-1}||`` and
      ``||dg^t|| <= ||dK|| + ||df^t||``, giving ``||dg^T|| <= 2T ||dK||``,
      ``||df^T|| <= (2T - 1) ||dK||`` and ``||d log P||_inf <= 4T ||dK||_inf``;
    * ``dP = P * d log P`` and, after the final column update, the real block holds at most one
      unit per item column, so ``||dP||_1 <= m ||d log P||_inf``; with ``||dK||_inf <=
      ||dz||_1 / tau`` the plan moves by at most ``4 T m / tau`` per unit of ``||dz||_1``;
    * the rescale ``x -> x / max(1, sum(x) / c)`` of a nonnegative vector has Jacobian
      ``(I - x 1^T / s) / s`` (``s = sum(x) / c > 1``) with l1 -> l1 norm
      ``max_k (2 - 2 x_k / (c s)) / s < 2`` (the identity, norm 1, when ``s <= 1``); rows are
      independent of each other, so each pass (columns; rows when ``r < m``) costs a factor 2.

    Args:
        n_items: ``m``.
        row_capacity: ``r``.
        iterations: ``T``.
        temperature: ``tau``.

    Returns:
        The factor (a float).

    """
    passes = 2 if row_capacity < n_items else 1
    return (2.0**passes) * 4.0 * int(iterations) * n_items / float(temperature)
