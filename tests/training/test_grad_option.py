"""``trainer.grad`` (gradient strategy of a discrete mechanism) and the bounded regret-budget dual.

Configs come from real Hydra composition; ``train.prepare`` builds what a training run would.
"""

from __future__ import annotations

import math

import pytest
import torch

from auctionlab.attackers.cutting_plane import CuttingPlaneAttacker
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.errors import ConfigError
from auctionlab.tasks import train
from auctionlab.training import RegretBudget

BASE = ["mechanism=solver_backed", "env=combinatorial/ca_2x2", "scale=smoke", "threads=1"]


@pytest.mark.parametrize(
    ("grad", "mechanism_grad", "attacker_type"),
    [
        (None, "ste", PGDAttacker),
        ("ste", "ste", PGDAttacker),
        ("lp", "lp", PGDAttacker),
        ("cutting_plane", "ste", CuttingPlaneAttacker),
    ],
)
def test_trainer_grad_picks_the_strategy(compose, grad, mechanism_grad, attacker_type):
    overrides = [*BASE, "attack_budget.restarts=2", "attack_budget.steps=7"]
    if grad is not None:
        overrides.append(f"trainer.grad={grad}")
    trainer, *_ = train.prepare(compose("train", overrides))
    assert trainer.mechanism.grad == mechanism_grad
    assert type(trainer.attacker) is attacker_type
    # the witness refresh keeps the configured PGD budget
    assert (trainer.attacker.restarts, trainer.attacker.steps) == (2, 7)


def test_trainer_grad_null_keeps_the_mechanism_default(compose):
    trainer, *_ = train.prepare(compose("train", [*BASE, "mechanism.grad=lp"]))
    assert trainer.mechanism.grad == "lp"


def test_trainer_grad_lp_trains_on_the_relaxation(compose):
    trainer, *_ = train.prepare(compose("train", [*BASE, "trainer.grad=lp"]))
    before = trainer.mechanism.state_dict()["score_head.bias"].clone()
    metrics = trainer.step()
    assert math.isfinite(metrics["loss"]) and metrics["revenue"] > 0
    assert not torch.equal(trainer.mechanism.state_dict()["score_head.bias"], before)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [*BASE, "trainer.grad=exact"],
            r"trainer\.grad=exact is not valid for mechanism=solver_backed; choose one of "
            r"ste, lp, cutting_plane",
        ),
        (
            ["mechanism=regretnet", "env=2x2", "scale=smoke", "trainer.grad=lp"],
            r"trainer\.grad=lp: mechanism=.* has no gradient strategies",
        ),
        (
            [*BASE, "attacker=random", "trainer.grad=cutting_plane"],
            r"trainer\.grad=cutting_plane refreshes its witnesses with PGD",
        ),
    ],
)
def test_bad_trainer_grad_fails_in_one_line(compose, overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        train.prepare(compose("train", overrides))
    assert "\n" not in str(error.value)


def test_cli_rejects_a_bad_trainer_grad_before_training(cli, tmp_path):
    result = cli("train", *BASE, "tracking=none", "trainer.grad=exact", cwd=tmp_path)
    assert result.returncode == 2
    assert "trainer.grad=exact is not valid" in result.stderr


def test_regret_budget_nothing_sold_lowers_gamma():
    """0 regret at 0 revenue satisfies the constraint (the 0.02-budget collapse drove it up)."""
    handler = RegretBudget(budget_start=0.02, budget_end=0.02, gamma_init=5.0)
    handler.setup(2, 10, torch.device("cpu"))
    handler.update(torch.tensor(0.0), torch.zeros(2), 0)
    assert handler.gamma < 5.0


@pytest.mark.parametrize("clip", [None, 1.0])
def test_regret_budget_signal_clip_bounds_the_dual_step(clip):
    handler = RegretBudget(budget_start=0.1, budget_end=0.1, dual_lr=0.1, gamma_init=2.0)
    handler.signal_clip = clip
    handler.setup(2, 10, torch.device("cpu"))
    handler.update(torch.tensor(1.0), torch.zeros(2), 0)  # one batch without regret
    if clip is None:
        assert handler.gamma == 0.0  # the unbounded rule resets gamma in one step
    else:
        assert handler.gamma == pytest.approx(2.0 - 0.1 * clip, abs=1e-6)
    handler.update(torch.tensor(1e-9), torch.tensor([0.3, 0.3]), 1)  # almost nothing sold
    step = 0.1 * (clip if clip is not None else math.log(0.6 / 1e-9 / 0.1))
    assert handler.gamma == pytest.approx((0.0 if clip is None else 2.0 - 0.1) + step, rel=1e-6)


def test_regret_budget_signal_clip_is_the_same_rule_near_the_budget():
    plain = RegretBudget(budget_start=0.1, budget_end=0.1)
    clipped = RegretBudget(budget_start=0.1, budget_end=0.1, signal_clip=100.0)
    for handler in (plain, clipped):
        handler.setup(2, 10, torch.device("cpu"))
        handler.update(torch.tensor(1.0), torch.tensor([0.06, 0.05]), 0)
    assert clipped.gamma == pytest.approx(plain.gamma, rel=1e-6)
    with pytest.raises(ConfigError, match="signal_clip"):
        RegretBudget(signal_clip=0.0)
