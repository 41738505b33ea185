"""Fuzzed invariants of every mechanism option on every env it accepts.

Properties (hypothesis; bounded examples in the default suite, many under
``HYPOTHESIS_PROFILE=slow``, which ``make test-slow`` sets):

* feasibility: allocations in [0, 1], each item allocated at most once, unit-demand bidders
  get at most one item in total; payments finite;
* IR by design where the mechanism promises it (``ir_by_design``): truthful utility >= 0;
* permutation equivariance where promised (``symmetric_in``) on envs whose prior is symmetric;
* finite, feasible outputs on edge inputs: all zeros / lower bounds, all upper bounds, exact
  ties, single winners, and reports far outside the support.

Learned mechanisms are fuzzed at random initialisation: their guarantees hold by construction,
whatever the weights.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import compose_cfg, options
from hydra.errors import ConfigCompositionException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auctionlab.components import build_env_and_mechanism
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome

#: Envs that cover every shape, demand and prior of the env group (a few share a class).
ENVS = ["1x2", "1x2_asym", "1x2_unit", "1x2_triangle", "2x2", "2x2_unit", "2x3", "3x1_irregular"]
ENVS = [e for e in ENVS if e in options("env")]
ENVS += ["allocation/2x2"]  # payment-free family ([zeng2025rpf]); nested option of the env group
ENVS += ["combinatorial/ca_2x3"]  # bundle bids ([lemma2026solver]): allocation [B, n, bundles]
ENVS += ["budgets/2x2"]  # private budgets ([lemma2026certified] §8): reports [B, n, m + 1]
TOL = 1e-5


@functools.cache
def built(mechanism: str, env: str):
    """``(env, mechanism)`` in eval mode, or ``None`` when the pair is refused."""
    torch.manual_seed(0)
    try:
        pair = build_env_and_mechanism(
            compose_cfg("evaluate", [f"mechanism={mechanism}", f"env={env}"])
        )
    except (ConfigError, ConfigCompositionException):  # refused, or no version in its family
        return None
    pair[1].eval()
    return pair


#: Every (mechanism, env) pair that builds; refused pairs are the config checks' business.
PAIRS = [(m, e) for m in options("mechanism") for e in ENVS if built(m, e) is not None]


def test_every_mechanism_accepts_some_env():
    for mechanism in options("mechanism"):
        assert any(m == mechanism for m, _ in PAIRS), f"{mechanism} builds on none of {ENVS}"


def _bounds(env) -> tuple[torch.Tensor, torch.Tensor]:
    space = env.report_space
    low = torch.where(torch.isfinite(space.low), space.low, torch.zeros_like(space.low))
    high = torch.where(torch.isfinite(space.high), space.high, low + 10.0)
    return low, high


def _reports(env, unit: torch.Tensor) -> torch.Tensor:
    """Map ``[B, n, m]`` points of the unit cube into the env's report box."""
    low, high = _bounds(env)
    return low + (high - low) * unit


def check_feasible(env, outcome: Outcome, reports: torch.Tensor) -> None:
    allocation, payment = outcome.allocation, outcome.payment
    if env.family == "allocation":  # reports [B, n, 2m]: 0 <= a <= x, budgets, no payments
        m = env.n_items
        demands, budget = reports[..., m:].clamp_min(0), env.budget_per_agent * env.n_bidders
        assert allocation.shape == demands.shape and bool((payment == 0).all())
        assert torch.isfinite(allocation).all()
        assert allocation.min() >= -TOL and (allocation <= demands + TOL).all()
        assert (allocation.sum(-2) <= budget + TOL).all(), "a resource is over-allocated"
        return
    if env.family == "budgets":  # reports [B, n, m + 1]: the last column is the budget
        assert (payment <= reports[..., -1].clamp_min(0) + TOL).all(), "payment above budget"
        reports = reports[..., :-1]
    assert allocation.shape == reports.shape and payment.shape == reports.shape[:2]
    if env.family == "combinatorial":  # integral, one bundle per bidder, each item once
        from auctionlab.solvers.wdp import feasibility_violation

        assert bool((feasibility_violation(allocation, env.membership) == 0).all())
    assert torch.isfinite(allocation).all() and torch.isfinite(payment).all()
    assert allocation.min() >= -TOL and allocation.max() <= 1 + TOL
    assert (allocation.sum(-2) <= 1 + TOL).all(), "an item is allocated more than once"
    if env.demand == "unit":
        assert (allocation.sum(-1) <= 1 + TOL).all(), "a unit-demand bidder gets > 1 item"


