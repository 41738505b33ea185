"""[okada2025lic] Table 1 (``lic_table1``): the plan behind its rows, without running jobs."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from auctionlab.tasks import reproduce


def _local3(scale: str) -> list[str]:
    plan = reproduce.prepare(compose_cfg("reproduce", ["experiment=lic_table1", f"scale={scale}"]))
    rows = [p for p in plan.points if p.labels["attacker"] == "local"]
    assert sorted(p.labels["attacker.steps"] for p in rows).count("1") == 5  # paper's Local rows
    (point,) = [p for p in rows if p.labels["attacker.steps"] == "3"]
    return point.overrides


@pytest.mark.parametrize(("scale", "iterations"), [("smoke", 20), ("cpu", 19000)])
def test_local3_row_trains_on_both_lic_conditions_with_its_own_iterations(scale, iterations):
    overrides = _local3(scale)
    assert "attacker.two_sided=True" in overrides  # Hydra reads True as the bool
    assert "trainer.constraint.budget_end=0.00025" in overrides
    # smoke stays seconds; at cpu the row gets more (cheaper) iterations than Standard's 15000
    assert f"train.iterations={iterations}" in overrides


def test_every_row_trains_with_the_same_learning_rate_decay():
    plan = reproduce.prepare(compose_cfg("reproduce", ["experiment=lic_table1", "scale=smoke"]))
    assert "trainer.lr_decay_start=0.667" in plan.stage_overrides["train"]
    assert not any("lr_decay" in o for p in plan.points for o in p.overrides)
