"""Batched PF / RPF solver ([zeng2025rpf] programs 4, 9) against a reference, and its gradients."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from auctionlab.envs.allocation import AllocationEnv, split_reports
from auctionlab.errors import NonFiniteError
from auctionlab.solvers.pf import (
    UNROLLED_SCHUR,
    PFSolveError,
    _compressed_solve_transposed,
    _dense_newton_direction,
    _full_gradients,
    _newton_direction,
    _reduced_gradients,
    kkt_matrix,
    pf_allocate,
    solve_pf,
    solve_transposed,
)

#: Both ways of running the iterations (native: the compiled C loop, needs a C compiler).
BACKENDS = [
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler"
        ),
    ),
    "torch",
]


def _instances(n, m, count, seed, with_z):
    env = AllocationEnv("t", n, m, empty_demand="keep")
    types = env.sample(count, torch.Generator().manual_seed(seed))
    v, x = split_reports(types.values.double())
    b, w = types.public["budgets"].double(), types.public["weights"].double()
    g = torch.Generator().manual_seed(seed + 1)
    z = 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64) if with_z else None
    return v, x, b, w, z


def reference_objective(v, x, b, w, z) -> float:
    """Program (9) with cvxpy + Clarabel (exponential-cone log), for tests only."""
    cp = pytest.importorskip("cvxpy")
    n, m = v.shape
    a = cp.Variable((n, m))
    present = [i for i in range(n) if (x[i] > 1e-5).any()]
    objective = -sum(w[i] * cp.log(v[i] @ a[i]) for i in present) + cp.sum(cp.multiply(z, a))
    fixed = x <= 1e-5  # the solver's convention: demands below 1e-5 are "nothing"
    constraints = [a >= 0, a <= np.where(fixed, 0.0, x), cp.sum(a, axis=0) <= b]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return float(problem.value)


def check_against_reference(n, m, count, seed, with_z, backend):
    v, x, b, w, z = _instances(n, m, count, seed, with_z)
    solution = solve_pf(v, x, b, w, z, tol=1e-7, backend=backend)
    assert bool(solution.converged.all()) and float(solution.kkt_residual.max()) <= 1e-6
    zz = np.zeros((n, m)) if z is None else z.numpy()
    gaps = [
        abs(
            reference_objective(
                v[k].numpy(), x[k].numpy(), b[k].numpy(), w[k].numpy(), zz if z is None else zz[k]
            )
            - float(solution.objective[k])
        )
        for k in range(count)
    ]
    assert max(gaps) <= 1e-6, max(gaps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "m", "with_z"), [(2, 2, False), (2, 2, True), (10, 3, False)])
def test_matches_reference_solver(n, m, with_z, backend):
    check_against_reference(n, m, 40, seed=n + m, with_z=with_z, backend=backend)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n", "m", "with_z"), [(2, 2, False), (2, 2, True), (10, 3, False), (10, 3, True)]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_solver_1000(n, m, with_z, backend):
    check_against_reference(n, m, 1000, seed=100 + n, with_z=with_z, backend=backend)


def test_feasible_and_fig1_example():
    # [zeng2025rpf] §2.1: v1 = (1, 1/2), v2 = (1, 1/4), x = 1, b = 1: agent 1 takes resource 2.
    v = torch.tensor([[[1.0, 0.5], [1.0, 0.25]]], dtype=torch.float64)
    a = pf_allocate(v, torch.ones_like(v), torch.ones(1, 2, dtype=torch.float64))
    assert float(a[0, 0, 1]) == pytest.approx(1.0, abs=1e-6)
    assert float(a[0, :, 0].sum()) == pytest.approx(1.0, abs=1e-6)


def test_gradcheck_where_kkt_matrix_is_invertible():
    v, x, b, w, z = _instances(2, 2, 24, seed=3, with_z=True)
    x = torch.where(x > 0, x, torch.full_like(x, 0.3))  # keep every variable in the program
    solution = solve_pf(v, x, b, w, z)
    _, singular = solve_transposed(
        kkt_matrix(solution, v, x, b, z), torch.ones(24, 14, dtype=torch.float64)
    )
    checked = 0
    for k in (~singular).nonzero().squeeze(-1).tolist()[:8]:
        inputs = [t[k : k + 1].clone().requires_grad_() for t in (v, x, w, z)]

        def solve(vv, xx, ww, zz, k=k):
            return pf_allocate(vv, xx, b[k : k + 1], ww, zz, tol=1e-9)

        assert torch.autograd.gradcheck(solve, inputs, eps=1e-6, atol=1e-4, rtol=1e-3)
        checked += 1
    assert checked >= 4


def test_singular_kkt_matrix_gets_a_finite_minimal_norm_gradient():
    # One agent, two resources with equal values: PF's solution set is a face (M singular).
    v = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]], dtype=torch.float64, requires_grad=True)
    x = torch.full((1, 2, 2), 2.0, dtype=torch.float64)
    b = torch.ones(1, 2, dtype=torch.float64)
    a = pf_allocate(v, x, b)
    a[0, 0, 0].backward()
    assert torch.isfinite(v.grad).all()


def test_failures_are_surfaced():
    v, x, b, w, _ = _instances(2, 2, 4, seed=5, with_z=False)
    with pytest.raises(PFSolveError, match="missed KKT tolerance"):
        pf_allocate(v, x, b, w, max_iter=1)
    bad = v.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        pf_allocate(bad, x, b, w)


@pytest.mark.parametrize(("n", "m"), [(2, 2), (10, 3), (4, 5), (3, 9)])
def test_structured_newton_direction_equals_dense_cholesky(n, m):
    """The closed-form Newton solve matches a dense solve, also in the ill-conditioned regime
    of late iterations (tiny barrier diagonals, huge budget barriers) where it falls back.

    ``m = 9`` takes LAPACK's Cholesky for the budget Schur complements instead of the
    unrolled one.
    """
    assert (m > UNROLLED_SCHUR) == (m == 9)
    g = torch.Generator().manual_seed(n * 10 + m)
    B = 64
    free = torch.rand(B, n, m, generator=g) > 0.2
    freef = free.double()
    # Half the instances look like the end of a solve: diagonals down to 1e-9, budgets 1e9.
    late = (torch.arange(B) % 2 == 0).double().view(B, 1, 1)
    diagonal = torch.rand(B, n, m, generator=g, dtype=torch.float64) + 0.05
    diagonal = diagonal * (1 - late) + late * 10 ** (-9 * torch.rand(B, n, m, generator=g))
    diagonal = diagonal * freef + (1 - freef)
    scaled_v = torch.rand(B, n, m, generator=g, dtype=torch.float64) * freef
    coupling = torch.rand(B, m, generator=g, dtype=torch.float64) * 10.0
    coupling = coupling * (1 + late.view(B, 1) * 1e8 * torch.rand(B, m, generator=g))
    coupling[1::4, 0] = 0.0  # a budget outside the program
    rhs = torch.randn(B, n, m, generator=g, dtype=torch.float64)
    da, info = _newton_direction(diagonal, scaled_v, coupling, freef, rhs)
    dense, dense_info = _dense_newton_direction(diagonal, scaled_v, coupling, freef, rhs)
    assert bool((info == 0).all()) and bool((dense_info == 0).all())

    # Both are judged by the residual of K da = rhs relative to the size of its terms (the
    # dense solve is itself only backward stable).
    def residual(d):
        terms = (
            diagonal * d,
            scaled_v * (scaled_v * d).sum(-1, keepdim=True),
            freef * (coupling * (freef * d).sum(1)).unsqueeze(1),
        )
        scale = rhs.abs().amax((-1, -2)) + sum(t.abs().amax((-1, -2)) for t in terms)
        return (sum(terms) - rhs).abs().amax((-1, -2)) / scale

    assert bool((residual(da) <= torch.clamp(10 * residual(dense), min=1e-10)).all())


@pytest.mark.parametrize(("n", "m", "with_z"), [(2, 2, False), (2, 2, True), (10, 3, True)])
def test_reduced_gradients_equal_full_kkt_gradients(n, m, with_z):
    """The active-set reduced adjoint solve gives the gradients of the full M' system."""
    v, x, b, w, z = _instances(n, m, 300, 11, with_z)
    z = torch.zeros_like(v) if z is None else z
    solution = solve_pf(v, x, b, w, z)
    grad_a = torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=v.dtype)
    full = _full_gradients(solution, grad_a, v, x, b, w, z)
    reduced = _reduced_gradients(solution, grad_a, v, x, b, w, z)
    for name, f, r in zip("vxbwz", full, reduced, strict=True):
        assert float((f - r).abs().max()) <= 1e-4 * float(f.abs().max()), name


