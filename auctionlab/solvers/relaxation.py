"""Smooth stand-ins for winner determination, used only for gradients (seed 001 §5.3).

* ``allocation_softmax``: entropy-regularised maximisation over the convex hull of the feasible
  allocations (a softmax over the enumerated ``X`` at temperature ``tau``); its marginals are
  the straight-through Jacobian ``J(s)`` of the exact argmax (``grad=ste``).
* ``entropic_lp``: the entropy-regularised LP relaxation
  ``max <s, x> - tau sum x (log x - 1)`` s.t. item rows and bidder rows ``<= 1``, solved by exact
  dual coordinate ascent (Bregman projections in log space; one closed-form multiplier update
  per constraint, the temperature annealed down to ``tau``) and differentiated through the
  unrolled iterations (``grad=lp``). It needs
  no enumeration, so it also serves markets solved by HiGHS.
"""

from __future__ import annotations

import torch
from torch import Tensor


def allocation_softmax(scores: Tensor, indicator: Tensor, tau: float) -> Tensor:
    """Marginals of ``softmax(<s, x_a> / tau)`` over the feasible allocations.

    Args:
        scores: ``[B, n, k]`` scores.
        indicator: ``[A, n * k]`` 0/1 indicators of the feasible allocations.
        tau: temperature (> 0).

    Returns:
        ``[B, n, k]`` fractional allocation in the convex hull of ``X``.

    """
    B, n, k = scores.shape
    weights = indicator.to(scores.dtype)
    totals = scores.reshape(B, n * k) @ weights.T  # [B, A]
    probabilities = torch.softmax(totals / tau, dim=-1)
    return (probabilities @ weights).view(B, n, k)


def entropic_lp(scores: Tensor, membership: Tensor, tau: float, iterations: int = 30) -> Tensor:
    """Entropy-regularised LP relaxation of winner determination.

    Args:
        scores: ``[B, n, k]`` scores.
        membership: ``[n, k, m]`` bool bundle language.
        tau: entropy weight (> 0).
        iterations: sweeps over all constraints.

    Returns:
        ``[B, n, k]`` fractional allocation ``x = exp((s - A^T lambda) / tau)``, each column
        then divided by its most loaded row's sum when above 1, so every item and bidder row
        sums to at most 1.

    """
    members = membership.to(device=scores.device, dtype=scores.dtype)  # [n, k, m]
    B, n, k = scores.shape
    m = members.shape[-1]
    item_lambda = [scores.new_zeros(B) for _ in range(m)]
    bidder_lambda = scores.new_zeros(B, n)
    item_term = scores.new_zeros(B, n, k)
    # epsilon scaling: the temperature falls geometrically from the score range to tau over
    # the first half of the sweeps, the multipliers carried along (much faster than at tau)
    start = max(float(scores.detach().abs().max()), tau)
    anneal = max(1, iterations // 2)
    schedule = [max(tau, start * (tau / start) ** (t / anneal)) for t in range(iterations)]
    logits = scores / tau
    for step in schedule:
        tau_t = step
        logits = (scores - item_term - bidder_lambda[..., None]) / tau_t
        new_bidder = (bidder_lambda + tau_t * torch.logsumexp(logits, -1)).clamp_min(0.0)
        bidder_lambda = new_bidder
        for j in range(m):
            logits = (scores - item_term - bidder_lambda[..., None]) / tau_t
            inside = members[..., j] > 0  # [n, k]
            masked = torch.where(inside, logits, torch.full_like(logits, -torch.inf))
            row = torch.logsumexp(masked.reshape(B, n * k), -1)
            new = (item_lambda[j] + tau_t * row).clamp_min(0.0)
            item_term = item_term + (new - item_lambda[j])[:, None, None] * members[..., j]
            item_lambda[j] = new
    x = torch.exp((scores - item_term - bidder_lambda[..., None]) / tau)
    # Repair what the sweeps left over: shrink every column by its most violated row, so each
    # item and bidder row sums to at most 1 exactly (rows only shrink).
    members_flat = members.reshape(n * k, m)
    item_load = (x.reshape(B, n * k) @ members_flat).clamp_min(1.0)  # [B, m]
    bidder_load = x.sum(-1).clamp_min(1.0)  # [B, n]
    worst_item = torch.where(members > 0, item_load[:, None, None, :], 1.0).amax(-1)
    return x / torch.maximum(worst_item, bidder_load[..., None])
