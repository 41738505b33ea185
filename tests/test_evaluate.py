"""``auctionlab evaluate``'s reference search: the oracle metrics and when they are skipped."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from auctionlab.attackers import GridAttacker, PGDAttacker
from auctionlab.components import build
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.evaluation import oracle_metrics
from auctionlab.mechanisms.classical import FirstPrice
from auctionlab.reporting.summary import oracle_line
from auctionlab.tasks import evaluate

ORACLE = (
    "oracle_regret_mean",
    "oracle_regret_max",
    "oracle_gap_mean",
    "oracle_gap_mean_frac",
    "oracle_gap_max_frac",
    "oracle_deviation_steps",
    "oracle_points",
)
SHORT = ["scale=smoke", "profiles=32", "tracking=none", "threads=1"]


def written() -> dict:
    return json.loads(Path("outputs/adhoc/metrics.json").read_text())


def test_evaluate_writes_the_oracle_metrics_and_the_summary_line(compose):
    cfg = compose("evaluate", ["mechanism=first_price", "env=2x2", *SHORT])
    metrics = evaluate.run(cfg)
    saved = written()
    for key in ORACLE:
        assert key in metrics and key in saved, key
        assert math.isfinite(metrics[key]), key
    assert metrics["oracle_points"] == 17  # scale.oracle at smoke
    assert metrics["oracle_regret_mean"] >= metrics["regret_mean"]
    assert metrics["oracle_regret_max"] >= metrics["regret_max"]
    assert metrics["oracle_gap_mean"] >= 0 and 0 <= metrics["oracle_gap_mean_frac"] <= 1
    # truthful + the main attack's misreports + 17^2 + 1 x 5^2 + the re-check, 32 x 2 bidders
    assert metrics["oracle_deviation_steps"] == (2 + 17**2 + 1 * 5**2 + 1) * 32 * 2
    report = Path("outputs/adhoc/evaluation.md").read_text()
    assert "Oracle (grid 17x17 + 1 refinements (5 per dim)): regret mean" in report


@pytest.mark.parametrize(("scale", "points"), [("smoke", 17), ("cpu", 81), ("paper", 161)])
def test_the_oracle_density_comes_from_the_scale(scale, points, compose):
    oracle = build(compose("evaluate", [f"scale={scale}"]).oracle, "oracle")
    assert oracle.points == points and oracle.refinements >= 1


def test_oracle_null_omits_the_oracle_metrics(compose):
    metrics = evaluate.run(compose("evaluate", ["mechanism=vcg", "env=2x2", "oracle=null", *SHORT]))
    assert not any(key.startswith("oracle_") for key in [*metrics, *written()])
    assert "Oracle" not in Path("outputs/adhoc/evaluation.md").read_text()


def test_a_wide_env_skips_the_oracle_with_one_log_line(compose, caplog):
    with caplog.at_level(logging.INFO, logger="auctionlab"):
        metrics = evaluate.run(compose("evaluate", ["mechanism=vcg", "env=2x5", *SHORT]))
    assert not any(key.startswith("oracle_") for key in metrics)
    skipped = [r.getMessage() for r in caplog.records if "no oracle metrics" in r.getMessage()]
    assert skipped == [
        "no oracle metrics on env 2x5: attacker=grid searches every bidder's report on a grid "
        "and needs at most 2 report dimensions; env 2x5 has 5 (use attacker=adaptive or "
        "attacker=pgd)"
    ]


def test_the_oracle_gap_is_what_the_attacker_missed():
    env = AuctionEnv("2x2", 2, 2, Uniform())
    types = env.sample(16, torch.Generator().manual_seed(0))
    mechanism = FirstPrice(env)
    weak = PGDAttacker(restarts=1, steps=2, include_truthful=True)
    attack = weak.attack(mechanism, env, types, torch.Generator().manual_seed(1))
    oracle = GridAttacker(points=21, refinements=1, refine_points=5)
    metrics = oracle_metrics(mechanism, env, types, oracle, attack, torch.Generator())
    assert metrics["oracle_gap_mean"] > 0  # two gradient steps miss most of first price's regret
    assert math.isclose(
        metrics["oracle_gap_mean"],
        metrics["oracle_regret_mean"] - float(attack.gain.mean()),
        rel_tol=1e-5,
    )
    assert math.isclose(
        metrics["oracle_gap_mean_frac"],
        metrics["oracle_gap_mean"] / metrics["oracle_regret_mean"],
        rel_tol=1e-9,
    )
    line = oracle_line(metrics, oracle.describe())
    assert line.startswith("Oracle (grid 21x21 + 1 refinements (5 per dim)): regret mean ")
    assert oracle_line({}, "grid") == ""


def test_bad_oracle_options_are_named_as_oracle_options(compose):
    with pytest.raises(ConfigError, match=r"^oracle\.points=1 must be >= 2$"):
        evaluate.prepare(compose("evaluate", ["oracle.points=1", "tracking=none"]))
    with pytest.raises(ConfigError, match=r"^oracle\.points='two' has the wrong type"):
        evaluate.prepare(compose("evaluate", ["oracle.points=two", "tracking=none"]))


@pytest.mark.parametrize("attacker", ["pgd", "adaptive"])
def test_every_curve_row_says_what_it_cost(attacker, compose):
    metrics = evaluate.run(
        compose("evaluate", ["mechanism=first_price", "env=2x2", f"attacker={attacker}", *SHORT])
    )
    rows = list(csv.DictReader(Path("outputs/adhoc/regret_vs_budget.csv").open()))
    assert rows and all(float(row["deviation_steps"]) > 0 for row in rows)
    if attacker == "pgd":  # restarts x (steps + 1) evaluations per bidder and profile
        for row in rows:
            expected = float(row["restarts"]) * (float(row["steps"]) + 1)
            assert float(row["deviation_steps"]) == expected
    top = max(float(row["deviation_steps"]) for row in rows)
    # The largest point of the curve is the whole search: what metrics.json says it spent.
    assert top == pytest.approx(metrics["attack_deviation_steps_per_instance"])
    assert metrics["attack_deviation_steps"] == pytest.approx(top * 32 * 2)
