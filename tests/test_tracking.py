"""MLflow tracking failures: unreachable servers, the local fallback, errors while logging."""

from __future__ import annotations

import mlflow
from omegaconf import OmegaConf

from auctionlab.tracking import Tracker


def test_unreachable_server_falls_back_to_local_store(cli, tmp_path):
    cwd = tmp_path / "fallback"
    cwd.mkdir()
    result = cli(
        "train",
        "scale=smoke",
        "env=1x2",
        "tracking.uri=http://127.0.0.1:9",
        "tracking.fallback=local",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert "unreachable" in said and "tracking.fallback=local: logging to" in said
    local = f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=local)
    experiment = client.get_experiment_by_name("auctionlab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert "val_revenue" in run.data.metrics


def test_logging_error_midway_never_raises_and_is_reported(mlflow_uri, tmp_path, caplog):
    cfg = OmegaConf.create({"seed": 0, "tracking": {"enabled": True, "uri": mlflow_uri}})
    with Tracker(cfg, cfg.tracking, "logging error", {"task": "test"}) as tracker:
        tracker.log_metrics({"x": 1.0}, 1)
        client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
        client.delete_run(tracker.run_id)  # the store now refuses anything for this run
        tracker.log_metrics({"x": 2.0}, 2)  # must not raise
        tracker.log_artifacts([tmp_path])
        assert tracker.logging_error is not None and not tracker.active
    assert tracker.lost_logging is not None
    assert "MLflow logging failed" in caplog.text
    history = client.get_metric_history(tracker.run_id, "x")
    assert [m.value for m in history] == [1.0]


def test_resumed_tracker_continues_the_same_run(mlflow_uri):
    cfg = OmegaConf.create({"seed": 0, "tracking": {"enabled": True, "uri": mlflow_uri}})
    with Tracker(cfg, cfg.tracking, "first part", {"task": "test"}) as first:
        first.log_metrics({"x": 1.0}, 1)
    with Tracker(cfg, cfg.tracking, "ignored", {"part": "2"}, resume_run_id=first.run_id) as again:
        again.log_metrics({"x": 2.0}, 2)
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["part"] == "2"
    assert [m.value for m in client.get_metric_history(first.run_id, "x")] == [1.0, 2.0]
