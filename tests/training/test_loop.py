"""The training loop: it trains, its fused regret is right, and it resumes exactly."""

from __future__ import annotations

import io

import pytest
import torch

from auctionlab.attackers import Attacker, AttackResult, PGDAttacker, deviation_utility
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.regretnet import RegretNet
from auctionlab.mechanisms.rochetnet import RochetNet
from auctionlab.training import (
    AugmentedLagrangian,
    NonFiniteError,
    RegretBudget,
    Trainer,
    Unconstrained,
)
from auctionlab.training.loop import progress_line


def make_env(n: int, m: int, demand: str = "additive") -> AuctionEnv:
    return AuctionEnv(f"{n}x{m}", n, m, Uniform(), demand=demand)


def make_trainer(env, constraint=None, attacker=None, seed=0, mechanism=None, **kwargs):
    torch.manual_seed(seed)
    mechanism = mechanism or RegretNet(env, hidden=(16, 16))
    options = dict(iterations=6, batch_size=8, num_samples=32, log_every=2, progress=False)
    options.update(kwargs)
    return Trainer(
        mechanism,
        env,
        attacker or PGDAttacker(restarts=1, steps=3),
        constraint or RegretBudget(),
        seed=seed,
        **options,
    )


def params(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.mechanism.state_dict().items()}


def through_disk(state: dict) -> dict:
    """A state dict as a checkpoint file would give it back (``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class RecordingBudget(RegretBudget):
    """Remembers the revenue and per-bidder regret the trainer hands to ``loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, torch.Tensor]] = []

    def loss(self, objective, violations):  # noqa: D102
        regret = violations["regret"]
        self.seen.append((float(objective.detach()), regret.detach().clone()))
        return super().loss(objective, violations)


class FixedAttacker(Attacker):
    """Random misreports; computes the expected regret with ``deviation_utility`` meanwhile."""

    def __init__(self) -> None:
        self.expected: list[tuple[float, torch.Tensor]] = []
        self.calls = 0

    def attack(self, mechanism, env, types, generator, init=None, truthful=True):  # noqa: D102
        self.calls += 1
        values = types.values
        misreports = env.report_space.draw(values.shape[0], generator)
        with torch.no_grad():
            outcome = mechanism(values, types.public)
            truthful_u = env.utility(outcome, values)
            deviation = deviation_utility(mechanism, env, types, misreports[None])[0]
        regret = (deviation - truthful_u).clamp_min(0.0).mean(0)
        self.expected.append((float(outcome.payment.sum(-1).mean()), regret))
        return AttackResult(misreports, deviation, None, {"restarts": 1, "steps": 0})

    def attack_chunk(self, *args, **kwargs):  # noqa: D102 - ``attack`` is the whole double
        raise AssertionError("not reached: attack is overridden")


class NoAttacker(Attacker):
    def attack(self, *args, **kwargs):  # noqa: D102
        raise AssertionError("the attacker must not run for a DSIC-by-design mechanism")

    attack_chunk = attack


@pytest.mark.parametrize(
    ("n", "m", "demand"), [(1, 2, "additive"), (2, 2, "additive"), (2, 2, "unit")]
)
def test_a_few_iterations_change_parameters(n, m, demand):
    trainer = make_trainer(make_env(n, m, demand), constraint=AugmentedLagrangian(lambda_every=2))
    before = params(trainer)
    logged = []
    summary = trainer.fit(lambda metrics, step: logged.append((step, metrics)))
    assert trainer.iteration == 6
    assert [step for step, _ in logged] == [2, 4, 6]
    for key in ("train_revenue", "train_regret", "train_loss", "lambda_mean", "rho"):
        assert key in logged[-1][1]
    assert summary["train_seconds"] > 0 and summary["seconds_per_iteration"] > 0
    after = params(trainer)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("allocation_net") for k in changed)
    assert any(k.startswith("payment_net") for k in changed)
    assert all(torch.isfinite(v).all() for v in after.values())


def test_fresh_draws_without_a_training_set():
    trainer = make_trainer(make_env(2, 2), num_samples=None, cache_misreports=True)
    assert trainer.dataset is None and trainer.cache is None
    first = trainer._batch()[0].values
    assert not torch.equal(first, trainer._batch()[0].values)
    trainer.fit()
    assert trainer.iteration == 6


def test_fixed_training_set_epochs_and_misreport_cache():
    trainer = make_trainer(make_env(2, 2), num_samples=16, batch_size=8)
    assert trainer.dataset.batch_size == 16 and trainer.cache.shape == (16, 2, 2)
    seen = []
    for _ in range(2):
        types, index = trainer._batch()
        seen.append(index)
        trainer.iteration += 1
    assert sorted(torch.cat(seen).tolist()) == list(range(16))  # one epoch covers the set
    trainer.iteration = 0
    cache = trainer.cache.clone()
    trainer.step()
    assert not torch.equal(cache, trainer.cache)


def test_fused_regret_equals_deviation_utility():
    constraint, attacker = RecordingBudget(), FixedAttacker()
    trainer = make_trainer(make_env(2, 3), constraint=constraint, attacker=attacker)
    for _ in range(3):
        trainer.step()
    assert len(constraint.seen) == len(attacker.expected) == 3
    for (revenue, regret), (expected_revenue, expected) in zip(
        constraint.seen, attacker.expected, strict=True
    ):
        assert regret.shape == (2,)
        assert torch.allclose(regret, expected, atol=1e-6)
        assert revenue == pytest.approx(expected_revenue, abs=1e-6)
    assert any(float(r.sum()) > 0 for _, r in constraint.seen)


