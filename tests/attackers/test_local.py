"""Local regret ([okada2025lic]): one step from the truth, and the reverse LIC condition."""

from __future__ import annotations

import torch
from conftest import compose_cfg

from auctionlab.attackers import (
    LocalAttacker,
    PGDAttacker,
    reverse_lic_search,
    reverse_lic_violation,
)
from auctionlab.components import build, build_env_and_mechanism
from auctionlab.evaluation import evaluate_mechanism
from auctionlab.training import RegretBudget, Trainer


def _pair(mechanism: str, env: str = "2x2"):
    return build_env_and_mechanism(
        compose_cfg("evaluate", [f"mechanism={mechanism}", f"env={env}"])
    )


def test_config_builds_one_step_from_truth():
    attacker = build(compose_cfg("train", ["attacker=local"]).attacker, "attacker")
    assert isinstance(attacker, LocalAttacker)
    assert attacker.budget["restarts"] == 1 and attacker.budget["steps"] == 1
    assert attacker.budget["attacker"] == "local"


def test_starts_at_the_truth_and_ignores_cached_starts():
    env, mechanism = _pair("first_price")
    types = env.sample(32, torch.Generator().manual_seed(0))
    attacker = LocalAttacker(steps=0)
    cached = torch.rand(1, 32, 2, 2)
    result = attacker.attack(mechanism, env, types, torch.Generator(), init=cached)
    torch.testing.assert_close(result.misreports, types.values)
    assert float(result.gain.max()) == 0.0


def test_finds_first_price_shading_but_less_than_global_search():
    # First price: shading the bid raises utility, so one step from the truth gains.
    env, mechanism = _pair("first_price")
    types = env.sample(256, torch.Generator().manual_seed(1))
    local = LocalAttacker(steps=1, step_size=0.05).attack(mechanism, env, types, torch.Generator())
    strong = PGDAttacker(restarts=8, steps=100, step_size=0.05, include_truthful=True).attack(
        mechanism, env, types, torch.Generator().manual_seed(2)
    )
    assert float(local.gain.mean()) > 0.0
    assert float(local.gain.mean()) <= float(strong.gain.mean()) + 1e-6


def test_reverse_condition_holds_for_vcg_and_fails_for_first_price():
    env, vcg = _pair("vcg")
    types = env.sample(256, torch.Generator().manual_seed(3))
    nearby = env.report_space.project(types.values + 0.05 * torch.randn(256, 2, 2))
    assert float(reverse_lic_violation(vcg, env, types, nearby).max()) <= 1e-6
    _, first_price = _pair("first_price")
    # A lower type b_i < v_i would rather report v_i? No: but a higher nearby type wins more
    # cheaply at its own report; the reverse check must notice the asymmetry somewhere.
    assert float(reverse_lic_violation(first_price, env, types, nearby).max()) > 0.0


def test_evaluation_reports_lic_metrics_with_their_budget():
    env, vcg = _pair("vcg")
    types = env.sample(64, torch.Generator().manual_seed(4))
    attacker = PGDAttacker(restarts=2, steps=5, include_truthful=True)
    metrics, _ = evaluate_mechanism(vcg, env, attacker, types, torch.Generator())
    assert metrics["local_attack_steps"] == 1 and metrics["local_attack_step_size"] == 0.1
    assert metrics["local_regret_mean"] <= 1e-6 and metrics["lic_reverse_violation_max"] <= 1e-6


def test_trainer_keeps_no_cache_for_local_attacks():
    env, mechanism = build_env_and_mechanism(compose_cfg("train", ["env=1x2"]))
    trainer = Trainer(
        mechanism,
        env,
        LocalAttacker(),
        RegretBudget(),
        iterations=3,
        batch_size=16,
        num_samples=64,
    )
    assert trainer.cache is None
    trainer.fit()
    assert trainer.iteration == 3


