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
    budf = bud_active.to(v.dtype)
    step_mask = torch.cat([free] * 4, -1).flatten(1)
    step_mask = torch.cat([step_mask, bud_active, bud_active], -1)
    inf = torch.tensor(float("inf"), dtype=v.dtype, device=v.device)
    done = torch.zeros(B, dtype=torch.bool, device=v.device)
    iterations = 0

    def residual(a, mu, nu, lam, s1, s2, s3, tau):
        # Masks multiply rather than select: every masked expression is finite (fixed
        # variables keep unit slacks and zero duals), and it halves the elementwise passes.
        u = (v * a).sum(-1, keepdim=True)
        tau3 = tau.view(B, 1, 1)
        rd = (-wv * v / u.clamp_min(1e-300) + z - mu + nu + lam.unsqueeze(1)) * freef
        c1 = (mu * s1 - tau3) * freef
        c2 = (nu * s2 - tau3) * freef
        c3 = (lam * s3 - tau.view(B, 1)) * budf
        sq = (rd.square() + c1.square() + c2.square()).sum((-1, -2))
        return (sq + c3.square().sum(-1)).sqrt(), rd

    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        gap = ((mu * s1 + nu * s2) * freef).sum((-1, -2)) + (lam * s3 * bud_active).sum(-1)
        eta = gap / count
        # Stop an instance once its snapped pair or its iterate meets a tenth of the tolerance.
        # The test costs about as much as a Newton step, and no pair can pass it while the
        # complementarity gap of every running instance is far above the tolerance.
        if float(torch.where(done, torch.zeros_like(eta), eta).min()) <= 1e3 * tol:
            _, snapped_kkt = _snap(
                a, mu, nu, lam, s1, s2, s3, v, x, b, w, z, free, agent, bud_active
            )
            raw_kkt = _kkt(a, mu * freef, nu * freef, lam * bud_active, v, x, b, w, z, free, agent)
            done = done | (torch.minimum(snapped_kkt, raw_kkt) <= 0.1 * tol)
            if bool(done.all()):
                break
        tau = 0.1 * eta
        u = (v * a).sum(-1, keepdim=True).clamp_min(1e-300)
        grad = (-wv * v / u + z) * freef
        # Newton system (H + G^T diag(y/s) G) da = -(grad f + G^T (tau / s)), solved in
        # closed form (see _newton_direction): no [B, N, N] matrix is ever built.
        scaled_v = (w.unsqueeze(-1).sqrt() * v / u) * freef  # [B, n, m]
        coupling = lam / s3 * bud_active  # [B, m]
        diagonal = (mu / s1 + nu / s2) * freef + fixed + 1e-14
        tau3 = tau.view(B, 1, 1)
        barrier = (-tau3 / s1 + tau3 / s2) * freef + (tau.view(B, 1) / s3 * bud_active).unsqueeze(
            1
        ) * freef
        da, info = _newton_direction(diagonal, scaled_v, coupling, freef, -(grad + barrier))
        da = torch.where((info == 0).view(B, 1, 1), da * freef, torch.zeros_like(da))
        ds1, ds2 = da, -da
        ds3 = -da.sum(1) * budf
        dmu = (tau3 - mu * s1 - mu * ds1) / s1 * freef
        dnu = (tau3 - nu * s2 - nu * ds2) / s2 * freef
        dlam = (tau.view(B, 1) - lam * s3 - lam * ds3) / s3 * budf
        # Fraction to the boundary: every slack and dual stays strictly positive.
        values = torch.cat([s1, s2, mu, nu], -1).flatten(1)
        values = torch.cat([values, s3, lam], -1)
        deltas = torch.cat([ds1, ds2, dmu, dnu], -1).flatten(1)
        deltas = torch.cat([deltas, ds3, dlam], -1)
        ratio = torch.where(step_mask & (deltas < 0), -values / deltas, inf)
        alpha = ratio.amin(1)
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
        s1 = a * freef + fixed
        s2 = (x - a) * freef + fixed
        s3 = (b - a.sum(1)) * budf + (1.0 - budf)

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


