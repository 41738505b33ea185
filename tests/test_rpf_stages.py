"""scripts/rpf_stages.py end to end on a tiny schedule (the real console script, seconds)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rpf_stages.py"
TINY = [
    "--train-override=train.batch_size=8",
    "--train-override=train.num_samples=16",
    "--train-override=attack_budget.steps=2",
    "--train-override=scale.validation.profiles=8",
    "--train-override=scale.validation.restarts=1",
    "--train-override=scale.validation.steps=2",
    "--profiles=16",
    "--restarts=1",
    "--steps=3",
]


def _load():
    spec = importlib.util.spec_from_file_location("rpf_stages", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # five console-script runs: about a minute
def test_stages_resume_copies_and_test_every_stage_against_pf(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    stages = _load()
    out = tmp_path / "stages"
    rows = stages.main(["--out", str(out), "--schedule", "3:1e-3,6:2e-3", *TINY])
    assert [r["iterations"] for r in rows] == [3, 6]
    summary = json.loads((out / "stages.json").read_text())
    assert summary["stages"] == rows
    for r in rows:
        assert r["attack_restarts"] == 1 and r["attack_steps"] == 3 and r["profiles"] == 16
        assert r["nsw_vs_pf"] == pytest.approx(r["nsw"] / summary["pf"]["nsw"])
    # The second stage is the first one resumed: same config, more iterations, its own run.
    second = (out / "6" / "config.yaml").read_text()
    assert "epsilon: 0.002" in second and "iterations: 6" in second
    first_run = json.loads((out / "3" / "tracking.json").read_text())
    assert json.loads((out / "6" / "tracking.json").read_text()) != first_run
    # Done stages are not run again.
    stamp = os.stat(out / "6" / "checkpoint.pt").st_mtime_ns
    again = stages.main(["--out", str(out), "--schedule", "3:1e-3,6:2e-3", *TINY])
    assert again == rows and os.stat(out / "6" / "checkpoint.pt").st_mtime_ns == stamp


def test_training_overrides_default_to_64000_profiles_and_extras_win():
    stages = _load()
    default = stages.training_overrides(stages.NUM_SAMPLES, [])
    assert "train.num_samples=64000" in default
    assert sum(o.startswith("train.num_samples=") for o in default) == 1
    assert "mechanism=rpfnet" in default and "trainer.constraint.gamma_init=0" in default
    assert not any(
        o.startswith(("train.iterations=", "trainer.constraint.epsilon=")) for o in default
    )
    mine = stages.training_overrides(64000, ["train.num_samples=16", "train.batch_size=8"])
    assert [o for o in mine if o.startswith("train.num_samples=")] == ["train.num_samples=16"]
    assert [o for o in mine if o.startswith("train.batch_size=")] == ["train.batch_size=8"]


def test_bad_schedule_is_refused():
    stages = _load()
    with pytest.raises(SystemExit, match="iterations must increase"):
        stages.parse_schedule("3:1e-3,2:1e-3")
    with pytest.raises(SystemExit, match="not iterations:epsilon"):
        stages.parse_schedule("3-1e-3")
