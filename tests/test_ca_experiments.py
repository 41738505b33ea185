"""What the ca_stress / ca_scaling / ca_tolerance experiments read: the eta-optimal
enumeration rule, curve and PGD-phase metrics, winner-determination stats ([lemma2026solver])."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.components import build_env_and_mechanism
from auctionlab.evaluation import evaluate_mechanism
from auctionlab.experiments import compose as _compose
from auctionlab.reporting.tables import TableSpec, check_budget_columns
from auctionlab.solvers.wdp import ExactWDP, HighsWDP
from auctionlab.tasks.reproduce import prepare

CA_EXPERIMENTS = ["ca_stress", "ca_scaling", "ca_tolerance"]


def built(mechanism: str, env: str = "combinatorial/ca_2x3", *overrides: str):
    cfg = compose_cfg("evaluate", [f"mechanism={mechanism}", f"env={env}", *overrides])
    env, mech = build_env_and_mechanism(cfg)
    return env, mech.eval()


@pytest.mark.parametrize("eta", [0.001, 0.01, 0.05, 0.2])
def test_eta_optimal_enumeration_stays_within_the_gap(eta):
    env, _ = built("ca_vcg")
    scores = env.sample(4000, torch.Generator().manual_seed(1)).values.double()
    exact = ExactWDP(env.membership).solve(scores)
    loose = ExactWDP(env.membership, rel_gap=eta).solve(scores)
    best = exact.objective
    assert torch.allclose(loose.certificate["bound"], best)
    assert bool((loose.objective >= best - eta * best.abs() - 1e-9).all())
    assert float(loose.certificate["gap"].max()) <= eta + 1e-12
    differs = (loose.choice != exact.choice).any(-1)
    assert bool(differs.any())  # the rule uses its slack (largest priority within the gap)
    assert torch.equal(loose.scores, scores)
    # gap 0 is the exact rule, bit for bit
    assert torch.equal(ExactWDP(env.membership, rel_gap=0.0).solve(scores).choice, exact.choice)


def test_eta_out_of_range_is_refused():
    from auctionlab.errors import ConfigError

    env, _ = built("ca_vcg")
    with pytest.raises(ConfigError, match="mip_rel_gap"):
        ExactWDP(env.membership, rel_gap=1.5)


def _evaluate(mechanism, env, profiles=64, wdp_instances=0, restarts=2, steps=10):
    attacker = PGDAttacker(
        restarts=restarts,
        steps=steps,
        step_size=0.05,
        include_truthful=True,
        curve_restarts=[1, restarts],
        curve_steps=[0, 5, steps],
    )
    types = env.sample(profiles, torch.Generator().manual_seed(3))
    return evaluate_mechanism(
        mechanism,
        env,
        attacker,
        types,
        torch.Generator().manual_seed(4),
        wdp_instances=wdp_instances,
    )


def test_curve_rows_become_metrics_with_their_budget():
    env, mechanism = built("ca_fixed_alpha", "combinatorial/ca_2x3", "mechanism.learn_alpha=false")
    metrics, curve = _evaluate(mechanism, env)
    assert len(curve) == 6
    for row in curve:
        key = f"curve_r{int(row['restarts'])}_s{int(row['steps'])}_"
        assert metrics[key + "regret_mean"] == row["regret_mean"]
        assert metrics[key + "attack_restarts"] == row["restarts"]
        assert metrics[key + "attack_steps"] == row["steps"]
        assert metrics[key + "profiles"] == 64
    # pgd_* = the largest budget (the attack itself for a PGD attacker)
    assert metrics["pgd_attack_restarts"] == 2 and metrics["pgd_attack_steps"] == 10
    assert metrics["pgd_regret_mean"] == pytest.approx(metrics["regret_mean"], rel=1e-6)
    # pay-your-bid is manipulable; more budget finds at least as much
    assert 0 < metrics["curve_r1_s5_regret_mean"] <= metrics["pgd_regret_mean"]
    # a table may read them: each regret column has its own budget columns
    check_budget_columns(
        TableSpec(
            index=["mechanism"],
            columns={
                "weak": "evaluate.curve_r1_s5_regret_mean",
                "r": "evaluate.curve_r1_s5_attack_restarts",
                "s": "evaluate.curve_r1_s5_attack_steps",
                "p": "evaluate.curve_r1_s5_profiles",
            },
        )
    )


@pytest.mark.parametrize("eta", [0.0, 0.05])
def test_wdp_statistics_of_the_truthful_solve(eta):
    env, mechanism = built("ca_vcg", "combinatorial/ca_2x3", f"+mechanism.mip_rel_gap={eta}")
    metrics, _ = _evaluate(mechanism, env, profiles=200, wdp_instances=40)
    assert metrics["wdp_reference_instances"] == 200 and metrics["highs_instances"] == 40
    assert metrics["wdp_seconds_p50"] > 0 and metrics["highs_seconds_p50"] > 0
    assert metrics["highs_seconds_p50"] <= metrics["highs_seconds_p95"]
    assert metrics["highs_seconds_p95"] <= metrics["highs_seconds_p99"]
    assert metrics["wdp_gap_max"] <= eta + 1e-12 and metrics["highs_optimal_frac"] == 1.0
    if eta == 0:  # exact: nothing differs, VCG is truthful
        assert metrics["wdp_differs_frac"] == 0 and metrics["highs_differs_frac"] == 0
        assert metrics["wdp_score_ratio"] == pytest.approx(1.0)
        assert metrics["regret_mean"] < 1e-6
    else:  # the eta-optimal rule changes allocations, loses welfare and breaks DSIC
        assert metrics["wdp_differs_frac"] > 0
        assert 1 - eta <= metrics["wdp_score_ratio"] < 1
        assert metrics["regret_mean"] > 1e-4


def test_greedy_is_compared_with_highs_when_enumeration_is_too_large(monkeypatch):
    import auctionlab.evaluation

    # 3x6 with 16 bundles each has 715 allocations: past a limit of 100, HiGHS is the reference
    monkeypatch.setattr(auctionlab.evaluation, "REFERENCE_ALLOCATIONS", 100)
    env, mechanism = built(
        "ca_greedy_pab", "combinatorial/ca_3x10", "env.n_items=6", "env.bundles_per_bidder=10"
    )
    metrics, _ = _evaluate(mechanism, env, profiles=24, wdp_instances=12, restarts=1, steps=2)
    # too many allocations to enumerate: the reference is HiGHS on the re-solved instances
    assert metrics["wdp_reference_instances"] == 12 and metrics["highs_differs_frac"] == 0
    assert 0 < metrics["wdp_differs_frac"] <= 1 and metrics["wdp_score_ratio"] < 1
    assert "wdp_seconds_p50" not in metrics  # greedy solves no program
    scores = env.sample(24, torch.Generator().manual_seed(3)).values[:12].double()
    exact = HighsWDP(env.membership).solve(scores)
    with torch.no_grad():
        mechanism(scores.float())
    differs = (mechanism.last_wdp.choice != exact.choice).any(-1).double().mean()
    assert metrics["wdp_differs_frac"] == pytest.approx(float(differs))


def test_mechanisms_without_winner_determination_add_nothing():
    env, mechanism = built("vcg", "2x2")
    metrics, _ = _evaluate(mechanism, env, profiles=16)
    assert not any(k.startswith(("wdp_", "highs_")) for k in metrics)


@pytest.mark.parametrize("name", CA_EXPERIMENTS)
def test_ca_experiments_prepare(name):
    """Every point composes and builds; labels carry the swept options."""
    plan = prepare(_compose("reproduce", [f"experiment={name}", "scale=smoke"]))
    assert plan.points and plan.name == name
    if name == "ca_tolerance":
        gaps = {p.labels["mechanism.mip_rel_gap"] for p in plan.points}
        assert gaps == {"0.0", "0.001", "0.01", "0.05"}
    if name == "ca_stress":
        assert {p.labels["mechanism"] for p in plan.points} >= {"solver_backed", "ca_soft"}
