"""``trainer=constrained_erm`` ([lemma2026certified] §5, eqs. 12-13)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from auctionlab.components import build, build_env_and_mechanism
from auctionlab.errors import ConfigError
from auctionlab.training import Trainer
from auctionlab.training.constrained_erm import ConstrainedERM


def test_loss_is_the_augmented_lagrangian_of_eq_13():
    handler = ConstrainedERM(eps_regret=0.01, eps_ir=0.02, eps_fairness=0.1, rho=4.0)
    handler.setup(2, 100, torch.device("cpu"))
    handler.lambdas = torch.tensor([1.0, 2.0])
    handler.mus = torch.tensor([3.0, 0.5])
    handler.nu = torch.tensor(0.7)
    revenue, regret = torch.tensor(0.8), torch.tensor([0.03, 0.005])
    ir, fairness = torch.tensor([0.0, 0.05]), torch.tensor(0.3)
    expected = (
        -0.8
        + (1.0 * 0.02 + 2.0 * -0.005)
        + (3.0 * -0.02 + 0.5 * 0.03)
        + 0.7 * 0.2
        + 0.5 * 4.0 * (0.02**2 + 0.03**2 + 0.2**2)  # hinge: only violated constraints
    )
    violations = {"regret": regret, "ir": ir, "fairness": fairness}
    assert float(handler.loss(revenue, violations)) == pytest.approx(expected)
    # Without IR / fairness terms (other callers): regret only, as a dict or the bare tensor.
    assert float(handler.loss(revenue, {"regret": regret})) == pytest.approx(
        float(handler.loss(revenue, regret))
    )
    assert float(handler.loss(revenue, regret)) == pytest.approx(
        -0.8 + 0.01 - 0.5 * 0.0 + 3.0 * -0.02 + 0.5 * -0.02 + 0.7 * -0.1 + 2.0 * 0.02**2
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("eps_regret", -1.0), ("rho", 0.0), ("dual_lr", float("inf")), ("dual_every", 0)],
)
def test_bad_values_fail_in_one_line(key, value):
    with pytest.raises(ConfigError, match=f"trainer.constraint.{key}="):
        ConstrainedERM(**{key: value})


def _trainer(compose, iterations: int, extra=()):
    cfg = compose(
        "train",
        [
            "mechanism=certified_equivariant",
            "mechanism.hidden=[16,16]",
            "trainer=constrained_erm",
            "trainer.constraint.heldout_profiles=256",
            "trainer.constraint.heldout_batch=64",
            "trainer.constraint.dual_every=5",
            "env=2x2",
            "scale=smoke",
            *extra,
        ],
    )
    OmegaConf.resolve(cfg)
    torch.manual_seed(0)
    env, mechanism = build_env_and_mechanism(cfg)
    attacker = build(cfg.attacker, "attacker")
    attacker.steps = 5
    constraint = build(cfg.trainer.constraint, "trainer.constraint")
    return Trainer(
        mechanism,
        env,
        attacker,
        constraint,
        iterations=iterations,
        batch_size=64,
        num_samples=640,
        lr=0.005,
        progress=False,
        log_every=iterations,
    )


def test_duals_step_on_the_heldout_pool_not_the_training_batch(compose):
    trainer = _trainer(compose, 1)
    handler = trainer.constraint
    before = (handler.lambdas.clone(), handler.mus.clone())
    trainer.step()  # iteration 0 is a dual iteration
    pool = handler.pool.values
    # The pool is its own draw: none of its profiles is a training profile.
    train_rows = {tuple(r) for r in trainer.dataset.values.view(640, -1).tolist()}
    assert not any(tuple(r) in train_rows for r in pool.view(pool.shape[0], -1).tolist())
    measured_ir = float(handler.last["heldout_ir_violation"])
    # mu moved by dual_lr * (measured held-out IRV - eps_ir) per bidder (projected on >= 0).
    assert float(handler.mus.mean()) == pytest.approx(
        float(before[1].mean()) + handler.dual_lr * (measured_ir - handler.eps_ir), abs=1e-6
    )
    assert (handler.lambdas >= 0).all() and not torch.equal(handler.lambdas, before[0])
    trainer.step()  # iteration 1: no dual step
    assert handler.cursor == 64


def test_training_reduces_ir_violation_and_checkpoints(compose):
    trainer = _trainer(compose, 120)
    first = trainer.step()
    summary = trainer.fit()
    assert summary["train_ir_violation"] < first["ir_violation"]
    assert summary["mu_mean"] > 0 and "heldout_regret" in summary
    state = trainer.state_dict()
    fresh = _trainer(compose, 120)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.constraint.mus, trainer.constraint.mus)
    assert fresh.constraint.rho == trainer.constraint.rho


def test_bidder_subset_is_an_unbiased_rescaled_regret_term():
    n, k = 4, 2
    handler = ConstrainedERM(eps_regret=0.01, rho=3.0, bidder_subset=k)
    handler.setup(n, 100, torch.device("cpu"))
    handler.lambdas = torch.tensor([1.0, 2.0, 0.5, 0.0])
    revenue = torch.tensor(0.8)
    regret = torch.tensor([0.03, 0.005, 0.02, 0.04], requires_grad=True)
    full = ConstrainedERM(eps_regret=0.01, rho=3.0)
    full.setup(n, 100, torch.device("cpu"))
    full.lambdas = handler.lambdas.clone()
    losses, weights = [], []
    for _ in range(3000):
        loss = handler.loss(revenue, regret)
        w = handler.last_weights
        # k bidders weighted n / k, the rest 0; the loss is eq. (13) with those weights.
        assert int((w > 0).sum()) == k and torch.all((w == 0) | (w == n / k))
        by_hand = (
            -0.8
            + (w * handler.lambdas * (regret - 0.01)).sum()
            + (handler.mus * -handler.eps_ir).sum()
            + handler.nu * -handler.eps_fairness
            + 1.5 * (w * (regret - 0.01).clamp_min(0) ** 2).sum()
        )
        assert float(loss.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-6)
        losses.append(float(loss.detach()))
        weights.append(w)
    # Unbiased: each weight has mean 1 and the mean loss is the full-sum loss.
    mean_w = torch.stack(weights).mean(0)
    assert torch.allclose(mean_w, torch.ones(n), atol=0.06)
    se = torch.tensor(losses).std() / len(losses) ** 0.5
    expected = float(full.loss(revenue, regret).detach())
    assert abs(sum(losses) / len(losses) - expected) < 4 * float(se)
    # Only the step's bidders get a regret gradient.
    handler.loss(revenue, regret).backward()
    chosen = handler.last_weights > 0
    assert (regret.grad[~chosen] == 0).all() and (regret.grad[chosen] != 0).any()


def test_bidder_subset_moves_only_the_chosen_multipliers(compose):
    trainer = _trainer(compose, 1, ["trainer.constraint.bidder_subset=1"])
    handler = trainer.constraint
    before = handler.lambdas.clone()
    trainer.step()  # iteration 0 is a dual iteration
    moved = handler.lambdas != before
    assert int(moved.sum()) == 1 and bool(moved[handler.last_weights > 0].all())
    with pytest.raises(ConfigError, match="trainer.constraint.bidder_subset=3 must be <= the env"):
        _trainer(compose, 1, ["trainer.constraint.bidder_subset=3"])
    with pytest.raises(ConfigError, match="trainer.constraint.bidder_subset=0 must be >= 1"):
        ConstrainedERM(bidder_subset=0)