def test_compressed_adjoint_solve_equals_the_whole_matrix():
    """Dropping the identity rows of M' (fixed variables, absent budgets) changes nothing,
    on invertible and on singular (minimal-norm) instances alike."""
    v, x, b, w, z = _instances(2, 2, 64, seed=21, with_z=True)
    b[::7, 1] = 0.0  # a budget outside the program
    # Instance 0: equal values, slack demands: PF's solution set is a face (M' singular).
    v[0], x[0], b[0], z[0] = 0.5, 2.0, 1.0, 0.0
    solution = solve_pf(v, x, b, w, z)
    M = kkt_matrix(solution, v, x, b, z)
    rhs = torch.randn(M.shape[:2], generator=torch.Generator().manual_seed(0), dtype=v.dtype)
    B, n, m = v.shape
    keep = torch.cat([solution.free.reshape(B, n * m)] * 3 + [b > 0], -1)
    rhs = torch.where(keep, rhs, 0.0)
    whole, singular = solve_transposed(M, rhs)
    compressed = _compressed_solve_transposed(M, rhs, keep, max_fraction=1.0)
    assert bool(singular.any()) and bool((~singular).any())
    torch.testing.assert_close(compressed, whole, atol=1e-8, rtol=1e-6)
    # The singular instance gets the minimal-norm solution, the same on every call.
    minimal = torch.linalg.pinv(M[0].T, rtol=1e-10) @ rhs[0]
    for _ in range(10):
        torch.testing.assert_close(solve_transposed(M, rhs)[0][0], minimal, atol=1e-8, rtol=1e-6)
