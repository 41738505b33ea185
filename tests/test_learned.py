"""Learned-mechanism checks (slow: `make test-slow`). They train and evaluate for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from auctionlab.runs import load_trained

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "auctionlab.cli"]


def _run(args: list[str], cwd: Path) -> Path:
    done = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((cwd / "outputs" / "runs").glob("*/*"), key=lambda p: p.stat().st_mtime)
    return runs[-1]


def test_rochetnet_1x2_matches_manelli_vincent(tmp_path):
    """RochetNet on 1x2 U[0,1] within 0.005 of the optimal 0.549 (argmax menu at test time)."""
    run = _run(
        ["train", "mechanism=rochetnet", "env=1x2", "tracking=none", "progress=false"], tmp_path
    )
    metrics = json.loads((run / "metrics.json").read_text())
    # DSIC by design: even the validation attacker finds nothing (budget in the message).
    assert metrics["val_regret_max"] <= 1e-5, (
        metrics["val_regret_max"],
        metrics["val_attack_restarts"],
        metrics["val_attack_steps"],
    )
    # Revenue on many fresh profiles, so the standard error is well below the tolerance.
    env, mechanism, _ = load_trained(str(run), torch.device("cpu"))
    values = env.sample(200_000, torch.Generator().manual_seed(99)).values
    with torch.no_grad():
        revenue = mechanism(values).payment.sum(-1)
    mean, se = float(revenue.mean()), float(revenue.std()) / 200_000**0.5
    assert se < 0.0015
    assert abs(mean - 0.549) <= 0.005, (mean, se)


def test_regretnet_2x2_cpu_scale_under_evaluation_attacker(tmp_path):
    """RegretNet 2x2 at scale=cpu: revenue >= 0.86, regret <= 2e-3 under the evaluate attacker."""
    run = _run(
        ["train", "mechanism=regretnet", "env=2x2", "scale=cpu", "tracking=none", "progress=false"],
        tmp_path,
    )
    _run(["evaluate", f"run={run}", "scale=cpu", "tracking=none", "progress=false"], tmp_path)
    evaluation = sorted((tmp_path / "outputs" / "runs").glob("*/*_evaluate"))[-1]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    budget = (metrics["attack_restarts"], metrics["attack_steps"], metrics["profiles"])
    assert budget[0] >= 100 and budget[1] >= 1000 and budget[2] >= 2000, budget
    assert metrics["revenue"] >= 0.86, (metrics["revenue"], budget)
    assert metrics["regret_mean"] <= 2e-3, (metrics["regret_mean"], budget)
