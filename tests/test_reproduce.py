"""``auctionlab reproduce`` (every experiment at scale=smoke) and ``auctionlab runs``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from auctionlab.conf import CONF_DIR
from auctionlab.errors import ConfigError
from auctionlab.reporting.tables import BUDGET

CONF = CONF_DIR
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
#: Experiments whose pipeline runs only train / evaluate jobs: the checks below read their
#: evaluate metrics and train / evaluate budgets. Pipelines with teacher / certify stages
#: (curry_table*) are run end to end by tests/test_certify.py.
TRAIN_EVALUATE = [
    name
    for name in EXPERIMENTS
    if set(OmegaConf.load(CONF / "experiment" / f"{name}.yaml").experiment.pipeline)
    <= {"train", "evaluate"}
]


def _objective(table: pd.DataFrame) -> str:
    """The objective column: revenue, or NSW for payment-free allocation ([zeng2025rpf])."""
    return "revenue" if "revenue" in table else "nsw"


def _one_line_error(code: int, stderr: str, *words: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auctionlab: error:"), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_list_names_every_experiment_once(cli):
    result = cli("reproduce", "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == EXPERIMENTS
    for line in lines:
        # what it reproduces names its source by citation key
        assert re.search(r"\[[a-z]+\d{4}[a-z]+\]", line), line
        assert "scale=" in line and "points" in line


def test_help_lists_reproduce_and_runs(cli):
    result = cli("--help")
    assert "reproduce" in result.stdout and "runs" in result.stdout
    assert "experiment (" in result.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["reproduce"], ["experiment=", *EXPERIMENTS]),
        (["reproduce", "experiment=nope"], ["experiment=nope", *EXPERIMENTS]),
        (["reproduce", "experiment=classical_revenue", "scale=nope"], ["scale=nope", "smoke"]),
        (["reproduce", "experiment=classical_revenue", "experiment.pipeline=[fit]"], ["pipeline"]),
        (
            ["reproduce", "experiment=classical_revenue", "experiment.sweep=[{env: 2x9}]"],
            ["env=2x9", "2x2"],
        ),
        (
            ["reproduce", "experiment=learned_additive", "experiment.sweep=[{mechanism: vcg}]"],
            ["nothing to train"],
        ),
        (
            ["reproduce", "experiment=classical_revenue", "~experiment.table.columns.steps"],
            ["regret_mean", "evaluate.attack_steps"],
        ),
        (["runs", "limit=0"], ["limit=0"]),
    ],
)
def test_bad_input_fails_in_one_line_before_any_job(args, words, capsys, list_runs):
    # in-process: the pre-check exits before Hydra starts (the console script is covered by
    # test_cli.py and by the subprocess case below)
    from auctionlab.cli import main

    before = len(list_runs())
    capsys.readouterr()  # drop the store's first-use log lines
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    _one_line_error(exit_info.value.code, captured.err, *words)
    assert not Path("outputs").exists()
    assert len(list_runs()) == before


def test_bad_experiment_from_the_console_script(cli, tmp_path):
    cwd = tmp_path / "bad"
    cwd.mkdir()
    result = cli("reproduce", "experiment=nope", cwd=cwd)
    _one_line_error(result.returncode, result.stderr, "experiment=nope", *EXPERIMENTS)
    assert not (cwd / "outputs").exists()


#: Smoke runs that go to ``make test-slow`` to keep the default suite within its time budget;
#: their plans, budgets and table specs stay in the default suite (tests/test_rpf_experiments.py,
#: tests/test_ca_experiments.py, tests/reporting/test_tables.py).
SLOW_SMOKE = {
    "rpf_table1",
    "rpf_fig1",
    "rpf_fig3",
    "rpf_fig5",
    "rpf_table2",
    "ca_frontier",
    "ca_baselines",
    "ca_gradients",
    "ca_stress",
    "ca_scaling",
    "ca_tolerance",
    # the two slowest of the rest (about 60 s and 20 s on CI): lic_table1's plan and its rows'
    # settings are checked by tests/test_lic_experiment.py, myerson_single_item runs in-process
    # below (test_reproduce.py's sweep of it) and in tests/test_references.py
    "lic_table1",
    "myerson_single_item",
    # two smoke trainings and six evaluations; its staged sweep keys and shared training run
    # in the default suite below (test_a_later_stage_sweep_key_shares_one_training)
    "size_generalisation",
}


def _evaluate_budget(name: str) -> tuple[int, int]:
    """Restarts x steps that evaluate reports at scale=smoke: PGD's 4 x 20 where the
    experiment asks for it, else the adaptive attacker's (4 starts, 30 steps at most)."""
    node = OmegaConf.load(CONF / "experiment" / f"{name}.yaml").experiment
    return (4, 20) if "attacker=pgd" in list(node.overrides.get("evaluate", [])) else (4, 30)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW_SMOKE else name
        for name in TRAIN_EVALUATE
    ],
)
def reproduced(request, tmp_path_factory, run_console, list_runs):
    """``auctionlab reproduce experiment=<name> scale=smoke`` in a fresh directory."""
    name = request.param
    cwd = tmp_path_factory.mktemp(name)
    before = {r.info.run_id for r in list_runs()}
    result = run_console(["reproduce", f"experiment={name}", "scale=smoke", "threads=1"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (out,) = (cwd / "outputs" / "runs").glob("*/*_reproduce")
    new = [r for r in list_runs() if r.info.run_id not in before]
    return name, out, new, result


def test_reproduce_writes_table_and_plot(reproduced):
    name, out, _, result = reproduced
    for suffix in ("md", "csv", "tex", "png"):
        path = out / f"{name}.{suffix}"
        assert path.stat().st_size > 0, path
        assert str(path) in result.stdout
    cfg = OmegaConf.load(out / "config.yaml")
    assert cfg.experiment.name == name and cfg.scale.name == "smoke"
    table = pd.read_csv(out / f"{name}.csv")
    index = list(cfg.experiment.table.index)
    assert not table.duplicated(index).any()
    assert len(table) == len(pd.read_csv(out / "points.csv")["point"].unique())
    # every regret column stands next to the attacker budget that produced it
    regrets = [
        c
        for c in table.columns
        if ("regret" in c or c == "exploitability") and not c.startswith("lit_")
    ]
    assert regrets
    for column in ("restarts", "steps", "profiles"):
        assert table[column].notna().all() and (table[column] > 0).all(), column
    restarts, steps = _evaluate_budget(name)  # scale=smoke
    assert (table["steps"] == steps).all() and (table["profiles"] == 128).all()
    assert (table["restarts"] == restarts).all()
    objective = _objective(table)
    assert table[objective].notna().all() and (table[objective] > 0).all()
    markdown = (out / f"{name}.md").read_text()
    assert "| restarts | steps | profiles |" in markdown
    assert "\\begin{tabular}" in (out / f"{name}.tex").read_text()


def test_reproduce_points_are_normal_jobs(reproduced):
    name, out, _, _ = reproduced
    cfg = OmegaConf.load(out / "config.yaml")
    pipeline = list(cfg.experiment.pipeline)
    with (out / "points.csv").open() as handle:
        jobs = list(csv.DictReader(handle))
    assert jobs and all(j["status"] == "FINISHED" for j in jobs)
    # every point runs the pipeline; a fixed rule skips train where fixed_rules=evaluate
    fixed = [s for s in pipeline if s != "train"] if cfg.experiment.get("fixed_rules") else None
    for point in {j["point"] for j in jobs}:
        stages = [j["stage"] for j in jobs if j["point"] == point]
        assert stages in (pipeline, fixed), stages
    for job in jobs:
        directory = Path(job["run_dir"])
        assert directory.is_relative_to(out / "points")
        assert (directory / ".hydra" / "overrides.yaml").exists()
        job_cfg = OmegaConf.load(directory / "config.yaml")
        assert job_cfg.task == job["stage"] and job_cfg.scale.name == "smoke"
        metrics = json.loads((directory / "metrics.json").read_text())
        assert job["source"] == "mlflow" and job["mlflow_run_id"]
        if job["stage"] == "evaluate":
            assert {f"{b}" for b in BUDGET} <= set(metrics)


def test_reproduce_mlflow_parent_and_children(reproduced, mlflow_client):
    name, out, new, _ = reproduced
    (parent,) = [r for r in new if r.data.tags.get("task") == "reproduce"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["experiment"] == name
    children = [r for r in new if r is not parent]
    assert children
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    with (out / "points.csv").open() as handle:
        ids = {j["mlflow_run_id"] for j in csv.DictReader(handle)}
    assert ids == {r.info.run_id for r in children}
    artifacts = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id)}
    assert {f"{name}.{s}" for s in ("md", "csv", "tex", "png")} | {"points.csv"} <= artifacts
    # the table's numbers are the children's MLflow metrics
    table = pd.read_csv(out / f"{name}.csv")
    objective = _objective(table)
    evaluations = [r for r in children if r.data.tags["task"] == "evaluate"]
    revenues = sorted(r.data.metrics[objective] for r in evaluations)
    assert sorted(table[objective]) == pytest.approx(revenues)


def test_runs_lists_the_children_with_their_budget(reproduced, compose, mlflow_uri, capsys):
    from auctionlab.tasks import runs

    name, _, new, _ = reproduced
    (parent,) = [r for r in new if r.data.tags.get("task") == "reproduce"]
    overrides = [f"parent={parent.info.run_id}", "limit=50", f"tracking.uri={mlflow_uri}"]
    cfg = compose("runs", overrides)
    rows = runs.run(cfg)
    printed = capsys.readouterr().out
    assert len(rows) == len(new) - 1
    assert {r["run_id"] for r in rows} == {r.info.run_id for r in new if r is not parent}
    for row in rows:
        # the env family's headline metrics (NSW for allocation, revenue for auctions...),
        # always the IR violation, regret next to its budget
        run = next(r for r in new if r.info.run_id == row["run_id"])
        names = run.data.tags["headline_metrics"].split(",")
        label, _, value = row["headline"].split()[0].partition("=")
        assert label == names[0] and float(value) == float(value)  # a number, not NaN
        assert row["status"] == "FINISHED" and row["ir_violation"]
        restarts, steps = _evaluate_budget(name)
        expected = {"evaluate": f"{restarts}x{steps} @128", "train": "2x10 @64"}
        assert row["budget"] == expected[row["task"]]
        assert row["name"] in printed


def test_runs_without_a_store_says_so(cli, tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    result = cli("runs", f"tracking.uri=sqlite:///{cwd / 'none.db'}", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "no MLflow store" in result.stdout
    assert not (cwd / "none.db").exists() and not (cwd / "outputs").exists()


def test_a_failed_job_is_reported_and_fails_the_task(compose, monkeypatch, mlflow_client):
    # in-process with a job that raises: the table keeps the row with missing numbers,
    # points.csv names the error, the parent and the child MLflow runs are FAILED
    from auctionlab.tasks import evaluate, reproduce

    real = evaluate.evaluate_mechanism

    def broken(mechanism, env, *args, **kwargs):
        if env.n_bidders == 5:
            raise RuntimeError("injected failure")
        return real(mechanism, env, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_mechanism", broken)
    sweep = "experiment.sweep=[{mechanism: second_price, env: '3x1,5x1'}]"
    cfg = compose("reproduce", ["experiment=myerson_single_item", "scale=smoke", sweep])
    with pytest.raises(RuntimeError, match="1 of 2 jobs failed"):
        reproduce.run(cfg)
    (out,) = Path("outputs").glob("adhoc")
    table = pd.read_csv(out / "myerson_single_item.csv")
    assert list(table["env"]) == ["3x1", "5x1"]
    assert table["revenue"].notna().tolist() == [True, False]
    with (out / "points.csv").open() as handle:
        jobs = list(csv.DictReader(handle))
    assert [j["status"] for j in jobs] == ["FINISHED", "FAILED"]
    assert "injected failure" in jobs[1]["error"]
    child = mlflow_client.get_run(jobs[1]["mlflow_run_id"])
    assert child.info.status == "FAILED"
    parent = mlflow_client.get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED" and parent.data.tags["task"] == "reproduce"


def test_a_later_stage_sweep_key_shares_one_training(compose, list_runs):
    # evaluate/env: one trained EquivariantNet (one train job) evaluated on two sizes
    from auctionlab.tasks import reproduce

    before = {r.info.run_id for r in list_runs()}
    sweep = "experiment.sweep=[{mechanism: equivariant_net, env: 2x2, evaluate/env: '2x2,2x3'}]"
    cfg = compose("reproduce", ["experiment=size_generalisation", "scale=smoke", sweep])
    reproduce.run(cfg)
    (out,) = Path("outputs").glob("adhoc")
    with (out / "points.csv").open() as handle:
        jobs = list(csv.DictReader(handle))
    trains = {j["run_dir"] for j in jobs if j["stage"] == "train"}
    evaluations = [j for j in jobs if j["stage"] == "evaluate"]
    assert len(trains) == 1 and len(evaluations) == 2
    assert [j["overrides"].split()[-1] for j in evaluations] == ["env=2x2", "env=2x3"]
    for job, size in zip(evaluations, ("2x2", "2x3"), strict=True):
        assert OmegaConf.load(Path(job["run_dir"]) / "config.yaml").env.name == size
    new = [r for r in list_runs() if r.info.run_id not in before]
    tasks = sorted(r.data.tags["task"] for r in new)
    assert tasks == ["evaluate", "evaluate", "reproduce", "train"]
    table = pd.read_csv(out / "size_generalisation.csv")
    assert list(table["evaluate/env"]) == ["2x2", "2x3"]
    assert table["iterations"].tolist() == [20, 20]  # both rows read the one training
    assert table["revenue"].nunique() == 2


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("train/env", ["sweep key train/env", "later stage", "evaluate"]),
        ("certify/env", ["sweep key certify/env", "later stage", "evaluate"]),
    ],
)
def test_a_stage_key_must_name_a_later_stage(key, words, compose):
    from auctionlab.experiments.plan import build_plan

    sweep = f"experiment.sweep=[{{mechanism: equivariant_net, env: 2x5, {key}: 3x10}}]"
    cfg = compose("reproduce", ["experiment=size_generalisation", "scale=smoke", sweep])
    with pytest.raises(ConfigError) as caught:
        build_plan(cfg, ("env", "mechanism"))
    for word in words:
        assert word in str(caught.value)
