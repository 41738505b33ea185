"""The scalar objective every primary task returns to a Hydra sweeper (``cfg.objective``)."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from auctionlab.errors import ConfigError
from auctionlab.schema import validate
from auctionlab.tasks.common import (
    describe_objective,
    objective_value,
    record_objective,
    sweep_result,
)

METRICS = {"val_revenue": 0.5, "val_regret_mean": 0.003, "val_welfare": 0.9, "iterations": 20.0}


def objective(compose, *overrides: str, task: str = "train") -> dict:
    cfg = compose(task, list(overrides))
    validate(cfg)  # what every task does first
    return OmegaConf.to_container(cfg.objective, resolve=True)


@pytest.mark.parametrize(
    ("task", "metric"),
    [("train", "val_revenue"), ("evaluate", "revenue"), ("certify", "revenue")],
)
def test_every_primary_task_has_a_maximised_default(task, metric, compose):
    node = objective(compose, task=task)
    assert node["metric"] == metric and node["direction"] == "maximize"
    assert node["regret_limit"] is None
    assert "objective" not in compose("reproduce", [])  # its points have theirs


def test_the_default_is_the_metric_itself(compose):
    node = objective(compose)
    assert objective_value(node, METRICS) == 0.5
    assert describe_objective(node) == "maximize val_revenue"


def test_minimize_returns_the_metric_too(compose):
    node = objective(compose, "objective.metric=val_regret_mean", "objective.direction=minimize")
    assert objective_value(node, METRICS) == 0.003
    assert describe_objective(node) == "minimize val_regret_mean"


@pytest.mark.parametrize(
    ("direction", "expected"), [("maximize", 0.5 - 10 * 0.002), ("minimize", 0.5 + 10 * 0.002)]
)
def test_a_regret_above_the_limit_costs_penalty_times_the_excess(direction, expected, compose):
    node = objective(
        compose,
        f"objective.direction={direction}",
        "objective.regret_limit=0.001",
        "objective.penalty=10",
    )
    assert objective_value(node, METRICS) == pytest.approx(expected)
    sign = "-" if direction == "maximize" else "+"
    assert describe_objective(node) == (
        f"{direction} val_revenue {sign} 10 * max(0, val_regret_mean - 0.001)"
    )
    within = objective(compose, "objective.regret_limit=0.01", "objective.penalty=10")
    assert objective_value(within, METRICS) == 0.5


@pytest.mark.parametrize(("direction", "worst"), [("maximize", -math.inf), ("minimize", math.inf)])
def test_without_a_penalty_a_violation_is_the_worst_value(direction, worst, compose):
    node = objective(compose, f"objective.direction={direction}", "objective.regret_limit=0.001")
    assert objective_value(node, METRICS) == worst
    assert objective_value(node, {**METRICS, "val_regret_mean": 0.001}) == 0.5
    assert objective_value(node, {**METRICS, "val_regret_mean": math.nan}) == worst


def test_unknown_metric_names_the_choices(compose):
    node = objective(compose, "objective.metric=val_revnue")
    with pytest.raises(ConfigError) as err:
        objective_value(node, METRICS)
    (line,) = str(err.value).splitlines()
    assert line == (
        "objective.metric=val_revnue is not a metric of this run; choose one of: "
        "iterations, val_regret_mean, val_revenue, val_welfare"
    )
    # the regret curve's and per-bidder names are listed once, as patterns
    curve = {f"val_curve_r{r}_s{s}_regret_mean": 0.1 for r in (1, 2) for s in (0, 10)}
    bidders = {f"val_regret_mean_bidder{i}": 0.1 for i in range(3)}
    with pytest.raises(ConfigError) as err:
        objective_value(node, {**METRICS, **curve, **bidders, "tag": "text"})
    assert str(err.value).endswith(
        "iterations, val_curve_r<R>_s<S>_regret_mean, val_regret_mean, "
        "val_regret_mean_bidder<i>, val_revenue, val_welfare"
    )
    node = objective(compose, "objective.regret_metric=regret", "objective.regret_limit=0.1")
    with pytest.raises(ConfigError, match=r"^objective.regret_metric=regret is not a metric"):
        objective_value(node, METRICS)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("objective.direction=up", "objective.direction=up is not valid; choose one of maximize"),
        ("objective.regret_limit=-1", "objective.regret_limit=-1.0 must be >= 0"),
        ("objective.penalty=-2", "objective.penalty=-2.0 must be >= 0"),
        ("objective.regret_metric=null", "needs objective.regret_metric"),
    ],
)
def test_bad_objective_options_are_refused_before_any_work(override, words, compose):
    overrides = (
        [override] if "regret_metric" not in override else [override, "objective.regret_limit=0.1"]
    )
    with pytest.raises(ConfigError, match=words):
        objective(compose, *overrides)


def test_recorded_and_returned_to_hydra(compose):
    cfg = compose("train", ["objective.regret_limit=0.001", "objective.penalty=10"])
    metrics = dict(METRICS)
    tags = record_objective(cfg, metrics)
    assert metrics["objective"] == pytest.approx(0.48)
    assert tags == {"objective": "maximize val_revenue - 10 * max(0, val_regret_mean - 0.001)"}
    assert sweep_result(cfg, metrics) == pytest.approx(0.48)
    assert isinstance(sweep_result(cfg, metrics), float)
    # a task without an objective (reproduce) returns what it returned before
    reproduce = compose("reproduce", [])
    assert record_objective(reproduce, {"x": 1.0}) == {}
    assert sweep_result(reproduce, {"x": 1.0}) == {"x": 1.0}
