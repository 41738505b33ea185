"""EquivariantNet and RegretFormer: exact permutation equivariance for any n x m."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg
from hypothesis import given, settings
from hypothesis import strategies as st

from auctionlab.components import build_env_and_mechanism
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.mechanisms import EquivariantNet, RegretFormer

MECHANISMS = {"equivariant_net": EquivariantNet, "regretformer": RegretFormer}


@pytest.mark.parametrize("name", list(MECHANISMS))
@pytest.mark.parametrize("env", ["2x2", "2x2_unit", "3x10", "1x2_asym"])
def test_builds_from_config_and_is_feasible(name, env):
    environment, mechanism = build_env_and_mechanism(
        compose_cfg("train", [f"mechanism={name}", f"env={env}"])
    )
    values = environment.sample(64, torch.Generator().manual_seed(0)).values
    outcome = mechanism(values)
    assert outcome.allocation.shape == values.shape and outcome.payment.shape == values.shape[:2]
    assert (outcome.allocation.sum(1) <= 1 + 1e-6).all()
    utility = environment.utility(outcome, values)
    assert utility.min() >= -1e-6  # IR by construction


@pytest.mark.parametrize("name", list(MECHANISMS))
@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 4),
    m=st.integers(1, 5),
    unit=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_permuting_bidders_and_items_permutes_the_outcome(name, n, m, unit, seed):
    env = AuctionEnv(f"{n}x{m}", n, m, Uniform(), demand="unit" if unit else "additive")
    torch.manual_seed(seed)
    mechanism = MECHANISMS[name](env).double().eval()
    generator = torch.Generator().manual_seed(seed)
    reports = torch.rand(8, n, m, generator=generator, dtype=torch.float64)
    bidders = torch.randperm(n, generator=generator)
    items = torch.randperm(m, generator=generator)
    with torch.no_grad():
        base = mechanism(reports)
        moved = mechanism(reports[:, bidders][:, :, items])
    torch.testing.assert_close(
        moved.allocation, base.allocation[:, bidders][:, :, items], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(moved.payment, base.payment[:, bidders], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(MECHANISMS))
def test_one_network_serves_other_market_sizes(name):
    small = AuctionEnv("2x2", 2, 2, Uniform())
    large = AuctionEnv("3x5", 3, 5, Uniform())
    mechanism = MECHANISMS[name](small)
    outcome = mechanism(torch.rand(4, 3, 5))  # same weights, a larger market
    assert outcome.allocation.shape == (4, 3, 5)
    assert (outcome.allocation.sum(1) <= 1 + 1e-6).all()
    assert large.n_items == 5
