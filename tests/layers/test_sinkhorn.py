"""Sinkhorn allocation layer with slack: feasibility for all inputs, equivariance, its L bound."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auctionlab.errors import ConfigError
from auctionlab.layers.sinkhorn import check_sinkhorn, sinkhorn_allocation, sinkhorn_lipschitz

TOL = 1e-6

#: Logits biased to the edges: exact 0, the score bound, huge values, ties.
logit = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 5.0, -5.0, 60.0, -60.0]), st.floats(-30.0, 30.0))


def _logits(data, B: int, n: int, m: int):
    def draw(size: int) -> torch.Tensor:
        return torch.tensor(data.draw(st.lists(logit, min_size=size, max_size=size)))

    scores = draw(B * n * m).view(B, n, m).double()
    if data.draw(st.booleans()):  # every bidder scores the same: a full tie
        scores = scores[:, :1].expand(B, n, m)
    return scores, draw(B * m).view(B, m).double(), draw(B * n).view(B, n).double()


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=50)
@given(
    data=st.data(),
    n=st.integers(1, 4),
    m=st.integers(1, 4),
    capacity=st.sampled_from([1.0, 2.0, None]),
    iterations=st.sampled_from([1, 3, 20]),
    temperature=st.sampled_from([0.05, 1.0, 10.0]),
)
def test_caps_hold_for_every_input(data, n, m, capacity, iterations, temperature):
    scores, dummy, slack = _logits(data, 2, n, m)
    r = float(m) if capacity is None else capacity
    plan = sinkhorn_allocation(scores, dummy, slack, r, iterations, temperature)
    assert plan.shape == (2, n, m) and torch.isfinite(plan).all()
    assert plan.min() >= 0 and plan.max() <= 1 + TOL
    assert (plan.sum(-2) <= 1 + TOL).all(), plan.sum(-2).max()  # items
    assert (plan.sum(-1) <= r + TOL).all(), plan.sum(-1).max()  # bidders


def test_float32_caps_hold_after_few_iterations():
    """One iteration is far from converged: the final rescale alone keeps the caps."""
    g = torch.Generator().manual_seed(0)
    scores = 5 * torch.randn(512, 3, 4, generator=g)
    plan = sinkhorn_allocation(scores, torch.zeros(512, 4), torch.full((512, 3), -5.0), 1.0, 1)
    assert (plan.sum(-1) <= 1 + 1e-6).all() and (plan.sum(-2) <= 1 + 1e-6).all()


def test_uniform_kernel_gives_the_product_of_marginals():
    """All logits 0: the plan is a b^T / (n r + m); 2x2 with r = 1 gives 1/4 everywhere."""
    plan = sinkhorn_allocation(torch.zeros(1, 2, 2), torch.zeros(1, 2), torch.zeros(1, 2), 1.0)
    torch.testing.assert_close(plan, torch.full((1, 2, 2), 0.25), atol=1e-6, rtol=0)


def test_converges_to_the_marginals():
    """Strong preferences, many iterations: each unit-demand bidder gets its own item."""
    scores = torch.tensor([[[4.0, -4.0], [-4.0, 4.0]]])
    low = torch.full((1, 2), -4.0)
    plan = sinkhorn_allocation(scores, low, low, 1.0, iterations=200, temperature=0.5)
    assert float(plan[0, 0, 0]) > 0.99 and float(plan[0, 1, 1]) > 0.99
    # a bidder who wants both items still gets at most one unit in total
    greedy = sinkhorn_allocation(torch.tensor([[[4.0, 4.0], [-4.0, -4.0]]]), low, low, 1.0, 200)
    assert float(greedy[0, 0].sum()) == pytest.approx(1.0, abs=1e-3)


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**31 - 1))
def test_permuting_bidders_and_items_permutes_the_plan(seed):
    g = torch.Generator().manual_seed(seed)
    scores = 3 * torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
    dummy = torch.randn(8, 4, generator=g, dtype=torch.float64)
    slack = torch.randn(8, 3, generator=g, dtype=torch.float64)
    rows, cols = torch.randperm(3, generator=g), torch.randperm(4, generator=g)
    base = sinkhorn_allocation(scores, dummy, slack, 1.0, 10)
    moved = sinkhorn_allocation(scores[:, rows][..., cols], dummy[:, cols], slack[:, rows], 1.0, 10)
    torch.testing.assert_close(moved, base[:, rows][..., cols], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("capacity", "iterations", "temperature"), [(1.0, 1, 1.0), (1.0, 20, 0.2), (3.0, 5, 1.0)]
)
def test_lipschitz_factor_bounds_observed_ratios(capacity, iterations, temperature):
    g = torch.Generator().manual_seed(1)
    B, n, m = 2048, 2, 3
    z = 5 * torch.randn(B, n * m + m + n, generator=g, dtype=torch.float64)
    dz = torch.randn(B, n * m + m + n, generator=g, dtype=torch.float64)
    dz = dz * 10.0 ** torch.randint(-6, 1, (B, 1), generator=g)

    def plan(x):
        return sinkhorn_allocation(
            x[:, : n * m].view(B, n, m),
            x[:, n * m : n * m + m],
            x[:, n * m + m :],
            capacity,
            iterations,
            temperature,
        )

    ratio = (plan(z + dz) - plan(z)).abs().sum((1, 2)) / dz.abs().sum(1)
    bound = sinkhorn_lipschitz(m, capacity, iterations, temperature)
    assert float(ratio.max()) <= bound
    assert float(ratio.max()) > 0.01 / temperature  # the check sees real sensitivity


def test_gradients_are_finite_and_match_finite_differences():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    dummy = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    slack = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, d, k: sinkhorn_allocation(s, d, k, 1.0, 5), (scores, dummy, slack)
    )


@pytest.mark.parametrize(
    ("iterations", "temperature", "message"),
    [(0, 1.0, "mechanism.sinkhorn_iterations=0"), (5, 0.0, "mechanism.sinkhorn_temperature=0.0")],
)
def test_bad_settings_fail_in_one_line(iterations, temperature, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_sinkhorn(iterations, temperature)
    assert "\n" not in str(err.value)
