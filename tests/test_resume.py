"""Long runs survive: kill -9 then resume, Ctrl-C, SIGTERM, NaN (through the console script)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from auctionlab.cli import resume_overrides
from auctionlab.errors import Interrupted
from auctionlab.reporting.curves import read_history
from auctionlab.training import Trainer

#: A tiny but real training run: ~1-2 ms per iteration on one thread.
TINY = [
    "scale=smoke",
    "env=1x2",
    "mechanism.hidden=[16,16]",
    "attack_budget.steps=3",
    "train.iterations=1500",
    "train.log_every=20",
    "train.checkpoint_every=20",
    "threads=1",
]
#: Timing metrics, the only ones allowed to differ between runs.
TIMING = {"train_seconds", "seconds_per_iteration"}


def _only_run_dir(cwd: Path) -> Path:
    (run,) = [p for p in cwd.glob("outputs/runs/*/*") if p.is_dir()]
    return run


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.02)


def _metrics(run: Path) -> dict[str, float]:
    data = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in data.items() if k not in TIMING}


def _run(cwd: Path, mlflow_uri: str):
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run_id = json.loads((_only_run_dir(cwd) / "tracking.json").read_text())["run_id"]
    return client, client.get_run(run_id)


def _started_and_checkpointed(spawn_console, cwd: Path) -> subprocess.Popen:
    """A TINY training run in the background, once its first checkpoint is on disk."""
    process = spawn_console(["train", *TINY], cwd)
    _wait_for(cwd / "outputs", process)
    while not list(cwd.glob("outputs/runs/*/*/checkpoint.sha256")):
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    return process


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, run_console) -> Path:
    cwd = tmp_path_factory.mktemp("whole")
    result = run_console(["train", *TINY], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return _only_run_dir(cwd)


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run) -> dict[str, float]:
    return _metrics(uninterrupted_run)


def test_kill_then_resume_equals_uninterrupted(
    uninterrupted, uninterrupted_run, tmp_path, mlflow_uri, run_console, spawn_console
):
    cwd = tmp_path / "killed"
    cwd.mkdir()
    process = _started_and_checkpointed(spawn_console, cwd)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = _only_run_dir(cwd)
    assert not (run / "metrics.json").exists()

    result = run_console(["train", f"resume={run}"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _only_run_dir(cwd) == run  # same directory, no new one
    assert _metrics(run) == uninterrupted
    client, mlflow_run = _run(cwd, mlflow_uri)
    assert mlflow_run.info.status == "FINISHED"
    assert int(mlflow_run.data.tags["resumed_at_iteration"]) > 0
    steps = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "train_revenue")]
    assert min(steps) == 20 and max(steps) == 1500  # one history across both parts
    # history.csv too: the rows trained again after the kill are there once, as uninterrupted
    history = read_history(run / "history.csv")
    assert history["iteration"] == [float(i) for i in range(20, 1501, 20)]
    assert history == read_history(uninterrupted_run / "history.csv")


@pytest.mark.slow  # the SIGTERM test runs the same path; SIGINT's handler is tested in-process
def test_ctrl_c_saves_checkpoint_and_resume_finishes(
    uninterrupted, tmp_path, mlflow_uri, run_console, spawn_console
):
    cwd = tmp_path / "interrupted"
    cwd.mkdir()
    process = _started_and_checkpointed(spawn_console, cwd)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr  # 128 + SIGINT, as a shell reports it
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("auctionlab: run failed: interrupted at iteration"), last
    assert "(SIGINT)" in last and "resume=" in last
    run = _only_run_dir(cwd)
    client, mlflow_run = _run(cwd, mlflow_uri)
    assert mlflow_run.info.status == "KILLED"
    assert "interrupted" in mlflow_run.data.tags["failure"]
    assert not (run / "metrics.json").exists()

    resumed = run_console(["train", f"resume={run}"], cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = _metrics(run)
    # Interrupted between log points, the windows around the interruption differ; what the
    # run ends with (weights -> validation) must not.
    for key, value in uninterrupted.items():
        if key.startswith(("val_", "iterations")):
            assert metrics[key] == value, key
    finished = client.get_run(mlflow_run.info.run_id)
    assert finished.info.status == "FINISHED"
    assert "failure" not in finished.data.tags  # the interruption's reason is stale now


@pytest.mark.slow  # ~50 s; the default suite keeps kill-then-resume (exact resume)
def test_sigterm_stops_like_ctrl_c_and_a_copied_run_dir_resumes_into_a_new_run(
    uninterrupted, tmp_path, mlflow_uri, run_console, spawn_console
):
    # A comma in the path: Hydra reads an unquoted `resume=<dir>` with one as a sweep.
    cwd = tmp_path / "pre,empted"
    cwd.mkdir()
    process = _started_and_checkpointed(spawn_console, cwd)
    process.send_signal(signal.SIGTERM)  # what `timeout`, Slurm and `docker stop` send
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr  # 128 + SIGTERM
    assert "Traceback" not in stderr
    run = _only_run_dir(cwd)
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("auctionlab: run failed: interrupted at iteration"), last
    assert "(SIGTERM)" in last and last.endswith(f"continue with: auctionlab train resume={run}")
    assert not (run / "metrics.json").exists()
    client, killed = _run(cwd, mlflow_uri)
    assert killed.info.status == "KILLED" and "SIGTERM" in killed.data.tags["failure"]
    history = client.get_metric_history(killed.info.run_id, "train_revenue")
    stopped_at = torch.load(run / "checkpoint.pt", weights_only=True)["iteration"]

    # A copy carries the original's tracking.json; resumed, it is a run of its own.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    short = f"train.iterations={stopped_at + 20}"  # enough to finish: validation, tags, files
    resumed_copy = run_console(["train", f"resume={copy}", short], tmp_path)
    assert resumed_copy.returncode == 0, resumed_copy.stderr[-3000:]
    assert "starting a new MLflow run" in resumed_copy.stdout + resumed_copy.stderr
    copy_id = json.loads((copy / "tracking.json").read_text())["run_id"]
    assert copy_id != killed.info.run_id
    copy_run = client.get_run(copy_id)
    assert copy_run.info.status == "FINISHED"
    assert copy_run.data.tags["run_dir"] == str(copy.resolve())
    original = client.get_run(killed.info.run_id)
    assert original.info.status == "KILLED"
    assert original.data.tags == killed.data.tags  # run_dir, failure, no checkpoint hash
    assert original.data.metrics == killed.data.metrics
    assert client.get_metric_history(killed.info.run_id, "train_revenue") == history

    # The original, resumed with the command it printed, finishes its own MLflow run.
    resumed = run_console(["train", f"resume={run}"], cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _only_run_dir(cwd) == run
    metrics = _metrics(run)
    for key, value in uninterrupted.items():
        if key.startswith(("val_", "iterations")):
            assert metrics[key] == value, key
    finished = client.get_run(killed.info.run_id)
    assert finished.info.status == "FINISHED" and "failure" not in finished.data.tags
    assert finished.data.tags["run_dir"] == str(run.resolve())


def test_sigterm_stops_evaluate_killed_and_without_metrics(tmp_path, mlflow_client, spawn_console):
    cwd = tmp_path / "evaluate"
    cwd.mkdir()
    heavy = ["profiles=4096", "attack_budget.steps=400"]  # seconds of work to interrupt
    process = spawn_console(["evaluate", "mechanism=vcg", "env=2x2", "scale=smoke", *heavy], cwd)
    while not list(cwd.glob("outputs/runs/*/*/config.yaml")):  # written once the run is open
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "auctionlab: interrupted by SIGTERM", stderr
    assert "Traceback" not in stderr
    run = _only_run_dir(cwd)
    assert not (run / "metrics.json").exists()
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    (killed,) = mlflow_client.search_runs(experiments, f"tags.run_dir = '{run.resolve()}'")
    assert killed.info.status == "KILLED" and not killed.data.metrics
    # The files it has (config, log, Hydra's record) are its artifacts all the same.
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert {"config.yaml", "evaluate.log", ".hydra/overrides.yaml"} <= files
    folders = ["", ".hydra"]
    logged = {a.path for f in folders for a in mlflow_client.list_artifacts(killed.info.run_id, f)}
    assert logged - {".hydra"} == files


@pytest.fixture
def sigint_as_in_a_terminal():
    """Ctrl-C raises here, even when the suite runs as a background job (SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_first_signal_asks_to_stop_and_a_second_stops_at_once(sigint_as_in_a_terminal):
    trainer = SimpleNamespace(stop_requested=False, stop_signal=signal.SIGINT)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def deliver(signum: int) -> None:
        os.kill(os.getpid(), signum)
        for _ in range(100):  # Python runs the handler between bytecodes, in the main thread
            time.sleep(0.001)

    with Trainer._interruptible(trainer):
        deliver(signal.SIGTERM)
        assert trainer.stop_requested and trainer.stop_signal == signal.SIGTERM
        with pytest.raises(Interrupted) as stopped:
            deliver(signal.SIGINT)
    assert stopped.value.signum == signal.SIGINT
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("name", ["a,b", "it's [1,2]", "x=y {a,b}"])
def test_resume_directory_with_hydra_syntax_is_one_quoted_value(tmp_path, name):
    run = tmp_path / name / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- env=1x2\n- train.iterations=10\n")
    args = resume_overrides([f"resume={run}", "train.iterations=20"])
    parsed = OverridesParser.create().parse_overrides(args)
    assert not any(o.is_sweep_override() for o in parsed), args
    values = {o.get_key_element(): o.value() for o in parsed}
    assert values["resume"] == str(run) and values["hydra.run.dir"] == str(run)
    assert values["env"] == "1x2" and values["train.iterations"] == 20


def test_nan_stops_keeps_last_good_checkpoint_and_fails_mlflow_run(cli, tmp_path, mlflow_uri):
    cwd = tmp_path / "nan"
    cwd.mkdir()
    # rho doubles past the float range at iteration 15: the loss becomes inf.
    result = cli(
        "train",
        "scale=smoke",
        "env=1x2",
        "trainer=lagrangian",
        "trainer.constraint.rho_increment=1e308",
        "trainer.constraint.rho_every=15",
        cwd=cwd,
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "non-finite loss at iteration 15" in last and "iteration 10" in last, last
    assert "train.detect_anomaly=true" in last
    run = _only_run_dir(cwd)
    assert not (run / "metrics.json").exists()
    failure = json.loads((run / "failure.json").read_text())
    assert failure["last_good_checkpoint_iteration"] == 10
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 10
    _, mlflow_run = _run(cwd, mlflow_uri)
    assert mlflow_run.info.status == "FAILED"
    assert "non-finite loss" in mlflow_run.data.tags["failure"]
    refused = cli("evaluate", f"run={run}", "scale=smoke", cwd=cwd)
    assert refused.returncode == 2 and "that training failed" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_detect_anomaly_switch_runs(cli, tmp_path):
    result = cli("train", "scale=smoke", "env=1x2", "train.detect_anomaly=true", "tracking=none")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow  # the tag names are tested in-process (tests/test_tracking.py)
def test_a_finished_2x2_run_resumes_into_its_mlflow_run_and_a_refused_resume_leaves_it_sealed(
    cli, tmp_path, mlflow_uri
):
    """2x2 composes ``env_variants/2x2@env``: a tag name MLflow's ``set_tag`` refuses."""
    run = tmp_path / "run"
    first = cli("train", "env=2x2", "scale=smoke", f"hydra.run.dir={run}", "threads=1")
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]

    # An unreachable store is refused before the job starts: the run stays sealed as it was.
    sealed = (run / "manifest.json").read_bytes()
    unreachable = ["tracking.uri=http://127.0.0.1:9", "tracking.fallback=none"]
    refused = cli("train", f"resume={run}", "train.iterations=30", *unreachable)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert (run / "manifest.json").read_bytes() == sealed

    resumed = cli("train", f"resume={run}", "train.iterations=30")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "tracking.json").read_text())["run_id"] == run_id
    finished = mlflow.MlflowClient(tracking_uri=mlflow_uri).get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["resumed_at_iteration"] == "20"
    assert (run / "manifest.json").exists()
    evaluated = cli("evaluate", f"run={run}", "scale=smoke", "threads=1")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
