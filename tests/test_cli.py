"""The real ``auctionlab`` console script, run as a subprocess in temp directories."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from auctionlab.conf import CONF_DIR
from auctionlab.tracking import flatten, is_setting, param_text

CONF = CONF_DIR


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _run_dirs(cwd: Path, pattern: str = "outputs/runs/*/*") -> list[Path]:
    return sorted(p for p in cwd.glob(pattern) if p.is_dir())


def _numeric_flat(metrics: dict) -> None:
    """Flat numbers, plus the run's ``provenance`` record (strings)."""
    assert metrics, "metrics.json is empty"
    provenance = metrics.pop("provenance")
    assert provenance["auctionlab_version"] and provenance["device"] == "cpu"
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
    # Structured schemas: wrong types, out-of-range values, unknown keys, unsafe targets.
    "wrong-type": (["train", "env.n_bidders=two"], ["env.n_bidders='two'", "integer"]),
    "n-below-one": (["train", "env.n_bidders=0"], ["env.n_bidders=0", ">= 1"]),
    "lower-above-upper": (["train", "env.distribution.low=2"], ["low=2", "high=1", "low < high"]),
    "negative-budget": (
        ["train", "trainer.constraint.budget_start=-0.1"],
        ["trainer.constraint.budget_start=-0.1", "> 0"],
    ),
    "fraction-outside-unit": (
        ["train", "trainer.constraint.anneal_fraction=1.5"],
        ["anneal_fraction=1.5", "(0, 1]"],
    ),
    "negative-lr": (["train", "trainer.lr=-1"], ["trainer.lr=-1", "> 0"]),
    "zero-restarts": (["evaluate", "attack_budget.restarts=0"], ["restarts=0", ">= 1"]),
    "zero-threads": (["train", "threads=0"], ["threads=0", ">= 1"]),
    "bad-progress": (["train", "progress=sometimes"], ["progress=sometimes", "auto"]),
    "list-type": (["train", "mechanism.hidden=[a,b]"], ["mechanism.hidden", "list of integers"]),
    "added-unknown-key": (["train", "+mechanism.depth=3"], ["mechanism.depth", "hidden"]),
    "unsafe-target": (
        ["train", "mechanism._target_=os.system"],
        ["mechanism._target_='os.system'", "component classes defined in auctionlab"],
    ),
    "bad-fallback": (["train", "tracking.fallback=maybe"], ["tracking.fallback=maybe", "local"]),
    "unreachable-mlflow": (
        ["train", "tracking.uri=http://127.0.0.1:9"],
        ["tracking.uri=http://127.0.0.1:9", "unreachable", "tracking.fallback=local"],
    ),
    "resume-missing": (["train", "resume=does/not/exist"], ["resume=does/not/exist"]),
    "resume-in-sweep": (
        ["train", "-m", "resume=a", "seed=0,1"],
        ["resume=", "-m"],
    ),
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
    # mlflow_model: smoke runs skip the export by default (auto)
    result = run_console(["train", "scale=smoke", "train.mlflow_model=true"], cwd)
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
    # The config, and the settings of metrics.json (attacker budgets, sample sizes)
    metrics = json.loads((out / "metrics.json").read_text())
    settings = {k: param_text(v) for k, v in metrics.items() if is_setting(k)}
    assert settings and not set(settings) & set(run.data.metrics)
    assert run.data.params == {**expected, **settings}
    assert run.data.tags["choice.env"] == "2x2"
    assert run.data.tags["choice.mechanism"] == "regretnet"
    assert Path(run.data.tags["run_dir"]).resolve() == out.resolve()
    assert "val_regret_mean" in run.data.metrics


def test_train_log_has_a_progress_line_per_log_every(smoke_train):
    # The console script's stdout is a pipe here: no terminal, so no bar, and train.log gets
    # one line per train.log_every (5 at scale=smoke, 20 iterations).
    out = _run_dirs(smoke_train[0])[0]
    lines = [
        line for line in (out / "train.log").read_text().splitlines() if "- iteration " in line
    ]
    assert [re.search(r"iteration (\d+)/20:", line).group(1) for line in lines] == [
        "5",
        "10",
        "15",
        "20",
    ]
    pattern = (
        r"iteration \d+/20: revenue -?[\d.]+, regret [\d.e+-]+, gamma [\d.e+-]+, "
        r"regret_budget [\d.e+-]+, [\d.e+]+ it/s, eta \d+s$"
    )
    for line in lines:
        assert re.search(pattern, line), line


