"""Multirun on parallel launchers (joblib, submitit_local), sqlite concurrency, an MLflow server."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from auctionlab.errors import ConfigError
from auctionlab.tracking import PrepareStore, is_locked, open_store, with_retry

JOBLIB_SWEEP = ["train", "-m", "hydra/launcher=joblib", "env=2x2,2x3", "seed=0,1,2", "scale=smoke"]


def _runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if r.data.tags.get("task") != "multirun"]  # not the sweep's parent


def _sweep_in_fresh_store(run_console, tmp_path: Path, name: str, args: list[str]) -> tuple:
    """Run a multirun against a brand-new sqlite store (its creation is part of the race)."""
    cwd = tmp_path / name
    cwd.mkdir()
    uri = f"sqlite:///{cwd / 'fresh.db'}"
    result = run_console([*args, f"tracking.uri={uri}"], cwd)
    return result, _runs(uri), cwd


def _check_joblib_sweep(result, runs, cwd: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    for word in ("database is locked", "OperationalError", "Traceback"):
        assert word not in result.stderr, result.stderr[-3000:]
    assert len(runs) == 6, [r.info.run_name for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs)
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}  # read by joblib workers
    assert len(parents) == 1 and None not in parents
    jobs = sorted((r.data.tags["choice.env"], r.data.params["seed"]) for r in runs)
    assert jobs == [(e, s) for e in ("2x2", "2x3") for s in ("0", "1", "2")]
    dirs = {Path(r.data.tags["run_dir"]) for r in runs}
    assert len(dirs) == 6
    for d in dirs:
        assert d.is_relative_to(cwd.resolve() / "outputs" / "multirun")
        assert "val_revenue" in json.loads((d / "metrics.json").read_text())


@pytest.mark.slow  # as the 5-times run below; the default suite keeps sequential + submitit
def test_joblib_parallel_sweep_no_sqlite_errors(run_console, tmp_path):
    _check_joblib_sweep(*_sweep_in_fresh_store(run_console, tmp_path, "joblib", JOBLIB_SWEEP))


@pytest.mark.slow
def test_joblib_parallel_sweep_five_times(run_console, tmp_path):
    for repetition in range(5):
        name = f"joblib{repetition}"
        _check_joblib_sweep(*_sweep_in_fresh_store(run_console, tmp_path, name, JOBLIB_SWEEP))


@pytest.mark.slow  # ~23 s; tests/test_slurm.py sweeps through submitit and a real Slurm
def test_submitit_local_two_job_sweep(run_console, tmp_path, list_runs):
    args = [
        "evaluate",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "mechanism=vcg,myerson_itemwise",
        "env=2x2",
        "scale=smoke",
    ]
    cwd = tmp_path / "submitit"
    cwd.mkdir()
    before = {r.info.run_id for r in list_runs()}
    result = run_console(args, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [r for r in list_runs() if r.info.run_id not in before]
    (parent,) = [r for r in runs if r.data.tags["task"] == "multirun"]
    runs = [r for r in runs if r is not parent]
    assert sorted(r.data.tags["choice.mechanism"] for r in runs) == ["myerson_itemwise", "vcg"]
    # the submitit workers found the sweep's parent run
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    (sweep,) = (cwd / "outputs" / "multirun").glob("*/*")
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit
    for r in runs:
        assert Path(r.data.tags["run_dir"]).parent == sweep.resolve()


# -- the store is prepared once; transient locks are retried --------------------------------------
def test_prepare_store_callback_creates_the_experiment(mlflow_uri, mlflow_client, tmp_path):
    # a brand-new database is covered by the joblib sweep above (fresh store per run)
    name = f"sweep-{tmp_path.name}"
    tracking = {"enabled": True, "uri": mlflow_uri, "experiment": name}
    config = OmegaConf.create({"tracking": tracking})
    assert mlflow_client.get_experiment_by_name(name) is None
    PrepareStore().on_multirun_start(config)
    created = mlflow_client.get_experiment_by_name(name)
    assert created is not None
    _, _, again = open_store(config.tracking)  # idempotent
    assert again == created.experiment_id


def test_hydra_settings_register_the_callback():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from auctionlab.conf import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for task in ("train", "evaluate", "reproduce"):
            cfg = hydra_compose(config_name=task, return_hydra_config=True)
            target = cfg.hydra.callbacks.mlflow_init._target_
            assert target == "auctionlab.tracking.PrepareStore", task


def test_prepare_store_skips_when_tracking_disabled(tmp_path):
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    PrepareStore().on_multirun_start(OmegaConf.create({"tracking": {"enabled": False, "uri": uri}}))
    assert not (tmp_path / "never.db").exists()


def test_unreachable_store_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot reach the MLflow store"):
        open_store({"uri": f"sqlite:///{tmp_path / 'file' / 'x.db'}", "experiment": "x"})


def test_with_retry_retries_locked_database_only():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("write failed") from sqlite3.OperationalError("database is locked")
        return "ok"

    assert with_retry(flaky) == "ok" and len(calls) == 3
    assert is_locked(RuntimeError("x", "(sqlite3.OperationalError) database is locked"))

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a lock")

    calls.clear()
    with pytest.raises(ValueError):
        with_retry(broken)
    assert len(calls) == 1


def test_with_retry_gives_up(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)

    def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        with_retry(locked, attempts=3)


# -- a real MLflow tracking server -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 (free port), up within 120 s, killed at teardown."""
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers go down with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=20)
        log.close()


def test_job_logs_to_mlflow_server(mlflow_server, cli, tmp_path, list_runs):
    from mlflow import MlflowClient

    before = len(list_runs())
    cwd = tmp_path / "server-job"
    cwd.mkdir()
    result = cli(
        "evaluate",
        "mechanism=vcg",
        "env=2x2",
        "scale=smoke",
        f"tracking.uri={mlflow_server}",
        "tracking.experiment=served",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["choice.mechanism"] == "vcg"
    (out,) = (cwd / "outputs" / "runs").glob("*/*")
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["revenue"] == pytest.approx(metrics["revenue"])
    assert float(run.data.params["attack_steps"]) == metrics["attack_steps"]  # a setting
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "evaluation.md"} <= artifacts
    assert len(list_runs()) == before  # nothing went to the session's sqlite store
