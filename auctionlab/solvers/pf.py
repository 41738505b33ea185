"""Batched proportional-fairness programs and their implicit gradients (seed 002, §4, App. C-D).

The regularised PF program (9) (``z = 0`` gives PF, program (4))::

    min_a  -sum_i w_i log(v_i^T a_i) + <z, a>
    s.t.   0 <= a <= x,   sum_i a_im <= b_m

is solved for a whole batch at once by a primal-dual interior-point method in float64 (every
Newton system is one batched Cholesky solve of size ``n*m``). Variables whose demand (or
budget) is zero are fixed at 0 and agents that demand nothing (or have weight 0) are left out
of the program: their allocation is 0. After convergence the active sets are read off the
primal-dual pair (``mu > a`` means ``a = 0``...), the allocation is snapped onto its bounds and
the KKT residual of the snapped pair is checked per instance; an instance above tolerance is
reported in ``PFSolution.converged`` and :func:`pf_allocate` raises ``PFSolveError`` naming it
(nothing that did not solve is ever returned as an allocation).

Gradients (:class:`PFFunction`) follow §4 / App. D: with ``F`` the KKT system in the form (12)
(stationarity multiplied by ``u_i = v_i^T a_i``) and ``M = dF/d(a, mu, nu, lambda)`` the
paper's matrix ``M'``, one solve ``M^T g = [dl/da, 0, 0, 0]`` per instance gives every input's
gradient ``dl/dtheta = -(dF/dtheta)^T g``. When ``M`` is singular (fewer than ``NM - N`` tight
constraints, or no strict complementarity: Theorem 1) the minimal-norm solution is used
(LAPACK ``gelsy``, complete orthogonal decomposition), as in Prop. 1's remark; invertible
instances use an LU solve. Fixed variables and absent agents are eliminated from ``M`` (their
rows and columns become identity): their allocation does not move locally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from auctionlab.errors import NonFiniteError, RunError

#: Weights, budgets and values below this count as zero.
ZERO = 1e-12
#: Demands below this count as "asks for nothing": a box [0, x] thinner than this would make
#: the active set ambiguous at the solver's tolerance, so such variables are fixed at 0.
DEMAND_ZERO = 1e-5


class PFSolveError(RunError):
    """A PF / RPF program did not reach tolerance on some instances (their indices inside)."""


@dataclass
class PFSolution:
    """A batch of solved programs (float64).

    Attributes:
        allocation: ``[B, n, m]`` optimal allocation, snapped onto its active bounds.
        mu: ``[B, n, m]`` multipliers of ``a >= 0``.
        nu: ``[B, n, m]`` multipliers of ``a <= x``.
        lam: ``[B, m]`` multipliers of the budgets.
        kkt_residual: ``[B]`` max of stationarity, primal and dual feasibility and
            complementarity violations of the snapped pair.
        converged: ``[B]`` ``kkt_residual <= tol``.
        objective: ``[B]`` objective value of ``allocation``.
        iterations: interior-point iterations the batch took.
        free: ``[B, n, m]`` variables that are part of the program (the others are fixed at 0).

    """

    allocation: Tensor
    mu: Tensor
    nu: Tensor
    lam: Tensor
    kkt_residual: Tensor
    converged: Tensor
    objective: Tensor
    iterations: int
    free: Tensor


def _prepare(values, demands, budgets, weights, z):
    dtype = torch.float64
    v, x, b = values.to(dtype), demands.to(dtype), budgets.to(dtype)
    B, n, m = v.shape
    w = torch.ones(B, n, dtype=dtype, device=v.device) if weights is None else weights.to(dtype)
    z = torch.zeros_like(v) if z is None else z.to(dtype)
    x = x.clamp_min(0.0)
    # A variable is in the program when its demand and its budget are positive and its agent
    # takes part (positive weight, something demanded that it values).
    free = (x > DEMAND_ZERO) & (b.unsqueeze(1) > ZERO) & (v > ZERO)
    agent = (w > ZERO) & free.any(-1)
    free = free & agent.unsqueeze(-1)
    return v, x, b, w, z, free, agent


def _objective(a, v, w, z, agent):
    u = (v * a).sum(-1)
    logs = torch.where(agent, u.clamp_min(1e-300).log(), torch.zeros_like(u))
    return -(w * logs).sum(-1) + (z * a).sum((-1, -2))


def _kkt(a, mu, nu, lam, v, x, b, w, z, free, agent):
    """``[B]`` KKT residual (max-norm) of a snapped primal-dual pair."""
    u = (v * a).sum(-1, keepdim=True)
    grad = -w.unsqueeze(-1) * v / u.clamp_min(1e-300) + z
    stationarity = torch.where(free, grad - mu + nu + lam.unsqueeze(1), torch.zeros_like(a))
    primal = torch.maximum((-a).clamp_min(0), (a - x).clamp_min(0)).amax((-1, -2))
    primal = torch.maximum(primal, (a.sum(1) - b).clamp_min(0).amax(-1))
    complementarity = torch.maximum(
        (mu * a).abs().amax((-1, -2)), (nu * (x - a)).abs().amax((-1, -2))
    )
    complementarity = torch.maximum(complementarity, (lam * (b - a.sum(1))).abs().amax(-1))
    dual = torch.maximum((-mu).clamp_min(0).amax((-1, -2)), (-nu).clamp_min(0).amax((-1, -2)))
    dual = torch.maximum(dual, (-lam).clamp_min(0).amax(-1))
    return torch.stack([stationarity.abs().amax((-1, -2)), primal, complementarity, dual]).amax(0)


@torch.no_grad()
def solve_pf(
    values: Tensor,
    demands: Tensor,
    budgets: Tensor,
    weights: Tensor | None = None,
    z: Tensor | None = None,
    tol: float = 1e-7,
    max_iter: int = 200,
) -> PFSolution:
    """Solve programs (4) / (9) for a batch.

    Args:
        values: ``[B, n, m]`` reported values ``v``.
        demands: ``[B, n, m]`` reported demands ``x`` (negative ones count as 0).
        budgets: ``[B, m]`` budgets ``b``.
        weights: ``[B, n]`` agent weights ``w`` (default ones).
        z: ``[B, n, m]`` linear regulariser of RPF-Net (default 0: the PF program).
        tol: KKT residual an instance must reach.
        max_iter: interior-point iteration cap.

    Returns:
        The snapped solutions with duals, residuals and per-instance convergence.

    """
    v, x, b, w, z, free, agent = _prepare(values, demands, budgets, weights, z)
    B, n, m = v.shape
    N = n * m
    freef = free.to(v.dtype)
    fixed = 1.0 - freef
    wv = w.unsqueeze(-1)
    # Strictly interior start: half of each demand, scaled so every budget is at most half used.
    total = (x * freef).sum(1, keepdim=True)
    share = 0.5 * torch.minimum(torch.ones_like(total), b.unsqueeze(1) / total.clamp_min(ZERO))
    a = x * share * freef
    # Slacks of fixed variables / absent agents are kept at 1 with zero duals (inert).
    s1 = torch.where(free, a, torch.ones_like(a))
    s2 = torch.where(free, x - a, torch.ones_like(a))
    s3 = b - a.sum(1)
    bud_active = b > ZERO
    s3 = torch.where(bud_active, s3, torch.ones_like(s3))
    mu, nu = freef / s1, freef / s2
    lam = bud_active.to(v.dtype) / s3
    count = (2 * freef.sum((-1, -2)) + bud_active.to(v.dtype).sum(-1)).clamp_min(1.0)
    eye_m = torch.eye(m, dtype=v.dtype, device=v.device)
    index = torch.arange(n, device=v.device)
    done = torch.zeros(B, dtype=torch.bool, device=v.device)
    iterations = 0

    def residual(a, mu, nu, lam, s1, s2, s3, tau):
        u = (v * a).sum(-1, keepdim=True)
        grad = torch.where(free, -wv * v / u.clamp_min(1e-300) + z, torch.zeros_like(a))
        rd = torch.where(free, grad - mu + nu + lam.unsqueeze(1), torch.zeros_like(a))
        c1 = torch.where(free, mu * s1 - tau[:, None, None], torch.zeros_like(a))
        c2 = torch.where(free, nu * s2 - tau[:, None, None], torch.zeros_like(a))
        c3 = torch.where(bud_active, lam * s3 - tau[:, None], torch.zeros_like(s3))
        sq = rd.square().sum((-1, -2)) + c1.square().sum((-1, -2)) + c2.square().sum((-1, -2))
        return (sq + c3.square().sum(-1)).sqrt(), rd

    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        gap = ((mu * s1 + nu * s2) * freef).sum((-1, -2)) + (lam * s3 * bud_active).sum(-1)
        eta = gap / count
        # Stop an instance once its snapped pair or its iterate meets a tenth of the tolerance.
        _, snapped_kkt = _snap(a, mu, nu, lam, s1, s2, s3, v, x, b, w, z, free, agent, bud_active)
        raw_kkt = _kkt(a, mu * freef, nu * freef, lam * bud_active, v, x, b, w, z, free, agent)
        done = done | (torch.minimum(snapped_kkt, raw_kkt) <= 0.1 * tol)
        if bool(done.all()):
            break
        tau = 0.1 * eta
        u = (v * a).sum(-1, keepdim=True).clamp_min(1e-300)
        grad = torch.where(free, -wv * v / u + z, torch.zeros_like(a))
        # Newton system (H + G^T diag(y/s) G) da = -(grad f + G^T (tau / s)).
        scaled_v = (w.unsqueeze(-1).sqrt() * v / u) * freef  # [B, n, m]
        # Budget coupling F D^T diag(lam / s3) D F (F masks fixed variables), built in one
        # full-size product; then the agents' rank-1 log Hessians and the bound barriers are
        # added in place (few passes over the [B, N, N] matrix: it dominates the cost).
        coupling = (freef * (lam / s3 * bud_active).unsqueeze(1)).view(B, n, m, 1, 1)
        K = (coupling * eye_m.view(1, 1, m, 1, m) * freef.view(B, 1, 1, n, m)).reshape(B, N, N)
        K5 = K.view(B, n, m, n, m)
        K5[:, index, :, index, :] += (scaled_v.unsqueeze(-1) * scaled_v.unsqueeze(-2)).transpose(
            0, 1
        )
        # Bound barriers on the diagonal; fixed variables get 1 (inert rows), plus a tiny
        # shift that keeps Cholesky defined when a rank-deficient block is barely damped.
        K.diagonal(dim1=-2, dim2=-1).add_(((mu / s1 + nu / s2) * freef + fixed).view(B, N) + 1e-14)
        tau3 = tau.view(B, 1, 1)
        barrier = (-tau3 / s1 + tau3 / s2) * freef + (tau.view(B, 1) / s3 * bud_active).unsqueeze(
            1
        ) * freef
        rhs = -(grad + barrier).view(B, N, 1)
        chol, info = torch.linalg.cholesky_ex(K)
        da = torch.cholesky_solve(rhs, chol).view(B, n, m) * freef
        da = torch.where((info == 0).view(B, 1, 1), da, torch.zeros_like(da))
        ds1, ds2 = da, -da
        ds3 = torch.where(bud_active, -da.sum(1), torch.zeros_like(s3))
        dmu = torch.where(free, (tau3 - mu * s1 - mu * ds1) / s1, torch.zeros_like(a))
        dnu = torch.where(free, (tau3 - nu * s2 - nu * ds2) / s2, torch.zeros_like(a))
        dlam = torch.where(
            bud_active, (tau.view(B, 1) - lam * s3 - lam * ds3) / s3, torch.zeros_like(s3)
        )
        # Fraction to the boundary: every slack and dual stays strictly positive.

        def max_step(value, delta, mask):
            ratio = torch.where(
                mask & (delta < 0), -value / delta, torch.full_like(value, float("inf"))
            )
            return ratio.flatten(1).amin(1)

        alpha = torch.stack(
            [
                max_step(s1, ds1, free),
                max_step(s2, ds2, free),
                max_step(s3, ds3, bud_active),
                max_step(mu, dmu, free),
                max_step(nu, dnu, free),
                max_step(lam, dlam, bud_active),
            ]
        ).amin(0)
        alpha = torch.clamp(0.99 * alpha, max=1.0)
        alpha = torch.where(done | (info != 0), torch.zeros_like(alpha), alpha)
        # Backtracking on the residual norm (vectorised: all instances halve together).
        r0, _ = residual(a, mu, nu, lam, s1, s2, s3, tau)
        for _ in range(30):
            al = alpha.view(B, 1, 1)
            cand = (
                a + al * da,
                mu + al * dmu,
                nu + al * dnu,
                lam + alpha.view(B, 1) * dlam,
                s1 + al * ds1,
                s2 + al * ds2,
                s3 + alpha.view(B, 1) * ds3,
            )
            r1, _ = residual(*cand, tau)
            ok = (r1 <= (1 - 0.01 * alpha) * r0) | (alpha == 0)
            if bool(ok.all()):
                break
            alpha = torch.where(ok, alpha, 0.5 * alpha)
        a, mu, nu, lam, s1, s2, s3 = cand
        # Keep the slacks exact functions of a (no drift).
        s1 = torch.where(free, a, torch.ones_like(a))
        s2 = torch.where(free, x - a, torch.ones_like(a))
        s3 = torch.where(bud_active, b - a.sum(1), torch.ones_like(s3))

    snapped, snapped_kkt = _snap(a, mu, nu, lam, s1, s2, s3, v, x, b, w, z, free, agent, bud_active)
    raw = (a, mu * freef, nu * freef, lam * bud_active)
    raw_kkt = _kkt(*raw, v, x, b, w, z, free, agent)
    # Per instance, the snapped pair when it meets the tolerance (exact bounds, clean active
    # sets for the backward pass), else the interior iterate if that is better.
    use_snap = (snapped_kkt <= tol) | (snapped_kkt <= raw_kkt)
    pick = lambda s_, r_: torch.where(use_snap.view(-1, *[1] * (s_.dim() - 1)), s_, r_)  # noqa: E731
    a, mu, nu, lam = (pick(s_, r_) for s_, r_ in zip(snapped, raw, strict=True))
    kkt = torch.where(use_snap, snapped_kkt, raw_kkt)
    objective = _objective(a, v, w, z, agent)
    return PFSolution(
        allocation=a,
        mu=mu,
        nu=nu,
        lam=lam,
        kkt_residual=kkt,
        converged=kkt <= tol,
        objective=objective,
        iterations=iterations,
        free=free,
    )


def _snap(a, mu, nu, lam, s1, s2, s3, v, x, b, w, z, free, agent, bud_active):
    """Snap a primal-dual iterate onto the active sets read off it (``mu > a`` means ``a = 0``).

    Returns:
        ``(a, mu, nu, lam)`` snapped and its ``[B]`` KKT residual.

    """
    freef = free.to(a.dtype)
    lower = free & (mu > s1)
    upper = free & ~lower & (nu > s2)
    a = torch.where(lower, torch.zeros_like(a), torch.where(upper, x, a)) * freef
    mu = torch.where(lower, mu, torch.zeros_like(mu))
    nu = torch.where(upper, nu, torch.zeros_like(nu))
    lam = torch.where(bud_active & (lam > s3), lam, torch.zeros_like(lam))
    # Fixed variables are not part of the program: no stationarity, zero duals.
    mu, nu = mu * freef, nu * freef
    return (a, mu, nu, lam), _kkt(a, mu, nu, lam, v, x, b, w, z, free, agent)


#: Pivot ratio of the LU factor below which ``M`` is treated as singular.
SINGULAR_PIVOT = 1e-11


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
    M = torch.zeros(B, K, K, dtype=a.dtype, device=a.device)
    eye_n = torch.eye(n, dtype=a.dtype, device=a.device)
    eye_m = torch.eye(m, dtype=a.dtype, device=a.device)
    # F1: c_im v_im' within agent i (block diagonal over agents).
    block = c.unsqueeze(-1) * v.unsqueeze(-2)  # [B, n, m, m']
    M[:, :N, :N] = (block.unsqueeze(3) * eye_n.view(1, n, 1, n, 1)).reshape(B, N, N)
    uu = u.expand(B, n, m).reshape(B, N)
    M[:, :N, N : 2 * N] = torch.diag_embed(uu)
    M[:, :N, 2 * N : 3 * N] = -torch.diag_embed(uu)
    M[:, :N, 3 * N :] = -(u.unsqueeze(-1) * eye_m.view(1, 1, m, m)).reshape(B, N, m)
    # F2, F3: complementarity of the bounds.
    M[:, N : 2 * N, :N] = torch.diag_embed(mu.reshape(B, N))
    M[:, N : 2 * N, N : 2 * N] = torch.diag_embed(a.reshape(B, N))
    M[:, 2 * N : 3 * N, :N] = torch.diag_embed(nu.reshape(B, N))
    M[:, 2 * N : 3 * N, 2 * N : 3 * N] = torch.diag_embed((a - x).reshape(B, N))
    # F4: complementarity of the budgets, lambda_m D_m.
    D = eye_m.view(1, m, 1, m).expand(n, m, 1, m).reshape(N, m).T  # [m, N]
    M[:, 3 * N :, :N] = lam.unsqueeze(-1) * D
    M[:, 3 * N :, 3 * N :] = torch.diag_embed(a.sum(1) - b)
    keep = torch.cat(
        [free.reshape(B, N)] * 3 + [torch.ones(B, m, dtype=torch.bool, device=a.device)], -1
    )
    keep[:, 3 * N :] = b > ZERO
    both = keep.unsqueeze(-1) & keep.unsqueeze(-2)
    M = torch.where(both, M, torch.zeros_like(M))
    return M + torch.diag_embed((~keep).to(M.dtype))


def solve_transposed(M: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``M^T g = rhs`` per instance: LU where ``M`` is invertible, else minimal norm.

    Args:
        M: ``[B, K, K]``.
        rhs: ``[B, K]``.

    Returns:
        ``g`` ``[B, K]`` and ``[B]`` whether the instance was singular (minimal-norm solve).

    """
    Mt = M.transpose(-1, -2)
    LU, pivots, info = torch.linalg.lu_factor_ex(Mt)
    pivot = LU.diagonal(dim1=-2, dim2=-1).abs()
    singular = (info != 0) | (pivot.amin(-1) <= SINGULAR_PIVOT * pivot.amax(-1).clamp_min(1e-300))
    g = torch.linalg.lu_solve(LU, pivots, rhs.unsqueeze(-1)).squeeze(-1)
    if bool(singular.any()):
        index = singular.nonzero().squeeze(-1)
        least = torch.linalg.lstsq(
            Mt[index], rhs[index].unsqueeze(-1), rcond=1e-10, driver="gelsy"
        ).solution.squeeze(-1)
        g = g.index_copy(0, index, least)
    return g, singular


