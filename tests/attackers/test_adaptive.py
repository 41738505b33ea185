"""The adaptive attacker: instance utilities, known regret, stopping, accounting, curve, config."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pgd import PostedPrice, Shading, WithFee

from auctionlab.attackers import AdaptiveAttacker, PGDAttacker, deviation_utility
from auctionlab.attackers.adaptive import instance_utility, project_instances
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Triangle, Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.classical import VCG
from auctionlab.mechanisms.regretnet import RegretNet


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def setup(n: int = 2, m: int = 2, batch: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    env = AuctionEnv(f"{n}x{m}", n, m, Uniform())
    return env, RegretNet(env, hidden=(16, 16)).eval(), env.sample(batch, gen(seed + 1))


def small(**kwargs) -> AdaptiveAttacker:
    knobs = dict(
        samples=32, coordinate_levels=5, starts=6, rounds=2, steps=8, keep=0.5, polish_starts=0
    )
    return AdaptiveAttacker(**{**knobs, **kwargs})


def instances(batch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(batch).repeat_interleave(n), torch.arange(n).repeat(batch)


@pytest.mark.parametrize(("n", "m", "demand"), [(2, 2, "additive"), (3, 2, "unit"), (1, 3, "unit")])
def test_instance_utility_equals_the_stacked_deviation_utility(n, m, demand):
    torch.manual_seed(0)
    env = AuctionEnv(f"{n}x{m}", n, m, Uniform(), demand=demand)
    mechanism = RegretNet(env, hidden=(8,)).eval()
    types = env.sample(5, gen(1))
    misreports = torch.rand(3, 5, n, m, generator=gen(2))
    stacked = deviation_utility(mechanism, env, types, misreports)  # [R, B, n]
    profile, bidder = instances(5, n)
    flat = instance_utility(mechanism, env, types, profile, bidder, misreports.view(3, 5 * n, m))
    torch.testing.assert_close(flat, stacked.reshape(3, 5 * n))
    # Any subset and order of instances gives the same numbers (the search drops instances).
    keep = torch.tensor([5 * n - 1, 0, 2])
    part = instance_utility(
        mechanism, env, types, profile[keep], bidder[keep], misreports.view(3, -1, m)[:, keep]
    )
    torch.testing.assert_close(part, stacked.reshape(3, -1)[:, keep])


def test_instance_utility_aligns_public_inputs():
    env, net, types = setup(batch=4)
    types.public["fee"] = torch.rand(4, 2, generator=gen(3))
    mechanism = WithFee(net)
    misreports = torch.rand(2, 4, 2, 2, generator=gen(4))
    profile, bidder = instances(4, 2)
    flat = instance_utility(mechanism, env, types, profile, bidder, misreports.view(2, 8, 2))
    torch.testing.assert_close(
        flat, deviation_utility(mechanism, env, types, misreports).reshape(2, 8)
    )


def test_projection_uses_the_report_space_of_whole_profiles():
    # The triangle's support is not a box: a report is projected onto the triangle, not clamped.
    env = AuctionEnv("1x2_triangle", 1, 2, Triangle())
    types = env.sample(3, gen(0))
    profile, bidder = instances(3, 1)
    outside = torch.full((1, 3, 2), 5.0)
    projected = project_instances(env, types, profile, bidder, outside)
    torch.testing.assert_close(
        projected, env.report_space.project(outside.view(1, 3, 1, 2)).view(1, 3, 2)
    )


def test_finds_the_known_regret_of_bid_shading():
    env = AuctionEnv("2x3", 2, 3, Uniform())
    types = env.sample(40, gen(5))
    result = AdaptiveAttacker(samples=64, starts=8, rounds=2, steps=40).attack(
        Shading(), env, types, gen(6)
    )
    expected = (types.values**2).sum(-1) / 8
    torch.testing.assert_close(result.gain, expected, atol=2e-4, rtol=0)


def test_gradient_free_stages_find_a_posted_price_gain_pgd_from_truth_cannot():
    # Piecewise constant: no gradient anywhere, so only the sweep and the coordinate search move.
    env = AuctionEnv("1x2", 1, 2, Uniform())
    types = env.sample(30, gen(7))
    mechanism = PostedPrice(0.5)
    truthful_start = PGDAttacker(restarts=1, steps=20, include_truthful=True)
    assert float(truthful_start.attack(mechanism, env, types, gen(8)).gain.max()) == 0.0
    # A bidder valuing an item below the price cannot gain; above it, truth is optimal too:
    # posted prices are truthful, so the adaptive search must report zero regret as well.
    assert float(small().attack(mechanism, env, types, gen(8)).gain.max()) == 0.0


def test_never_below_pgd_from_the_same_truthful_start_with_its_budget():
    env, mechanism, types = setup(batch=16)
    adaptive = small(starts=4, rounds=1, steps=30, keep=1.0, stall_tolerance=0.0)
    pgd = PGDAttacker(
        restarts=1, steps=30, step_size=0.05, final_step_size=0.001, include_truthful=True
    )
    a = adaptive.attack(mechanism, env, types, gen(9)).utility
    p = pgd.attack(mechanism, env, types, gen(9)).utility
    # The truthful start follows the same Adam path (same step sizes), the rest only adds.
    assert bool((a >= p - 1e-6).all())


def test_truthful_mechanism_stops_every_instance_at_the_first_check():
    env = AuctionEnv("2x2", 2, 2, Uniform())
    types = env.sample(10, gen(10))
    attacker = small(check_every=4)
    result = attacker.attack(VCG(env), env, types, gen(11))
    assert float(result.gain.max()) <= 1e-6
    # Every instance: sweep (32 + truthful) + coordinate search (2 x 5) + 6 starts x 4 steps.
    per_instance = 33 + 2 * 5 + 6 * 4
    assert result.budget["deviation_steps"] == per_instance * 10 * 2
    assert per_instance < attacker.max_deviation_steps(2)


@settings(max_examples=12, deadline=None)
@given(
    samples=st.integers(0, 20),
    starts=st.integers(1, 5),
    rounds=st.integers(0, 3),
    steps=st.integers(1, 6),
    keep=st.sampled_from([0.25, 0.5, 1.0]),
    chunk=st.sampled_from([None, 5]),
    polish=st.sampled_from([0, 1, 3]),
)
def test_accounting_curve_and_result_invariants(  # noqa: PLR0913 - one per knob
    samples, starts, rounds, steps, keep, chunk, polish
):
    env, mechanism, types = setup(batch=11)
    attacker = AdaptiveAttacker(
        samples=samples,
        coordinate_levels=3,
        starts=starts,
        rounds=rounds,
        steps=steps,
        keep=keep,
        chunk_size=chunk,
        polish_starts=polish,
        polish_steps=4,
    )
    result = attacker.attack(mechanism, env, types, gen(12))
    spent = result.budget["deviation_steps"]
    assert 0 < spent <= attacker.max_deviation_steps(2) * 11 * 2
    # Never below the truthful report (a candidate of the sweep), misreports in the box.
    assert bool((result.utility >= result.truthful_utility - 1e-6).all())
    assert bool(((result.misreports >= 0) & (result.misreports <= 1)).all())
    torch.testing.assert_close(
        deviation_utility(mechanism, env, types, result.misreports.unsqueeze(0))[0],
        result.utility,
    )
    # The curve: one point after the sweep, one per round and one after the polish; regret and
    # cost only grow, and its last point is the result.
    keys = sorted(result.curve, key=lambda k: k[1])
    assert len(keys) == 1 + rounds + (1 if polish else 0)
    means = [float(result.curve[k].mean()) for k in keys]
    costs = [result.curve_cost[k] for k in keys]
    assert means == sorted(means) and costs == sorted(costs)
    torch.testing.assert_close(result.curve[keys[-1]], result.gain)
    assert costs[-1] == pytest.approx(spent / (11 * 2))


def test_successive_halving_schedule_and_budget():
    attacker = AdaptiveAttacker(samples=512, coordinate_levels=21, starts=32, rounds=3, steps=40)
    assert attacker.round_steps() == [40, 160, 640]
    assert attacker.round_starts() == [32, 8, 2]
    # With its polish (8 x 200), no instance stopping early: 1/16 of PGD 100 x 1000's 100100
    # deviation-steps per instance; stall stopping brings the spent figure below 1/20 on every
    # net measured (bench_attack reports it).
    assert attacker.max_deviation_steps(2) == 513 + 2 * 21 + 32 * 40 * 3 + 32 + 8 * 201
    assert attacker.max_deviation_steps(10) <= 100 * 1001 / 16
    budget = attacker.budget
    assert budget["attacker"] == "adaptive" and budget["round_steps"] == [40, 160, 640]
    assert budget["polish_starts"] == 8 and budget["polish_steps"] == 200
    assert "32x40" in attacker.describe() and "polish 8x200" in attacker.describe()
    assert "polish" not in AdaptiveAttacker(polish_starts=0).describe()


def test_polish_never_loses_and_moves_a_coarse_incumbent_to_the_optimum():
    env = AuctionEnv("2x3", 2, 3, Uniform())
    types = env.sample(24, gen(5))
    coarse = dict(samples=8, coordinate_rounds=0, starts=2, rounds=1, steps=2, stall_tolerance=0)
    plain = AdaptiveAttacker(**coarse, polish_starts=0).attack(Shading(), env, types, gen(13))
    polished = AdaptiveAttacker(**coarse, polish_starts=8, polish_steps=100).attack(
        Shading(), env, types, gen(13)
    )
    # Same search up to the polish (same generator draws), then only improvements are kept.
    assert bool((polished.utility >= plain.utility - 1e-7).all())
    expected = (types.values**2).sum(-1) / 8  # the best misreport's gain (Shading)
    plain_gap, polished_gap = expected - plain.gain, expected - polished.gain
    assert float(plain_gap.max()) > 1e-3
    # A local stage: within its reach (a step of 0.01 decaying to 1e-4 of the range over 100
    # steps), it closes most of the gap.
    assert float(polished_gap.mean()) < 0.25 * float(plain_gap.mean())
    assert bool((polished_gap <= plain_gap + 1e-7).all())
    spent = polished.budget["deviation_steps"] - plain.budget["deviation_steps"]
    assert spent == 8 * 101 * 24 * 2


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("samples", -1),
        ("starts", 0),
        ("steps", 0),
        ("keep", 0.0),
        ("keep", 1.5),
        ("coordinate_levels", 1),
        ("stall_tolerance", -1.0),
        ("check_every", 0),
        ("polish_starts", -1),
        ("polish_steps", 0),
        ("polish_step_size", 0.0),
        ("polish_final_step_size", -1.0),
    ],
)
def test_bad_knobs_name_the_option(knob, value):
    with pytest.raises(ConfigError, match=f"attacker.{knob}"):
        AdaptiveAttacker(**{knob: value})
