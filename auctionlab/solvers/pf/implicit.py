"""Differentiable PF / RPF allocations: implicit gradients through the KKT system (§4, App. C-D).

:class:`PFFunction` solves program (9) forward (:func:`auctionlab.solvers.pf.ipm.solve_pf`) and
differentiates it implicitly. With ``F`` the KKT system in the form (12) (stationarity
multiplied by ``u_i = v_i^T a_i``) and ``M = dF/d(a, mu, nu, lambda)`` the paper's matrix
``M'`` (:func:`kkt_matrix`), one solve ``M^T g = [dl/da, 0, 0, 0]`` per instance gives every
input's gradient ``dl/dtheta = -(dF/dtheta)^T g``. When ``M`` is singular (fewer than
``NM - N`` tight constraints, or no strict complementarity: Theorem 1) the minimal-norm solution
is used (:func:`auctionlab.solvers.pf.linalg.solve_transposed`), as in Prop. 1's remark;
invertible instances use an LU solve. Fixed variables and absent agents are eliminated from
``M`` (their rows and columns become identity): their allocation does not move locally. Most
instances are differentiated through the smaller active-set system instead
(:func:`_reduced_gradients`), with the same result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from auctionlab.errors import NonFiniteError
from auctionlab.solvers.pf.ipm import DEMAND_ZERO, ZERO, PFSolution, PFSolveError, solve_pf
from auctionlab.solvers.pf.linalg import (
    _compressed_solve_transposed,
    _front,
    _lu_solve_checked,
)


def kkt_matrix(sol: PFSolution, v: Tensor, x: Tensor, b: Tensor, z: Tensor) -> Tensor:
    """The paper's ``M'`` (App. D; ``M`` of §4.1 when ``z = 0``), ``[B, 3nm + m, 3nm + m]``.

    Unknowns ordered ``(a, mu, nu, lambda)``, each flattened agent-major. Rows and columns of
    fixed variables and of budgets that are not part of the program are replaced by identity.
    """
    a, mu, nu, lam, free = sol.allocation, sol.mu, sol.nu, sol.lam, sol.free
    B, n, m = a.shape
    N = n * m
    K = 3 * N + m
    u = (v * a).sum(-1, keepdim=True)  # [B, n, 1]
    c = mu - nu - lam.unsqueeze(1) - z  # [B, n, m]
    # Entries of fixed variables and of budgets outside the program are zeroed before they
    # are written, so the blocks go straight into M (every block is a diagonal or a batch of
    # small blocks: written through strided views, never as a dense [B, K, K] temporary).
    freef = free.to(a.dtype)
    budget = (b > ZERO).to(a.dtype)
    M = torch.zeros(B, K, K, dtype=a.dtype, device=a.device)

    def diagonal(rows: int, cols: int, size: int) -> Tensor:
        return M[:, rows : rows + size, cols : cols + size].diagonal(dim1=-2, dim2=-1)

    # F1: c_im v_im' within agent i (block diagonal over agents), u_i on the dual columns.
    index = torch.arange(n, device=a.device)
    M[:, :N, :N].unflatten(1, (n, m)).unflatten(3, (n, m))[:, index, :, index, :] = (
        (freef * c).unsqueeze(-1) * (freef * v).unsqueeze(-2)
    ).transpose(0, 1)
    uu = (u * freef).reshape(B, N)
    diagonal(0, N, N).copy_(uu)
    diagonal(0, 2 * N, N).copy_(-uu)
    M[:, :N, 3 * N :].unflatten(1, (n, m)).diagonal(dim1=-2, dim2=-1).copy_(
        -(u * freef * budget.unsqueeze(1))
    )
    # F2, F3: complementarity of the bounds.
    diagonal(N, 0, N).copy_((mu * freef).reshape(B, N))
    diagonal(N, N, N).copy_((a * freef).reshape(B, N))
    diagonal(2 * N, 0, N).copy_((nu * freef).reshape(B, N))
    diagonal(2 * N, 2 * N, N).copy_(((a - x) * freef).reshape(B, N))
    # F4: complementarity of the budgets, lambda_m D_m.
    M[:, 3 * N :, :N].unflatten(2, (n, m)).diagonal(dim1=1, dim2=3).copy_(
        (lam * budget).unsqueeze(1) * freef
    )
    diagonal(3 * N, 3 * N, m).copy_((a.sum(1) - b) * budget)
    keep = torch.cat([freef.reshape(B, N)] * 3 + [budget], -1)
    M.diagonal(dim1=-2, dim2=-1).add_(1.0 - keep)
    return M


class PFFunction(torch.autograd.Function):
    """``(v, x, b, w, z) -> a*`` of program (9) with implicit KKT gradients (App. C-D).

    ``forward`` raises ``PFSolveError`` when an instance misses the tolerance and
    ``NonFiniteError`` on NaN/inf inputs or outputs.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: Any,
        values: Tensor,
        demands: Tensor,
        budgets: Tensor,
        weights: Tensor,
        z: Tensor,
        tol: float,
        max_iter: int,
    ) -> Tensor:
        for name, t in (
            ("values", values),
            ("demands", demands),
            ("budgets", budgets),
            ("weights", weights),
            ("z", z),
        ):
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"PF program: non-finite {name}")
        sol = solve_pf(values, demands, budgets, weights, z, tol=tol, max_iter=max_iter)
        if not bool(sol.converged.all()):
            bad = (~sol.converged).nonzero().squeeze(-1)
            raise PFSolveError(
                f"PF program missed KKT tolerance {tol:g} on {bad.numel()} of "
                f"{values.shape[0]} instances (first {bad[:5].tolist()}; worst residual "
                f"{float(sol.kkt_residual.max()):.3g}) after {sol.iterations} iterations"
            )
        ctx.sol = sol
        ctx.save_for_backward(values, demands, budgets, weights, z)
        ctx.dtype = values.dtype
        return sol.allocation.to(values.dtype)

    @staticmethod
    def backward(ctx: Any, grad_a: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        values, demands, budgets, weights, z = ctx.saved_tensors
        v, x, b, w = (t.to(torch.float64) for t in (values, demands, budgets, weights))
        z64 = z.to(torch.float64)
        x = x.clamp_min(0.0)
        grads = _reduced_gradients(ctx.sol, grad_a.to(torch.float64), v, x, b, w, z64)
        dtype = ctx.dtype
        return (*(g.to(dtype) for g in grads), None, None)


def _full_gradients(
    sol: PFSolution, grad_a: Tensor, v: Tensor, x: Tensor, b: Tensor, w: Tensor, z: Tensor
) -> tuple[Tensor, ...]:
    """``(dl/dv, dl/dx, dl/db, dl/dw, dl/dz)`` from the full KKT matrix ``M'`` (App. D)."""
    a, free = sol.allocation, sol.free
    B, n, m = a.shape
    N = n * m
    M = kkt_matrix(sol, v, x, b, z)
    rhs = torch.zeros(B, 3 * N + m, dtype=torch.float64, device=a.device)
    rhs[:, :N] = (grad_a * free).reshape(B, N)
    keep = torch.cat([free.reshape(B, N)] * 3 + [b > ZERO], -1)
    g = _compressed_solve_transposed(M, rhs, keep)
    g_a = g[:, :N].view(B, n, m) * free
    g_nu = g[:, 2 * N : 3 * N].view(B, n, m) * free
    g_lam = g[:, 3 * N :]
    c = sol.mu - sol.nu - sol.lam.unsqueeze(1) - z
    u = (v * a).sum(-1, keepdim=True)
    # dl/dtheta = -(dF/dtheta)^T g, with F1_im = (mu - nu - lam - z)_im u_i + w_i v_im.
    grad_v = -(a * (c * g_a).sum(-1, keepdim=True) + w.unsqueeze(-1) * g_a) * free
    grad_w = -(v * g_a).sum(-1)
    grad_z = u * g_a
    grad_x = sol.nu * g_nu
    grad_b = torch.where(b > ZERO, sol.lam * g_lam, torch.zeros_like(g_lam))
    return grad_v, grad_x, grad_b, grad_w, grad_z


def _reduced_gradients(
    sol: PFSolution, grad_a: Tensor, v: Tensor, x: Tensor, b: Tensor, w: Tensor, z: Tensor
) -> tuple[Tensor, ...]:
    """The gradients of :func:`_full_gradients` from the active-set reduced system.

    Under strict complementarity, ``M'`` eliminates to the KKT system of the equality-
    constrained program on the active set: variables at a bound follow the bound (0 or the
    demand), interior variables ``I`` satisfy stationarity ``grad f_I + lambda = 0`` and
    active budgets ``J`` hold with equality. Its matrix ``R = [[H_II, E], [E^T, 0]]`` (``H``:
    the agents' rank-1 log Hessians; ``E``: the budgets' incidence) has size ``nm + m`` instead
    of ``3nm + m``, and one symmetric solve ``R g = [dl/da_I, 0]`` gives every gradient.
    Instances that are degenerate (a variable at a bound with a zero multiplier, a tight
    budget with a zero multiplier, an unsnapped interior iterate) or whose ``R`` is singular
    go through ``M'`` with its minimal-norm solve instead, so the result is the same.
    """
    a, mu, nu, lam, free = sol.allocation, sol.mu, sol.nu, sol.lam, sol.free
    B, n, m = a.shape
    N = n * m
    dtype, device = a.dtype, a.device
    in_budget = b > ZERO
    lower = free & (mu > 0)
    upper = free & (nu > 0)
    interior = free & ~lower & ~upper
    tight = in_budget & (lam > 0)
    slack = b - a.sum(1)
    degenerate = (
        (lower & (a != 0)).any((-1, -2))
        | (upper & (a != x)).any((-1, -2))
        | (lower & upper).any((-1, -2))
        | (interior & ((a <= DEMAND_ZERO * 1e-3) | (x - a <= DEMAND_ZERO * 1e-3))).any((-1, -2))
        | (in_budget & ~tight & (slack.abs() <= 1e-9)).any(-1)
    )
    u = (v * a).sum(-1, keepdim=True)  # [B, n, 1]
    If = interior.to(dtype)
    Jf = tight.to(dtype)
    scaled = If * w.unsqueeze(-1).sqrt() * v / u.clamp_min(1e-300)  # [B, n, m]
    incidence = If * Jf.unsqueeze(1)  # [B, n, m]
    # R is identity outside the interior variables and tight budgets (a handful per
    # instance): only that block is built, padded with identity to the batch's largest.
    order, valid = _front(torch.cat([interior.reshape(B, N), tight], -1))
    is_var = valid & (order < N)
    flat = order.clamp_max(N - 1)
    owner = torch.where(is_var, torch.div(order, m, rounding_mode="floor"), -1)  # agent
    resource = torch.where(is_var, order % m, order - N)
    s_p = torch.where(is_var, scaled.reshape(B, N).gather(1, flat), 0.0)
    e_p = torch.where(is_var, incidence.reshape(B, N).gather(1, flat), 0.0)
    is_budget = valid & ~is_var
    same_agent = is_var.unsqueeze(-1) & (owner.unsqueeze(-1) == owner.unsqueeze(-2))
    meets = (
        is_var.unsqueeze(-1)
        & is_budget.unsqueeze(-2)
        & (resource.unsqueeze(-1) == resource.unsqueeze(-2))
    )
    R = torch.where(same_agent, s_p.unsqueeze(-1) * s_p.unsqueeze(-2), 0.0)
    R = (
        R
        + torch.where(meets, e_p.unsqueeze(-1), 0.0)
        + torch.where(meets.transpose(1, 2), e_p.unsqueeze(-2), 0.0)
    )
    R = R + torch.diag_embed((~valid).to(dtype))
    rhs = torch.where(is_var, grad_a.reshape(B, N).gather(1, flat), 0.0)
    g_p, singular = _lu_solve_checked(R, rhs, unit_pivots_left_out=valid.sum(1) < N + m)
    g = torch.zeros(B, N + m, dtype=dtype, device=device).scatter(
        1, order, torch.where(valid, g_p, 0.0)
    )
    g_a = g[:, :N].view(B, n, m) * If
    g_lam = g[:, N:] * Jf
    wv = w.unsqueeze(-1) / u.clamp_min(1e-300)  # [B, n, 1]
    agent = (g_a * v * wv / u.clamp_min(1e-300)).sum(-1, keepdim=True)  # G_i
    grad_w = (g_a * v).sum(-1) / u.squeeze(-1).clamp_min(1e-300)
    grad_v = (g_a * wv - agent * a) * free
    grad_z = -g_a
    grad_x = torch.where(upper, grad_a - agent * v - g_lam.unsqueeze(1), torch.zeros_like(a))
    grad_b = g_lam
    grads = (grad_v, grad_x, grad_b, grad_w, grad_z)
    fallback = degenerate | singular
    if bool(fallback.any()):
        index = fallback.nonzero().squeeze(-1)
        full = _full_gradients(
            _select(sol, index), grad_a[index], v[index], x[index], b[index], w[index], z[index]
        )
        grads = tuple(g.index_copy(0, index, f) for g, f in zip(grads, full, strict=True))
    return grads


def _select(sol: PFSolution, index: Tensor) -> PFSolution:
    """The solutions of the instances ``index``."""
    return PFSolution(
        allocation=sol.allocation[index],
        mu=sol.mu[index],
        nu=sol.nu[index],
        lam=sol.lam[index],
        kkt_residual=sol.kkt_residual[index],
        converged=sol.converged[index],
        objective=sol.objective[index],
        iterations=sol.iterations,
        free=sol.free[index],
    )


def pf_allocate(
    values: Tensor,
    demands: Tensor,
    budgets: Tensor,
    weights: Tensor | None = None,
    z: Tensor | None = None,
    tol: float = 1e-7,
    max_iter: int = 200,
) -> Tensor:
    """Differentiable PF (``z=None``) or RPF allocation ``[B, n, m]`` (see :class:`PFFunction`).

    Raises:
        PFSolveError: some instance did not reach ``tol`` (never returned as a result).
        NonFiniteError: NaN/inf inputs.

    """
    if weights is None:
        weights = torch.ones(values.shape[:-1], dtype=values.dtype, device=values.device)
    if z is None:
        z = torch.zeros_like(values)
    if values.shape[0] == 0:
        return torch.zeros_like(values)
    return PFFunction.apply(values, demands, budgets, weights, z, tol, max_iter)