unit_cubes = st.integers(0, 2**31 - 1)


@pytest.mark.parametrize(("mechanism", "env"), PAIRS)
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(seed=unit_cubes, batch=st.integers(1, 16))
def test_feasible_and_ir_on_random_reports(mechanism, env, seed, batch):
    environment, mech = built(mechanism, env)
    generator = torch.Generator().manual_seed(seed)
    width = environment.report_space.low.shape[-1]  # 2m for allocation envs
    shape = (batch, environment.n_bidders, width)
    reports = _reports(environment, torch.rand(shape, generator=generator))
    with torch.no_grad():
        outcome = mech(reports)
    check_feasible(environment, outcome, reports)
    if getattr(mech, "ir_by_design", False):
        utility = environment.utility(outcome, reports)
        assert utility.min() >= -TOL * max(1.0, float(reports.abs().max()))


EDGES = ["low", "high", "tie-middle", "one-high-rest-low", "corners", "far-outside"]


def _edge(env, kind: str, seed: int) -> torch.Tensor:
    low, high = _bounds(env)
    n, m = low.shape
    generator = torch.Generator().manual_seed(seed)
    if kind == "low":
        unit = torch.zeros(1, n, m)
    elif kind == "high":
        unit = torch.ones(1, n, m)
    elif kind == "tie-middle":
        unit = torch.full((1, n, m), 0.5)
    elif kind == "one-high-rest-low":
        unit = torch.zeros(1, n, m)
        unit[0, int(torch.randint(n, (1,), generator=generator))] = 1.0
    elif kind == "corners":
        unit = torch.randint(0, 2, (8, n, m), generator=generator).float()
    else:  # far outside the support: a caller's bug must still give finite, feasible outcomes
        return (high * 1e4 + 1e4).unsqueeze(0)
    return _reports(env, unit)


@pytest.mark.parametrize(("mechanism", "env"), PAIRS)
@pytest.mark.parametrize("edge", EDGES)
def test_edge_inputs_finite_and_feasible(mechanism, env, edge):
    environment, mech = built(mechanism, env)
    reports = _edge(environment, edge, seed=len(mechanism) + len(env))
    with torch.no_grad():
        outcome = mech(reports)
    check_feasible(environment, outcome, reports)
    if getattr(mech, "ir_by_design", False) and edge != "far-outside":
        assert environment.utility(outcome, reports).min() >= -TOL * float(reports.abs().max() + 1)


def _symmetric(env, axis: str) -> bool:
    """Whether the env's prior is invariant under permuting ``axis`` (bidders or items)."""
    low, high = env.report_space.low, env.report_space.high
    dim = 0 if axis == "bidders" else 1
    same = lambda t: bool((t == t.select(dim, 0).unsqueeze(dim)).all())  # noqa: E731
    return env.distribution.independent and same(low) and same(high)


EQUIVARIANT = [
    (m, e, axis)
    for m, e in PAIRS
    for axis in ("bidders", "items")
    if axis in getattr(built(m, e)[1], "symmetric_in", ()) and _symmetric(built(m, e)[0], axis)
]


def test_some_mechanisms_promise_equivariance():
    assert {m for m, _, _ in EQUIVARIANT} >= {"vcg", "first_price", "myerson_itemwise"}


@pytest.mark.parametrize(("mechanism", "env", "axis"), EQUIVARIANT)
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(seed=unit_cubes)
def test_permutation_equivariance(mechanism, env, axis, seed):
    environment, mech = built(mechanism, env)
    generator = torch.Generator().manual_seed(seed)
    shape = (8, environment.n_bidders, environment.report_space.low.shape[-1])
    reports = _reports(environment, torch.rand(shape, generator=generator))
    size = shape[1] if axis == "bidders" else shape[2]
    perm = torch.randperm(size, generator=generator)
    dim = 1 if axis == "bidders" else 2
    with torch.no_grad():
        base = mech(reports)
        permuted = mech(reports.index_select(dim, perm))
    torch.testing.assert_close(
        permuted.allocation, base.allocation.index_select(dim, perm), atol=1e-6, rtol=0
    )
    expected_payment = base.payment.index_select(1, perm) if axis == "bidders" else base.payment
    torch.testing.assert_close(permuted.payment, expected_payment, atol=1e-6, rtol=1e-6)
