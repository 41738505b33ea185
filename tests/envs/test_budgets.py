"""Private budgets ([lemma2026certified] §8): ``env=budgets/2x2`` and ``mechanism=budgeted``."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from auctionlab.attackers.base import deviation_utility, project_deviations
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.components import build, build_env_and_mechanism
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.budgeted import cap_payment
from auctionlab.training import Trainer
from auctionlab.types import Outcome, Types

BASES = ["certified_equivariant", "regretnet"]


def _built(compose, *extra: str):
    cfg = compose("train", ["mechanism=budgeted", "env=budgets/2x2", *extra])
    OmegaConf.resolve(cfg)
    torch.manual_seed(0)
    env, mechanism = build_env_and_mechanism(cfg)
    return cfg, env, mechanism.eval()


def _edge_reports(env, generator) -> torch.Tensor:
    """Random reports plus edges: zero / full budgets, zero / top values, ties, far outside."""
    box = env.report_space
    random = box.draw(256, generator)
    n, d = box.low.shape
    edges = [
        box.low.expand(1, n, d),
        box.high.expand(1, n, d),
        torch.cat([box.high[:, :-1], box.low[:, -1:]], -1).expand(1, n, d),  # B' = 0
        torch.cat([box.low[:, :-1], box.high[:, -1:]], -1).expand(1, n, d),
        torch.full((1, n, d), 0.5),  # every bidder tied
    ]
    return torch.cat([random, *edges])


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("cap", ["exact", "smooth"])
def test_payment_never_exceeds_the_reported_budget(compose, base, cap):
    _, env, mechanism = _built(compose, f"mechanism.base={base}", f"mechanism.cap={cap}")
    for scale in (1.0, 30.0):  # random weights, then blown-up weights (payments near the cap)
        with torch.no_grad():
            for p in mechanism.parameters():
                p.mul_(scale)
            reports = _edge_reports(env, torch.Generator().manual_seed(1))
            outcome = mechanism(reports)
        budget = reports[..., -1]
        assert outcome.allocation.shape == (*reports.shape[:-1], env.n_items)
        assert (outcome.payment >= 0).all()
        assert (outcome.payment <= budget + 1e-7).all()
        assert (outcome.allocation.sum(1) <= 1 + 1e-6).all()  # each item at most once
    # Zero reported budget: zero payment, whatever the weights.
    assert torch.all(outcome.payment[-3] == 0)


def test_cap_functions_by_hand():
    raw = torch.tensor([0.0, 0.3, 0.9, 2.0, 0.5])
    budget = torch.tensor([0.5, 0.5, 0.5, 0.0, 0.5])
    assert torch.equal(
        cap_payment(raw, budget, "exact", 0.01), torch.tensor([0.0, 0.3, 0.5, 0.0, 0.5])
    )
    smooth = cap_payment(raw, budget, "smooth", 0.01)
    assert (smooth <= torch.minimum(raw, budget)).all() and (smooth >= 0).all()
    # The soft minimum is within T log 2 of the exact one.
    assert torch.allclose(smooth, torch.minimum(raw, budget), atol=0.01 * 0.7)


def test_utility_penalises_payment_above_the_true_budget(compose):
    _, env, _ = _built(compose)
    values = torch.tensor([[[0.8, 0.4, 0.5], [0.2, 0.1, 0.3]]])  # budgets 0.5 and 0.3
    allocation = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    within = env.utility(Outcome(allocation, torch.tensor([[0.5, 0.1]])), values)
    torch.testing.assert_close(within, torch.tensor([[0.3, 0.0]]))
    over = env.utility(Outcome(allocation, torch.tensor([[0.6, 0.1]])), values)
    # 0.1 above the true budget costs 0.1 + penalty * 0.1.
    assert float(over[0, 0]) == pytest.approx(0.2 - env.overbudget_penalty * 0.1)
    # Welfare (evaluate / validation) counts values only, never the budget column.
    assert float(env.welfare(Outcome(allocation, torch.zeros(1, 2)), values)[0]) == pytest.approx(
        0.9
    )


def test_verifiable_projection_caps_the_budget_report_at_the_truth(compose):
    _, env, mechanism = _built(compose)
    _, cheap_env, _ = _built(compose, "env.budget_reports=cheap_talk")
    types = env.sample(64, torch.Generator().manual_seed(2))
    misreports = env.report_space.draw(3 * 64, torch.Generator().manual_seed(3)).view(3, 64, 2, 3)
    misreports[..., -1] = 1.0  # everyone claims the largest budget
    misreports[0, :, :, 0] = 7.0  # outside the value box too
    restricted = project_deviations(env, types, misreports)
    truth = types.values[..., -1]
    assert torch.equal(restricted[..., -1], truth.expand(3, -1, -1))  # B' = min(1, B) = B
    assert torch.equal(restricted[..., :-1], env.report_space.project(misreports)[..., :-1])
    assert (restricted[0, :, :, 0] == 1.0).all()
    cheap = project_deviations(cheap_env, types, misreports)
    assert (cheap[..., -1] == 1.0).all()  # cheap talk: any budget in [0, B_bar]
    # Deviation utilities are those of the restricted misreport, for every attacker.
    with torch.no_grad():
        u = deviation_utility(mechanism, env, types, misreports)
        u_restricted = deviation_utility(mechanism, cheap_env, types, restricted)
    torch.testing.assert_close(u, u_restricted)


def test_bad_budget_options_fail_in_one_line(compose):
    with pytest.raises(ConfigError, match="env.budget_reports=maybe is not valid; choose one of"):
        _built(compose, "env.budget_reports=maybe")
    with pytest.raises(ConfigError, match="mechanism.base=vcg is not valid; choose one of"):
        _built(compose, "mechanism.base=vcg")
    with pytest.raises(ConfigError, match="mechanism.base_options.widths"):
        _built(compose, "mechanism.base_options={widths: [3]}")
    with pytest.raises(ConfigError, match="budgets"):  # other mechanisms cannot read budgets
        cfg = compose("train", ["mechanism=regretnet", "env=budgets/2x2"])
        build_env_and_mechanism(cfg)


def test_pgd_attack_and_tiny_constrained_erm_training(compose):
    cfg, env, mechanism = _built(
        compose,
        "mechanism.base_options={hidden: [16, 16]}",
        "trainer=constrained_erm",
        "trainer.constraint.heldout_profiles=64",
        "trainer.constraint.heldout_batch=32",
        "scale=smoke",
    )
    types = env.sample(32, torch.Generator().manual_seed(4))
    attack = PGDAttacker(restarts=2, steps=5, include_truthful=True).attack(
        mechanism, env, types, torch.Generator().manual_seed(5)
    )
    assert (attack.gain >= 0).all()
    attacker = build(cfg.attacker, "attacker")
    attacker.steps = 3
    trainer = Trainer(
        mechanism.train(),
        env,
        attacker,
        build(cfg.trainer.constraint, "trainer.constraint"),
        iterations=20,
        batch_size=32,
        num_samples=128,
        lr=0.005,
        progress=False,
        log_every=20,
    )
    summary = trainer.fit()
    assert torch.isfinite(torch.tensor(list(summary.values()))).all()
    assert "train_regret" in summary and "heldout_regret" in summary
    with torch.no_grad():
        outcome = mechanism.eval()(types.values)
    assert (outcome.payment <= types.values[..., -1] + 1e-7).all()  # still capped after training
    # Truthful bidders never pay above their true budget: no penalty in their utility.
    plain = (outcome.allocation * types.values[..., :-1]).sum(-1) - outcome.payment
    torch.testing.assert_close(env.utility(outcome, types.values), plain)
    assert isinstance(types, Types)