def _newton_direction(
    diagonal: Tensor, scaled_v: Tensor, coupling: Tensor, freef: Tensor, rhs: Tensor
) -> tuple[Tensor, Tensor]:
    """Solve the interior-point Newton system ``K da = rhs`` by its structure.

    ``K = diag(d) + sum_i s_i s_i^T + sum_m c_m f_m f_m^T``: the bound barriers on the
    diagonal, each agent's rank-1 log Hessian (``s_i`` lives on agent i's m entries) and each
    budget's barrier (``f_m`` marks the free variables of item m). The agent blocks are
    inverted by Sherman-Morrison; the budgets by Woodbury in the form
    ``(C^-1 + F^T A^-1 F)`` (an m x m SPD matrix per instance), which stays well conditioned
    both when a budget's barrier is huge (active budget, ``1/c -> 0``) and when it is tiny.
    Cost: O(n m^2) per instance instead of a Cholesky of the ``nm x nm`` matrix.

    Args:
        diagonal: ``[B, n, m]`` positive diagonal ``d``.
        scaled_v: ``[B, n, m]`` ``s`` (zero on fixed variables).
        coupling: ``[B, m]`` ``c >= 0`` (zero for budgets outside the program).
        freef: ``[B, n, m]`` 1 on free variables, 0 on fixed ones.
        rhs: ``[B, n, m]``.

    Returns:
        ``da`` ``[B, n, m]`` and ``[B]`` info (nonzero where the m x m factorisation failed).

    """
    B, n, m = diagonal.shape
    scaled_d = scaled_v / diagonal  # P = s / d
    kappa = 1.0 / (1.0 + (scaled_v * scaled_d).sum(-1, keepdim=True))  # [B, n, 1]

    def agent_solve(y: Tensor) -> Tensor:  # A^-1 y, A = diag(d) + blockdiag(s_i s_i^T)
        q = y / diagonal
        return q - scaled_d * (kappa * (scaled_v * q).sum(-1, keepdim=True))

    fp = freef * scaled_d  # [B, n, m]
    inner = torch.diag_embed((freef / diagonal).sum(1)) - torch.einsum(
        "bik,bil->bkl", kappa * fp, fp
    )
    active = coupling > 0
    inverse = torch.where(active, 1.0 / coupling.clamp_min(1e-300), torch.ones_like(coupling))
    pair = active.unsqueeze(-1) & active.unsqueeze(-2)
    schur = torch.where(pair, inner, torch.zeros_like(inner)) + torch.diag_embed(inverse)
    first = agent_solve(rhs)
    projected = torch.where(active, (freef * first).sum(1), torch.zeros_like(coupling))
    chol, info = torch.linalg.cholesky_ex(schur)
    weights = torch.cholesky_solve(projected.unsqueeze(-1), chol).squeeze(-1)
    da = first - agent_solve(freef * weights.unsqueeze(1))
    # The closed form cancels large terms when a block is nearly singular (an agent whose
    # variables are all interior near convergence: tiny d, rank-1 Hessian). Such instances
    # are recognised by their residual and re-solved by a dense Cholesky of K.
    terms = (
        diagonal * da,
        scaled_v * (scaled_v * da).sum(-1, keepdim=True),
        freef * (coupling * (freef * da).sum(1)).unsqueeze(1),
    )
    scale = rhs.abs().amax((-1, -2)) + sum(t.abs().amax((-1, -2)) for t in terms)
    residual = (terms[0] + terms[1] + terms[2] - rhs).abs().amax((-1, -2))
    bad = (residual > 1e-10 * scale.clamp_min(1e-300)) | (info != 0)
    if bool(bad.any()):
        index = bad.nonzero().squeeze(-1)
        dense, dense_info = _dense_newton_direction(
            diagonal[index], scaled_v[index], coupling[index], freef[index], rhs[index]
        )
        da = da.index_copy(0, index, dense)
        info = info.index_copy(0, index, dense_info)
    return da, info


