"""End-of-run summaries: each env family's headline metrics, the regret's budget, IR violation."""

from __future__ import annotations

import logging

import pytest
from conftest import compose_cfg

from auctionlab.components import build
from auctionlab.reporting.summary import (
    headline_tags,
    ir_material,
    render_evaluation,
    summarize,
    warn_ir,
)

#: An env per family and the headline its summaries must show.
FAMILIES = {
    "2x2": ("revenue", "regret_mean"),
    "allocation/2x2": ("nsw", "efficiency", "regret_mean"),
    "budgets/2x2": ("revenue", "regret_mean", "max_payment_budget_ratio"),
    "combinatorial/ca_2x3": ("revenue", "welfare", "regret_mean"),
    "procurement/vd_3x2": ("procurement_cost", "shortfall", "regret_mean"),
}


def _metrics(prefix: str = "", **extra: float) -> dict[str, float]:
    metrics = {
        "revenue": 0.0,
        "welfare": 1.0,
        "nsw": 0.08,
        "efficiency": 0.566,
        "procurement_cost": 2.5,
        "shortfall": 0.1,
        "max_payment_budget_ratio": 0.9,
        "regret_mean": 3.7e-3,
        "ir_violation_mean": 0.0,
        "ir_violation_max": 0.0,
        "attack_restarts": 8.0,
        "attack_steps": 100.0,
        "profiles": 512.0,
        **extra,
    }
    return {prefix + k: v for k, v in metrics.items()}


def _env(name: str):
    from auctionlab.conf import CONF_DIR

    if not (CONF_DIR / "env" / f"{name}.yaml").exists():
        pytest.skip(f"no env {name}")
    return build(compose_cfg("evaluate", [f"env={name}"]).env, "env")


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_declares_its_headline(name):
    env = _env(name)
    assert env.headline_metrics() == FAMILIES[name]
    assert headline_tags(env)["headline_metrics"] == ",".join(FAMILIES[name])


def test_allocation_summary_shows_nsw_efficiency_exploitability_with_budget_and_ir():
    line = summarize(_env("allocation/2x2"), _metrics("val_"), "val_")
    assert line.startswith("nsw 0.0800, efficiency 0.5660, exploitability 3.70e-03")
    assert "(attacker 8 restarts x 100 steps, 512 profiles)" in line
    assert "IR violation 0.00e+00" in line and "revenue" not in line


def test_auction_summary_shows_revenue_regret_and_ir():
    line = summarize(_env("2x2"), _metrics(revenue=2.74, ir_violation_mean=1.02), "")
    assert line.startswith("revenue 2.7400, regret 3.70e-03 (attacker 8 restarts")
    assert "IR violation 1.02e+00" in line


def test_material_ir_violation_warns(caplog):
    bad = _metrics("val_", revenue=2.74, ir_violation_mean=1.02, ir_violation_max=1.26)
    with caplog.at_level(logging.WARNING, logger="auctionlab"):
        assert warn_ir(bad, "val_", where="train x")
    assert "IR violation is material" in caplog.text and "train x" in caplog.text
    # relative to the outcome's scale: 1e-4 on a welfare of 1 is float noise, not material
    assert not ir_material(_metrics(ir_violation_mean=1e-4))
    assert ir_material(_metrics(ir_violation_mean=2e-3))
    assert not ir_material(_metrics(ir_violation_mean=2e-3, welfare=10.0))


def test_the_evaluation_report_leads_with_the_headline():
    metrics = _metrics(revenue_se=0.0, regret_se=0.0, regret_max=0.1, regret_q90=0.0)
    metrics.update(regret_q99=0.0, ir_violation_mean=0.5)
    text = render_evaluation("pf", _env("allocation/2x2"), "pgd 8 x 100", metrics, [])
    assert "Summary: nsw 0.0800, efficiency 0.5660, exploitability" in text
    assert text.index("| nsw |") < text.index("| revenue |")
    assert "IR violation is material" in text
