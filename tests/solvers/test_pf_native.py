"""The compiled PF iterations (auctionlab/solvers/pf/native.c) against the torch path."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from auctionlab.errors import ConfigError
from auctionlab.solvers.pf import (
    ZERO,
    PFSolution,
    _batch_last,
    _merge,
    _prepare,
    _program,
    solve_pf,
)
from auctionlab.solvers.pf import native as pf_native

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler"
)


def _programs(n, m, count, seed, *, z_scale=0.3, sparse=True):
    """Programs (9) with the awkward cases mixed in: empty demands, zero weights and budgets."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    v = 0.1 + 0.9 * torch.rand(count, n, m, generator=g, dtype=f64)
    x = 0.1 + 0.9 * torch.rand(count, n, m, generator=g, dtype=f64)
    if sparse:
        x = x * (torch.rand(count, n, m, generator=g) < 0.5)
    b = torch.full((count, m), n / 2, dtype=f64)
    b = torch.where(torch.rand(count, m, generator=g) < 0.1, 0.0, b)
    w = torch.where(torch.rand(count, n, generator=g) < 0.1, 0.0, torch.ones(count, n, dtype=f64))
    z = z_scale * torch.randn(count, n, m, generator=g, dtype=f64)
    return v, x, b, w, z


def _assert_same(native: PFSolution, reference: PFSolution):
    assert torch.equal(native.converged, reference.converged)
    assert torch.allclose(native.allocation, reference.allocation, rtol=0, atol=1e-9)
    assert torch.allclose(native.objective, reference.objective, rtol=0, atol=1e-9)
    assert torch.equal(native.free, reference.free)
    # Same method, same active sets: the snapped duals agree to the tolerance's scale.
    for name in ("mu", "nu", "lam"):
        assert torch.allclose(getattr(native, name), getattr(reference, name), atol=1e-5)


@needs_compiler
@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 2), (10, 3), (4, 5), (3, 9)])
@pytest.mark.parametrize("z_scale", [0.0, 0.3])
def test_native_iterations_match_the_torch_path(n, m, z_scale):
    programs = _programs(n, m, 300, seed=10 * n + m, z_scale=z_scale)
    native = solve_pf(*programs, backend="native")
    reference = solve_pf(*programs, backend="torch")
    assert bool(native.converged.all()) and float(native.kkt_residual.max()) <= 1e-7
    _assert_same(native, reference)
    assert native.iterations == reference.iterations


def _torch_kkt(programs, solution: PFSolution):
    """The torch path's KKT residual of a returned pair."""
    v, x, b, w, z, free, _ = _prepare(*programs)
    f = free.to(v.dtype)
    problem = _program(v, x, b, w, z, f, (b > ZERO).to(v.dtype), torch.zeros(v.shape[0]))
    pair = (solution.allocation, solution.mu, solution.nu)
    return problem.kkt(*(_batch_last(t) for t in pair), solution.lam.T.contiguous())


@needs_compiler
@pytest.mark.parametrize(("n", "m"), [(2, 2), (10, 3), (3, 9)])
def test_native_kkt_residual_is_the_torch_paths_on_its_pair(n, m):
    programs = _programs(n, m, 400, seed=n * m)
    native = solve_pf(*programs, backend="native")
    recomputed = _torch_kkt(programs, native)
    assert torch.allclose(native.kkt_residual, recomputed, rtol=1e-12, atol=1e-15)
    capped = solve_pf(*programs, max_iter=4, backend="native")  # unconverged pairs, too
    assert torch.allclose(capped.kkt_residual, _torch_kkt(programs, capped), rtol=1e-12, atol=0)


@needs_compiler
@given(
    n=st.integers(1, 6),
    m=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    sparse=st.booleans(),
)
def test_native_solutions_are_feasible_and_agree(n, m, seed, sparse):
    v, x, b, w, z = _programs(n, m, 16, seed=seed, sparse=sparse)
    native = solve_pf(v, x, b, w, z, backend="native")
    a = native.allocation
    assert bool((a >= 0).all()) and bool((a <= x.clamp_min(0)).all())
    assert bool((a.sum(1) <= b + 1e-7).all())  # primal feasibility to the KKT tolerance
    _assert_same(native, solve_pf(v, x, b, w, z, backend="torch"))


@needs_compiler
def test_threads_do_not_change_the_result():
    programs = _programs(10, 3, 500, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = solve_pf(*programs, backend="native")
        torch.set_num_threads(2)
        two = solve_pf(*programs, backend="native")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.allocation, two.allocation)
    assert one.iterations == two.iterations


@needs_compiler
def test_iteration_cap_is_reported_like_the_torch_path():
    programs = _programs(2, 2, 8, seed=4)
    native = solve_pf(*programs, max_iter=2, backend="native")
    reference = solve_pf(*programs, max_iter=2, backend="torch")
    assert not bool(native.converged.all())
    assert torch.equal(native.converged, reference.converged)
    assert native.iterations == reference.iterations == 2
    assert torch.allclose(native.kkt_residual, reference.kkt_residual, rtol=1e-6)


def test_merge_replaces_the_given_instances():
    programs = _programs(2, 2, 6, seed=5)
    whole = solve_pf(*programs, backend="torch")
    part = solve_pf(*(t[[1, 4]] * 2 for t in programs), backend="torch")
    merged = _merge(whole, part, torch.tensor([1, 4]))
    assert torch.equal(merged.allocation[[1, 4]], part.allocation)
    assert torch.equal(merged.allocation[[0, 2, 3, 5]], whole.allocation[[0, 2, 3, 5]])
    assert merged.iterations == max(whole.iterations, part.iterations)


def test_backend_choice_is_validated(monkeypatch):
    monkeypatch.setenv("AUCTIONLAB_PF_BACKEND", "fortran")
    with pytest.raises(ConfigError, match=r"backend='fortran'.*\['auto', 'native', 'torch'\]"):
        solve_pf(*_programs(2, 2, 2, seed=6))
    monkeypatch.setenv("AUCTIONLAB_PF_BACKEND", "torch")
    assert not pf_native.use_native(None, torch.device("cpu"))
    assert not pf_native.use_native("auto", torch.device("meta"))
    with pytest.raises(ConfigError, match="CPU only"):
        pf_native.use_native("native", torch.device("meta"))


@needs_compiler
def test_library_is_built_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AUCTIONLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(pf_native, "_library", None)
    monkeypatch.setattr(pf_native, "_failure", None)
    assert pf_native.library() is not None
    built = list(tmp_path.glob("pf_native_*.so"))
    assert len(built) == 1
    # A second process finds it there instead of compiling again.
    monkeypatch.setattr(pf_native, "_library", None)
    stamp = built[0].stat().st_mtime_ns
    assert pf_native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp


def test_without_a_compiler_the_torch_path_runs(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("AUCTIONLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(pf_native, "_library", None)
    monkeypatch.setattr(pf_native, "_failure", None)
    with caplog.at_level(logging.WARNING):
        solution = solve_pf(*_programs(2, 2, 4, seed=7))
    assert bool(solution.converged.all())
    assert "native PF solver unavailable" in caplog.text
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("tmp*"))
    with pytest.raises(ConfigError, match="did not build"):
        solve_pf(*_programs(2, 2, 4, seed=7), backend="native")
