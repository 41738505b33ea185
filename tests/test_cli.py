"""The real ``auctionlab`` console script, run as a subprocess in temp directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from auctionlab.tracking import flatten

CONF = Path(__file__).resolve().parent.parent / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _run_dirs(cwd: Path, pattern: str = "outputs/runs/*/*") -> list[Path]:
    return sorted(p for p in cwd.glob(pattern) if p.is_dir())


def _numeric_flat(metrics: dict) -> None:
    assert metrics, "metrics.json is empty"
    for key, value in metrics.items():
        assert isinstance(key, str)
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)


# -- help and info flags -------------------------------------------------------------------------
def test_help_lists_tasks(cli):
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "evaluate" in result.stdout


def test_no_arguments_prints_usage(cli):
    result = cli()
    assert result.returncode == 0, result.stderr
    assert "usage: auctionlab" in result.stdout


def test_cfg_job_prints_config_and_creates_nothing(cli, tmp_path):
    cwd = tmp_path / "cfg"
    cwd.mkdir()
    result = cli("train", "--cfg", "job", "env=1x2", cwd=cwd)
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert cfg.task == "train"
    assert cfg.env.name == "1x2"
    assert not (cwd / "outputs").exists()


# -- bad input: exit 2, one line, nothing left behind -------------------------------------------
BAD_INPUT = {
    "unknown-task": (["foo"], ["'foo'", "train", "evaluate"]),
    "env": (["train", "env=foo"], ["env=foo", *_options("env")]),
    "mechanism": (["train", "mechanism=foo"], ["mechanism=foo", *_options("mechanism")]),
    "trainer": (["train", "trainer=foo"], ["trainer=foo", *_options("trainer")]),
    "attacker": (["train", "attacker=foo"], ["attacker=foo", *_options("attacker")]),
    "scale": (["train", "scale=foo"], ["scale=foo", *_options("scale")]),
    "tracking": (["train", "tracking=foo"], ["tracking=foo", *_options("tracking")]),
    "evaluate-env": (["evaluate", "env=foo"], ["env=foo", *_options("env")]),
    "sweep-value": (["train", "-m", "env=1x2,foo"], ["env=foo", *_options("env")]),
    "misspelled-key": (["train", "trainer.lrr=3"], ["trainer.lrr", "lr"]),
    "sweep-later-point": (
        ["train", "-m", "mechanism=regretnet,rochetnet", "env=2x2"],
        ["rochetnet", "one bidder"],
    ),
    "rochetnet-2x2": (["train", "mechanism=rochetnet", "env=2x2"], ["rochetnet", "one bidder"]),
    "device": (["train", "device=tpu"], ["device=tpu", "cpu"]),
    "nothing-to-train": (["train", "mechanism=vcg"], ["mechanism=vcg", "nothing to train"]),
    "evaluate-learned-without-run": (
        ["evaluate", "mechanism=regretnet"],
        ["mechanism=regretnet", "run="],
    ),
    "evaluate-missing-run": (["evaluate", "run=does/not/exist"], ["run=does/not/exist"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_in_one_line(case, cli, tmp_path, list_runs):
    args, must_name = BAD_INPUT[case]
    cwd = tmp_path / "bad"
    cwd.mkdir()
    before = len(list_runs())
    result = cli(*args, cwd=cwd)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("auctionlab: error:"), lines[0]
    for word in must_name:
        assert word in lines[0], (word, lines[0])
    assert not (cwd / "outputs").exists(), sorted(str(p) for p in (cwd / "outputs").rglob("*"))
    assert len(list_runs()) == before


# -- a smoke training run, then its evaluation ----------------------------------------------------
@pytest.fixture(scope="module")
def smoke_train(tmp_path_factory, run_console, list_runs):
    cwd = tmp_path_factory.mktemp("train")
    before = {r.info.run_id for r in list_runs()}
    result = run_console(["train", "scale=smoke"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    new = [r for r in list_runs() if r.info.run_id not in before]
    return cwd, new


def test_train_writes_run_directory(smoke_train):
    cwd, _ = smoke_train
    dirs = _run_dirs(cwd)
    assert len(dirs) == 1, dirs
    out = dirs[0]
    metrics = json.loads((out / "metrics.json").read_text())
    _numeric_flat(metrics)
    for key in ("val_revenue", "val_regret_mean", "val_attack_restarts", "val_attack_steps"):
        assert key in metrics
    assert metrics["iterations"] == 20
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert isinstance(state["mechanism"], dict) and state["mechanism"]
    assert all(isinstance(v, torch.Tensor) for v in state["mechanism"].values())
    cfg = OmegaConf.load(out / "config.yaml")
    assert cfg.task == "train" and cfg.scale.name == "smoke" and cfg.env.name == "2x2"
    assert (out / "regret_vs_budget.png").stat().st_size > 0


def test_train_records_one_finished_mlflow_run(smoke_train):
    cwd, new = smoke_train
    assert len(new) == 1, [r.info.run_id for r in new]
    run = new[0]
    assert run.info.status == "FINISHED"
    out = _run_dirs(cwd)[0]
    cfg = OmegaConf.to_container(OmegaConf.load(out / "config.yaml"), resolve=True)
    expected = {k: str(v)[:500] for k, v in flatten(cfg).items()}
    assert run.data.params == expected
    assert run.data.tags["choice.env"] == "2x2"
    assert run.data.tags["choice.mechanism"] == "regretnet"
    assert Path(run.data.tags["run_dir"]).resolve() == out.resolve()
    assert "val_regret_mean" in run.data.metrics


@pytest.fixture(scope="module")
def smoke_evaluate(smoke_train, tmp_path_factory, run_console, list_runs):
    train_dir = _run_dirs(smoke_train[0])[0]
    cwd = tmp_path_factory.mktemp("evaluate")
    before = {r.info.run_id for r in list_runs()}
    result = run_console(["evaluate", f"run={train_dir}", "scale=smoke"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    new = [r for r in list_runs() if r.info.run_id not in before]
    return cwd, new


def test_evaluate_trained_run(smoke_evaluate):
    cwd, new = smoke_evaluate
    dirs = _run_dirs(cwd)
    assert len(dirs) == 1, dirs
    metrics = json.loads((dirs[0] / "metrics.json").read_text())
    _numeric_flat(metrics)
    assert metrics["regret_mean"] >= 0
    assert metrics["attack_restarts"] == 4 and metrics["attack_steps"] == 20
    assert metrics["profiles"] == 128
    assert (dirs[0] / "regret_vs_budget.png").stat().st_size > 0
    assert len(new) == 1 and new[0].info.status == "FINISHED"


def test_evaluate_trained_run_tags_the_evaluated_choices(smoke_evaluate):
    _, new = smoke_evaluate
    assert new[0].data.tags["choice.mechanism"] == "regretnet"


def test_hydra_run_dir_respected_and_tracking_none(smoke_train, cli, tmp_path, list_runs):
    train_dir = _run_dirs(smoke_train[0])[0]
    cwd = tmp_path / "eval"
    cwd.mkdir()
    target = tmp_path / "x"
    before = len(list_runs())
    result = cli(
        "evaluate",
        f"run={train_dir}",
        "scale=smoke",
        "tracking=none",
        "attack_budget.restarts=2",
        "attack_budget.steps=3",
        f"hydra.run.dir={target}",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["attack_restarts"] == 2 and metrics["attack_steps"] == 3
    assert not (cwd / "outputs").exists()
    assert len(list_runs()) == before


def test_train_rochetnet_smoke(cli, tmp_path):
    cwd = tmp_path / "rochetnet"
    cwd.mkdir()
    result = cli("train", "mechanism=rochetnet", "env=1x2", "scale=smoke", "tracking=none", cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    (out,) = _run_dirs(cwd)
    assert json.loads((out / "metrics.json").read_text())["val_regret_mean"] <= 1e-5


def test_multirun_one_mlflow_run_per_job(cli, tmp_path, list_runs, smoke_train):
    cwd = tmp_path / "sweep"
    cwd.mkdir()
    before = {r.info.run_id for r in list_runs()}
    result = cli("train", "-m", "env=1x2,2x2", "seed=0,1", "scale=smoke", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    new = [r for r in list_runs() if r.info.run_id not in before]
    assert len(new) == 4
    assert all(r.info.status == "FINISHED" for r in new)
    jobs = sorted((r.data.tags["choice.env"], r.data.params["seed"]) for r in new)
    assert jobs == [("1x2", "0"), ("1x2", "1"), ("2x2", "0"), ("2x2", "1")]
    dirs = {Path(r.data.tags["run_dir"]).resolve() for r in new}
    assert len(dirs) == 4
    for d in dirs:
        assert d.is_relative_to(cwd.resolve() / "outputs" / "multirun")
        _numeric_flat(json.loads((d / "metrics.json").read_text()))
    assert not (cwd / "outputs" / "runs").exists()
    # the (2x2, seed 0) job repeats the single smoke run: same seed, same numbers
    (same,) = [r for r in new if (r.data.tags["choice.env"], r.data.params["seed"]) == ("2x2", "0")]
    single = json.loads((_run_dirs(smoke_train[0])[0] / "metrics.json").read_text())
    repeat = json.loads((Path(same.data.tags["run_dir"]) / "metrics.json").read_text())
    for key in ("train_revenue", "train_regret", "val_revenue", "val_regret_mean", "val_welfare"):
        assert repeat[key] == single[key], key
