"""``env=procurement/vd_3x2``: volume-discount procurement ([lemma2026certified] §9 iii)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from auctionlab.certify.statistical import ir_range, regret_range
from auctionlab.components import build_env_and_mechanism
from auctionlab.envs.procurement import ProcurementEnv
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types


def test_costs_utility_objective_and_diversification_by_hand():
    env = ProcurementEnv(n_bidders=2, n_items=2, discount=0.5, shortfall_cost=3.0)
    costs = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    allocation = torch.tensor([[[1.0, 0.5], [0.0, 0.25]]])
    payment = torch.tensor([[0.6, 0.3]])
    outcome = Outcome(allocation, payment)
    # supplier 0: base cost 0.2 + 0.2 = 0.4, volume 1.5 of 2 -> discount 1 - 0.5 * 0.75
    # supplier 1: base cost 0.2, volume 0.25 -> 1 - 0.5 * 0.125
    expected_cost = torch.tensor([[0.4 * 0.625, 0.2 * 0.9375]])
    torch.testing.assert_close(env.cost(allocation, costs), expected_cost)
    torch.testing.assert_close(env.utility(outcome, costs), payment - expected_cost)
    # unit 0 fully bought, unit 1 short by 0.25: cost 0.9 + 3 * 0.25
    assert float(env.objective(outcome, Types(costs))) == pytest.approx(-(0.9 + 0.75))
    shares = torch.tensor([1.5, 0.25]) / 1.75
    hhi = float((shares**2).sum()) - 0.5
    assert float(env.fairness(outcome, Types(costs))[0]) == pytest.approx(hhi)


def test_certificate_ranges_bound_the_statistics():
    env, mechanism = build_env_and_mechanism(
        compose_cfg("train", ["env=procurement/vd_3x2", "mechanism=certified_equivariant"])
    )
    assert env.family == "procurement" and mechanism.payment_bound == pytest.approx(2.0)
    assert regret_range(mechanism, env) == pytest.approx(4.0)  # cap 2 + largest cost 2
    assert ir_range(mechanism, env) == pytest.approx(2.0)
    types = env.sample(512, torch.Generator().manual_seed(0))
    with torch.no_grad():
        outcome = mechanism(types.values)
    utility = env.utility(outcome, types.values)
    assert (-utility).clamp_min(0).max() <= ir_range(mechanism, env)
    assert env.fairness(outcome, types).max() <= env.fairness_range


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mechanism=certified_equivariant", "mechanism.payment=fractional"], "procurement"),
        (["mechanism=regretnet"], "solves 'auction' problems"),
        (["mechanism=first_price"], "solves 'auction' problems"),
    ],
)
def test_auction_rules_refuse_procurement_in_one_line(overrides, message):
    cfg = compose_cfg("evaluate", ["env=procurement/vd_3x2", *overrides])
    with pytest.raises(ConfigError, match=message) as err:
        build_env_and_mechanism(cfg)
    assert "\n" not in str(err.value)


def test_bad_options_fail_in_one_line():
    with pytest.raises(ConfigError, match="env.discount=1.5"):
        ProcurementEnv(discount=1.5)
    with pytest.raises(ConfigError, match="env.shortfall_cost=0.5"):
        ProcurementEnv(shortfall_cost=0.5)
