"""Soft-feasibility combinatorial baseline (ca_soft): feasibility by construction, exact
feasibility of the deployed rounding, IR, equivariance, gradients, config errors."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg
from hypothesis import given, settings
from hypothesis import strategies as st

from auctionlab.components import build_env_and_mechanism
from auctionlab.errors import ConfigError
from auctionlab.solvers.wdp import feasibility_violation

SETTINGS = ["ca_2x2", "ca_2x3", "ca_2x5", "ca_2x2_asym", "ca_3x10"]
TOL = 1e-5


def built(env: str, *overrides: str, seed: int = 0, scale: float = 2.0):
    """``(env, mechanism)`` with randomised heads (away from the bid-driven start), eval mode."""
    cfg = compose_cfg("evaluate", ["mechanism=ca_soft", f"env=combinatorial/{env}", *overrides])
    torch.manual_seed(seed)
    env, mechanism = build_env_and_mechanism(cfg)
    with torch.no_grad():
        for head in (mechanism.bundle_head, mechanism.null_head, mechanism.alpha_head):
            head.weight.normal_(0.0, scale)
            head.bias.normal_(0.0, scale)
    return env, mechanism.eval()


def loads(allocation: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """``[B, m]`` units of each item handed out."""
    return torch.einsum("bnk,nkm->bm", allocation.double(), membership.double())


@pytest.mark.parametrize("setting", SETTINGS)
def test_deployed_allocation_is_exactly_feasible_and_ir(setting):
    """20 000 random profiles per setting: 0 violations of the integral constraints, 0 IR."""
    env, mechanism = built(setting)
    values = env.sample(20_000, torch.Generator().manual_seed(1)).values
    with torch.no_grad():
        outcome = mechanism(values)
        fractional, alpha, options = mechanism.fractional(values)
    assert int((feasibility_violation(outcome.allocation, env.membership) != 0).sum()) == 0
    utility = env.utility(outcome, values)
    assert float(utility.min()) >= 0.0 and float(outcome.payment.min()) >= 0.0
    won = (outcome.allocation * values).sum(-1)
    assert torch.equal(outcome.payment, alpha * won)  # p = alpha * b_iS*, bit for bit
    # each winner got the option its own softmax ranked first (a bundle, not "nothing")
    winners = outcome.allocation.sum(-1) > 0
    chosen = outcome.allocation.argmax(-1)
    assert torch.equal(chosen[winners], options.argmax(-1)[winners])
    # the rounding is not trivial: something sells, and not always the fractional leader
    assert 0.05 < float(winners.double().mean()) <= 1.0


@pytest.mark.parametrize("setting", SETTINGS)
def test_fractional_allocation_is_feasible_by_construction(setting):
    env, mechanism = built(setting, seed=3)
    mechanism.train()  # training mode: the fractional allocation is the outcome
    values = env.sample(20_000, torch.Generator().manual_seed(2)).values
    with torch.no_grad():
        outcome = mechanism(values)
    x = outcome.allocation
    assert float(x.min()) >= 0.0
    assert float(x.sum(-1).max()) <= 1 + TOL  # one bundle per bidder, in expectation
    assert float(loads(x, env.membership).max()) <= 1 + TOL  # each item at most once
    # the rescaling binds: some item would be over-allocated without it
    with torch.no_grad():
        _, _, options = mechanism.fractional(values)
    assert float(loads(options[..., :-1], env.membership).max()) > 1.0
    assert float(env.utility(outcome, values).min()) >= -TOL  # fractional IR


def test_rounding_is_greedy_and_maximal():
    """A bidder whose proposal overlaps no accepted bundle is served (greedy maximality)."""
    env, mechanism = built("ca_2x5", seed=5)
    values = env.sample(5_000, torch.Generator().manual_seed(4)).values
    with torch.no_grad():
        outcome = mechanism(values)
        fractional, _, options = mechanism.fractional(values)
    members = env.membership.double()
    proposal = options.argmax(-1)  # [B, n], k = nothing
    k = env.n_bundles
    taken = loads(outcome.allocation, env.membership)  # [B, m]
    for i in range(env.n_bidders):
        proposes = proposal[:, i] < k
        bundle = proposal[:, i].clamp_max(k - 1)
        items = members[i][bundle]  # [B, m]
        served = outcome.allocation[:, i].sum(-1) > 0
        free = ((items * taken).sum(-1) == 0) & proposes
        assert bool((served | ~free).all())  # free proposals are always accepted
        assert bool((~served | proposes).all())  # nobody is served without proposing
    # conflicts are resolved towards the larger fraction
    x = fractional.gather(-1, proposal.clamp_max(k - 1).unsqueeze(-1)).squeeze(-1)
    lost = (outcome.allocation.sum(-1) == 0) & (proposal < k)
    assert bool(lost.any())
    winner_x = (fractional * outcome.allocation).sum(-1).amax(-1, keepdim=True)
    assert bool((x[lost] <= winner_x.expand_as(x)[lost]).all())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 64),
    spread=st.floats(0.1, 8.0),
    edge=st.sampled_from(["uniform", "low", "high", "ties", "far"]),
)
def test_property_deployed_feasible_ir_on_any_reports(seed, batch, spread, edge):
    env, mechanism = built("ca_2x3", seed=seed % 1000, scale=spread)
    generator = torch.Generator().manual_seed(seed)
    low, high = env.report_space.low, env.report_space.high
    unit = torch.rand(batch, env.n_bidders, env.n_bundles, generator=generator)
    reports = {
        "uniform": low + unit * (high - low),
        "low": low.expand(batch, -1, -1).clone(),
        "high": high.expand(batch, -1, -1).clone(),
        "ties": (low + 0.5 * (high - low)).expand(batch, -1, -1).clone(),
        "far": 100.0 * (unit - 0.5),
    }[edge]
    with torch.no_grad():
        outcome = mechanism(reports)
    assert bool(torch.isfinite(outcome.payment).all())
    assert bool((feasibility_violation(outcome.allocation, env.membership) == 0).all())
    if edge != "far":  # IR for reports inside the value box (far: payments stay finite)
        assert float(env.utility(outcome, reports).min()) >= -TOL


def test_bidder_permutation_equivariance():
    env, mechanism = built("ca_2x3", seed=11)
    values = env.sample(2_000, torch.Generator().manual_seed(6)).values
    swapped = values.flip(1)
    with torch.no_grad():
        for mode in ("train", "eval"):
            getattr(mechanism, mode)()
            a, b = mechanism(values), mechanism(swapped)
            assert torch.allclose(a.allocation.flip(1), b.allocation, atol=1e-6), mode
            assert torch.allclose(a.payment.flip(1), b.payment, atol=1e-6), mode


def test_deployed_values_exact_with_fractional_gradients():
    env, mechanism = built("ca_2x3", seed=2)
    values = env.sample(256, torch.Generator().manual_seed(8)).values
    with torch.no_grad():
        reference = mechanism(values)
    reports = values.clone().requires_grad_(True)
    outcome = mechanism(reports)
    assert torch.equal(outcome.allocation.detach(), reference.allocation)  # still integral
    outcome.payment.sum().backward()
    assert float(reports.grad.abs().sum()) > 0  # the attacker sees the fractional Jacobian


def test_rounding_none_deploys_the_fractional_mechanism():
    env, rounded = built("ca_2x3", seed=4)
    _, fractional = built("ca_2x3", "mechanism.rounding=none", seed=4)
    values = env.sample(512, torch.Generator().manual_seed(9)).values
    with torch.no_grad():
        x = fractional(values).allocation
        y = rounded(values).allocation
    assert float((x - x.round()).abs().max()) > 0.01  # genuinely fractional
    assert torch.equal(y, y.round())
    assert rounded.last_wdp is not None and fractional.last_wdp is None


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("mechanism.rounding=random", ["mechanism.rounding=random", "greedy", "none"]),
        ("mechanism.alpha_init=1.5", ["mechanism.alpha_init"]),
        ("mechanism.activation=sigmoid", ["mechanism.activation=sigmoid"]),
    ],
)
def test_bad_options_fail_in_one_line(override, words):
    cfg = compose_cfg("evaluate", ["mechanism=ca_soft", "env=combinatorial/ca_2x3", override])
    with pytest.raises(ConfigError) as info:
        build_env_and_mechanism(cfg)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_refuses_item_auctions():
    cfg = compose_cfg("evaluate", ["mechanism=ca_soft", "env=1x2"])
    with pytest.raises(ConfigError, match="combinatorial"):
        build_env_and_mechanism(cfg)