def test_training_path_returns_the_step_the_evaluation_path_takes():
    env, mechanism = _pair("regretnet")
    types = env.sample(128, torch.Generator().manual_seed(5))
    attacker = LocalAttacker(steps=1, step_size=0.1)
    fast = attacker.attack(mechanism, env, types, torch.Generator(), truthful=False).misreports
    full = attacker.attack(mechanism, env, types, torch.Generator())
    moved = full.gain > 0  # where the step beat the truth, the best iterate is the step
    assert bool(moved.any())
    torch.testing.assert_close(fast[moved], full.misreports[moved])


def test_reverse_search_finds_first_price_violations_and_none_for_vcg():
    env, vcg = _pair("vcg")
    types = env.sample(256, torch.Generator().manual_seed(6))
    assert float(reverse_lic_search(vcg, env, types, steps=1, step_size=0.05).max()) <= 1e-6
    _, first_price = _pair("first_price")
    found = reverse_lic_search(first_price, env, types, steps=1, step_size=0.05)
    # A slightly higher type would rather pay the truthful (lower) first-price bid.
    assert float(found.mean()) > 0.0
    nearby = env.report_space.project(types.values + 0.05 * torch.randn(256, 2, 2))
    assert float(found.mean()) >= float(
        reverse_lic_violation(first_price, env, types, nearby).mean()
    )


def test_uniform_radius_steps_inside_the_neighbourhood():
    # Training path: one Adam step moves each coordinate by exactly step_size (fixed) or by
    # one length per bidder drawn in (0, step_size] (uniform).
    env, mechanism = _pair("first_price")
    types = env.sample(512, torch.Generator().manual_seed(4))
    moved = {}
    for radius in ("fixed", "uniform"):
        attacker = LocalAttacker(steps=1, step_size=0.1, radius=radius)
        assert attacker.budget["radius"] == radius
        result = attacker.attack(
            mechanism, env, types, torch.Generator().manual_seed(5), truthful=False
        )
        moved[radius] = (result.misreports - types.values).abs().amax(-1)
    assert float(moved["fixed"].max()) <= 0.1 + 1e-6
    assert float(moved["uniform"].max()) <= 0.1 + 1e-6
    # Away from the report-space boundary the fixed step has full length; uniform ones vary.
    assert float(moved["uniform"].std()) > 0.01
    assert float(moved["uniform"].mean()) < float(moved["fixed"].mean()) - 0.02


def test_unknown_radius_is_a_config_error():
    import pytest

    from auctionlab.errors import ConfigError

    with pytest.raises(ConfigError, match="attacker.radius"):
        LocalAttacker(radius="gaussian")


def test_two_sided_training_regret_adds_the_reverse_condition():
    import copy

    env, mechanism = _pair("regretnet")
    # At the ascent step of an untrained net the reverse condition holds; after some
    # training on local regret it is violated on part of the batch.
    warmup = Trainer(
        mechanism,
        env,
        LocalAttacker(steps=3, step_size=0.1),
        RegretBudget(),
        iterations=300,
        batch_size=128,
        progress=False,
        seed=0,
    )
    warmup.fit()
    types = env.sample(512, torch.Generator().manual_seed(7))
    step = LocalAttacker(steps=3, step_size=0.1).attack(
        mechanism, env, types, torch.Generator(), truthful=False
    )
    assert float(reverse_lic_violation(mechanism, env, types, step.misreports).mean()) > 0.0
    regrets = {}
    for two_sided in (False, True):
        attacker = LocalAttacker(steps=3, step_size=0.1, two_sided=two_sided)
        assert attacker.budget.get("two_sided", False) is two_sided
        trainer = Trainer(
            copy.deepcopy(mechanism),
            env,
            attacker,
            RegretBudget(),
            iterations=1,
            batch_size=512,
            progress=False,
            seed=3,
        )
        regrets[two_sided] = trainer.step()["regret"]
    # Same batch, same misreports: the reverse violations come on top.
    assert regrets[True] > regrets[False] >= 0.0
