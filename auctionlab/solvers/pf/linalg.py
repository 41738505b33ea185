"""The linear algebra of the PF solver: Newton systems and adjoint (transposed KKT) solves.

Forward (interior point, batch-last ``[n, m, B]``): the Newton matrix
``K = diag(d) + sum_i s_i s_i^T + sum_m c_m f_m f_m^T`` is factorised by its structure
(:func:`_factorise`: Sherman-Morrison per agent, an ``m x m`` Woodbury system for the budgets)
and every direction's residual is checked, failures being re-solved by a dense Cholesky
(:func:`_checked_direction`).

Backward (batch-first ``[B, K]``): ``M^T g = rhs`` per instance by LU where the pivot ratio says
``M`` is invertible, else the minimal-norm solution (LAPACK ``gelsd``, SVD; ``gelsy`` returned
different solutions of one singular system from call to call here), as in Prop. 1's remark
(:func:`solve_transposed`); identity rows and columns can be left out of the factorisation
(:func:`_compressed_solve_transposed`).

Nothing here knows about the PF program itself: callers pass tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Relative residual of a structured Newton solve above which it is redone densely.
NEWTON_REFINE_TOL = 1e-9


def _batch_last(t: Tensor) -> Tensor:
    """``[B, n, m] -> [n, m, B]`` (contiguous): every reduction then runs over outer dims."""
    return t.permute(1, 2, 0).contiguous()


def _batch_first(t: Tensor) -> Tensor:
    """``[n, m, B] -> [B, n, m]`` (contiguous)."""
    return t.permute(2, 0, 1).contiguous()


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