def test_train_objective_is_its_val_revenue(smoke_train):
    # train.yaml's default objective: val_revenue, maximised, no regret limit; the console
    # script returns it to Hydra (sweep_result) and logs it with its definition.
    cwd, (run,) = smoke_train
    metrics = json.loads((_run_dirs(cwd)[0] / "metrics.json").read_text())
    assert metrics["objective"] == metrics["val_revenue"]
    assert run.data.metrics["objective"] == run.data.metrics["val_revenue"]
    assert run.data.tags["objective"] == "maximize val_revenue"
    assert run.data.params["objective.metric"] == "val_revenue"


LOAD_MODEL = """
import sys
import mlflow.pytorch
import torch
model = mlflow.pytorch.load_model(sys.argv[1])
reports = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(reports), sys.argv[3])
assert "auctionlab" not in sys.modules  # a traced graph: no auctionlab code runs
"""


def test_train_exports_its_mechanism_as_an_mlflow_model(smoke_train, mlflow_uri, tmp_path):
    import subprocess
    import sys

    from auctionlab.mechanisms.export import OutcomeTensor
    from auctionlab.runs import load_trained
    from auctionlab.utils import make_generator

    cwd, (run,) = smoke_train
    env, mechanism, _ = load_trained(str(_run_dirs(cwd)[0]), torch.device("cpu"))
    reports = env.sample(5, make_generator(7, torch.device("cpu"))).values  # another batch size
    with torch.no_grad():
        expected = OutcomeTensor.join(mechanism.eval()(reports))  # [5, 2, 2 + 1]
    torch.save(reports, tmp_path / "reports.pt")
    uri = f"runs:/{run.info.run_id}/model"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_MODEL,
            uri,
            str(tmp_path / "reports.pt"),
            str(tmp_path / "out.pt"),
        ],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert loaded.shape == (5, 2, 3)
    torch.testing.assert_close(loaded, expected, rtol=0, atol=1e-6)
    allocation, payment = OutcomeTensor.split(loaded)
    assert allocation.shape == (5, 2, 2) and payment.shape == (5, 2)


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
    # The adaptive default at smoke: 4 starts, 5 + 20 Adam steps, then a polish of 2 starts x 5
    # steps; what it spent is reported.
    assert metrics["attack_restarts"] == 4 and metrics["attack_steps"] == 30
    most = 16 + 1 + 2 * 5 + 4 * 5 + 1 * 20 + 4 + 2 * 6
    assert 0 < metrics["attack_deviation_steps_per_instance"] <= most
    assert metrics["attack_deviation_steps"] == metrics["attack_deviation_steps_per_instance"] * 256
    assert metrics["profiles"] == 128
    assert metrics["objective"] == metrics["revenue"]  # evaluate.yaml's default objective
    assert (dirs[0] / "regret_vs_budget.png").stat().st_size > 0
    assert len(new) == 1 and new[0].info.status == "FINISHED"


def test_evaluate_trained_run_tags_the_evaluated_choices(smoke_evaluate):
    _, new = smoke_evaluate
    assert new[0].data.tags["choice.mechanism"] == "regretnet"


