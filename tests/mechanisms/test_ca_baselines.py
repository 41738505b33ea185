"""Combinatorial baselines ([lemma2026solver] §7.3, §4.5) and the hybrid attacker against them."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import compose_cfg

from auctionlab.attackers.hybrid import HybridAttacker
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.components import build_env_and_mechanism
from auctionlab.solvers.wdp import feasibility_violation


def built(mechanism: str, env: str = "ca_2x3", *overrides: str):
    cfg = compose_cfg(
        "evaluate", [f"mechanism={mechanism}", f"env=combinatorial/{env}", *overrides]
    )
    env, mech = build_env_and_mechanism(cfg)
    return env, mech.eval()


def attack(mechanism, env, profiles: int, attacker, seed: int = 0):
    types = env.sample(profiles, torch.Generator().manual_seed(seed))
    return attacker.attack(mechanism, env, types, torch.Generator().manual_seed(seed + 1))


def brute_force_vcg(bids: torch.Tensor, membership: torch.Tensor):
    """Welfare and Clarke payments by looping over every allocation (independent of the code)."""
    n, k, _ = membership.shape
    options = [[-1, *range(k)] for _ in range(n)]
    feasible = []
    for choice in itertools.product(*options):
        used = torch.zeros(membership.shape[-1], dtype=torch.long)
        for i, s in enumerate(choice):
            if s >= 0:
                used += membership[i, s].long()
        if int(used.max()) <= 1:
            feasible.append(choice)

    def value(choice, skip=None):
        return sum(float(bids[i, s]) for i, s in enumerate(choice) if s >= 0 and i != skip)

    best = max(feasible, key=value)
    payments = [max(value(c, i) for c in feasible) - value(best, i) for i in range(n)]
    return value(best), payments


def test_vcg_matches_a_brute_force_clarke_computation():
    env, vcg = built("ca_vcg")
    values = env.sample(30, torch.Generator().manual_seed(3)).values
    with torch.no_grad():
        outcome = vcg(values)
    for b in range(len(values)):
        welfare, payments = brute_force_vcg(values[b], env.membership)
        assert float((outcome.allocation[b] * values[b]).sum()) == pytest.approx(welfare, abs=1e-5)
        assert outcome.payment[b].tolist() == pytest.approx(payments, abs=1e-5)


@pytest.mark.parametrize("mechanism", ["ca_vcg", "ca_affine"])
def test_affine_maximisers_have_no_regret_under_the_hybrid_attacker(mechanism):
    env, mech = built(mechanism)
    result = attack(mech, env, 64, HybridAttacker(restarts=4, steps=30))
    assert float(result.gain.max()) <= 1e-4
    utility = result.truthful_utility
    assert float(utility.min()) >= -1e-6  # IR


def test_greedy_pay_as_bid_regret_is_large_and_found():
    env, greedy = built("ca_greedy_pab")
    hybrid = attack(greedy, env, 64, HybridAttacker(restarts=4, steps=30))
    pgd = attack(greedy, env, 64, PGDAttacker(restarts=4, steps=30, include_truthful=True))
    assert float(hybrid.gain.mean()) > 0.1  # pay-as-bid: shading always pays
    assert float(hybrid.gain.mean()) >= float(pgd.gain.mean()) - 1e-6


def test_item_prices_are_fitted_and_truthful():
    env, fitted = built("ca_item_prices")
    _, fixed = built("ca_item_prices", "ca_2x3", "mechanism.fit_samples=0")
    values = env.sample(4000, torch.Generator().manual_seed(5)).values
    with torch.no_grad():
        fitted_revenue = fitted(values).payment.sum(-1).mean()
        fixed_revenue = fixed(values).payment.sum(-1).mean()
    assert fitted_revenue > fixed_revenue
    result = attack(fitted, env, 64, HybridAttacker(restarts=2, steps=10))
    assert float(result.gain.max()) <= 1e-5


@pytest.mark.parametrize(
    "mechanism", ["ca_greedy_pab", "ca_fixed_alpha", "ca_vcg", "ca_affine", "ca_item_prices"]
)
def test_baselines_are_feasible_and_ir(mechanism):
    env, mech = built(mechanism, "ca_2x5")
    values = env.sample(20_000, torch.Generator().manual_seed(6)).values
    with torch.no_grad():
        outcome = mech(values)
    assert int((feasibility_violation(outcome.allocation, env.membership) != 0).sum()) == 0
    assert float(env.utility(outcome, values).min()) >= -1e-5


def test_fixed_alpha_learns_one_number():
    env, mech = built("ca_fixed_alpha")
    assert mech.learnable and sum(p.numel() for p in mech.parameters()) == 1
    assert 0 < float(mech.alpha.detach()) < 1
    _, fixed = built("ca_greedy_pab")
    assert not fixed.learnable and float(fixed.alpha) == 1.0
