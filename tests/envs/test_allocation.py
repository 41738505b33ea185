"""Allocation env ([zeng2025rpf], eq. 1, 17, 18): sampling, report box, utility, metrics."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg
from hypothesis import given
from hypothesis import strategies as st

from auctionlab.components import build_env_and_mechanism
from auctionlab.envs.allocation import AllocationEnv, split_reports
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome


@pytest.mark.parametrize(
    ("option", "shape"), [("allocation/2x2", (2, 2)), ("allocation/10x3", (10, 3))]
)
def test_configs_build(option, shape):
    env, _ = build_env_and_mechanism(compose_cfg("evaluate", [f"env={option}", "mechanism=pf"]))
    assert env.family == "allocation" and (env.n_bidders, env.n_items) == shape
    types = env.sample(5, torch.Generator().manual_seed(0))
    assert types.values.shape == (5, shape[0], 2 * shape[1])
    assert torch.allclose(types.public["budgets"], torch.full((5, shape[1]), shape[0] / 2))


def test_eq17_marginals_and_resample_convention():
    env = AllocationEnv("t", 2, 2)
    values, demands = split_reports(env.sample(20000, torch.Generator().manual_seed(1)).values)
    assert values.min() >= 0.1 and values.max() <= 1.0
    assert abs(float(values.mean()) - 0.55) < 0.01
    positive = demands[demands > 0]
    assert positive.min() >= 0.1 and abs(float(positive.mean()) - 0.55) < 0.01
    assert (demands.sum(-1) > 0).all(), "resample: every agent demands something"
    # Conditioned on a non-empty row, P(x_im > 0) = 0.5 / (1 - 0.25) = 2/3 for m = 2.
    assert abs(float((demands > 0).float().mean()) - 2 / 3) < 0.01
    kept = AllocationEnv("t", 2, 2, empty_demand="keep")
    _, kept_demands = split_reports(kept.sample(20000, torch.Generator().manual_seed(1)).values)
    assert abs(float((kept_demands > 0).float().mean()) - 0.5) < 0.01
    assert abs(float((kept_demands.sum(-1) == 0).any(-1).float().mean()) - 0.4375) < 0.015


def test_cauchy_variant_stays_in_range():
    env = AllocationEnv("t", 2, 2, variant="cauchy")
    values, demands = split_reports(
        env.sample_training(4000, torch.Generator().manual_seed(2)).values
    )
    assert values.min() >= 0.1 and values.max() <= 1.0
    assert ((demands == 0) | ((demands >= 0.1) & (demands <= 1.0))).all()


@given(seed=st.integers(0, 2**31 - 1))
def test_utility_is_capped_linear(seed):
    env = AllocationEnv("t", 3, 2)
    g = torch.Generator().manual_seed(seed)
    types = env.sample(4, g)
    allocation = torch.rand(4, 3, 2, generator=g)
    v, x = split_reports(types.values)
    expected = (v * torch.minimum(allocation, x)).sum(-1)
    outcome = Outcome(allocation, torch.zeros(4, 3))
    torch.testing.assert_close(env.utility(outcome, types.values), expected)
    metrics = env.outcome_metrics(outcome, types)
    torch.testing.assert_close(metrics["nsw"], expected.prod(-1))
    torch.testing.assert_close(metrics["efficiency"], allocation.sum((-1, -2)) / 3.0)


def test_bad_arguments_name_the_option():
    with pytest.raises(ConfigError, match="env.empty_demand=drop"):
        AllocationEnv("t", 2, 2, empty_demand="drop")
    with pytest.raises(ConfigError, match="env.variant=noisy"):
        AllocationEnv("t", 2, 2, variant="noisy")
    with pytest.raises(ConfigError, match="env.objective=welfare .*log_nsw, nsw"):
        AllocationEnv("t", 2, 2, objective="welfare")


@pytest.mark.parametrize("objective", ["log_nsw", "nsw"])
def test_training_objective_option(objective):
    env, _ = build_env_and_mechanism(
        compose_cfg("train", ["mechanism=pf", "env=allocation/2x2", f"env.objective={objective}"])
    )
    types = env.sample(8, torch.Generator().manual_seed(0))
    v, x = split_reports(types.values)
    outcome = Outcome(0.5 * x, torch.zeros(8, 2))
    metrics = env.outcome_metrics(outcome, types)
    expected = metrics[objective].mean()
    assert env.objective_name == objective
    torch.testing.assert_close(env.objective(outcome, types), expected)
