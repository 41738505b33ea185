"""``env=ads_4x2``: contextual ad allocation and its total-variation fairness statistic."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from auctionlab.components import build_env_and_mechanism
from auctionlab.envs.contextual import ContextualAdEnv
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome, Types


def test_samples_are_values_in_the_box_with_a_public_context():
    env = ContextualAdEnv(n_bidders=4, n_items=3, context_dim=2)
    types = env.sample(256, torch.Generator().manual_seed(0))
    assert types.values.shape == (256, 4, 3) and types.public["context"].shape == (256, 2)
    assert types.values.min() >= 0 and types.values.max() <= 1
    # slot j's value is quality q_j times the advertiser's match: slot 0 is worth the most
    assert bool((types.values[..., 0] >= types.values[..., 1]).all())
    # classes value users differently (class means differ on feature 0)
    x0 = types.public["context"][:, 0]
    high = types.values[x0 > 0.7, :, 0].mean(0)
    low = types.values[x0 < 0.3, :, 0].mean(0)
    assert float((high - low)[1]) > 0 > float((high - low)[0])  # class 1 likes x0, class 0 not


def test_fairness_by_hand():
    env = ContextualAdEnv(
        n_bidders=4, n_items=1, n_classes=2, context_dim=1, fairness_lipschitz=1.0
    )
    # two users (one pair) at context distance 0.1: allowed disparity 0.1 per class
    context = torch.tensor([[0.2], [0.3]])
    allocation = torch.tensor([[[0.5], [0.1], [0.2], [0.1]], [[0.1], [0.1], [0.2], [0.5]]])
    outcome = Outcome(allocation, torch.zeros(2, 4))
    psi = env.fairness(outcome, Types(torch.zeros(2, 4, 1), {"context": context}))
    # class 0 = advertisers 0, 2: |0.4| + |0| = 0.4; class 1 = 1, 3: 0 + 0.4 = 0.4
    assert psi.shape == (1,)
    assert float(psi[0]) == pytest.approx((0.4 - 0.1) + (0.4 - 0.1))


def test_fairness_is_in_its_range_for_any_feasible_allocation():
    env = ContextualAdEnv()
    types = env.sample(64, torch.Generator().manual_seed(1))
    logits = torch.randn(64, env.n_bidders + 1, env.n_items) * 5
    allocation = torch.softmax(logits, dim=1)[:, :-1]
    psi = env.fairness(Outcome(allocation, torch.zeros(64, env.n_bidders)), types)
    assert psi.shape == (32,) and psi.min() >= 0 and psi.max() <= env.fairness_range


def test_the_certified_mechanism_reads_the_context_and_stays_equivariant():
    torch.manual_seed(0)
    env, mechanism = build_env_and_mechanism(
        compose_cfg("train", ["env=ads_4x2", "mechanism=certified_equivariant"])
    )
    mechanism.eval()
    types = env.sample(8, torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = mechanism(types.values, types.public)
        other = mechanism(types.values, {"context": 1 - types.public["context"]})
        perm = torch.tensor([2, 0, 3, 1])
        permuted = mechanism(types.values[:, perm], types.public)
    assert not torch.allclose(base.allocation, other.allocation)
    torch.testing.assert_close(permuted.allocation, base.allocation[:, perm])
    torch.testing.assert_close(permuted.payment, base.payment[:, perm])


def test_bad_options_fail_in_one_line():
    with pytest.raises(ConfigError, match="env.n_classes=5"):
        ContextualAdEnv(n_bidders=4, n_classes=5)
