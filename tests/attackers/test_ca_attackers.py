"""Hybrid stress test and cutting-plane witnesses on combinatorial mechanisms."""

from __future__ import annotations

import torch
from conftest import compose_cfg

from auctionlab.attackers.cutting_plane import CuttingPlaneAttacker
from auctionlab.attackers.hybrid import HybridAttacker
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.components import build_env_and_mechanism


def built(mechanism: str):
    cfg = compose_cfg("evaluate", [f"mechanism={mechanism}", "env=combinatorial/ca_2x3"])
    env, mech = build_env_and_mechanism(cfg)
    return env, mech.eval()


def test_hybrid_finds_at_least_what_its_pgd_phase_finds_and_logs_its_budget():
    env, mech = built("solver_backed")
    types = env.sample(48, torch.Generator().manual_seed(0))
    hybrid = HybridAttacker(restarts=3, steps=15, random_samples=64, local_samples=16)
    result = hybrid.attack(mech, env, types, torch.Generator().manual_seed(1))
    pgd = PGDAttacker(
        restarts=3, steps=15, step_size=0.05, final_step_size=0.001, include_truthful=True
    )
    alone = pgd.attack(mech, env, types, torch.Generator().manual_seed(1))
    assert (result.gain >= alone.gain - 1e-6).all()
    assert result.gain.sum() > alone.gain.sum()  # the gradient-free phases add something
    budget = result.budget
    assert budget["attacker"] == "hybrid" and budget["restarts"] == 3 and budget["steps"] == 15
    assert budget["random_samples"] == 64 and budget["coordinate_rounds"] == 2
    # the misreports it returns achieve the utilities it reports
    from auctionlab.attackers.base import deviation_utility

    with torch.no_grad():
        again = deviation_utility(mech, env, types, result.misreports[None])[0]
    assert torch.allclose(again, result.utility, atol=1e-5)


def test_cutting_plane_keeps_witnesses_and_returns_the_best():
    env, mech = built("ca_fixed_alpha")
    types = env.sample(32, torch.Generator().manual_seed(2))
    attacker = CuttingPlaneAttacker(
        restarts=2, steps=5, include_truthful=True, witnesses=3, refresh_every=2
    )
    generator = torch.Generator().manual_seed(3)
    utilities = []
    for _ in range(4):
        result = attacker.attack(mech, env, types, generator)
        utilities.append(result.utility)
    assert attacker.pool.shape[:2] == (32, 3) and len(attacker.keys) == 32
    assert int(attacker.filled.sum()) == 32 * 2  # refreshed on calls 1 and 3 only
    # the mechanism did not change, so the best witness can only improve
    assert (utilities[-1] >= utilities[0] - 1e-6).all()
    assert (result.gain >= 0).all() and result.budget["witnesses"] == 3
    # a new batch mixing seen and unseen profiles refreshes and grows the table
    fresh = env.sample(8, torch.Generator().manual_seed(4))
    mixed = type(types)(torch.cat([types.values[:8], fresh.values]))
    attacker.attack(mech, env, mixed, generator)
    assert len(attacker.keys) == 40 and bool(attacker.filled[:, 0].all())
