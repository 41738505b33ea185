"""Multirun summaries: job directory names, the mean ± std table, failed jobs, runs filters.

The full two-env x two-seed train sweep (parent run, table, ``auctionlab runs env=2x2``) runs in
``test_cli.py::test_multirun_one_mlflow_run_per_job``.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from auctionlab.cli import job_dir_override
from auctionlab.errors import ConfigError
from auctionlab.experiments.multirun import (
    EXCLUDE_KEYS,
    JOB_RECORD,
    read_jobs,
    render,
    summarize,
    write_csv,
    write_job_record,
)
from auctionlab.runs import write_metrics
from auctionlab.tasks.common import run_label
from auctionlab.tasks.runs import choice_keys, prepare, rewrite_args


# -- job directory names --------------------------------------------------------------------------
def _job_name(number: int, overrides: list[str], excluded: list[str]) -> str:
    config = OmegaConf.create(
        {
            "hydra": {
                "job": {"num": number, "config": {"override_dirname": {"exclude_keys": excluded}}},
                "overrides": {"task": overrides},
            },
            "name": "${auctionlab_job_dir:}",
        }
    )
    return str(config.name)


def test_job_dirs_are_named_by_the_swept_overrides():
    overrides = ["env=2x2", "scale=smoke", "mechanism.hidden=[64,64]", "run=out/x/1_env-1x2/"]
    name = _job_name(3, overrides, ["scale"])
    assert name == "3_env-2x2_mechanism.hidden-64_64_run-1_env-1x2"
    # `auctionlab evaluate run=<job dir>` takes it unquoted (= and , would not parse)
    parsed = OverridesParser.create().parse_override(f"run=outputs/multirun/t/{name}")
    assert not parsed.is_sweep_override() and parsed.value() == f"outputs/multirun/t/{name}"
    assert _job_name(0, ["seed=1"], ["seed"]) == "0"  # nothing swept: the job number alone


def test_the_console_script_leaves_fixed_keys_out_of_job_dirs():
    args = ["env=1x2,2x2", "seed=0,1", "scale=smoke", "+foo=1", "hydra/launcher=joblib"]
    (override,) = job_dir_override(args)
    assert override == f"{EXCLUDE_KEYS}=['scale','foo']"
    assert OverridesParser.create().parse_override(override).value() == ["scale", "foo"]
    assert job_dir_override([*args, f"{EXCLUDE_KEYS}=[]"]) == []  # the user's own choice


def test_an_evaluation_names_a_sweep_job_with_its_sweep(tmp_path):
    sweep = tmp_path / "17-21-07-551696_train"
    (sweep / "3_env-2x2_seed-1").mkdir(parents=True)
    (tmp_path / "17-00-00_train").mkdir()
    assert run_label(tmp_path / "17-00-00_train") == "17-00-00_train"
    (sweep / "multirun.yaml").write_text("{}")
    assert run_label(sweep / "3_env-2x2_seed-1") == "17-21-07-551696_train/3_env-2x2_seed-1"


# -- the summary table ----------------------------------------------------------------------------
def _job(sweep: Path, number: int, overrides: list[str], metrics: dict | None, failure=None):
    name = "_".join([str(number), *(o.replace("=", "-") for o in overrides[:2])])
    directory = sweep / name
    (directory / ".hydra").mkdir(parents=True)
    if metrics is not None:
        write_metrics(directory, metrics, {"code": "test"})
    if failure != "killed":
        write_job_record(directory, number, overrides, failure, ["revenue", "regret_mean"])
    else:
        (directory / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    return directory


def _metrics(revenue: float, regret: float) -> dict:
    budget = {"val_attack_restarts": 2, "val_attack_steps": 10, "val_profiles": 64}
    return {"val_revenue": revenue, "val_regret_mean": regret, "objective": revenue, **budget}


def test_summary_rows_average_seeds_and_name_failed_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, ["env=1x2", "seed=0", "scale=smoke"], _metrics(0.30, 0.010))
    _job(sweep, 1, ["env=1x2", "seed=1", "scale=smoke"], _metrics(0.34, 0.014))
    _job(sweep, 2, ["env=2x2", "seed=0", "scale=smoke"], _metrics(0.55, 0.020))
    _job(sweep, 3, ["env=2x2", "seed=1", "scale=smoke"], None, "run failed: non-finite loss")
    _job(sweep, 4, ["env=2x3", "seed=0", "scale=smoke"], None, "killed")

    jobs = read_jobs(sweep)
    assert [j.number for j in jobs] == [0, 1, 2, 3, 4]
    summary = summarize(jobs)
    assert summary.keys == ["env"]  # scale is the same everywhere
    assert summary.metrics == ["val_revenue", "val_regret_mean", "objective"]
    rows = {r["env"]: r for r in summary.rows}
    assert [(rows[e]["n"], rows[e]["failed"]) for e in rows] == [(2, 0), (1, 1), (0, 1)]
    mean, std = rows["1x2"]["val_revenue"]
    assert mean == pytest.approx(0.32) and std == pytest.approx(statistics.stdev([0.30, 0.34]))
    assert rows["1x2"]["seeds"] == "0 1"
    assert rows["1x2"]["attacker"] == "2 restarts x 10 steps, 64 profiles"

    text = render(summary, "auctionlab train -m env=1x2,2x2,2x3 seed=0,1")
    assert "| 1x2 | 2 | 0 | 0 1 | 0.32 ± 0.028 | 0.012 ± 0.0028 | 0.32 ± 0.028 |" in text
    assert "| 2x2 | 1 | 1 | 0 | 0.55 | 0.02 | 0.55 |" in text  # one seed: no spread
    assert "Failed jobs (2):" in text
    assert "- job 3 (3_env-2x2_seed-1): run failed: non-finite loss" in text
    assert "- job 4 (4_env-2x3_seed-0): did not finish (no job record)" in text

    with open(write_csv(summary, tmp_path / "summary.csv")) as handle:
        table = list(csv.DictReader(handle))
    assert [r["env"] for r in table] == ["1x2", "2x2", "2x3"]
    assert float(table[0]["val_regret_mean_mean"]) == pytest.approx(0.012)
    assert table[1]["val_revenue_std"] == "" and table[2]["n"] == "0"


# -- auctionlab runs key=value --------------------------------------------------------------------
def test_runs_filters_by_choice_and_seed(compose):
    args = rewrite_args(["env=2x2", "seed=0,1", "limit=5", "filter=metrics.revenue > 0.5"])
    assert args[0] == "+choices.env='2x2'" and args[2] == "limit=5"
    _, filters = prepare(compose("runs", args))
    assert filters == [
        f"metrics.revenue > 0.5 and tags.`choice.env` = '2x2' and params.seed = '{seed}'"
        for seed in ("0", "1")
    ]
    # filter= as typed: Hydra would read its = and quotes as override syntax
    (typed,) = rewrite_args(["filter=tags.task = 'train'"])
    assert compose("runs", [typed]).filter == "tags.task = 'train'"


def test_runs_refuses_an_unknown_choice_key_in_one_line(compose):
    with pytest.raises(ConfigError) as info:
        prepare(compose("runs", rewrite_args(["envv=2x2"])))
    assert str(info.value) == (
        "envv=2x2: not an option of runs nor a choice to filter by; filter by one of: "
        f"{', '.join(choice_keys())} (or filter=<MLflow filter>)"
    )
    assert "env" in choice_keys() and "seed" in choice_keys()


# -- a failed job through the console script ------------------------------------------------------
def test_a_failed_job_is_counted_named_and_fails_the_sweep(cli, tmp_path, list_runs):
    cwd = tmp_path / "failing"
    cwd.mkdir()
    before = {r.info.run_id for r in list_runs()}
    args = [
        "evaluate",
        "-m",
        "mechanism=vcg",
        "env=2x2",
        "oracle=null",
        "objective.metric=revenue,nope",
    ]
    result = cli(*args, "scale=smoke", "threads=1", cwd=cwd)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "auctionlab: sweep job 1: error: objective.metric=nope is not a metric" in result.stderr
    (sweep,) = (cwd / "outputs" / "multirun").glob("*/*")
    assert "1 sweep job(s) failed (1); see " + str(sweep / "summary.md") in result.stderr
    assert sorted(p.name for p in sweep.glob(f"*/{JOB_RECORD}")) == [JOB_RECORD] * 2
    text = (sweep / "summary.md").read_text()
    assert "| revenue | 1 | 0 |" in text and "| nope | 0 | 1 |" in text
    assert "- job 1 (1_objective.metric-nope): error: objective.metric=nope" in text
    new = [r for r in list_runs() if r.info.run_id not in before]
    (parent,) = [r for r in new if r.data.tags["task"] == "multirun"]
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.failed"] == "1"
    children = [r for r in new if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["parent_run_id"] == parent.info.run_id