def _dense_newton_direction(
    diagonal: Tensor, scaled_v: Tensor, coupling: Tensor, freef: Tensor, rhs: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`_newton_direction` by a Cholesky factorisation of the full ``[nm, nm]`` K."""
    B, n, m = diagonal.shape
    N = n * m
    K = torch.diag_embed(diagonal.reshape(B, N)).view(B, n, m, n, m)
    index = torch.arange(n, device=diagonal.device)
    K[:, index, :, index, :] += (scaled_v.unsqueeze(-1) * scaled_v.unsqueeze(-2)).transpose(0, 1)
    F = torch.diag_embed(freef).reshape(B, N, m)  # F[(i, k), l] = f_ik [k = l]
    K = K.reshape(B, N, N) + (F * coupling.unsqueeze(1)) @ F.transpose(1, 2)
    chol, info = torch.linalg.cholesky_ex(K)
    return torch.cholesky_solve(rhs.reshape(B, N, 1), chol).view(B, n, m), info


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
        v, x, b, w = (t.to(torch.float64) for t in (values, demands, budgets, weights))
        z64 = z.to(torch.float64)
        x = x.clamp_min(0.0)
        grads = _reduced_gradients(ctx.sol, grad_a.to(torch.float64), v, x, b, w, z64)
        dtype = ctx.dtype
        return (*(g.to(dtype) for g in grads), None, None)


def _full_gradients(sol: PFSolution, grad_a, v, x, b, w, z) -> tuple[Tensor, ...]:
    """``(dl/dv, dl/dx, dl/db, dl/dw, dl/dz)`` from the full KKT matrix ``M'`` (App. D)."""
    a, free = sol.allocation, sol.free
    B, n, m = a.shape
    N = n * m
    M = kkt_matrix(sol, v, x, b, z)
    rhs = torch.zeros(B, 3 * N + m, dtype=torch.float64, device=a.device)
    rhs[:, :N] = (grad_a * free).reshape(B, N)
    g, _ = solve_transposed(M, rhs)
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


def _reduced_gradients(sol: PFSolution, grad_a, v, x, b, w, z) -> tuple[Tensor, ...]:
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
    P = N + m
    R = torch.zeros(B, P, P, dtype=dtype, device=device)
    scaled = If * w.unsqueeze(-1).sqrt() * v / u.clamp_min(1e-300)  # [B, n, m]
    index = torch.arange(n, device=device)
    R[:, :N, :N].unflatten(1, (n, m)).unflatten(3, (n, m))[:, index, :, index, :] = (
        scaled.unsqueeze(-1) * scaled.unsqueeze(-2)
    ).transpose(0, 1)
    incidence = If * Jf.unsqueeze(1)  # [B, n, m]
    R[:, :N, N:].unflatten(1, (n, m)).diagonal(dim1=-2, dim2=-1).copy_(incidence)
    R[:, N:, :N].unflatten(2, (n, m)).diagonal(dim1=1, dim2=3).copy_(incidence)
    R.diagonal(dim1=-2, dim2=-1).add_(1.0 - torch.cat([If.reshape(B, N), Jf], -1))
    rhs = torch.cat(
        [(grad_a * If).reshape(B, N), torch.zeros(B, m, dtype=dtype, device=device)], -1
    )
    LU, pivots, info = torch.linalg.lu_factor_ex(R)
    pivot = LU.diagonal(dim1=-2, dim2=-1).abs()
    singular = (info != 0) | (pivot.amin(-1) <= SINGULAR_PIVOT * pivot.amax(-1).clamp_min(1e-300))
    g = torch.linalg.lu_solve(LU, pivots, rhs.unsqueeze(-1)).squeeze(-1)
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
