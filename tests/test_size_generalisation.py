"""Size generalisation: a trained net served on another env (``evaluate run=<run> env=<size>``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auctionlab.errors import ConfigError
from auctionlab.runs import any_size_mechanisms, load_trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smoke_runs) -> dict[str, Path]:
    """Tiny smoke-trained 2x2 runs: an EquivariantNet (any size) and a RegretNet (sized)."""
    return smoke_runs(
        tmp_path_factory.mktemp("sizes"),
        {
            "equivariant": ["mechanism=equivariant_net", "mechanism.hidden=[4,4]"],
            "regretnet": ["mechanism=regretnet", "mechanism.hidden=[8]"],
        },
    )


def test_an_any_size_net_serves_another_size_with_its_trained_weights(trained, compose):
    cpu = torch.device("cpu")
    own_env, own, _ = load_trained(str(trained["equivariant"]), cpu)
    env, served, picked = load_trained(
        str(trained["equivariant"]), cpu, compose("evaluate", ["env=3x10"]).env
    )
    assert (env.name, env.n_bidders, env.n_items) == ("3x10", 3, 10)
    assert picked["env"] == "2x2"  # what the run was trained on
    for (name, weight), (_, same) in zip(
        own.state_dict().items(), served.state_dict().items(), strict=True
    ):
        assert torch.equal(weight, same), name
    reports = env.sample(5, torch.Generator().manual_seed(0)).values
    outcome = served(reports)
    assert outcome.allocation.shape == (5, 3, 10) and outcome.payment.shape == (5, 3)
    # each item sold at most once, and nobody pays more than the value of what they get
    assert bool((outcome.allocation.sum(dim=1) <= 1 + 1e-5).all())
    value = (outcome.allocation * reports).sum(-1)
    assert bool((outcome.payment <= value + 1e-5).all())
    assert own_env.name == "2x2"


def test_the_runs_own_env_name_is_the_runs_own_env(trained, compose):
    env, _, _ = load_trained(
        str(trained["equivariant"]), torch.device("cpu"), compose("evaluate", ["env=2x2"]).env
    )
    assert (env.name, env.n_bidders, env.n_items) == ("2x2", 2, 2)


def test_a_sized_net_on_another_size_is_one_line_naming_those_that_fit(trained, compose):
    with pytest.raises(ConfigError) as caught:
        load_trained(
            str(trained["regretnet"]), torch.device("cpu"), compose("evaluate", ["env=3x10"]).env
        )
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("env=3x10 (3 bidders x 10 items): mechanism=regretnet of run=")
    assert "training env 2x2 (2 bidders x 2 items)" in message
    assert message.endswith("(equivariant_net, regretformer)")
    assert any_size_mechanisms() == ["equivariant_net", "regretformer"]


def test_evaluate_env_on_the_command_line_serves_that_env(trained, cli, tmp_path):
    out = tmp_path / "on_3x10"
    common = ["scale=smoke", "profiles=16", "oracle=null", "threads=1"]
    done = cli(
        "evaluate", f"run={trained['equivariant']}", "env=3x10", *common, f"hydra.run.dir={out}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["revenue"] > 0 and metrics["regret_mean"] >= 0
    assert (out / "evaluation.md").read_text().splitlines()[0].endswith("trained on 2x2 on 3x10")
    refused = tmp_path / "refused"
    done = cli(
        "evaluate", f"run={trained['regretnet']}", "env=3x10", *common, f"hydra.run.dir={refused}"
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("auctionlab: error: env=3x10 (3 bidders")
    assert not refused.exists()
