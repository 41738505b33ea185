"""Every run carries its code version: package version, git commit from a checkout, libraries."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from auctionlab import __version__
from auctionlab.provenance import (
    SOURCE_ROOT,
    code_version,
    cuda_device_name,
    machine,
    mlflow_tags,
    provenance,
    slurm_job_id,
)

REPO = Path(__file__).resolve().parent.parent


def _head() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def test_provenance_names_versions_device_and_threads():
    found = provenance("cpu", 3)
    assert found["auctionlab_version"] == __version__
    assert found["device"] == "cpu" and found["threads"] == "3"
    for library in ("torch", "hydra_core", "mlflow", "omegaconf"):
        assert found[f"{library}_version"] not in ("", "not installed"), library
    tags = mlflow_tags("train", found)
    assert tags["mlflow.source.name"] == "auctionlab train"
    assert tags["provenance.auctionlab_version"] == __version__


def test_provenance_names_the_machine():
    found = provenance("cpu", 1)
    assert found["cpu_count"] == str(os.cpu_count())
    assert found["platform"] == platform.platform()
    assert found["cpu_model"] and found["cpu_model"] != "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
        assert f": {found['cpu_model']}\n" in cpuinfo.read_text()  # the model, not the arch
    assert "cuda_device" not in found  # a CPU run names no GPU
    assert mlflow_tags("evaluate", found)["provenance.cpu_model"] == found["cpu_model"]
    assert {k: found[k] for k in machine()} == machine()


def test_a_slurm_job_is_named_as_sacct_lists_it(monkeypatch):
    assert slurm_job_id({}) is None
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    array = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "1"}
    assert slurm_job_id(array) == "8_1"
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert provenance("cpu", 1)["slurm_job_id"] == "12"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert "slurm_job_id" not in provenance("cpu", 1)


def test_a_cuda_device_is_named():
    import torch

    assert cuda_device_name("cpu") is None
    name = cuda_device_name("cuda:0")
    if torch.cuda.is_available():
        assert name == torch.cuda.get_device_name(0)
        assert provenance("cuda:0", 1)["cuda_device"] == name
    else:
        assert name == "unknown"  # said, never guessed


@pytest.mark.skipif(_head() is None or SOURCE_ROOT != REPO, reason="not run from a git checkout")
def test_a_train_run_from_the_checkout_records_commit_and_version(cli, mlflow_client, tmp_path):
    result = cli("train", "scale=smoke", "threads=1")
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "cli" / "outputs" / "runs").glob("*/*_train")
    recorded = json.loads((run_dir / "metrics.json").read_text())["provenance"]
    assert recorded["git_commit"] == _head() == code_version()["git_commit"]
    assert recorded["auctionlab_version"] == __version__
    assert recorded["threads"] == "1" and recorded["device"] == "cpu"
    assert recorded["cpu_count"] == str(os.cpu_count()) and recorded["cpu_model"]
    (run,) = [
        r
        for r in mlflow_client.search_runs(
            [e.experiment_id for e in mlflow_client.search_experiments()]
        )
        if r.data.tags.get("run_dir", "").endswith(run_dir.name)
    ]
    assert run.data.tags["mlflow.source.git.commit"] == _head()
    assert run.data.tags["provenance.auctionlab_version"] == __version__
    assert run.data.tags["provenance.torch_version"] == recorded["torch_version"]
