"""Constraint handlers: losses and multiplier / budget schedules follow their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from auctionlab.errors import ConfigError
from auctionlab.training import AugmentedLagrangian, RegretBudget, Unconstrained

CPU = torch.device("cpu")


def regrets(count: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g) * 0.1 for _ in range(count)]


def test_lagrangian_loss():
    handler = AugmentedLagrangian(lambda_init=2.0, rho_init=3.0)
    handler.setup(2, 100, CPU)
    revenue, regret = torch.tensor(0.7), torch.tensor([0.1, 0.2])
    expected = -0.7 + 2.0 * 0.3 + 0.5 * 3.0 * (0.01 + 0.04)
    assert float(handler.loss(revenue, regret)) == pytest.approx(expected, abs=1e-6)


def test_lagrangian_updates_follow_the_formulas():
    lambda_every, rho_every, increment = 3, 4, 0.5
    handler = AugmentedLagrangian(
        lambda_init=1.0,
        rho_init=2.0,
        rho_increment=increment,
        rho_every=rho_every,
        lambda_every=lambda_every,
    )
    handler.setup(3, 100, CPU)
    lambdas, rho, window = torch.ones(3), 2.0, []
    for it, regret in enumerate(regrets(13, 3)):
        handler.update(torch.tensor(0.5), regret, it)
        window.append(regret)
        if (it + 1) % lambda_every == 0:
            lambdas = lambdas + rho * torch.stack(window).mean(0)
            window = []
        if (it + 1) % rho_every == 0:
            rho += increment
        assert torch.allclose(handler.lambdas, lambdas, atol=1e-6), it
        assert handler.rho == pytest.approx(rho), it
    assert handler.metrics() == pytest.approx({"lambda_mean": float(lambdas.mean()), "rho": rho})


def test_lagrangian_state_round_trip():
    handler = AugmentedLagrangian(lambda_every=4)
    handler.setup(2, 100, CPU)
    stream = regrets(10, 2, seed=1)
    for it, regret in enumerate(stream[:5]):
        handler.update(torch.tensor(1.0), regret, it)
    other = AugmentedLagrangian(lambda_every=4)
    other.setup(2, 100, CPU)
    state = handler.state_dict()
    other.load_state_dict({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    for it, regret in enumerate(stream[5:], start=5):
        handler.update(torch.tensor(1.0), regret, it)
        other.update(torch.tensor(1.0), regret, it)
    assert torch.equal(handler.lambdas, other.lambdas) and handler.rho == other.rho


def test_regret_budget_loss():
    handler = RegretBudget(budget_start=0.2, gamma_init=3.0)
    handler.setup(2, 10, CPU)
    loss = handler.loss(torch.tensor(0.5), torch.tensor([0.1, 0.05]))
    assert float(loss) == pytest.approx(-0.5 + 3.0 * (0.15 - 0.2))


def test_regret_budget_dual_update():
    handler = RegretBudget(budget_start=0.1, budget_end=0.01, dual_lr=0.3, gamma_init=1.0)
    handler.setup(2, 60, CPU)
    gamma, budget = 1.0, 0.1
    for it, regret in enumerate(regrets(30, 2, seed=2)):
        revenue = 0.2 + 0.01 * it
        handler.update(torch.tensor(revenue), regret, it)
        step = math.log(float(regret.sum())) - math.log(revenue) - math.log(budget)
        gamma = max(0.0, gamma + 0.3 * step)
        budget = max(0.01, budget * handler.budget_mult)
        assert handler.gamma == pytest.approx(gamma, rel=1e-6), it
        assert handler.budget == pytest.approx(budget, rel=1e-9), it


def test_regret_budget_gamma_stays_nonnegative_and_handles_zero_regret():
    handler = RegretBudget(dual_lr=10.0, gamma_init=0.5)
    handler.setup(1, 10, CPU)
    handler.update(torch.tensor(1.0), torch.zeros(1), 0)
    assert handler.gamma == 0.0
    handler.update(torch.tensor(0.0), torch.ones(1), 1)  # zero revenue: no log(0)
    assert math.isfinite(handler.gamma) and handler.gamma > 0


@pytest.mark.parametrize(("iterations", "fraction"), [(30, 2 / 3), (7, 0.5), (10, 1.0), (1, 0.3)])
def test_regret_budget_anneals_then_stays(iterations, fraction):
    handler = RegretBudget(budget_start=0.1, budget_end=0.001, anneal_fraction=fraction)
    handler.setup(2, iterations, CPU)
    anneal = max(1, round(fraction * iterations))
    budgets = []
    for it in range(iterations + 5):
        handler.update(torch.tensor(1.0), torch.tensor([0.01, 0.01]), it)
        budgets.append(handler.budget)
    assert all(b > 0.001 * (1 + 1e-9) for b in budgets[: anneal - 1])
    assert budgets[anneal - 1] == pytest.approx(0.001, rel=1e-9)
    assert all(b == 0.001 for b in budgets[anneal:])
    assert all(a >= b for a, b in zip(budgets, budgets[1:], strict=False))


def test_regret_budget_state_round_trip():
    handler = RegretBudget()
    handler.setup(2, 20, CPU)
    for it, regret in enumerate(regrets(5, 2)):
        handler.update(torch.tensor(0.4), regret, it)
    other = RegretBudget()
    other.setup(2, 20, CPU)
    other.load_state_dict(handler.state_dict())
    assert other.metrics() == handler.metrics()


def test_unconstrained_ignores_regret():
    handler = Unconstrained()
    handler.setup(2, 10, CPU)
    assert not handler.needs_regret
    assert float(handler.loss(torch.tensor(0.3), torch.tensor([5.0, 5.0]))) == pytest.approx(-0.3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget_start": 0.0},
        {"budget_end": -1.0},
        {"anneal_fraction": 0.0},
        {"anneal_fraction": 1.5},
        {"dual_lr": 0.0},
        {"gamma_init": -1.0},
    ],
)
def test_regret_budget_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError, match="trainer.constraint"):
        RegretBudget(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"rho_init": 0.0}, {"lambda_init": -1.0}, {"rho_every": 0}, {"lambda_every": 0}]
)
def test_lagrangian_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError, match="trainer.constraint"):
        AugmentedLagrangian(**kwargs)
