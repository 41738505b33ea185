"""Entropic LP relaxation of winner determination: feasibility and the implicit (KKT) gradient."""

from __future__ import annotations

import pytest
import torch

from auctionlab.solvers.relaxation import constraint_rows, entropic_lp, kkt_backward

# 2 bidders x 2 items, bundles {0}, {1}, {0, 1} for each bidder
MEMBERSHIP = torch.tensor([[[1, 0], [0, 1], [1, 1]]] * 2, dtype=torch.bool)


def scores(batch: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return spread * (torch.rand(batch, 2, 3, generator=generator, dtype=torch.float64) - 0.3)


@pytest.mark.parametrize("outside", [False, True])
def test_implicit_gradient_matches_finite_differences(outside):
    """gradcheck in float64 on tiny instances: converged forward, KKT backward."""
    s = scores(2, seed=1).requires_grad_(True)

    def relaxation(x):
        return entropic_lp(x, MEMBERSHIP, 0.5, iterations=300, implicit=True, outside=outside)

    assert torch.autograd.gradcheck(relaxation, (s,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("outside", [False, True])
def test_implicit_and_unrolled_gradients_agree_at_convergence(outside):
    s = scores(16, seed=2, spread=2.0).requires_grad_(True)
    weights = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(3), dtype=s.dtype)
    grads = []
    for implicit in (True, False):
        x = entropic_lp(s, MEMBERSHIP, 0.3, iterations=400, implicit=implicit, outside=outside)
        grads.append(torch.autograd.grad((x * weights).sum(), s)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert grads[0].abs().max() > 1e-3  # not trivially zero


def test_jacobian_is_symmetric_and_keeps_active_rows_tight():
    """J = (D - D A_R^T (A_R D A_R^T)^-1 A_R D) / tau: symmetric, and A_R J = 0."""
    rows, equality = constraint_rows(MEMBERSHIP, outside=True)
    n = rows.shape[1]
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(1, n, generator=generator, dtype=torch.float64)
    active = torch.tensor([[True, False, True, True]])
    jacobian = torch.stack(
        [
            kkt_backward(torch.eye(n, dtype=x.dtype)[j : j + 1], x, rows, active, 0.3)[0]
            for j in range(n)
        ]
    )
    assert torch.allclose(jacobian, jacobian.T, atol=1e-9)
    assert torch.allclose(rows[active[0]] @ jacobian, torch.zeros(3, n, dtype=x.dtype), atol=1e-8)
    assert bool(equality[2:].all()) and not bool(equality[:2].any())


@pytest.mark.parametrize("outside", [False, True])
def test_relaxation_is_feasible_in_float32(outside):
    s = scores(512, seed=5, spread=3.0).float()
    x = entropic_lp(s, MEMBERSHIP, 0.02, iterations=30, outside=outside)
    items = torch.einsum("bnk,nkm->bm", x, MEMBERSHIP.float())
    assert x.min() >= 0 and items.max() <= 1 + 1e-5 and x.sum(-1).max() <= 1 + 1e-5


def test_outside_option_sells_less_below_zero_and_the_same_above():
    """§6.4: the integral rule sells nothing at negative scores; the plain relaxation does."""
    tau = 0.02

    def sold(value: float, outside: bool) -> float:
        s = torch.full((1, 2, 3), value, dtype=torch.float64)
        return float(entropic_lp(s, MEMBERSHIP, tau, iterations=200, outside=outside).sum())

    assert sold(-tau, outside=False) > 1.5  # 1.5 bundles' worth at a score of -tau
    assert sold(-tau, outside=True) < 0.7 * sold(-tau, outside=False)
    assert sold(10 * tau, outside=True) == pytest.approx(sold(10 * tau, outside=False), abs=0.02)
