"""The env contract: one base class declares every optional capability with its default."""

from __future__ import annotations

import torch

from auctionlab.attackers.best_response import install_best_response
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.envs import AllocationEnv, AuctionEnv
from auctionlab.envs.base import Env, ReportSpace
from auctionlab.envs.budgets import BudgetEnv
from auctionlab.envs.combinatorial import CombinatorialEnv
from auctionlab.envs.contextual import ContextualAdEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.envs.procurement import ProcurementEnv
from auctionlab.mechanisms.pf import ProportionalFairness
from auctionlab.types import Outcome


def test_every_env_subclasses_the_base():
    for cls in (AuctionEnv, AllocationEnv, BudgetEnv, CombinatorialEnv, ContextualAdEnv):
        assert issubclass(cls, Env), cls
    assert issubclass(ProcurementEnv, Env)


def test_the_base_declares_each_capability_with_a_default():
    env = AuctionEnv("2x2", 2, 2, Uniform())
    generator = torch.Generator().manual_seed(0)
    assert env.objective is None and env.fairness is None and env.best_response is None
    assert env.objective_name == "objective" and env.context_dim == 0
    assert env.fairness_range == float("inf") and env.ir_violation_range is None
    assert env.training_adversary() is None
    a = env.sample_training(4, torch.Generator().manual_seed(1))
    b = env.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(a.values, b.values)
    types = env.sample(3, generator)
    outcome = Outcome(torch.rand(3, 2, 2, generator=generator), torch.zeros(3, 2))
    expected = (outcome.allocation * types.values).sum((-1, -2))
    assert torch.equal(env.welfare(outcome, types.values), expected)
    assert env.outcome_metrics(outcome, types) == {}
    misreports = torch.rand(2, 3, 2, 2, generator=generator)
    assert env.report_space.restrict(misreports, types.values) is misreports
    assert isinstance(env.report_space, ReportSpace)


def test_adversarial_training_data_come_from_the_installed_best_response():
    env = AllocationEnv("2x2", 2, 2, variant="adversarial_pf", adversarial_steps=3)
    spec = env.training_adversary()
    assert spec is not None and spec["mechanism"].endswith("ProportionalFairness")
    install_best_response(env)
    got = env.sample_training(5, torch.Generator().manual_seed(4))
    # By hand: the truthful draw, then PGD against PF with the same generator.
    generator = torch.Generator().manual_seed(4)
    truth = env.sample(5, generator)
    attacker = PGDAttacker(**spec["attacker"])
    result = attacker.attack(ProportionalFairness(env), env, truth, generator, truthful=False)
    assert torch.equal(got.values, result.misreports)
