"""What a run looks like in MLflow: results as metrics, settings as params, curves stepped, and
every file of the run directory as an artifact (finished or failed runs).

A smoke train and an evaluation of it through the real console script, into the session's sqlite
store; then a few direct :class:`~auctionlab.tracking.Tracker` checks.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from auctionlab.reporting.collect import logged_record
from auctionlab.tracking import CURVE_KEY, Tracker, is_setting, run_files

#: Budget numbers of a smoke train's validation and training attackers: params, never metrics.
TRAIN_SETTINGS = (
    "val_attack_restarts",
    "val_attack_steps",
    "val_attack_step_size",
    "val_attack_deviation_steps",
    "val_profiles",
    "val_local_attack_steps",
    "val_pgd_attack_restarts",
    "train_attack_restarts",
    "train_attack_steps",
)
#: The same for evaluate (with the oracle's grid).
EVALUATE_SETTINGS = ("attack_restarts", "attack_steps", "profiles", "oracle_points")


def _run(client, directory: Path):
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, f"tags.run_dir = '{directory.resolve()}'")
    return run


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _files(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_console) -> dict[str, Path]:
    """A smoke train and its evaluation, each in its own run directory."""
    root = tmp_path_factory.mktemp("layout")
    common = ["scale=smoke", "threads=1"]
    train, evaluate = root / "train", root / "evaluate"
    done = run_console(["train", "env=2x2", *common, f"hydra.run.dir={train}"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_console(["evaluate", f"run={train}", *common, f"hydra.run.dir={evaluate}"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"train": train, "evaluate": evaluate}


@pytest.mark.parametrize(
    ("task", "known"), [("train", TRAIN_SETTINGS), ("evaluate", EVALUATE_SETTINGS)]
)
def test_budget_numbers_are_params_and_every_number_is_somewhere(
    trained, mlflow_client, task, known
):
    directory = trained[task]
    run = _run(mlflow_client, directory)
    saved = json.loads((directory / "metrics.json").read_text())
    numbers = {k: v for k, v in saved.items() if isinstance(v, int | float)}
    for key in known:
        assert key in numbers, key  # metrics.json keeps them, next to the results
        assert key not in run.data.metrics, key
        assert float(run.data.params[key]) == pytest.approx(numbers[key]), key
    for key in run.data.metrics:  # no chart of a constant setting, no flattened curve point
        assert not is_setting(key) and CURVE_KEY.match(key) is None, key
    # What reproduce and tune read back: every number under its metrics.json name.
    assert logged_record(mlflow_client, run) == pytest.approx(numbers)
    for key, value in numbers.items():  # nothing lost on the way
        if CURVE_KEY.match(key) is not None:
            continue  # test_the_curve_is_one_stepped_metric_per_restart_count
        if is_setting(key):
            assert float(run.data.params[key]) == pytest.approx(value), key
        else:
            assert run.data.metrics[key] == pytest.approx(value), key


def test_the_curve_is_one_stepped_metric_per_restart_count(trained, mlflow_client):
    directory = trained["train"]
    run = _run(mlflow_client, directory)
    with (directory / "regret_vs_budget.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len({row["restarts"] for row in rows}) < len(rows)  # several steps per restart count
    for restarts in {row["restarts"] for row in rows}:
        name = f"val_curve_r{int(float(restarts))}_regret_mean"
        history = mlflow_client.get_metric_history(run.info.run_id, name)
        logged = dict(sorted((m.step, m.value) for m in history))
        expected = {
            int(float(r["steps"])): float(r["regret_mean"])
            for r in rows
            if r["restarts"] == restarts
        }
        assert logged == pytest.approx(expected), name
    assert "regret_vs_budget.csv" in _artifacts(mlflow_client, run.info.run_id)


@pytest.mark.parametrize("task", ["train", "evaluate"])
def test_every_file_of_the_run_directory_is_an_artifact(trained, mlflow_client, task, tmp_path):
    directory = trained[task]
    run = _run(mlflow_client, directory)
    files = _files(directory)
    assert {"config.yaml", "metrics.json", ".hydra/overrides.yaml", f"{task}.log"} <= files
    if task == "train":
        assert {"choices.json", "checkpoint.pt"} <= files
    assert _artifacts(mlflow_client, run.info.run_id) == files
    if task == "train":  # the uploaded log is the whole log, its last line included
        local = mlflow_client.download_artifacts(run.info.run_id, "train.log", str(tmp_path))
        assert "done: " in Path(local).read_text()


def test_runs_shows_the_budget_from_the_params(trained, mlflow_client):
    from auctionlab.tasks.runs import describe

    row = describe(_run(mlflow_client, trained["train"]))
    assert row["budget"] == "2x10 @64"  # scale=smoke's validation attacker


def test_a_failed_run_logs_its_files(tmp_path, run_console, mlflow_client):
    # Fails once the numbers are in (the objective names no metric): config and log are there.
    out = tmp_path / "failed"
    args = ["mechanism=vcg", "env=2x2", "scale=smoke", "threads=1", "oracle=null"]
    args += ["objective.metric=nope", f"hydra.run.dir={out}"]
    done = run_console(["evaluate", *args], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "objective.metric=nope" in done.stderr
    run = _run(mlflow_client, out)
    assert run.info.status == "FAILED"
    files = _files(out)
    assert {"config.yaml", "evaluate.log", ".hydra/overrides.yaml"} <= files
    assert _artifacts(mlflow_client, run.info.run_id) == files


# -- the tracker alone ----------------------------------------------------------------------------
def test_run_files_leave_out_links_other_runs_and_the_store(tmp_path):
    root = tmp_path / "run"
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text("a: 1\n")
    (root / "config.yaml").write_text("a: 1\n")
    (root / "figures").mkdir()
    (root / "figures" / "map.png").write_bytes(b"png")
    job = root / "points" / "0" / "train"  # a reproduce point's job: a run of its own
    job.mkdir(parents=True)
    (job / "config.yaml").write_text("a: 2\n")
    (job / "checkpoint.pt").write_bytes(b"weights")
    secret = tmp_path / "secret.txt"
    secret.write_text("not the run's")
    os.symlink(secret, root / "link.txt")
    os.symlink(tmp_path, root / "linked_folder")
    (root / "store").mkdir()
    (root / "store" / "mlflow.db").write_bytes(b"sqlite")
    skip = [root / "store" / "mlflow.db"]
    found = {p.relative_to(root).as_posix() for p in run_files(root, skip)}
    assert found == {".hydra/config.yaml", "config.yaml", "figures/map.png"}


def test_a_changed_setting_of_a_continued_run_becomes_a_tag(compose, mlflow_client, tmp_path):
    cfg = compose("train", ["scale=smoke"])
    tags = {"task": "train", "run_dir": str(tmp_path)}
    with Tracker(cfg, cfg.tracking, "settings test", tags) as tracker:
        tracker.log_metrics({"val_regret_mean": 0.5, "val_profiles": 64.0, "delta": 0.05}, 1)
        tracker.log_metrics({"val_regret_mean": 0.25, "val_profiles": 128.0}, 2)
    run = mlflow_client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["val_profiles"] == "64" and run.data.params["delta"] == "0.05"
    assert run.data.tags["val_profiles"] == "128"  # params never change
    assert run.data.metrics == {"val_regret_mean": 0.25}
    # No metrics.json artifact: the settings come back from the params.
    assert logged_record(mlflow_client, run) == {"val_profiles": 64.0, "delta": 0.05}