class PFFunction(torch.autograd.Function):
    """``(v, x, b, w, z) -> a*`` of program (9) with implicit KKT gradients (App. C-D).

    ``forward`` raises ``PFSolveError`` when an instance misses the tolerance and
    ``NonFiniteError`` on NaN/inf inputs or outputs.
    """

    @staticmethod
    def forward(ctx, values, demands, budgets, weights, z, tol, max_iter):  # noqa: D102
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
    def backward(ctx, grad_a):  # noqa: D102
        values, demands, budgets, weights, z = ctx.saved_tensors
        sol = ctx.sol
        v, x, b, w = (t.to(torch.float64) for t in (values, demands, budgets, weights))
        z64 = z.to(torch.float64)
        x = x.clamp_min(0.0)
        a, free = sol.allocation, sol.free
        B, n, m = a.shape
        N = n * m
        M = kkt_matrix(sol, v, x, b, z64)
        rhs = torch.zeros(B, 3 * N + m, dtype=torch.float64, device=a.device)
        rhs[:, :N] = (grad_a.to(torch.float64) * free).reshape(B, N)
        g, _ = solve_transposed(M, rhs)
        g_a = g[:, :N].view(B, n, m) * free
        g_nu = g[:, 2 * N : 3 * N].view(B, n, m) * free
        g_lam = g[:, 3 * N :]
        c = sol.mu - sol.nu - sol.lam.unsqueeze(1) - z64
        u = (v * a).sum(-1, keepdim=True)
        # dl/dtheta = -(dF/dtheta)^T g, with F1_im = (mu - nu - lam - z)_im u_i + w_i v_im.
        grad_v = -(a * (c * g_a).sum(-1, keepdim=True) + w.unsqueeze(-1) * g_a) * free
        grad_w = -(v * g_a).sum(-1)
        grad_z = u * g_a
        grad_x = sol.nu * g_nu
        grad_b = torch.where(b > ZERO, sol.lam * g_lam, torch.zeros_like(g_lam))
        dtype = ctx.dtype
        return (
            grad_v.to(dtype),
            grad_x.to(dtype),
            grad_b.to(dtype),
            grad_w.to(dtype),
            grad_z.to(dtype),
            None,
            None,
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
