"""RochetNet: the bidder gets its best menu entry (DSIC) and never pays to lose (IR)."""

from __future__ import annotations

import pytest
import torch
from conftest import env_node
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st

from auctionlab.attackers import PGDAttacker
from auctionlab.conf import CONF_DIR
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.rochetnet import RochetNet

CONF = CONF_DIR
ONE_BIDDER = ["1x2", "1x2_unit", "1x2_unit_23", "1x2_triangle", "1x2_asym", "1x10"]


def make_env(name: str):
    return instantiate(env_node(name))


@pytest.mark.parametrize("env_name", ONE_BIDDER)
def test_argmax_menu_is_dsic_and_ir(env_name):
    env = make_env(env_name)
    m = env.n_items

    @settings(max_examples=30, deadline=None)
    @given(st.integers(0, 2**31 - 1), st.integers(1, 50))
    def check(seed, menu_size):
        g = torch.Generator().manual_seed(seed)
        net = RochetNet(env, menu_size=menu_size).eval()
        with torch.no_grad():  # a random menu, not the deterministic initial one
            net.allocation_logits.normal_(0, 3, generator=g)
            net.prices.uniform_(0, float(env.report_space.high.sum()), generator=g)
            allocations, prices = net.menu()
            values = env.sample(32, g).values
            outcome = net(values)
            menu_utility = values[:, 0, :] @ allocations.T - prices  # [B, K+1]
            utility = env.utility(outcome, values)[:, 0]
        assert allocations.shape == (menu_size + 1, m)
        assert (allocations >= 0).all() and (allocations <= 1).all()
        if env.demand == "unit":
            assert (allocations.sum(-1) <= 1 + 1e-6).all()
        assert torch.equal(allocations[-1], torch.zeros(m)) and float(prices[-1]) == 0.0
        # the chosen entry is one of the menu's, and the best one for the bidder
        assert torch.allclose(utility, menu_utility.max(-1).values, atol=1e-5)
        assert (utility >= -1e-6).all()
        # any misreport picks some menu entry, hence cannot beat the truthful choice
        fake = env.report_space.draw(32, g)
        lie = env.utility(net(fake), values)[:, 0]
        assert (lie <= utility + 1e-5).all()

    check()


def test_training_mode_is_a_softmax_relaxation():
    env = make_env("1x2")
    net = RochetNet(env, menu_size=20, inverse_temperature=5.0)
    values = env.sample(8, torch.Generator().manual_seed(0)).values
    allocations, prices = net.menu()
    weights = torch.softmax((values[:, 0] @ allocations.T - prices) * 5.0, -1)
    outcome = net.train()(values)
    assert torch.allclose(outcome.allocation[:, 0], weights @ allocations, atol=1e-6)
    assert torch.allclose(outcome.payment[:, 0], weights @ prices, atol=1e-6)
    outcome.payment.sum().backward()
    assert net.prices.grad is not None and net.allocation_logits.grad is not None


def test_attacker_finds_no_regret():
    """The argmax menu needs grad through its parameters, not the reports: PGD must cope."""
    env = make_env("1x2")
    net = RochetNet(env, menu_size=50).eval()
    types = env.sample(64, torch.Generator().manual_seed(1))
    attacker = PGDAttacker(restarts=4, steps=10, include_truthful=True)
    result = attacker.attack(net, env, types, torch.Generator().manual_seed(2))
    assert float(result.gain.max()) <= 1e-5


@pytest.mark.parametrize("env_name", ["2x2", "3x1", "2x2_unit"])
def test_needs_one_bidder(env_name):
    with pytest.raises(ConfigError, match="one bidder"):
        RochetNet(make_env(env_name))


def test_menu_size_must_be_positive():
    with pytest.raises(ConfigError, match="menu_size"):
        RochetNet(make_env("1x2"), menu_size=0)
