"""Solver-backed neural combinatorial auction: exact feasibility and IR, gradient paths."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_cfg

from auctionlab.components import build_env_and_mechanism
from auctionlab.solvers.relaxation import entropic_lp
from auctionlab.solvers.wdp import feasibility_violation

SETTINGS = ["ca_2x2", "ca_2x3", "ca_2x5", "ca_2x2_sym", "ca_2x2_asym"]


def built(env: str, *overrides: str, seed: int = 0):
    cfg = compose_cfg(
        "evaluate", ["mechanism=solver_backed", f"env=combinatorial/{env}", *overrides]
    )
    torch.manual_seed(seed)
    env, mechanism = build_env_and_mechanism(cfg)
    with torch.no_grad():  # leave welfare maximisation: random score and alpha heads
        for head in (mechanism.score_head, mechanism.alpha_head):
            head.weight.normal_(0.0, 1.0)
            head.bias.normal_(0.0, 1.0)
    return env, mechanism.eval()


@pytest.mark.parametrize("setting", SETTINGS)
def test_feasibility_and_truthful_ir_violations_are_exactly_zero(setting):
    """Acceptance: 100 000 random instances per setting, both violation counts exactly 0."""
    env, mechanism = built(setting)
    values = env.sample(100_000, torch.Generator().manual_seed(7)).values
    with torch.no_grad():
        outcome = mechanism(values)
    allocation = outcome.allocation
    assert int((feasibility_violation(allocation, env.membership) != 0).sum()) == 0
    utility = env.utility(outcome, values)
    assert int((utility < 0).sum()) == 0 and int((outcome.payment < 0).sum()) == 0
    alpha = mechanism.last_alpha
    assert 0 < float(alpha.std())  # the heads really vary the payment fraction
    # payment identity of the audit: p_i = alpha_i * b_iS*
    assert torch.equal(outcome.payment, alpha * (allocation * values).sum(-1))
    # the allocation maximises the scores (within the tie tolerance)
    totals = mechanism.wdp.totals(mechanism.last_scores[:2000])
    chosen = (allocation[:2000].double() * mechanism.last_scores[:2000].double()).sum((-1, -2))
    assert (chosen >= totals.max(1).values - mechanism.tie_tol - 1e-9).all()


def test_highs_backend_deploys_the_same_mechanism():
    env, enumeration = built("ca_2x3", "mechanism.payment=free")
    _, highs = built("ca_2x3", "mechanism.backend=highs", "mechanism.payment=free")
    values = env.sample(150, torch.Generator().manual_seed(3)).values
    values[:50] = values[:50].round(decimals=1)  # coarse bids: ties among allocations
    with torch.no_grad():
        a, b = enumeration(values), highs(values)
    assert torch.equal(a.allocation, b.allocation) and torch.equal(a.payment, b.payment)
    assert (highs.last_wdp.certificate["gap"] == 0).all()


def test_ste_keeps_exact_values_and_passes_surrogate_gradients():
    env, mechanism = built("ca_2x3")
    values = env.sample(64, torch.Generator().manual_seed(4)).values
    with torch.no_grad():
        exact = mechanism(values)
    reports = values.clone().requires_grad_(True)
    outcome = mechanism(reports)
    assert torch.equal(outcome.allocation, exact.allocation)
    assert torch.equal(outcome.payment, exact.payment)
    (grad,) = torch.autograd.grad(env.utility(outcome, values).sum(), reports)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_lp_gradient_trains_on_the_relaxation_and_deploys_integral():
    env, mechanism = built("ca_2x3", "mechanism.grad=lp")
    values = env.sample(64, torch.Generator().manual_seed(5)).values
    mechanism.train()
    relaxed = mechanism(values)
    assert relaxed.allocation.requires_grad
    fractional = (relaxed.allocation - relaxed.allocation.round()).abs().max()
    assert fractional > 1e-3  # the training forward is the relaxation
    mechanism.eval()
    with torch.no_grad():
        deployed = mechanism(values)
    assert int((feasibility_violation(deployed.allocation, env.membership) != 0).sum()) == 0


def test_lp_mix_blends_the_deployed_allocation_into_the_training_value():
    """§6.4: with lp_mix < 1 training sees part of the deployed allocation, LP gradient."""
    env, mechanism = built("ca_2x3", "mechanism.grad=lp", "mechanism.lp_mix=0.25")
    values = env.sample(64, torch.Generator().manual_seed(9)).values
    with torch.no_grad():
        exact = mechanism(values).allocation
    mechanism.train()
    scores = mechanism.scores_and_alpha(values)[0].detach().requires_grad_(True)
    mixed = mechanism.relaxed_allocation(exact, scores)
    soft = entropic_lp(
        scores, env.membership, mechanism.lp_temperature, mechanism.lp_iterations, outside=True
    )
    assert torch.allclose(mixed, 0.25 * soft + 0.75 * exact, atol=1e-6)
    weights = torch.randn(mixed.shape, generator=torch.Generator().manual_seed(1))
    (g_mixed,) = torch.autograd.grad((mixed * weights).sum(), scores)
    (g_soft,) = torch.autograd.grad((soft * weights).sum(), scores)
    assert torch.allclose(g_mixed, g_soft) and g_soft.abs().sum() > 0


def test_entropic_lp_is_feasible_and_tends_to_the_integral_optimum():
    env, mechanism = built("ca_2x3")
    scores = env.sample(256, torch.Generator().manual_seed(6)).values.double()
    optimum = mechanism.wdp.solve(scores).objective
    shortfall = {}
    for tau in (0.1, 0.01):
        x = entropic_lp(scores, env.membership, tau, iterations=200)
        items = torch.einsum("bnk,nkm->bm", x, env.membership.double())
        assert items.max() <= 1 + 1e-9 and x.sum(-1).max() <= 1 + 1e-9 and x.min() >= 0
        shortfall[tau] = float((optimum - (x * scores).sum((-1, -2))).mean())
    # a feasible point of the relaxation, approaching the integral optimum as tau falls
    assert shortfall[0.01] < 0.01 < shortfall[0.1]
    scores.requires_grad_(True)
    x = entropic_lp(scores, env.membership, 0.05, iterations=30)
    (grad,) = torch.autograd.grad((x * scores.detach()).sum(), scores)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bidder_permutation_equivariance():
    env, mechanism = built("ca_2x3")
    values = env.sample(256, torch.Generator().manual_seed(8)).values
    flipped = values.flip(1)
    with torch.no_grad():
        a, b = mechanism(values), mechanism(flipped)
    assert torch.allclose(b.allocation, a.allocation.flip(1))
    assert torch.allclose(b.payment, a.payment.flip(1), atol=1e-6)


def test_bad_options_fail_in_one_line(compose):
    from auctionlab.errors import ConfigError

    for override, word in (
        ("mechanism.grad=exact", "mechanism.grad=exact"),
        ("mechanism.backend=gurobi", "mechanism.backend=gurobi"),
        ("mechanism.alpha_init=1.5", "alpha_init"),
        ("mechanism.backend=highs", "payment=threshold needs"),
        ("mechanism.payment=vcg", "mechanism.payment=vcg"),
        ("mechanism.lp_mix=0", "mechanism.lp_mix=0"),
        ("mechanism.lp_temperature=-1", "mechanism.lp_temperature=-1"),
    ):
        cfg = compose("evaluate", ["mechanism=solver_backed", "env=combinatorial/ca_2x2", override])
        with pytest.raises(ConfigError, match=word.replace(".", r"\.")):
            build_env_and_mechanism(cfg)
    cfg = compose("evaluate", ["mechanism=solver_backed", "env=1x2"])
    with pytest.raises(ConfigError, match="combinatorial"):
        build_env_and_mechanism(cfg)


@pytest.mark.slow  # the same path runs in test_reproduce (experiment=ca_frontier at smoke)
def test_train_smoke_then_evaluate_with_the_hybrid_attacker(cli, tmp_path):
    args = ["mechanism=solver_backed", "env=ca_2x2", "scale=smoke", "threads=1"]
    result = cli("train", *args, "tracking=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "runs").glob("*/*_train")
    evaluate = ["attacker=hybrid", "scale=smoke", "tracking=none"]
    result = cli("evaluate", f"run={run}", *evaluate, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (evaluation,) = (tmp_path / "outputs" / "runs").glob("*/*_evaluate")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["ir_violation_max"] == 0 and metrics["regret_mean"] > 0
    assert metrics["attack_restarts"] == 4 and metrics["attack_steps"] == 20
