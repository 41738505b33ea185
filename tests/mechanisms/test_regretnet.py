"""RegretNet: feasibility and IR hold by construction for any report in the report space."""

from __future__ import annotations

import pytest
import torch
from conftest import env_names, env_node
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st

from auctionlab.conf import CONF_DIR
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.regretnet import RegretNet

CONF = CONF_DIR
ENV_NAMES = env_names("auction")
#: A spread of shapes, demands and supports (bounded, unbounded, correlated).
PROPERTY_ENVS = ["1x2", "2x2_unit", "3x1_exp", "1x2_triangle", "2x3", "1x2_asym"]


def make(env_name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    env = instantiate(env_node(env_name))
    return env, RegretNet(env, hidden=kwargs.pop("hidden", (32, 32)), **kwargs).eval()


def check_feasible_and_ir(env, net, reports: torch.Tensor) -> None:
    with torch.no_grad():
        outcome = net(reports)
    a, p = outcome.allocation, outcome.payment
    B, n, m = reports.shape
    assert a.shape == (B, n, m) and p.shape == (B, n)
    assert torch.isfinite(a).all() and torch.isfinite(p).all()
    assert (a >= 0).all() and (a <= 1).all()
    assert (a.sum(1) <= 1 + 1e-6).all(), "an item's column sum exceeds one"
    if env.demand == "unit":
        assert (a.sum(2) <= 1 + 1e-6).all(), "a unit-demand row sum exceeds one"
    assert (p >= 0).all()
    # the payment never exceeds the reported value of the allocation: truthful utility >= 0
    assert (env.utility(outcome, reports) >= -1e-6).all()


@pytest.mark.parametrize("env_name", PROPERTY_ENVS)
def test_feasible_and_ir_on_random_reports(env_name):
    env, net = make(env_name, hidden=(16, 16))
    n, m = env.shape

    @settings(max_examples=30, deadline=None)
    @given(
        st.integers(0, 2**31 - 1),
        st.sampled_from(["tanh", "relu"]),
        st.floats(0.1, 30.0),
    )
    def check(seed, activation, weight_scale):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = RegretNet(env, hidden=(16, 16), activation=activation)
        with torch.no_grad():  # extreme weights push the softmax heads to saturation
            for param in model.parameters():
                param.mul_(weight_scale)
        raw = torch.randn(16, n, m, generator=g) * 5 * env.report_space.width("cpu")
        reports = env.report_space.project(raw + env.report_space.low)
        check_feasible_and_ir(env, model.eval(), reports)
        check_feasible_and_ir(env, model, env.sample(16, g).values)

    check()
    assert net.learnable


@pytest.mark.parametrize("env_name", ENV_NAMES)
def test_every_env_feasible(env_name):
    env, net = make(env_name)
    check_feasible_and_ir(env, net, env.sample(64, torch.Generator().manual_seed(1)).values)


def test_payment_is_fraction_of_reported_value():
    env, net = make("2x2")
    reports = env.sample(32, torch.Generator().manual_seed(2)).values
    with torch.no_grad():
        outcome = net(reports)
        x = (reports.reshape(32, -1) - net.input_shift) * net.input_scale
        fraction = torch.sigmoid(net.payment_net(x))
    expected = fraction * (outcome.allocation * reports).sum(-1)
    assert torch.allclose(outcome.payment, expected, atol=1e-6)


def test_unit_demand_head_is_min_of_two_softmaxes():
    env, net = make("2x2_unit")
    assert net.allocation_net[-1].out_features == 3 * 2 + 2 * 3
    reports = env.sample(8, torch.Generator().manual_seed(3)).values
    with torch.no_grad():
        logits = net.allocation_net((reports.reshape(8, -1) - net.input_shift) * net.input_scale)
        per_item = torch.softmax(logits[:, :6].view(8, 3, 2), 1)[:, :-1]
        per_bidder = torch.softmax(logits[:, 6:].view(8, 2, 3), 2)[..., :-1]
        assert torch.allclose(net(reports).allocation, torch.minimum(per_item, per_bidder))


def test_normalized_inputs_scale_the_report_box():
    env, net = make("1x2_asym")
    assert torch.allclose(net.input_shift, torch.tensor([4.0, 4.0]))
    assert torch.allclose(net.input_scale, torch.tensor([1 / 12, 1 / 3]))
    _, raw = make("1x2_asym", normalize_inputs=False)
    assert torch.equal(raw.input_shift, torch.zeros(2))
    assert torch.equal(raw.input_scale, torch.ones(2))
    _, exp = make("3x1_exp")  # unbounded coordinates are left as they are
    assert torch.equal(exp.input_scale, torch.ones(3))


def test_batched_forward_equals_per_profile():
    env, net = make("2x3")
    reports = env.sample(5, torch.Generator().manual_seed(4)).values
    with torch.no_grad():
        whole = net(reports)
        for b in range(5):
            single = net(reports[b : b + 1])
            assert torch.allclose(single.allocation[0], whole.allocation[b], atol=1e-6)
            assert torch.allclose(single.payment[0], whole.payment[b], atol=1e-6)


def test_bad_activation_is_config_error():
    env = AuctionEnv("1x1", 1, 1, Uniform())
    with pytest.raises(ConfigError, match="activation"):
        RegretNet(env, activation="sigmoidish")