def test_checkpoint_hash_recorded_and_tracked(smoke_train, smoke_evaluate):
    cwd, (train_run,) = smoke_train
    out = _run_dirs(cwd)[0]
    digest = hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest()
    assert (out / "checkpoint.sha256").read_text().split() == [digest, "checkpoint.pt"]
    assert train_run.data.tags["checkpoint_sha256"] == digest
    assert smoke_evaluate[1][0].data.tags["checkpoint_sha256"] == digest


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated", "hash-missing"])
def test_damaged_checkpoint_refused(damage, smoke_train, cli, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(_run_dirs(smoke_train[0])[0], copy)
    checkpoint = copy / "checkpoint.pt"
    data = bytearray(checkpoint.read_bytes())
    if damage == "flipped-byte":
        data[len(data) // 2] ^= 0xFF
        checkpoint.write_bytes(bytes(data))
    elif damage == "truncated":
        checkpoint.write_bytes(bytes(data[: len(data) // 2]))
    else:
        (copy / "checkpoint.sha256").unlink()
    cwd = tmp_path / "eval"
    cwd.mkdir()
    result = cli("evaluate", f"run={copy}", "scale=smoke", cwd=cwd)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    expected = "cannot be verified" if damage == "hash-missing" else "does not match its recorded"
    assert expected in line and f"run={copy}" in line, line
    assert not (cwd / "outputs").exists()


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
        "attacker=pgd",
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
    result = cli(
        "train",
        "mechanism=rochetnet",
        "env=1x2",
        "scale=smoke",
        "tracking=none",
        "train.mlflow_model=true",  # no MLflow run to export to: nothing to do, no error
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (out,) = _run_dirs(cwd)
    assert json.loads((out / "metrics.json").read_text())["val_regret_mean"] <= 1e-5
    # One bidder, two items: the allocation-probability figure over the value square.
    assert (out / "allocation_map.png").stat().st_size > 0
    rows = (out / "allocation_map.csv").read_text().splitlines()
    assert rows[0] == "v1,v2,p_item1,p_item2,payment" and len(rows) == 1 + 101 * 101


def _check_sweep_summary(cli, cwd: Path, parent, jobs: list, printed: str) -> None:
    """The jobs share one parent run; dirs are named by overrides; the summary; runs env=2x2."""
    import csv
    import statistics

    from mlflow import MlflowClient

    (sweep,) = (cwd / "outputs" / "multirun").glob("*/*")
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == ["0_env-1x2_seed-0", "1_env-1x2_seed-1", "2_env-2x2_seed-0", "3_env-2x2_seed-1"]
    assert parent.info.status == "FINISHED"
    assert (parent.data.params["env"], parent.data.params["seed"]) == ("1x2,2x2", "0,1")
    assert parent.data.tags["sweep.command"].startswith("auctionlab train -m env=1x2,2x2 seed=0,1")
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert {r.data.tags["sweep"] for r in jobs} == {str(sweep.resolve())}
    assert sorted(r.data.tags["sweep.job"] for r in jobs) == ["0", "1", "2", "3"]
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.md", "summary.csv", "sweep.json"} <= logged
    # one row per env: mean and sample std over the two seeds' metrics.json
    rows = {r["env"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert sorted(rows) == ["1x2", "2x2"]
    markdown = (sweep / "summary.md").read_text()
    for env, row in rows.items():
        assert (row["n"], row["failed"], row["seeds"]) == ("2", "0", "0 1")
        done = [json.loads((sweep / n / "metrics.json").read_text()) for n in names if env in n]
        for metric in ("val_revenue", "val_regret_mean", "objective"):
            values = [m[metric] for m in done]
            mean, std = statistics.fmean(values), statistics.stdev(values)
            assert float(row[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12), metric
            assert float(row[f"{metric}_std"]) == pytest.approx(std, rel=1e-9), metric
            assert std > 0, metric  # the seeds differ
        assert row["attacker"] == "2 restarts x 10 steps, 64 profiles"
        revenue = f"{float(row['val_revenue_mean']):.4g} ± {float(row['val_revenue_std']):.2g}"
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {env} |"))
        assert line.startswith(f"| {env} | 2 | 0 | 0 1 | {revenue} |"), line
        assert line in printed
    # `auctionlab runs env=2x2`: the two newest 2x2 runs are this sweep's, with seed and dir
    listed = cli("runs", "env=2x2", "limit=2", cwd=cwd)
    assert listed.returncode == 0, listed.stderr[-2000:]
    table = listed.stdout.splitlines()
    assert table[1].split()[:8] == ["started", "status", "task", "env", "mechanism", "seed"] + [
        "headline",
        "ir_violation",
    ]
    lines = table[2:]
    assert len(lines) == 2 and all(" train 2x2 regretnet " in x for x in lines), lines
    for seed in ("0", "1"):
        where = f"{sweep.relative_to(cwd)}/{2 + int(seed)}_env-2x2_seed-{seed}"
        (line,) = [x for x in lines if where in x]
        assert line.split()[3:7] == ["train", "2x2", "regretnet", seed], line


def test_multirun_one_mlflow_run_per_job(cli, tmp_path, list_runs, smoke_train):
    cwd = tmp_path / "sweep"
    cwd.mkdir()
    before = {r.info.run_id for r in list_runs()}
    result = cli("train", "-m", "env=1x2,2x2", "seed=0,1", "scale=smoke", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    new = [r for r in list_runs() if r.info.run_id not in before]
    (parent,) = [r for r in new if r.data.tags["task"] == "multirun"]  # the sweep's own run
    new = [r for r in new if r is not parent]
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
    _check_sweep_summary(cli, cwd, parent, new, result.stdout)
    # the (2x2, seed 0) job repeats the single smoke run: same seed, same numbers
    (same,) = [r for r in new if (r.data.tags["choice.env"], r.data.params["seed"]) == ("2x2", "0")]
    single = json.loads((_run_dirs(smoke_train[0])[0] / "metrics.json").read_text())
    repeat = json.loads((Path(same.data.tags["run_dir"]) / "metrics.json").read_text())
    for key in ("train_revenue", "train_regret", "val_revenue", "val_regret_mean", "val_welfare"):
        assert repeat[key] == single[key], key
