"""Batched proportional-fairness programs and their implicit gradients (seed 002, §4, App. C-D).

The regularised PF program (9) (``z = 0`` gives PF, program (4))::

    min_a  -sum_i w_i log(v_i^T a_i) + <z, a>
    s.t.   0 <= a <= x,   sum_i a_im <= b_m

is solved for a whole batch at once by a primal-dual interior-point method in float64 (each
Newton system solved by its structure: Sherman-Morrison per agent, an ``m x m`` Woodbury
system for the budgets; finished instances leave the working batch). Variables whose demand (or
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
(LAPACK ``gelsd``, SVD; ``gelsy`` returned different solutions of one singular system from
call to call here), as in Prop. 1's remark; invertible instances use an LU solve. Fixed
variables and absent agents are eliminated from ``M`` (their rows and columns become
identity): their allocation does not move locally.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from auctionlab.errors import NonFiniteError, RunError
from auctionlab.solvers import pf_native

#: Weights, budgets and values below this count as zero.
ZERO = 1e-12
#: Relative residual of a structured Newton solve above which it is redone densely.
NEWTON_REFINE_TOL = 1e-9
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


def _batch_last(t: Tensor) -> Tensor:
    """``[B, n, m] -> [n, m, B]`` (contiguous): every reduction then runs over outer dims."""
    return t.permute(1, 2, 0).contiguous()


def _batch_first(t: Tensor) -> Tensor:
    """``[n, m, B] -> [B, n, m]`` (contiguous)."""
    return t.permute(2, 0, 1).contiguous()


@torch.no_grad()
def solve_pf(
    values: Tensor,
    demands: Tensor,
    budgets: Tensor,
    weights: Tensor | None = None,
    z: Tensor | None = None,
    tol: float = 1e-7,
    max_iter: int = 200,
    backend: str | None = None,
) -> PFSolution:
    """Solve programs (4) / (9) for a batch.

    Damped Newton steps on the primal-dual pair towards a tenth of the current
    complementarity (:func:`_newton_step`), the Newton system solved by its structure
    (:func:`_factorise`). The iterate is kept batch-last (``[n, m, B]``) inside: reductions
    over agents and resources then run over outer dimensions, several times faster in torch
    than over a trailing dimension of 2 or 3. Instances that meet the tolerance leave the
    working batch once they are half of it.

    Args:
        values: ``[B, n, m]`` reported values ``v``.
        demands: ``[B, n, m]`` reported demands ``x`` (negative ones count as 0).
        budgets: ``[B, m]`` budgets ``b``.
        weights: ``[B, n]`` agent weights ``w`` (default ones).
        z: ``[B, n, m]`` linear regulariser of RPF-Net (default 0: the PF program).
        tol: KKT residual an instance must reach.
        max_iter: interior-point iteration cap.
        backend: ``auto`` (default; ``AUCTIONLAB_PF_BACKEND`` overrides it), ``native`` or
            ``torch``: who solves on the CPU (:mod:`auctionlab.solvers.pf_native`: the same
            method, snapping and KKT residual per instance in C). Instances the native solver
            leaves above ``tol`` are solved again by the torch path.

    Returns:
        The snapped solutions with duals, residuals and per-instance convergence.

    """
    v0, x0, b0, w0, z0, free0, agent0 = _prepare(values, demands, budgets, weights, z)
    native = pf_native.use_native(backend, v0.device)
    B, n, m = v0.shape
    freef, budget = free0.to(v0.dtype), (b0 > ZERO).to(v0.dtype)
    pairs = 2 * freef.sum((1, 2)) + budget.sum(-1)
    if native:
        a, mu, nu, lam, kkt, counts = pf_native.solve(
            v0 * freef, x0 * freef, z0 * freef, freef, b0, budget, w0, pairs, tol, max_iter
        )
        iterations = int(counts.max()) if B else 0
    else:
        problem = _program(v0, x0, b0, w0, z0, freef, budget, pairs)
        (a, mu, nu, lam), iterations = _iterate(problem, tol, max_iter)
        s1, s2, s3 = problem.slacks(a)
        (a, mu, nu, lam), kkt, _ = _pick_pair(problem, a, mu, nu, lam, s1, s2, s3, tol)
        a, mu, nu, lam = _batch_first(a), _batch_first(mu), _batch_first(nu), lam.T.contiguous()
    solution = PFSolution(
        allocation=a,
        mu=mu,
        nu=nu,
        lam=lam,
        kkt_residual=kkt,
        converged=kkt <= tol,
        objective=_objective(a, v0, w0, z0, agent0),
        iterations=iterations,
        free=free0,
    )
    if native and not bool(solution.converged.all()):
        retry = (~solution.converged).nonzero().squeeze(-1)
        again = solve_pf(
            *(t[retry] for t in (v0, x0, b0, w0, z0)), tol=tol, max_iter=max_iter, backend="torch"
        )
        solution = _merge(solution, again, retry)
    return solution


def _program(v, x, b, w, z, freef, budget, pairs) -> _Program:
    """The batch-last :class:`_Program` of prepared batch-first inputs (see :func:`_prepare`)."""
    return _Program(
        v=_batch_last(v * freef),
        x=_batch_last(x * freef),
        b=b.T.contiguous(),
        w=w.T.contiguous().unsqueeze(1),
        z=_batch_last(z * freef),
        free=_batch_last(freef),
        budget=budget.T.contiguous(),
        pairs=pairs,
    )


def _merge(solution: PFSolution, part: PFSolution, index: Tensor) -> PFSolution:
    """``solution`` with the instances ``index`` replaced by ``part``'s."""
    merged = {
        f.name: getattr(solution, f.name).index_copy(0, index, getattr(part, f.name))
        for f in fields(PFSolution)
        if f.name != "iterations"
    }
    return PFSolution(**merged, iterations=max(solution.iterations, part.iterations))


