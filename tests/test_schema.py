"""Structured config schemas: every shipped option validates; bad values fail in one line."""

from __future__ import annotations

import pytest
from conftest import compose_cfg, options

from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms import RegretNet
from auctionlab.schema import check_component, validate

TASK_GROUPS = {
    "train": ("env", "mechanism", "attacker", "trainer", "scale", "tracking"),
    "evaluate": ("env", "mechanism", "attacker", "scale", "tracking"),
}
CASES = [(task, g, o) for task, groups in TASK_GROUPS.items() for g in groups for o in options(g)]


@pytest.mark.parametrize(("task", "group", "option"), CASES)
def test_every_option_passes_its_schema(task, group, option):
    validate(compose_cfg(task, [f"{group}={option}"]))


BAD = {
    "env.n_bidders=two": "env.n_bidders='two' has the wrong type: must be an integer",
    "train.iterations=0": "train.iterations=0 must be >= 1",
    "scale.train.batch_size=-5": "scale.train.batch_size=-5 must be >= 1",
    "train.num_samples=10": "train.num_samples=10 must be >= 128",
    "trainer.lr=nan": "trainer.lr=nan must be > 0 and finite",
    "trainer.optimizer=rmsprop": "trainer.optimizer=rmsprop is not valid; choose one of adam, sgd",
    "attack_budget.step_size=0": "attack_budget.step_size=0.0 must be > 0 and finite",
    "tracking.enabled=maybe": "tracking.enabled='maybe' has the wrong type: must be true or false",
    "validation.profiles=0": "validation.profiles=0 must be >= 1",
    "+mechanism.depth=3": "mechanism.depth: RegretNet has no option 'depth'; valid keys: "
    "activation, hidden, normalize_inputs",
    "env.demand=null": "env.demand=null: AuctionEnv needs a value",
    "env.distribution._target_=subprocess.Popen": "env.distribution._target_='subprocess.Popen': "
    "not in a trusted module; only component classes defined in auctionlab may be instantiated "
    "(trust more modules with AUCTIONLAB_TRUSTED_MODULES)",
    "mechanism._target_=auctionlab.mechanisms.Nope": "mechanism._target_='auctionlab.mechanisms"
    ".Nope': no such class; only component classes defined in auctionlab may be instantiated "
    "(trust more modules with AUCTIONLAB_TRUSTED_MODULES)",
}


@pytest.mark.parametrize("override", list(BAD))
def test_bad_values_fail_with_the_option_named(override):
    with pytest.raises(ConfigError) as caught:
        validate(compose_cfg("train", [override]))
    assert str(caught.value) == BAD[override]


def test_nested_targets_are_checked_in_run_configs():
    # A run directory's config.yaml is data: its _target_ can never reach arbitrary code.
    node = {"_target_": "auctionlab.envs.AuctionEnv", "distribution": {"_target_": "os.system"}}
    with pytest.raises(ConfigError, match="env.distribution._target_='os.system'"):
        check_component(node, "env")


def test_mechanism_refuses_an_env_of_another_family():
    env = AuctionEnv("2x2", 2, 2, Uniform())
    env.family = "allocation"  # e.g. a payment-free market
    with pytest.raises(ConfigError, match="mechanism=regretnet solves 'auction' problems"):
        RegretNet(env)
