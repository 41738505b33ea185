"""MLflow tracking failures: unreachable or hung servers, the local fallback, bad names,
errors while logging, and runs that are not this directory's to continue.
"""

from __future__ import annotations

import http.server
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from auctionlab.cli import main
from auctionlab.errors import STOP_SIGNALS
from auctionlab.mechanisms.export import OutcomeTensor
from auctionlab.tracking import HTTP_LIMITS, Tracker
from auctionlab.types import Outcome

#: The longest a task may wait on a bad server before failing or falling back.
PATIENCE_S = 30


@pytest.fixture(scope="module")
def hung_server() -> Iterator[str]:
    """A listener that accepts connections and never answers (a hung MLflow server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    for connection in held:
        connection.close()


class _Fails(http.server.BaseHTTPRequestHandler):
    def _fail(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _fail  # noqa: N815 - http.server's handler names

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def failing_server() -> Iterator[str]:
    """An HTTP server that answers every request with 500."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Fails)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def main_in_process(monkeypatch, capsys):
    """``main_in_process(*args)``: ``auctionlab`` in this process, for what fails before Hydra.

    Returns ``(exit status, stderr, seconds)``. The signal handlers and ``MLFLOW_HTTP_*``
    variables the console script sets are put back afterwards.
    """
    for name in HTTP_LIMITS:  # set then deleted: the undo leaves them as they were
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def call(*args: str) -> tuple[int, str, float]:
        capsys.readouterr()  # only what this call prints (not a store's first migration)
        start = time.monotonic()
        try:
            with pytest.raises(SystemExit) as exited:
                main(list(args))
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
        return exited.value.code, capsys.readouterr().err, time.monotonic() - start

    return call


EVALUATE = ["evaluate", "mechanism=vcg", "env=2x2", "scale=smoke"]


@pytest.mark.parametrize("server", ["hung_server", "failing_server"])
def test_bad_server_fails_in_one_line_within_seconds(server, request, main_in_process, tmp_path):
    url = request.getfixturevalue(server)
    status, stderr, seconds = main_in_process(*EVALUATE, f"tracking.uri={url}")
    assert status == 2 and seconds < PATIENCE_S, (status, seconds, stderr)
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"auctionlab: error: tracking.uri={url}: MLflow server unreachable")
    assert ("no answer within" if server == "hung_server" else "HTTP 500") in line
    assert "tracking.fallback=local" in line
    assert not (tmp_path / "cwd" / "outputs").exists()  # no run directory, no MLflow run


def test_too_long_experiment_name_is_one_line_before_any_run(main_in_process, tmp_path, list_runs):
    before = len(list_runs())
    status, stderr, _ = main_in_process(*EVALUATE, "tracking.experiment=" + "x" * 6000)
    assert status == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("auctionlab: error: tracking.experiment=xxx") and "256" in line
    assert "6000 characters" in line and len(line) < 200
    assert not (tmp_path / "cwd" / "outputs").exists()
    assert len(list_runs()) == before


