"""Every config option composes and instantiates through Hydra's compose API.

Options are discovered by globbing ``conf/<group>/*.yaml``, so new ones are covered.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from auctionlab.components import build, build_env_and_mechanism
from auctionlab.conf import CONF_DIR
from auctionlab.errors import ConfigError
from auctionlab.tracking import Tracker

CONF = CONF_DIR
TASKS = ("train", "evaluate")


def _options(group: str) -> list[str]:
    """Every option of a group, nested ones as ``family/name`` (e.g. ``allocation/2x2``)."""
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _in_task(task: str, group: str) -> bool:
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / f"{task}.yaml").defaults)
    return any(isinstance(d, dict) and group in d for d in defaults)


def _check_outcome(env, mechanism, batch: int = 8) -> None:
    types = env.sample(batch, torch.Generator().manual_seed(0))
    mechanism.eval()
    with torch.no_grad():
        outcome = mechanism(types.values, types.public)
    n, m = env.n_bidders, env.n_items
    assert outcome.allocation.shape == (batch, n, m)
    assert outcome.payment.shape == (batch, n)
    alloc = outcome.allocation
    assert torch.isfinite(alloc).all() and torch.isfinite(outcome.payment).all()
    if env.family == "allocation":  # divisible resources: 0 <= a <= demand, within budget
        demands = types.values[..., m:]
        assert (alloc >= -1e-6).all() and (alloc <= demands + 1e-6).all()
        assert (alloc.sum(1) <= env.budget_per_agent * n + 1e-5).all(), "over budget"
        assert env.utility(outcome, types.values).shape == (batch, n)
        return
    assert (alloc >= -1e-6).all() and (alloc <= 1 + 1e-6).all()
    assert (alloc.sum(1) <= 1 + 1e-5).all(), "an item is over-allocated"
    if env.demand == "unit":
        assert (alloc.sum(2) <= 1 + 1e-5).all(), "a unit-demand bidder gets more than one item"
    assert env.utility(outcome, types.values).shape == (batch, n)


def test_groups_are_discovered():
    for group in ("env", "mechanism", "attacker", "trainer", "scale", "tracking"):
        assert _options(group), group
    assert {"regretnet", "rochetnet"} <= set(_options("mechanism"))


@pytest.mark.parametrize("task", TASKS)
def test_primary_config_composes_with_defaults(task, compose):
    cfg = compose(task)
    OmegaConf.resolve(cfg)
    assert cfg.task == task
    env, mechanism = build_env_and_mechanism(cfg)
    _check_outcome(env, mechanism)
    assert build(cfg.attacker, "attacker").restarts >= 1


def _auction_envs() -> list[str]:
    """Env options whose declared family is ``auction`` (what RegretNet serves)."""
    return [
        e for e in _options("env") if compose_cfg("train", [f"env={e}"]).family.name == "auction"
    ]


@pytest.mark.parametrize("env_name", _auction_envs())
def test_every_env_with_regretnet(env_name, compose):
    cfg = compose("train", [f"env={env_name}", "mechanism=regretnet", "scale=smoke"])
    OmegaConf.resolve(cfg)
    env, mechanism = build_env_and_mechanism(cfg)
    assert env.name == env_name
    assert env.shape == (cfg.env.n_bidders, cfg.env.n_items)
    assert mechanism.learnable
    _check_outcome(env, mechanism)


def _served_envs(mechanism_name: str, compose, first_only: bool) -> list[str]:
    """Envs the mechanism builds with (its family's default env first); refusals are checked.

    Incompatible pairs must raise a one-line ``ConfigError``.
    """
    served = []
    for env_name in [None, *_options("env")]:
        chosen = [] if env_name is None else [f"env={env_name}"]
        try:  # a name without a version in the mechanism's family does not compose
            cfg = compose("evaluate", [*chosen, f"mechanism={mechanism_name}"])
        except ConfigCompositionException as err:
            assert "env_variants" in str(err), err
            continue
        try:
            env, mechanism = build_env_and_mechanism(cfg)
        except ConfigError as err:
            assert str(err).strip() and "\n" not in str(err).strip(), err
            continue
        _check_outcome(env, mechanism, batch=4)
        served.append(env_name or "default")
        if first_only:
            break
    return served


@pytest.mark.parametrize("mechanism_name", _options("mechanism"))
def test_every_mechanism_serves_some_env(mechanism_name, compose):
    assert _served_envs(mechanism_name, compose, first_only=True), (
        f"mechanism={mechanism_name} builds with no env"
    )


@pytest.mark.slow
@pytest.mark.parametrize("mechanism_name", _options("mechanism"))
def test_every_mechanism_env_pair_builds_or_refuses_in_one_line(mechanism_name, compose):
    """Every (mechanism, env) pair: built and checked, or refused in one line (900 pairs)."""
    assert _served_envs(mechanism_name, compose, first_only=False)


def test_rochetnet_needs_one_bidder(compose):
    cfg = compose("train", ["env=2x2", "mechanism=rochetnet"])
    with pytest.raises(ConfigError, match="one bidder"):
        build_env_and_mechanism(cfg)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", _options("attacker"))
def test_every_attacker(task, name, compose):
    cfg = compose(task, [f"attacker={name}", "mechanism=regretnet"])
    OmegaConf.resolve(cfg)
    attacker = build(cfg.attacker, "attacker")
    budget = attacker.budget
    # The local attacker ([okada2025lic]) always searches from the truth alone; the adaptive
    # search's starts come from the scale; the grid's "restarts" are its grid points (81 per
    # report dimension, two dimensions until it attacks).
    expected = {"local": 1, "adaptive": int(cfg.scale.adaptive.starts), "grid": 81**2}.get(
        name, int(cfg.attack_budget.restarts)
    )
    assert budget["restarts"] == expected
    assert budget["restarts"] >= 1 and budget["steps"] >= 0
    env, mechanism = build_env_and_mechanism(compose("train", ["env=1x2", "scale=smoke"]))
    types = env.sample(3, torch.Generator().manual_seed(0))
    attacker.restarts, attacker.steps = 2, min(attacker.steps, 2)
    attacker.curve_restarts, attacker.curve_steps = [], []
    result = attacker.attack(mechanism, env, types, torch.Generator().manual_seed(1))
    assert result.gain.shape == (3, 1)


@pytest.mark.parametrize("name", _options("trainer"))
def test_every_trainer(name, compose):
    cfg = compose("train", [f"trainer={name}"])
    OmegaConf.resolve(cfg)
    constraint = build(cfg.trainer.constraint, "trainer")
    constraint.setup(2, 100, torch.device("cpu"))
    loss = constraint.loss(torch.tensor(0.5), torch.tensor([0.01, 0.02]))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert float(cfg.trainer.lr) > 0
    assert str(cfg.trainer.optimizer) in ("adam", "sgd")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", _options("scale"))
def test_every_scale(task, name, compose):
    cfg = compose(task, [f"scale={name}", "mechanism=regretnet"])
    OmegaConf.resolve(cfg)
    assert cfg.scale.name == name
    attacker = build(cfg.attacker, "attacker")
    assert attacker.restarts >= 1
    if task == "train":
        assert int(cfg.train.iterations) >= 1 and int(cfg.train.batch_size) >= 1
        samples = cfg.train.num_samples
        assert samples is None or int(samples) >= int(cfg.train.batch_size)
        validation = build(cfg.validation.attacker, "validation.attacker")
        assert validation.restarts == int(cfg.scale.validation.restarts)
        assert validation.steps == int(cfg.scale.validation.steps)
        assert int(cfg.validation.profiles) >= 1
    else:
        assert int(cfg.profiles) == int(cfg.scale.evaluation.profiles)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", _options("tracking"))
def test_every_tracking(task, name, compose, mlflow_client):
    cfg = compose(task, [f"tracking={name}", "mechanism=regretnet", "scale=smoke"])
    OmegaConf.resolve(cfg)
    with Tracker(cfg, cfg.tracking, f"config test {task} {name}", {"test": "1"}) as tracker:
        tracker.log_metrics({"x": 1.0, "skipped": "text"}, step=0)
    if not tracker.enabled:
        assert tracker.run_id is None
        return
    run = mlflow_client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"x": 1.0}
    assert run.data.params["task"] == task


@pytest.mark.parametrize(
    ("scale", "restarts", "steps", "profiles"),
    [("cpu", 100, 1000, 2000), ("paper", 1000, 2000, 10000)],
)
def test_evaluate_scale_budgets(scale, restarts, steps, profiles, compose):
    cfg = compose("evaluate", [f"scale={scale}", "attacker=pgd"])
    OmegaConf.resolve(cfg)
    attacker = build(cfg.attacker, "attacker")
    assert attacker.restarts >= restarts and attacker.steps >= steps
    assert int(cfg.profiles) >= profiles
    if scale == "paper":
        assert (attacker.restarts, attacker.steps, int(cfg.profiles)) == (1000, 2000, 10000)
    assert attacker.include_truthful
    assert attacker.curve_restarts[-1] == attacker.restarts
    assert attacker.curve_steps[-1] == attacker.steps


@pytest.mark.parametrize("task", ["evaluate", "certify"])
@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_adaptive_default_spends_at_most_a_sixteenth_of_pgd(task, scale, compose):
    cfg = compose(task, [f"scale={scale}"])
    OmegaConf.resolve(cfg)
    adaptive = build(cfg.attacker, "attacker")
    assert adaptive.name == "adaptive" and adaptive.include_truthful
    pgd = build(compose(task, [f"scale={scale}", "attacker=pgd"]).attacker, "attacker")
    pgd_steps = pgd.restarts * (pgd.steps + 1)
    for dimensions in (2, 10):  # 2x2 ... 5x10
        if scale == "smoke":  # smoke only checks the pipeline: a budget of the same size
            assert adaptive.max_deviation_steps(dimensions) <= 3 * pgd_steps
        else:
            # Worst case (no instance stops early); stall stopping brings the spent
            # deviation-steps below 1/20 on every net bench_attack measured.
            assert adaptive.max_deviation_steps(dimensions) <= pgd_steps / 16


def test_evaluate_is_default_scale_cpu(compose):
    assert compose("evaluate").scale.name == "cpu"
    assert compose("train").scale.name == "cpu"


def test_trainer_not_in_evaluate():
    assert _in_task("train", "trainer")
    assert not _in_task("evaluate", "trainer")
