"""scripts/bench_pf.py end to end on a tiny 2x2 setting (seconds)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_pf.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_pf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_pf_reports_every_figure_and_the_batch_sweep(tmp_path):
    out = tmp_path / "pf.json"
    args = "--env 2x2 --batch 4 --solve-batch 16 --misreport-steps 1 --iterations 1"
    args += " --warmup 0 --threads 1 --inference-batches 4 8"
    result = _load_bench().main([*args.split(), "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["pf_all_converged"] and result["pf_max_kkt_residual"] <= 1e-7
    assert result["pf_solves_per_second"] > 0
    assert result["pf_backend"] in result["pf_solves_per_second_by_backend"]
    assert all(rate > 0 for rate in result["pf_solves_per_second_by_backend"].values())
    assert set(result["train_ratio_to_exsnet"]) == {"exsnet", "softmax_net", "rpfnet"}
    assert result["inference_ratio_to_exsnet"]["exsnet"] == 1.0
    sweep = result["rpfnet_inference_by_batch"]
    assert set(sweep) == {"4", "8"}
    for row in sweep.values():
        assert row["ratio"] == row["rpfnet"] / row["exsnet"] > 0


def test_bench_pf_runs_on_the_torch_backend_and_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("AUCTIONLAB_PF_BACKEND", raising=False)
    args = "--env 2x2 --batch 4 --solve-batch 8 --misreport-steps 1 --iterations 1"
    args += " --warmup 0 --threads 1 --pf-backend torch"
    result = _load_bench().main(args.split())
    assert result["pf_backend"] == "torch" and result["pf_all_converged"]
    assert "AUCTIONLAB_PF_BACKEND" not in os.environ
