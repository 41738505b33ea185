"""The PF / RPF programs solved by a batched primal-dual interior-point method ([zeng2025rpf], §4).

The regularised PF program (9) (``z = 0`` gives PF, program (4))::

    min_a  -sum_i w_i log(v_i^T a_i) + <z, a>
    s.t.   0 <= a <= x,   sum_i a_im <= b_m

is solved for a whole batch at once in float64 by :func:`solve_pf`: damped Newton steps on the
primal-dual pair (each Newton system solved by its structure in
:mod:`auctionlab.solvers.pf.linalg`; finished instances leave the working batch), or the same
method per instance in C (:mod:`auctionlab.solvers.pf.native`) on the CPU. Variables whose
demand (or budget) is zero are fixed at 0 and agents that demand nothing (or have weight 0) are
left out of the program: their allocation is 0. After convergence the active sets are read off
the primal-dual pair (``mu > a`` means ``a = 0``...), the allocation is snapped onto its bounds
and the KKT residual of the snapped pair is checked per instance; an instance above tolerance
is reported in ``PFSolution.converged`` (:func:`auctionlab.solvers.pf.pf_allocate` raises
``PFSolveError`` naming it: nothing that did not solve is ever returned as an allocation).

This module also holds what the other PF modules share about a solve: the zero thresholds,
:class:`PFSolution` and :class:`PFSolveError`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from auctionlab.errors import RunError
from auctionlab.solvers.pf import native as pf_native
from auctionlab.solvers.pf.linalg import (
    NEWTON_REFINE_TOL,
    _batch_first,
    _batch_last,
    _checked_direction,
    _factorise,
)

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


def _prepare(
    values: Tensor,
    demands: Tensor,
    budgets: Tensor,
    weights: Tensor | None,
    z: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The inputs in float64 with their defaults, and which variables and agents take part.

    Returns:
        ``v, x, b, w, z`` (negative demands clamped to 0), ``[B, n, m]`` the free variables
        and ``[B, n]`` the agents that are part of the program.

    """
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


def _objective(a: Tensor, v: Tensor, w: Tensor, z: Tensor, agent: Tensor) -> Tensor:
    """``[B]`` objective of program (9) at ``a``; agents outside the program contribute 0."""
    u = (v * a).sum(-1)
    logs = torch.where(agent, u.clamp_min(1e-300).log(), torch.zeros_like(u))
    return -(w * logs).sum(-1) + (z * a).sum((-1, -2))


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
    (:func:`auctionlab.solvers.pf.linalg._factorise`). The iterate is kept batch-last
    (``[n, m, B]``) inside: reductions over agents and resources then run over outer
    dimensions, several times faster in torch than over a trailing dimension of 2 or 3.
    Instances that meet the tolerance leave the working batch once they are half of it.

    Args:
        values: ``[B, n, m]`` reported values ``v``.
        demands: ``[B, n, m]`` reported demands ``x`` (negative ones count as 0).
        budgets: ``[B, m]`` budgets ``b``.
        weights: ``[B, n]`` agent weights ``w`` (default ones).
        z: ``[B, n, m]`` linear regulariser of RPF-Net (default 0: the PF program).
        tol: KKT residual an instance must reach.
        max_iter: interior-point iteration cap.
        backend: ``auto`` (default; ``AUCTIONLAB_PF_BACKEND`` overrides it), ``native`` or
            ``torch``: who solves on the CPU (:mod:`auctionlab.solvers.pf.native`: the same
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


def _program(
    v: Tensor,
    x: Tensor,
    b: Tensor,
    w: Tensor,
    z: Tensor,
    freef: Tensor,
    budget: Tensor,
    pairs: Tensor,
) -> _Program:
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


def _newton_step(
    problem: _Program,
    state: tuple[Tensor, Tensor, Tensor, Tensor],
    parts: Tensor,
    slacks: tuple[Tensor, Tensor, Tensor],
    target: Tensor,
    done: Tensor,
    tol: float,
) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, Tensor, Tensor]]:
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


def _pick_pair(
    problem: _Program,
    a: Tensor,
    mu: Tensor,
    nu: Tensor,
    lam: Tensor,
    s1: Tensor,
    s2: Tensor,
    s3: Tensor,
    tol: float,
) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
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


def _step_to_boundary(
    mu: Tensor,
    nu: Tensor,
    lam: Tensor,
    s1: Tensor,
    s2: Tensor,
    s3: Tensor,
    da: Tensor,
    ds3: Tensor,
    dmu: Tensor,
    dnu: Tensor,
    dlam: Tensor,
) -> Tensor:
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