def _iterate(problem: _Program, tol: float, max_iter: int) -> tuple[list[Tensor], int]:
    """The torch path's interior-point iterations (batch-last); returns the pair and the count."""
    B = problem.pairs.shape[0]
    device = problem.v.device
    # Strictly interior start: half of each demand, scaled so every budget is at most half used.
    total = problem.x.sum(0)
    share = 0.5 * torch.minimum(torch.ones_like(total), problem.b / total.clamp_min(ZERO))
    a = problem.x * share
    s1, s2, s3 = problem.slacks(a)
    # Duals of fixed variables and of budgets outside the program stay 0 (inert).
    state = (a, problem.free / s1, problem.free / s2, problem.budget / s3)
    # Finished instances leave the working batch (``index``: their positions in the whole
    # one) once they are half of it; their pairs wait in ``result``.
    result = list(state)
    index = torch.arange(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    parts, slacks = problem.residual_parts(*state)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        a, mu, nu, lam = state
        s1, s2, s3 = slacks
        eta = parts[1] / problem.pairs.clamp_min(1.0)
        # Test an instance once its complementarity is near the tolerance: the test (snap +
        # KKT residual) costs half a step, and no pair passes it while the gap is large (the
        # raw pair's complementarity is at least the mean gap; snapping moves each bound
        # variable by about gap / multiplier).
        if float(torch.where(done, torch.zeros_like(eta), eta).min()) <= 10 * tol:
            _, _, least = _pick_pair(problem, a, mu, nu, lam, s1, s2, s3, tol)
            # A tenth of the tolerance: the snapped pair is then settled on its active sets
            # (which the backward pass needs) for almost every instance.
            done = done | (least <= 0.1 * tol)
            if bool(done.all()):
                break
            if 2 * int(done.sum()) >= done.numel():
                for k, t in enumerate(state):
                    result[k] = result[k].index_copy(-1, index, t)
                keep = (~done).nonzero().squeeze(-1)
                problem, index = problem.select(keep), index[keep]
                state = tuple(t.index_select(-1, keep) for t in state)
                slacks = tuple(t.index_select(-1, keep) for t in slacks)
                eta, done, parts = eta[keep], done[keep], parts[:, keep]
        state, parts, slacks = _newton_step(problem, state, parts, slacks, 0.1 * eta, done, tol)
    for k, t in enumerate(state):
        result[k] = result[k].index_copy(-1, index, t)
    return result, iterations


def _newton_step(problem, state, parts, slacks, target, done, tol):
    """One damped Newton step on the KKT system centred at ``target`` (``[B]``).

    Args:
        problem: the working batch.
        state: ``(a, mu, nu, lambda)``.
        parts: ``problem.residual_parts(*state)``.
        slacks: ``problem.slacks(a)``.
        target: ``[B]`` the centre (complementarity products aimed at).
        done: ``[B]`` instances that stay where they are.
        tol: the KKT tolerance (residuals far below it are rounding noise).

    Returns:
        The next state, its residual parts and its slacks.

    """
    a, mu, nu, lam = state
    s1, s2, s3 = slacks
    ft, budf = problem.free, problem.budget
    B = a.shape[-1]
    u = (problem.v * a).sum(1, keepdim=True).clamp_min(1e-300)  # [n, 1, B]
    grad = problem.z - problem.v * (problem.w / u)
    dual_residual = (grad - mu + nu + lam.unsqueeze(0)) * ft
    factor = _factorise(
        mu / s1 + nu / s2 + (1.0 - ft), problem.v * (problem.w.sqrt() / u), lam / s3, ft
    )
    target3 = target.view(1, 1, B)
    r1 = (target3 - mu * s1) * ft
    r2 = (target3 - nu * s2) * ft
    r3 = (target.view(1, B) - lam * s3) * budf
    rhs = (-dual_residual + r1 / s1 - r2 / s2 - (r3 / s3).unsqueeze(0)) * ft
    # Far from the tolerance the closed form is accurate and the step is safeguarded anyway;
    # its residual is checked once the centre nears the scale where it can cancel.
    check = float(target.min()) <= 1e3 * tol
    da, info = _checked_direction(factor, rhs, refine_tol=NEWTON_REFINE_TOL if check else None)
    ds3 = -da.sum(0) * budf
    step = (da, (r1 - mu * da) / s1, (r2 + nu * da) / s2, (r3 - lam * ds3) / s3)
    alpha = _step_to_boundary(mu, nu, lam, s1, s2, s3, da, ds3, *step[1:])
    alpha = torch.where(done | (info != 0), 0.0, alpha)
    # Backtracking on the centred residual (all instances halve together; almost every
    # instance takes its first step). Residuals at the tolerance's scale are rounding noise.
    before = problem.residual(parts, target)
    floor = torch.full_like(before, 1e-2 * tol)
    for _ in range(30):
        al, alb = alpha.view(1, 1, B), alpha.view(1, B)
        trial = tuple(
            s_ + (alb if s_.dim() == 2 else al) * d_ for s_, d_ in zip(state, step, strict=True)
        )
        trial_parts, trial_slacks = problem.residual_parts(*trial)
        after = problem.residual(trial_parts, target)
        ok = (after <= torch.maximum((1 - 0.01 * alpha) * before, floor)) | (alpha == 0)
        if bool(ok.all()):
            break
        alpha = torch.where(ok, alpha, 0.5 * alpha)
    return trial, trial_parts, trial_slacks


@dataclass
class _Program:
    """One batch of programs, batch-last.

    Variables are ``[n, m, B]``, budgets ``[m, B]``, weights ``[n, 1, B]``; values, demands
    and ``z`` are zero on fixed variables.
    """

    v: Tensor
    x: Tensor
    b: Tensor
    w: Tensor
    z: Tensor
    free: Tensor
    budget: Tensor
    #: ``[B]`` number of complementarity pairs (two per free variable, one per budget).
    pairs: Tensor

    def select(self, index: Tensor) -> _Program:
        """The programs ``index`` of the batch."""
        return _Program(*(getattr(self, f.name).index_select(-1, index) for f in fields(self)))

    def slacks(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Slacks of ``a >= 0``, ``a <= x`` and the budgets; 1 where not part of the program.

        They are exact functions of ``a`` (no drift between a and its slacks).
        """
        fixed = 1.0 - self.free
        s3 = (self.b - a.sum(0)) * self.budget + (1.0 - self.budget)
        return a + fixed, self.x - a + fixed, s3

    def residual_parts(
        self, a: Tensor, mu: Tensor, nu: Tensor, lam: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The parts of the centred KKT residual that do not depend on the centre.

        Returns:
            ``[3, B]`` squared stationarity, sum and sum of squares of the complementarity
            products; and the slacks of ``a`` they were computed with.

        """
        u = (self.v * a).sum(1, keepdim=True).clamp_min(1e-300)
        s1, s2, s3 = self.slacks(a)
        stationarity = (self.z - self.v * (self.w / u) - mu + nu + lam.unsqueeze(0)) * self.free
        c12, c3 = mu * s1 + nu * s2, lam * s3  # fixed variables / absent budgets give 0
        squares = ((mu * s1).square() + (nu * s2).square()).sum((0, 1)) + c3.square().sum(0)
        parts = torch.stack(
            [stationarity.square().sum((0, 1)), c12.sum((0, 1)) + c3.sum(0), squares]
        )
        return parts, (s1, s2, s3)

    def residual(self, parts: Tensor, target: Tensor) -> Tensor:
        """``[B]`` 2-norm of the KKT system centred at ``target`` (``[B]``) from its parts.

        ``sum_j (c_j - t)^2 = sum c_j^2 - 2 t sum c_j + pairs t^2``.
        """
        centred = parts[2] - 2 * target * parts[1] + self.pairs * target.square()
        return (parts[0] + centred.clamp_min(0.0)).sqrt()

    def kkt(self, a: Tensor, mu: Tensor, nu: Tensor, lam: Tensor) -> Tensor:
        """``[B]`` KKT residual (max-norm) of a primal-dual pair."""
        u = (self.v * a).sum(1, keepdim=True).clamp_min(1e-300)
        grad = self.z - self.v * (self.w / u)
        load = a.sum(0)
        terms = (
            ((grad - mu + nu + lam.unsqueeze(0)) * self.free).abs(),
            (-a).clamp_min(0.0),
            (a - self.x).clamp_min(0.0),
            (mu * a).abs(),
            (nu * (self.x - a)).abs(),
            (-mu).clamp_min(0.0),
            (-nu).clamp_min(0.0),
        )
        worst = torch.stack([t.amax((0, 1)) for t in terms]).amax(0)
        budget_terms = (
            (load - self.b).clamp_min(0.0) * self.budget,
            (lam * (self.b - load)).abs(),
            (-lam).clamp_min(0.0),
        )
        return torch.maximum(worst, torch.stack([t.amax(0) for t in budget_terms]).amax(0))


def _pick_pair(problem: _Program, a, mu, nu, lam, s1, s2, s3, tol: float):
    """Per instance, the snapped pair or the raw iterate, with KKT residuals.

    Snapping reads the active sets off the pair (``mu > a`` means ``a = 0``, ``nu > x - a``
    means ``a = x``, ``lambda > slack`` means a tight budget) and puts the allocation exactly
    on those bounds. The snapped pair is taken where it meets ``tol`` (exact bounds, clean
    active sets for the backward pass) or beats the interior iterate.

    Returns:
        ``(a, mu, nu, lam)`` batch-last, the ``[B]`` KKT residual of the pair taken and the
        ``[B]`` smaller residual of the two.

    """
    ft = problem.free
    lower = (mu > s1) & (ft > 0)
    upper = ~lower & (nu > s2) & (ft > 0)
    snapped = (
        torch.where(lower, 0.0, torch.where(upper, problem.x, a)),
        torch.where(lower, mu, 0.0),
        torch.where(upper, nu, 0.0),
        torch.where(lam > s3, lam, 0.0) * problem.budget,
    )
    raw = (a, mu, nu, lam)
    snapped_kkt, raw_kkt = problem.kkt(*snapped), problem.kkt(*raw)
    use_snap = (snapped_kkt <= tol) | (snapped_kkt <= raw_kkt)
    pair = tuple(torch.where(use_snap, s_, r_) for s_, r_ in zip(snapped, raw, strict=True))
    kkt = torch.where(use_snap, snapped_kkt, raw_kkt)
    return pair, kkt, torch.minimum(snapped_kkt, raw_kkt)


def _step_to_boundary(mu, nu, lam, s1, s2, s3, da, ds3, dmu, dnu, dlam) -> Tensor:
    """``[B]`` step length in ``(0, 1]``: 0.995 of the way to the nearest slack or dual bound."""
    shrink = torch.stack(
        [
            (-da / s1).amax((0, 1)),
            (da / s2).amax((0, 1)),
            (-dmu / mu.clamp_min(1e-300)).amax((0, 1)),
            (-dnu / nu.clamp_min(1e-300)).amax((0, 1)),
            (-ds3 / s3).amax(0),
            (-dlam / lam.clamp_min(1e-300)).amax(0),
        ]
    ).amax(0)
    return 0.995 / shrink.clamp_min(0.995)


@dataclass
class _Factor:
    """The structured factorisation of one batch of Newton matrices (see :func:`_factorise`)."""

    diagonal: Tensor
    scaled_v: Tensor
    coupling: Tensor
    free: Tensor
    inverse_diagonal: Tensor
    scaled_d: Tensor
    kappa: Tensor
    active: Tensor
    cholesky: Tensor
    info: Tensor

    def agent_solve(self, y: Tensor) -> Tensor:
        """``A^-1 y`` for ``A = diag(d) + blockdiag(s_i s_i^T)`` (Sherman-Morrison per agent)."""
        q = y * self.inverse_diagonal
        return q - self.scaled_d * (self.kappa * (self.scaled_v * q).sum(1, keepdim=True))


#: Resources up to which the m x m Schur complements are factorised elementwise over the batch
#: (a few dozen [B]-vector ops beat LAPACK's per-matrix overhead on thousands of 3 x 3 systems).
UNROLLED_SCHUR = 8


def _factorise(diagonal: Tensor, scaled_v: Tensor, coupling: Tensor, free: Tensor) -> _Factor:
    """Factorise ``K = diag(d) + sum_i s_i s_i^T + sum_m c_m f_m f_m^T`` (batch-last).

    The bound barriers sit on the diagonal, each agent's rank-1 log Hessian (``s_i`` lives on
    agent i's m entries) and each budget's barrier (``f_m`` marks the free variables of item
    m). The agent blocks are inverted by Sherman-Morrison; the budgets by Woodbury in the form
    ``(C^-1 + F^T A^-1 F)`` (an m x m SPD matrix per instance), which stays well conditioned
    both when a budget's barrier is huge (active budget, ``1/c -> 0``) and when it is tiny.
    Cost: O(n m^2) per instance instead of a Cholesky of the ``nm x nm`` matrix.

    Args:
        diagonal: ``[n, m, B]`` positive diagonal ``d``.
        scaled_v: ``[n, m, B]`` ``s`` (zero on fixed variables).
        coupling: ``[m, B]`` ``c >= 0`` (zero for budgets outside the program).
        free: ``[n, m, B]`` 1 on free variables, 0 on fixed ones.

    """
    m, B = coupling.shape
    inverse_diagonal = 1.0 / diagonal
    scaled_d = scaled_v * inverse_diagonal
    kappa = 1.0 / (1.0 + (scaled_v * scaled_d).sum(1, keepdim=True))  # [n, 1, B]
    fp = free * scaled_d
    inner = -((kappa * fp).unsqueeze(2) * fp.unsqueeze(1)).sum(0)  # [m, m, B]
    active = coupling > 0
    pair = active.unsqueeze(0) & active.unsqueeze(1)
    inverse = torch.where(active, 1.0 / coupling.clamp_min(1e-300), torch.ones_like(coupling))
    schur = torch.where(pair, inner, 0.0)
    index = torch.arange(m, device=coupling.device)
    diag = torch.where(active, (free * inverse_diagonal).sum(0), 0.0)
    schur[index, index] += diag + inverse
    if m <= UNROLLED_SCHUR:
        cholesky, info = _unrolled_cholesky(schur)
    else:
        cholesky, info = torch.linalg.cholesky_ex(schur.permute(2, 0, 1))
    return _Factor(
        diagonal,
        scaled_v,
        coupling,
        free,
        inverse_diagonal,
        scaled_d,
        kappa,
        active,
        cholesky,
        info,
    )


def _unrolled_cholesky(schur: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factors ``[m, m, B]`` of SPD ``[m, m, B]``; ``[B]`` info (nonzero: bad pivot)."""
    m, _, B = schur.shape
    L = [[None] * m for _ in range(m)]
    failed = torch.zeros(B, dtype=torch.bool, device=schur.device)
    for j in range(m):
        pivot = schur[j, j] - sum(L[j][k] ** 2 for k in range(j))
        failed |= ~(pivot > 0)
        L[j][j] = pivot.clamp_min(1e-300).sqrt()
        for i in range(j + 1, m):
            L[i][j] = (schur[i, j] - sum(L[i][k] * L[j][k] for k in range(j))) / L[j][j]
    zero = torch.zeros_like(schur[0, 0])
    factor = torch.stack([torch.stack([zero if c is None else c for c in row]) for row in L])
    return factor, failed.to(torch.int32)


def _schur_solve(factor: _Factor, rhs: Tensor) -> Tensor:
    """``S^-1 rhs`` for the Schur complements of ``factor``; ``rhs`` ``[m, B]``."""
    L = factor.cholesky
    m = rhs.shape[0]
    if m > UNROLLED_SCHUR:
        return torch.cholesky_solve(rhs.T.unsqueeze(-1), L).squeeze(-1).T
    forward: list[Tensor] = []
    for j in range(m):
        forward.append((rhs[j] - sum(L[j, k] * forward[k] for k in range(j))) / L[j, j])
    back: list[Tensor] = [None] * m
    for j in reversed(range(m)):
        back[j] = (forward[j] - sum(L[k, j] * back[k] for k in range(j + 1, m))) / L[j, j]
    return torch.stack(back)


def _solve_factorised(factor: _Factor, rhs: Tensor) -> Tensor:
    """``K^-1 rhs`` (``[n, m, B]``) by Woodbury on the factorisation."""
    first = factor.agent_solve(rhs)
    projected = torch.where(factor.active, (factor.free * first).sum(0), 0.0)
    weights = _schur_solve(factor, projected)
    return first - factor.agent_solve(factor.free * weights.unsqueeze(0))


def _checked_direction(
    factor: _Factor, rhs: Tensor, refine_tol: float | None
) -> tuple[Tensor, Tensor]:
    """``K^-1 rhs`` with its residual checked; failures are re-solved densely.

    The closed form cancels large terms when a block is nearly singular (an agent whose
    variables are all interior near convergence: tiny d, rank-1 Hessian). Such instances are
    recognised by their residual (above ``refine_tol`` relative to the size of the terms) and
    re-solved by a dense Cholesky of K (``refine_tol=None``: only failed factorisations).

    Returns:
        ``da`` ``[n, m, B]`` and ``[B]`` info (nonzero where even the dense solve failed).

    """
    da = _solve_factorised(factor, rhs)
    info = factor.info
    if refine_tol is None:
        bad = info != 0
    else:
        bad = _relative_residual(factor, da, rhs) > refine_tol
        bad |= info != 0
    if bool(bad.any()):
        index = bad.nonzero().squeeze(-1)
        pick = lambda t: _batch_first(t[..., index])  # noqa: E731
        dense, dense_info = _dense_newton_direction(
            pick(factor.diagonal),
            pick(factor.scaled_v),
            factor.coupling[:, index].T,
            pick(factor.free),
            pick(rhs),
        )
        da = da.index_copy(2, index, _batch_last(dense))
        info = info.index_copy(0, index, dense_info.to(info.dtype))
    return da, info


def _relative_residual(factor: _Factor, da: Tensor, rhs: Tensor) -> Tensor:
    """``[B]`` max-norm of ``K da - rhs`` over the size of its terms."""
    terms = (
        factor.diagonal * da,
        factor.scaled_v * (factor.scaled_v * da).sum(1, keepdim=True),
        factor.free * (factor.coupling * (factor.free * da).sum(0)).unsqueeze(0),
    )
    scale = rhs.abs().amax((0, 1)) + sum(t.abs().amax((0, 1)) for t in terms)
    residual = (terms[0] + terms[1] + terms[2] - rhs).abs().amax((0, 1))
    return residual / scale.clamp_min(1e-300)


def _newton_direction(
    diagonal: Tensor, scaled_v: Tensor, coupling: Tensor, freef: Tensor, rhs: Tensor
) -> tuple[Tensor, Tensor]:
    """Solve the interior-point Newton system ``K da = rhs`` by its structure (batch-first).

    See :func:`_factorise` for ``K``; the residual of every instance is checked and failures
    are re-solved by :func:`_dense_newton_direction`.

    Args:
        diagonal: ``[B, n, m]`` positive diagonal ``d``.
        scaled_v: ``[B, n, m]`` ``s`` (zero on fixed variables).
        coupling: ``[B, m]`` ``c >= 0`` (zero for budgets outside the program).
        freef: ``[B, n, m]`` 1 on free variables, 0 on fixed ones.
        rhs: ``[B, n, m]``.

    Returns:
        ``da`` ``[B, n, m]`` and ``[B]`` info (nonzero where the factorisation failed).

    """
    factor = _factorise(
        _batch_last(diagonal), _batch_last(scaled_v), coupling.T.contiguous(), _batch_last(freef)
    )
    da, info = _checked_direction(factor, _batch_last(rhs), refine_tol=1e-10)
    return _batch_first(da), info


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


def _lu_solve_checked(
    A: Tensor, rhs: Tensor, unit_pivots_left_out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``A^-1 rhs`` by LU, and ``[B]`` whether ``A`` counts as singular (pivot ratio).

    Args:
        A: ``[B, K, K]``.
        rhs: ``[B, K]``.
        unit_pivots_left_out: ``[B]`` where ``A`` is a block of a larger matrix whose other
            rows and columns are identity: their unit pivots take part in the ratio, as in
            the whole matrix.

    """
    LU, pivots, info = torch.linalg.lu_factor_ex(A)
    pivot = LU.diagonal(dim1=-2, dim2=-1).abs()
    largest = pivot.amax(-1).clamp_min(1e-300)
    if unit_pivots_left_out is not None:
        largest = torch.where(unit_pivots_left_out, largest.clamp_min(1.0), largest)
    singular = (info != 0) | (pivot.amin(-1) <= SINGULAR_PIVOT * largest)
    return torch.linalg.lu_solve(LU, pivots, rhs.unsqueeze(-1)).squeeze(-1), singular


def solve_transposed(
    M: Tensor, rhs: Tensor, unit_pivots_left_out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Solve ``M^T g = rhs`` per instance: LU where ``M`` is invertible, else minimal norm.

    Args:
        M: ``[B, K, K]``.
        rhs: ``[B, K]``.
        unit_pivots_left_out: see :func:`_lu_solve_checked`.

    Returns:
        ``g`` ``[B, K]`` and ``[B]`` whether the instance was singular (minimal-norm solve).

    """
    Mt = M.transpose(-1, -2)
    g, singular = _lu_solve_checked(Mt, rhs, unit_pivots_left_out)
    if bool(singular.any()):
        index = singular.nonzero().squeeze(-1)
        least = torch.linalg.lstsq(
            Mt[index], rhs[index].unsqueeze(-1), rcond=1e-10, driver="gelsd"
        ).solution.squeeze(-1)
        g = g.index_copy(0, index, least)
    return g, singular


def _compressed_solve_transposed(
    M: Tensor, rhs: Tensor, keep: Tensor, max_fraction: float = 0.75
) -> Tensor:
    """:func:`solve_transposed` on the rows and columns ``keep`` (``[B, K]``) of ``M``.

    The others must be identity rows and columns with a zero right-hand side (fixed
    variables, budgets outside the program): they decouple, so solving the kept block alone
    (padded with identity to the batch's largest block) gives the same ``g``, minimal-norm
    included, at a fraction of the LU cost (the whole matrix is solved when the block is
    more than ``max_fraction`` of it).
    """
    order, valid = _front(keep)
    if order.shape[1] > max_fraction * M.shape[-1]:
        # Gathering the block costs more than the LU it saves.
        return solve_transposed(M, rhs)[0]
    batch = torch.arange(M.shape[0], device=M.device).view(-1, 1, 1)
    sub = M[batch, order.unsqueeze(-1), order.unsqueeze(-2)]
    pair = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    sub = torch.where(pair, sub, 0.0) + torch.diag_embed((~valid).to(M.dtype))
    g_sub, _ = solve_transposed(
        sub,
        torch.where(valid, rhs.gather(1, order), 0.0),
        unit_pivots_left_out=keep.sum(1) < keep.shape[1],
    )
    return torch.zeros_like(rhs).scatter(1, order, torch.where(valid, g_sub, 0.0))


def _front(keep: Tensor) -> tuple[Tensor, Tensor]:
    """Indices ``[B, k]`` putting each row's kept entries first, and which of them are kept.

    ``k`` is the most entries kept in a row (at least 1).
    """
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    size = max(int(keep.sum(1).max()), 1) if keep.numel() else 1
    order = order[:, :size]
    return order, keep.gather(1, order)


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
