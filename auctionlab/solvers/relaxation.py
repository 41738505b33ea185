"""Smooth stand-ins for winner determination, used only for gradients ([lemma2026solver] §5.3).

* ``allocation_softmax``: entropy-regularised maximisation over the convex hull of the feasible
  allocations (a softmax over the enumerated ``X`` at temperature ``tau``); its marginals are
  the straight-through Jacobian ``J(s)`` of the exact argmax (``grad=ste``).
* ``entropic_lp``: the entropy-regularised LP relaxation
  ``max <s, x> - tau sum x (log x - 1)`` s.t. item rows and bidder rows ``<= 1``, solved by exact
  dual coordinate ascent (Bregman projections in log space; one closed-form multiplier update
  per constraint, the temperature annealed down to ``tau``). It needs no enumeration, so it
  also serves markets solved by HiGHS. Gradients (``grad=lp``) come either from implicit
  differentiation of the optimality conditions (``implicit=True``, default; one batched
  ``r x r`` solve per instance, ``r`` = items + bidders) or from unrolling the iterations.

With ``outside=True`` every bidder also has an "outside option" (win nothing) with score 0
that is regularised like any bundle, and its bidder row becomes an equality:
``x_i0 + sum_S x_iS = 1``. Without it the entropy ``-x (log x - 1)`` is largest at ``x = 1``,
so a bidder with seven bundles all scored slightly below 0 is still allocated a full unit in
the relaxation while the integral argmax sells nothing (the §6.4 mismatch); with it a bundle
scored ``s`` competes with not selling at ``exp(s / tau)`` to 1, the smooth version of the
integral rule "sell only at a positive score".

Implicit gradient (KKT of the entropic LP): ``x = exp((s - A^T lambda) / tau)``, and on the
active rows ``R`` (``lambda_r > 0``, or equality rows) ``A_R x = 1``. Differentiating,
``dx = (D ds - D A_R^T dlambda) / tau`` with ``D = diag(x)`` and ``A_R dx = 0``, so the
Jacobian is the symmetric ``J = (D - D A_R^T (A_R D A_R^T)^{-1} A_R D) / tau`` and the
backward pass maps ``g`` to ``J g``.
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


def constraint_rows(membership: Tensor, outside: bool) -> tuple[Tensor, Tensor]:
    """The relaxation's constraint matrix over the flattened variables.

    Args:
        membership: ``[n, k, m]`` bool bundle language.
        outside: add one outside-option variable per bidder (after the ``n * k`` bundles).

    Returns:
        ``A`` ``[m + n, N]`` 0/1 (item rows first, then bidder rows; ``N = n * k`` or
        ``n * k + n``) and ``equality`` ``[m + n]`` bool (the bidder rows when ``outside``).

    """
    n, k, m = membership.shape
    items = membership.reshape(n * k, m).T.to(torch.float64)  # [m, n * k]
    bidders = torch.eye(n, dtype=torch.float64).repeat_interleave(k, dim=1)  # [n, n * k]
    rows = torch.cat([items, bidders])
    if outside:
        slack = torch.cat(
            [torch.zeros(m, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)]
        )
        rows = torch.cat([rows, slack], dim=1)
    equality = torch.zeros(m + n, dtype=torch.bool)
    equality[m:] = outside
    return rows, equality


def _dual_ascent(
    scores: Tensor, rows: Tensor, equality: Tensor, tau: float, iterations: int
) -> tuple[Tensor, Tensor]:
    """Annealed exact dual coordinate ascent (differentiable when ``scores`` is).

    Args:
        scores: ``[B, N]`` flattened scores (outside options included, at 0).
        rows: ``[R, N]`` 0/1 constraint matrix.
        equality: ``[R]`` bool, rows held at ``= 1`` (multiplier free in sign).
        tau: final temperature.
        iterations: sweeps over all rows.

    Returns:
        ``x`` ``[B, N]`` (unrepaired, ``exp((s - A^T lambda) / tau)``) and ``lambda`` ``[B, R]``.

    """
    B, _ = scores.shape
    R = rows.shape[0]
    inside = rows > 0
    multipliers = [scores.new_zeros(B) for _ in range(R)]
    shift = scores.new_zeros(scores.shape)  # A^T lambda, kept in step with the multipliers
    # epsilon scaling: the temperature falls geometrically from the score range to tau over
    # the first half of the sweeps, the multipliers carried along (much faster than at tau)
    start = max(float(scores.detach().abs().max()), tau) if scores.numel() else tau
    anneal = max(1, iterations // 2)
    schedule = [max(tau, start * (tau / start) ** (t / anneal)) for t in range(iterations)]
    for tau_t in schedule:
        for r in range(R):
            logits = (scores - shift) / tau_t
            masked = torch.where(inside[r], logits, torch.full_like(logits, -torch.inf))
            new = multipliers[r] + tau_t * torch.logsumexp(masked, -1)
            if not bool(equality[r]):
                new = new.clamp_min(0.0)
            shift = shift + (new - multipliers[r])[:, None] * rows[r]
            multipliers[r] = new
    x = torch.exp((scores - shift) / tau)
    return x, torch.stack(multipliers, -1)


def _repair(x: Tensor, rows: Tensor) -> Tensor:
    """Shrink every column by its most loaded row (when above 1): all rows end ``<= 1``.

    Args:
        x: ``[B, N]`` allocation.
        rows: ``[R, N]`` 0/1 constraint matrix.

    """
    load = (x @ rows.T).clamp_min(1.0)  # [B, R]
    worst = torch.where(rows > 0, load[:, :, None], 1.0).amax(1)  # [B, N]
    return x / worst


def kkt_backward(grad: Tensor, x: Tensor, rows: Tensor, active: Tensor, tau: float) -> Tensor:
    """``J g`` with the entropic LP's implicit Jacobian (see the module docstring).

    Args:
        grad: ``[B, N]`` incoming gradient ``g``.
        x: ``[B, N]`` the solution.
        rows: ``[R, N]`` 0/1 constraint matrix.
        active: ``[B, R]`` bool, the rows held at equality.
        tau: temperature.

    Returns:
        ``[B, N]`` gradient with respect to the scores.

    """
    weighted = x * grad  # D g
    a = active.to(x.dtype)
    rhs = (weighted @ rows.T) * a  # [B, R]  A_R D g
    gram = torch.einsum("rn,bn,qn->brq", rows, x, rows)  # [B, R, R]  A D A^T
    gram = gram * a[:, :, None] * a[:, None, :] + torch.diag_embed(1 - a)
    # A tiny ridge keeps the solve defined when active rows are dependent on the support
    # (e.g. a bidder whose only positive bundle holds an item nobody else wants).
    ridge = (1e-10 if x.dtype == torch.float64 else 1e-5) * gram.diagonal(0, 1, 2).mean(-1)
    gram = gram + ridge[:, None, None] * torch.eye(rows.shape[0], dtype=x.dtype, device=x.device)
    y = torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1) * a  # [B, R]
    return (weighted - x * (y @ rows)) / tau


class _ImplicitEntropicLP(torch.autograd.Function):
    """Forward: the dual ascent without a graph; backward: ``kkt_backward``."""

    @staticmethod
    def forward(ctx, scores: Tensor, rows: Tensor, equality: Tensor, tau: float, iterations: int):
        with torch.no_grad():
            x, multipliers = _dual_ascent(scores, rows, equality, tau, iterations)
            repaired = _repair(x, rows)
        active = (multipliers > 0) | equality.to(multipliers.device)
        ctx.save_for_backward(repaired, rows, active)
        ctx.tau = tau
        return repaired

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, rows, active = ctx.saved_tensors
        return kkt_backward(grad, x, rows, active, ctx.tau), None, None, None, None


def entropic_lp(
    scores: Tensor,
    membership: Tensor,
    tau: float,
    iterations: int = 30,
    implicit: bool = True,
    outside: bool = False,
) -> Tensor:
    """Entropy-regularised LP relaxation of winner determination.

    Args:
        scores: ``[B, n, k]`` scores.
        membership: ``[n, k, m]`` bool bundle language.
        tau: entropy weight (> 0).
        iterations: sweeps over all constraints.
        implicit: gradients by implicit differentiation of the optimality conditions
            (``False``: backpropagate through the unrolled sweeps).
        outside: give every bidder a regularised outside option with score 0 (see the module
            docstring).

    Returns:
        ``[B, n, k]`` fractional allocation ``x = exp((s - A^T lambda) / tau)``, each column
        then divided by its most loaded row's sum when above 1, so every item and bidder row
        sums to at most 1.

    """
    B, n, k = scores.shape
    rows, equality = constraint_rows(membership.cpu(), outside)
    rows = rows.to(device=scores.device, dtype=scores.dtype)
    equality = equality.to(scores.device)
    flat = scores.reshape(B, n * k)
    if outside:
        flat = torch.cat([flat, flat.new_zeros(B, n)], -1)  # outside options score 0
    if implicit and torch.is_grad_enabled() and scores.requires_grad:
        x = _ImplicitEntropicLP.apply(flat, rows, equality, float(tau), int(iterations))
    else:
        x, _ = _dual_ascent(flat, rows, equality, float(tau), int(iterations))
        x = _repair(x, rows)
    return x[:, : n * k].reshape(B, n, k)
