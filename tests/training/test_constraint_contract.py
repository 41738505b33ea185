"""The ConstraintHandler contract: loss(objective, violations), dual_step(state), no trainer."""

from __future__ import annotations

import inspect

import pytest
import torch

from auctionlab.training.constrained_erm import ConstrainedERM
from auctionlab.training.constraints import (
    AugmentedLagrangian,
    ConstraintHandler,
    DualState,
    PrimalDual,
    RegretBudget,
    Unconstrained,
)

HANDLERS = [AugmentedLagrangian, RegretBudget, PrimalDual, Unconstrained, ConstrainedERM]


@pytest.mark.parametrize("cls", HANDLERS)
def test_handlers_meet_the_contract(cls):
    assert issubclass(cls, ConstraintHandler)
    assert list(inspect.signature(cls.loss).parameters) == ["self", "objective", "violations"]
    assert list(inspect.signature(cls.dual_step).parameters) == ["self", "state"]
    assert isinstance(cls.needs_violations, bool) and isinstance(cls.needs_regret, bool)


@pytest.mark.parametrize("cls", [AugmentedLagrangian, RegretBudget, PrimalDual])
def test_update_is_dual_step_from_the_batch_numbers(cls):
    a, b = cls(), cls()
    for handler in (a, b):
        handler.setup(2, 300, torch.device("cpu"))
    for it in range(250):
        regret = torch.tensor([0.01 * (it % 3), 0.002])
        a.update(torch.tensor(0.5), regret, it)
        b.dual_step(DualState(it, torch.tensor(0.5), regret))
    assert a.metrics() == b.metrics()
    violations = torch.tensor([0.1, 0.2])
    assert torch.equal(
        a.loss(torch.tensor(1.0), violations), b.loss(torch.tensor(1.0), {"regret": violations})
    )


def test_constrained_erm_without_an_attacker_moves_only_its_schedule():
    handler = ConstrainedERM(rho_every=2, rho_increment=1.0)
    handler.setup(2, 10, torch.device("cpu"))
    before = handler.lambdas.clone()
    handler.dual_step(DualState(1, torch.tensor(1.0), torch.ones(2)))
    assert handler.rho == 2.0 and torch.equal(handler.lambdas, before)