@pytest.mark.slow  # waits out the tracking timeout (~25 s); the bad-server tests above stay
def test_hung_server_falls_back_to_local_store(cli, tmp_path, hung_server):
    cwd = tmp_path / "fallback"
    cwd.mkdir()
    started = datetime.now()
    result = cli(
        "train",
        "scale=smoke",
        "env=1x2",
        f"tracking.uri={hung_server}",
        "tracking.fallback=local",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert "unreachable (no answer within" in said and "tracking.fallback=local: logging to" in said
    # The job's own log line says when it gave up on the server and fell back.
    stamp = re.search(r"\[([0-9-]+ [0-9:,]+)\]\[auctionlab\]\[WARNING\] - tracking.uri=", said)
    fell_back = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
    assert (fell_back - started).total_seconds() < PATIENCE_S
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


@pytest.mark.parametrize("changed", [False, True])
def test_resumed_tracker_takes_hydra_choice_tags_set_tag_refuses(mlflow_uri, changed):
    """``create_run`` accepts ``choice.env_variants/2x2@env``; ``set_tag`` refuses the ``@``."""
    cfg = OmegaConf.create({"seed": 0, "tracking": {"enabled": True, "uri": mlflow_uri}})
    tags = {"task": "test", "choice.env_variants/2x2@env": "auction"}
    with Tracker(cfg, cfg.tracking, "first part", tags) as first:
        first.log_metrics({"x": 1.0}, 1)
    again_tags = {**tags, "choice.env_variants/2x2@env": "allocation" if changed else "auction"}
    with Tracker(cfg, cfg.tracking, "again", again_tags, resume_run_id=first.run_id) as again:
        again.log_metrics({"x": 2.0}, 2)
    run = mlflow.MlflowClient(tracking_uri=mlflow_uri).get_run(first.run_id)
    assert run.info.status == "FINISHED"
    if changed:  # under the name set_tag accepts
        assert run.data.tags["choice.env_variants/2x2_env"] == "allocation"


def test_resumed_tracker_of_another_run_directory_starts_a_new_run(mlflow_uri, tmp_path, caplog):
    cfg = OmegaConf.create({"seed": 0, "tracking": {"enabled": True, "uri": mlflow_uri}})
    original_dir, copy_dir = str(tmp_path / "original"), str(tmp_path / "copy")
    with Tracker(cfg, cfg.tracking, "original", {"run_dir": original_dir}) as first:
        first.log_metrics({"x": 1.0}, 1)
    tags = {"run_dir": copy_dir}
    with Tracker(cfg, cfg.tracking, "copy", tags, resume_run_id=first.run_id) as again:
        again.log_metrics({"x": 2.0}, 2)
    assert again.run_id != first.run_id
    assert "copied or moved" in caplog.text
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    original = client.get_run(first.run_id)
    assert original.data.tags["run_dir"] == original_dir
    assert [m.value for m in client.get_metric_history(first.run_id, "x")] == [1.0]
    assert client.get_run(again.run_id).data.tags["run_dir"] == copy_dir


class BranchingMechanism(torch.nn.Module):
    """A forward pass that branches on its input's values: ``torch.export`` cannot trace it."""

    def forward(self, reports: torch.Tensor, public=None) -> Outcome:  # noqa: D102
        scale = 2.0 if bool(reports.sum() > 0) else 1.0
        return Outcome(reports * scale, reports.sum(-1))


def test_a_mechanism_torch_export_cannot_trace_gets_no_model_and_one_line(mlflow_uri, caplog):
    cfg = OmegaConf.create({"seed": 0, "tracking": {"enabled": True, "uri": mlflow_uri}})
    with Tracker(cfg, cfg.tracking, "no export", {"task": "test"}) as tracker:
        with caplog.at_level("INFO", logger="auctionlab"):
            assert tracker.log_model(BranchingMechanism(), torch.rand(4, 2, 2)) is False
        assert tracker.active  # not a logging error: the run logs on
    (line,) = [r.getMessage() for r in caplog.records if "MLflow model" in r.getMessage()]
    assert line.startswith("no MLflow model for BranchingMechanism: torch.export cannot trace it")
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_run(tracker.run_id).info.experiment_id
    models = client.search_logged_models([experiment])
    assert all(m.source_run_id != tracker.run_id for m in models)
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    off = OmegaConf.create({"seed": 0, "tracking": {"enabled": False}})
    with Tracker(off, off.tracking, "off", {"task": "test"}) as untracked:
        assert untracked.log_model(BranchingMechanism(), torch.rand(4, 2, 2)) is False


def test_outcome_tensor_joins_and_splits():
    allocation, payment = torch.rand(3, 2, 4), torch.rand(3, 2)
    joined = OutcomeTensor.join(Outcome(allocation, payment))
    assert joined.shape == (3, 2, 5)
    back = OutcomeTensor.split(joined)
    assert torch.equal(back.allocation, allocation) and torch.equal(back.payment, payment)
