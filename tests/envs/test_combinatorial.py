"""Combinatorial envs ([lemma2026solver] §7.1, RegretNet's 2x2 bundle settings), from conf/."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from auctionlab.components import build
from auctionlab.envs.combinatorial import CombinatorialEnv, bundle_language
from auctionlab.errors import ConfigError

SETTINGS = ["ca_2x2", "ca_2x3", "ca_2x5", "ca_2x2_sym", "ca_2x2_asym", "ca_3x10"]


def env_of(name: str) -> CombinatorialEnv:
    return build(compose_cfg("evaluate", [f"env=combinatorial/{name}"]).env, "env")


@pytest.mark.parametrize("name", SETTINGS)
def test_values_lie_in_the_report_box(name):
    env = env_of(name)
    values = env.sample(20_000, torch.Generator().manual_seed(0)).values
    assert values.shape == (20_000, env.n_bidders, env.n_bundles) and env.n_items == env.n_bundles
    low, high = env.report_space.low, env.report_space.high
    assert (values >= low).all() and (values <= high).all() and (values >= 0).all()
    assert (values <= env.v_max).all()
    assert torch.equal(env.report_space.project(values), values)


def test_powerset_order_and_names():
    membership = bundle_language(2, 3)
    assert membership.shape == (2, 7, 3)
    env = env_of("ca_2x3")
    assert env.bundle_names[0] == ["0", "1", "2", "0_1", "0_2", "1_2", "0_1_2"]
    assert env.n_goods == 3 and env.n_bundles == 7


def test_additive_with_synergies_and_single_minded_bidders():
    env = env_of("ca_2x3")  # U[0,1] items, synergy 0.25, single-minded with probability 0.2
    values = env.sample(50_000, torch.Generator().manual_seed(1)).values
    singles, grand = values[..., :3], values[..., 6]
    single_minded = (singles == 0).all(-1) & (grand > 0)  # a target of >= 2 items, no singles
    share = single_minded.float().mean()
    assert 0.17 < share < 0.23
    additive = ~single_minded & (grand < env.v_max)
    gap = grand[additive] - singles[additive].sum(-1)  # the three pairwise synergies
    assert gap.abs().max() <= 3 * 0.25 + 1e-5 and gap.abs().mean() > 0.05
    # a single-minded bidder values every superset of its target the same
    supersets = values[single_minded]
    assert (supersets[:, 6] >= supersets[:, 3:6].max(-1).values - 1e-6).all()


def test_regretnet_bundle_settings():
    sym = env_of("ca_2x2_sym").sample(20_000, torch.Generator().manual_seed(2)).values
    complement = sym[..., 2] - sym[..., 0] - sym[..., 1]
    assert (sym[..., :2] >= 1).all() and (sym[..., :2] <= 2).all()
    assert complement.min() >= -1 - 1e-5 and complement.max() <= 1 + 1e-5
    assert abs(float(complement.mean())) < 0.02
    asym = env_of("ca_2x2_asym").sample(20_000, torch.Generator().manual_seed(3)).values
    assert asym[:, 0, :2].max() <= 2 and asym[:, 1, :2].max() > 4.5
    assert asym[:, 1, 2].min() >= 0  # v1 + v2 + C2 truncated at 0


def test_sampled_language_differs_per_bidder():
    env = env_of("ca_3x10")
    assert env.membership.shape == (3, 30, 10)
    assert (env.membership[:, :10].sum(-1) == 1).all()  # singletons first
    sizes = env.membership[:, 10:].sum(-1)
    assert (sizes >= 2).all() and (sizes <= 4).all()
    assert not torch.equal(env.membership[0], env.membership[1])


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"language": "all"}, ["env.language=all", "powerset"]),
        ({"synergy": -1.0}, ["env.synergy"]),
        ({"base_low": 2.0}, ["base_low"]),
        ({"single_minded_prob": 2.0}, ["single_minded_prob"]),
        ({"language": "sampled", "bundles_per_bidder": 0}, ["bundles_per_bidder"]),
        ({"base_high": [1.0, 2.0, 3.0]}, ["base_high", "one per bidder"]),
    ],
)
def test_bad_values_fail_in_one_line(kwargs, words):
    with pytest.raises(ConfigError) as info:
        CombinatorialEnv("x", 2, 3, **kwargs)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_cli_resolves_ca_names_inside_the_family(cli):
    result = cli("evaluate", "mechanism=ca_vcg", "env=ca_2x2", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "name: ca_2x2" in result.stdout
