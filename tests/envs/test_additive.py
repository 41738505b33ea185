"""Auction environments: sampling, report space projection, utility."""

from __future__ import annotations

import pytest
import torch
from conftest import env_names, env_node
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auctionlab.conf import CONF_DIR
from auctionlab.envs.distributions import Triangle
from auctionlab.types import Outcome

CONF = CONF_DIR
ENV_NAMES = env_names("auction")
HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_ENVS: dict = {}


def make_env(name: str):
    """The env of ``conf/env/<name>.yaml`` (cached; envs are stateless after construction)."""
    if name not in _ENVS:
        _ENVS[name] = instantiate(env_node(name))
    return _ENVS[name]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def in_support(env, x: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
    """``[...]`` mask: each report profile lies in the env's support."""
    low, high = env.report_space.low, env.report_space.high
    ok = ((x >= low - tol) & (x <= high + tol)).flatten(-2).all(-1)
    dist = env.distribution
    if isinstance(dist, Triangle):
        v = x[..., 0, :]
        ok &= v[..., 0] / dist.c + v[..., 1] <= 2 + tol
    return ok


@pytest.mark.parametrize("name", ENV_NAMES)
def test_sample_shape_support_and_seeding(name):
    env = make_env(name)
    n, m = env.shape
    types = env.sample(512, gen(0))
    assert types.values.shape == (512, n, m)
    assert types.values.dtype == torch.float32
    assert types.batch_size == 512
    assert in_support(env, types.values).all()
    assert torch.equal(types.values, env.sample(512, gen(0)).values)
    assert not torch.equal(types.values, env.sample(512, gen(1)).values)
    # every coordinate actually varies (no degenerate broadcast)
    assert (types.values.std(0) > 0).all()


@pytest.mark.parametrize("name", ENV_NAMES)
def test_report_space_draws_inside(name):
    env = make_env(name)
    draws = env.report_space.draw(256, gen(3))
    assert draws.shape == (256, *env.shape)
    assert in_support(env, draws).all()
    assert torch.equal(draws, env.report_space.draw(256, gen(3)))
    width = env.report_space.width(torch.device("cpu"))
    assert width.shape == env.shape and (width > 0).all() and torch.isfinite(width).all()


@pytest.mark.parametrize("name", ENV_NAMES)
def test_project_idempotent_and_into_support(name):
    env = make_env(name)
    n, m = env.shape
    coords = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False, width=32)

    @HYPOTHESIS
    @given(st.lists(coords, min_size=3 * n * m, max_size=3 * n * m))
    def check(flat):
        x = torch.tensor(flat, dtype=torch.float32).view(3, n, m)
        p = env.report_space.project(x)
        assert p.shape == x.shape
        assert in_support(env, p).all()
        assert torch.allclose(env.report_space.project(p), p, atol=1e-5)
        # points already in the support stay where they are
        inside = in_support(env, x, tol=0.0)
        assert torch.equal(p[inside], x[inside])

    check()


@pytest.mark.parametrize("name", ENV_NAMES)
def test_project_keeps_leading_axes(name):
    env = make_env(name)
    x = 10 * torch.randn(4, 3, 2, *env.shape, generator=gen(5))
    p = env.report_space.project(x)
    assert p.shape == x.shape
    assert torch.equal(p[1, 2], env.report_space.project(x[1, 2]))


def _triangle_grid(c: float, k: int = 801) -> torch.Tensor:
    """A fine grid of the triangle ``{v1 >= 0, v2 >= 1, v1 / c + v2 <= 2}``, plus its edges."""
    a, b = torch.meshgrid(torch.linspace(0, c, k), torch.linspace(1, 2, k), indexing="ij")
    pts = torch.stack([a.flatten(), b.flatten()], -1).double()
    pts = pts[pts[:, 0] / c + pts[:, 1] <= 2 + 1e-12]
    t = torch.linspace(0, 1, 4 * k, dtype=torch.float64)[:, None]
    hyp = torch.tensor([0.0, 2.0]) + t * torch.tensor([c, -1.0])
    return torch.cat([pts, hyp])


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_triangle_projection_is_nearest_point(c):
    dist = Triangle(c)
    dist.bind(1, 2)
    grid = _triangle_grid(c)
    x = torch.cat(
        [
            torch.randn(40, 2, generator=gen(7)) * 2 + torch.tensor([c / 2, 1.5]),
            torch.tensor([[-1.0, 0.0], [5.0, 0.0], [-1.0, 5.0], [5.0, 5.0], [c / 3, 1.2]]),
        ]
    )
    p = dist.project(x[:, None, :])[:, 0, :].double()
    got = (p - x.double()).norm(dim=-1)
    best = torch.cdist(x.double(), grid).min(-1).values
    assert (got <= best + 1e-6).all(), (got - best).max()
    assert (got >= best - 2e-3 * max(c, 1.0)).all(), (best - got).max()
    assert (p[:, 0] >= -1e-6).all() and (p[:, 1] >= 1 - 1e-6).all()
    assert (p[:, 0] / c + p[:, 1] <= 2 + 1e-5).all()


def test_triangle_samples_uniform_over_triangle():
    env = make_env("1x2_triangle")
    v = env.sample(20000, gen(11)).values[:, 0, :]
    c = env.distribution.c
    # mean of a uniform triangle is its centroid
    centroid = torch.tensor([c / 3, 4.0 / 3.0])
    assert torch.allclose(v.mean(0), centroid, atol=0.02)


@pytest.mark.parametrize("name", ENV_NAMES)
def test_utility_is_quasi_linear(name):
    env = make_env(name)
    n, m = env.shape
    g = gen(13)
    values = env.sample(6, g).values
    allocation = torch.rand(6, n, m, generator=g)
    payment = torch.rand(6, n, generator=g)
    utility = env.utility(Outcome(allocation, payment), values)
    expected = torch.empty(6, n)
    for b in range(6):
        for i in range(n):
            expected[b, i] = sum(values[b, i, j] * allocation[b, i, j] for j in range(m))
            expected[b, i] -= payment[b, i]
    assert torch.allclose(utility, expected, atol=1e-5)
    # leading axes broadcast (the attackers use [R, B, n, m])
    stacked = env.utility(Outcome(allocation.expand(3, -1, -1, -1), payment), values)
    assert stacked.shape == (3, 6, n) and torch.allclose(stacked[2], utility)