def test_rochetnet_training_ignores_the_regret_constraint():
    env = make_env(1, 2)
    torch.manual_seed(0)
    mechanism = RochetNet(env, menu_size=16)
    trainer = make_trainer(
        env, constraint=AugmentedLagrangian(), attacker=NoAttacker(), mechanism=mechanism
    )
    assert isinstance(trainer.constraint, Unconstrained)
    before = params(trainer)
    summary = trainer.fit()
    assert summary.get("train_regret", 0.0) == 0.0
    after = params(trainer)
    assert not torch.equal(before["prices"], after["prices"])
    assert not torch.equal(before["allocation_logits"], after["allocation_logits"])


@pytest.mark.parametrize("constraint", [RegretBudget, AugmentedLagrangian])
def test_resume_from_checkpoint_matches_uninterrupted(constraint):
    env = make_env(2, 2)
    straight = make_trainer(env, constraint=constraint(), iterations=8)
    straight.fit()

    first = make_trainer(env, constraint=constraint(), iterations=8)
    while first.iteration < 3:  # stop mid-epoch (4 batches per epoch)
        first.step()
    state = through_disk(first.state_dict())
    resumed = make_trainer(env, constraint=constraint(), iterations=8, seed=0)
    resumed.load_state_dict(state)
    assert resumed.iteration == 3
    resumed.fit()

    for key, value in params(straight).items():
        assert torch.equal(value, params(resumed)[key]), key
    assert straight.constraint.metrics() == resumed.constraint.metrics()
    assert torch.equal(straight.cache, resumed.cache)


def test_lr_decay_is_a_half_cosine_after_its_start_and_survives_resume():
    env = make_env(2, 2)
    trainer = make_trainer(env, iterations=10, lr=0.01, lr_decay_start=0.4, lr_decay_to=0.1)
    rates = [trainer.learning_rate(t) for t in range(11)]
    assert rates[:5] == [0.01] * 5  # constant until 40% of the iterations
    assert rates[-1] == pytest.approx(0.001) and rates[7] == pytest.approx(0.0055)
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    trainer.fit()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(rates[9])
    # Resumed mid-decay, the rate follows the iteration count, not a restarted schedule.
    resumed = make_trainer(env, iterations=10, lr=0.01, lr_decay_start=0.4, lr_decay_to=0.1)
    resumed.load_state_dict(through_disk(trainer.state_dict()))
    assert resumed.learning_rate(resumed.iteration) == pytest.approx(rates[10])
    constant = make_trainer(env, iterations=10, lr=0.01)
    constant.fit()
    assert constant.optimizer.param_groups[0]["lr"] == 0.01


def test_load_state_dict_does_not_alias_the_source():
    env = make_env(2, 2)
    source = make_trainer(env, constraint=AugmentedLagrangian(lambda_every=1), iterations=8)
    for _ in range(2):
        source.step()
    copy = make_trainer(env, constraint=AugmentedLagrangian(lambda_every=1), iterations=8)
    copy.load_state_dict(source.state_dict())
    cache, lambdas = copy.cache.clone(), copy.constraint.lambdas.clone()
    source.step()  # must not touch the copy
    assert torch.equal(copy.cache, cache)
    assert torch.equal(copy.constraint.lambdas, lambdas)


def test_state_dict_loads_with_weights_only():
    trainer = make_trainer(make_env(2, 2), constraint=AugmentedLagrangian())
    trainer.step()
    state = through_disk(trainer.state_dict())
    assert set(state) >= {"mechanism", "optimizer", "constraint", "iteration", "generator"}
    assert state["iteration"] == 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"iterations": 0}, "iterations"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_samples": 4, "batch_size": 8}, "num_samples"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"lr_decay_start": 1.0}, "lr_decay_start"),
        ({"lr_decay_start": 0.5, "lr_decay_to": 0.0}, "lr_decay_to"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        make_trainer(make_env(1, 2), **kwargs)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_non_finite_loss_is_reported():
    trainer = make_trainer(make_env(1, 2))
    with torch.no_grad():
        trainer.mechanism.payment_net[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="iteration 0"):
        trainer.step()


def test_progress_line_is_one_compact_line():
    window = {"train_revenue": 0.54123, "train_regret": 0.00123, "train_loss": -0.5}
    line = progress_line(window, 40, 200, 2.0, constraint={"gamma": 0.3141, "regret_budget": 0.02})
    assert line == (
        "iteration 40/200: revenue 0.5412, regret 1.23e-03, gamma 0.314, regret_budget 0.02, "
        "2 it/s, eta 1m20s"
    )
    # a family's own objective, no attacker (no regret), hours left
    line = progress_line({"train_log_nsw": -1.5}, 1, 10001, 1.0, objective="train_log_nsw")
    assert line == "iteration 1/10001: log_nsw -1.5000, 1 it/s, eta 2h46m"


def test_without_a_bar_every_log_point_logs_a_progress_line(caplog):
    trainer = make_trainer(make_env(2, 2), iterations=6, log_every=2)
    with caplog.at_level("INFO", logger="auctionlab"):
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert [line.split(":")[0] for line in lines] == [
        "iteration 2/6",
        "iteration 4/6",
        "iteration 6/6",
    ]
    assert all("regret " in line and "it/s, eta " in line for line in lines)
