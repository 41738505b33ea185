"""``auctionlab tune``: the search space, a study resumed through the console script, pareto."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from auctionlab.errors import ConfigError
from auctionlab.experiments.stages import run_stage
from auctionlab.experiments.tune import (
    baseline_params,
    build_tune_plan,
    parse_dimension,
    parse_space,
    trial_overrides,
)
from auctionlab.tasks.reproduce import task_function
from auctionlab.tasks.tune import rewrite_args

#: A small space every trial of the end-to-end tests samples from.
SPACE = [
    "~tune.space",
    "+tune.space.trainer.lr=tag(log, interval(1e-3, 1e-2))",
    "+tune.space.mechanism.hidden=choice([16],[32,32])",
]


# -- the space: Hydra sweep syntax <-> Optuna distributions <-> overrides ----------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("interval(1e-4, 1e-2)", FloatDistribution(1e-4, 1e-2)),
        ("tag(log, interval(1e-4, 1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
        ("tag(int, interval(1, 10))", IntDistribution(1, 10)),
        ("tag(int, log, interval(1, 64))", IntDistribution(1, 64, log=True)),
        ("range(0,3)", IntDistribution(0, 2)),
        ("range(0,10,5)", IntDistribution(0, 5, step=5)),
        ("range(0,1,0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
        ("choice([64,64],[100,100,100])", CategoricalDistribution(["[64,64]", "[100,100,100]"])),
        ("0.001,0.003", CategoricalDistribution([0.001, 0.003])),
        ("choice(adam, sgd)", CategoricalDistribution(["adam", "sgd"])),
    ],
)
def test_sweep_syntax_becomes_an_optuna_distribution(text, expected):
    dimension = parse_dimension("trainer.x", text)
    assert dimension.distribution == expected
    assert dimension.key == "trainer.x" and dimension.text == text


def test_sampled_values_go_back_as_the_overrides_hydra_reads():
    space = parse_space(
        {
            "trainer": {"lr": "tag(log, interval(1e-4, 1e-2))", "optimizer": "adam,sgd"},
            "mechanism.hidden": "choice([64,64],[100,100,100])",
            "seed": "range(0,3)",
            "+mechanism.extra": "choice(0.5, 2)",
        }
    )
    assert list(space) == [
        "trainer.lr",
        "trainer.optimizer",
        "mechanism.hidden",
        "seed",
        "+mechanism.extra",
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    parser = OverridesParser.create()
    for _ in range(5):
        trial = study.ask({name: dim.distribution for name, dim in space.items()})
        overrides = trial_overrides(trial.params, space)
        parsed = {o.get_key_element(): o.value() for o in parser.parse_overrides(overrides)}
        assert parsed["trainer.lr"] == trial.params["trainer.lr"]  # repr: no digit lost
        assert 1e-4 <= parsed["trainer.lr"] <= 1e-2
        assert parsed["trainer.optimizer"] in ("adam", "sgd")
        assert parsed["mechanism.hidden"] in ([64, 64], [100, 100, 100])  # a list again
        assert parsed["seed"] in (0, 1, 2) and isinstance(parsed["seed"], int)
        assert parsed["+mechanism.extra"] in (0.5, 2)


@pytest.mark.parametrize(
    ("key", "text", "words"),
    [
        ("trainer.lr", "interval(1e-4", ["cannot parse"]),
        ("trainer.lr", "0.001", ["not a search space"]),
        ("trainer.lr", 0.001, ["not a search space"]),
        ("trainer.lr", "tag(log, interval(0, 1))", ["low > 0"]),
        ("trainer.lr", "interval(2, 1)", ["low < high"]),
        ("trainer.lr", "tag(foo, interval(1, 2))", ["unknown tag foo"]),
        ("trainer.lr", "tag(log, choice(1, 2))", ["tag(log"]),
        ("seed", "range(5,1)", ["empty"]),
        ("seed", "shuffle(1,2,3)", ["shuffle"]),
        ("env", "glob(*)", ["Glob"]),
        ("hydra.run.dir", "a,b", ["cannot search"]),
    ],
)
def test_bad_space_is_one_line_naming_the_key(key, text, words):
    with pytest.raises(ConfigError) as caught:
        parse_dimension(key, text)
    message = str(caught.value)
    assert message.startswith(f"tune.space.{key}") and "\n" not in message, message
    for word in words:
        assert word in message, message


def test_an_empty_space_or_a_key_given_twice_is_refused():
    with pytest.raises(ConfigError, match="tune.space is empty"):
        parse_space({})
    with pytest.raises(ConfigError, match="tune.space.trainer.lr is given twice"):
        parse_space({"trainer.lr": "1,2", "trainer": {"lr": "3,4"}})


def test_a_key_the_train_config_lacks_is_named_with_the_valid_ones(compose):
    cfg = compose("tune", ["scale=smoke", "~tune.space", "+tune.space.trainer.lrr='1e-3,1e-2'"])
    with pytest.raises(ConfigError) as caught:
        build_tune_plan(cfg, {"env": "2x2", "mechanism": "regretnet"})
    message = str(caught.value)
    assert message.startswith("tune.space.trainer.lrr=1e-3,1e-2: the train config has no key")
    assert "optimizer, lr" in message


@pytest.mark.parametrize(
    ("overrides", "expected", "why"),
    [
        # the default space holds the defaults: lr 1e-3, budget_end 1.5e-3, width [100,100,100]
        (
            [],
            {
                "trainer.lr": 0.001,
                "trainer.constraint.budget_end": 0.0015,
                "mechanism.hidden": "[100,100,100]",
            },
            None,
        ),
        (["mechanism.hidden=[64,64]"], {"mechanism.hidden": "[64,64]"}, None),
        (["trainer.lr=0.05"], {}, "trainer.lr=0.05 lies outside tune.space.trainer.lr="),
        (["mechanism.hidden=[8]"], {}, "mechanism.hidden=[8] is not one of tune.space"),
        (
            ["+tune.space.trainer.lr_decay_start='null,0.5'"],
            {"trainer.lr_decay_start": "null"},
            None,
        ),
        (["+tune.space.seed='range(0,10,2)'", "seed=3"], {}, "seed=3 lies outside"),
        (["+tune.space.seed='range(0,10,2)'", "seed=4"], {"seed": 4}, None),
    ],
)
def test_the_baseline_is_the_configs_own_point_of_the_space(compose, overrides, expected, why):
    cfg = compose("tune", ["scale=smoke", *overrides])
    space = parse_space(OmegaConf.to_container(cfg.tune.space, resolve=True))
    params, reason = baseline_params(cfg, space)
    if why is None:
        assert reason is None and expected.items() <= params.items()
        assert set(params) == set(space)
        for name, value in params.items():  # a point Optuna accepts as it is
            assert space[name].distribution._contains(
                space[name].distribution.to_internal_repr(value)
            )
    else:
        assert params == {} and reason.startswith(why)


def test_unquoted_sweep_syntax_under_tune_space_is_passed_as_text():
    args = ["scale=smoke", "tune.space.trainer.lr=interval(1e-3, 1e-2)", "seed=1", "-m"]
    assert rewrite_args(args) == [
        "scale=smoke",
        "tune.space.trainer.lr='interval(1e-3, 1e-2)'",
        "seed=1",
        "-m",
    ]
    quoted = ["tune.space.seed='range(0,3)'", "~tune.space.seed"]
    assert rewrite_args(quoted) == quoted


# -- a study through the console script: two trials, then the same command resumes it ---------
def _tune_runs(list_runs, study: str) -> list:
    return [r for r in list_runs() if r.data.tags.get("tune.study") == study]


def test_tune_runs_trials_resumes_the_study_and_reports(cli, tmp_path, list_runs, mlflow_client):
    storage = tmp_path / "study.db"
    # mechanism.hidden=[16] puts the config's own values in the space: trial 0 is the baseline
    args = ["tune", "scale=smoke", "threads=1", f"tune.storage={storage}", "tune.study=e2e", *SPACE]
    args.append("mechanism.hidden=[16]")
    first, second = tmp_path / "first", tmp_path / "second"

    done = cli(*args, "tune.trials=2", f"hydra.run.dir={first}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (first / "trials").iterdir()) == ["0", "1"]
    for name in ("tune.md", "trials.csv", "pareto.png", "metrics.json"):
        assert (first / name).is_file(), name
    report = (first / "tune.md").read_text()
    assert "## Best trial" in report and "auctionlab train scale=smoke threads=1" in report
    assert "restarts x" in report and "steps on 64 profiles" in report  # the regret's budget
    assert "auctionlab train scale=smoke" in done.stdout

    done = cli(*args, "tune.trials=3", f"hydra.run.dir={second}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (second / "trials").iterdir()] == ["2"]  # one new trial, resumed
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{storage}")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3
    assert study.trials[0].user_attrs["run_dir"] == str((first / "trials" / "0").resolve())
    assert study.trials[0].params == {"trainer.lr": 0.001, "mechanism.hidden": "[16]"}
    assert [t.user_attrs.get("baseline", False) for t in study.trials] == [True, False, False]
    assert "## Against the baseline" in (second / "tune.md").read_text()
    with (second / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert [r["baseline"] for r in rows] == ["True", "False", "False"]
    assert sum(r["selected"] == "True" for r in rows) == 1
    best = next(r for r in rows if r["selected"] == "True")
    assert best["command"] in (second / "tune.md").read_text()
    summary = json.loads((second / "metrics.json").read_text())
    assert summary["trials_complete"] == 3 and summary["trials_run"] == 1
    assert summary["objective"] == pytest.approx(float(best["objective"]))

    runs = _tune_runs(list_runs, "e2e")
    parents = {r.info.run_id: r for r in runs if r.data.tags["task"] == "tune"}
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in parents.values())
    children = {}
    for run in runs:
        if run.data.tags["task"] == "train":
            children.setdefault(run.data.tags["mlflow.parentRunId"], []).append(run)
    by_dir = {Path(r.data.tags["run_dir"]).name: r for r in parents.values()}
    for name, trials in (("first", ["0", "1"]), ("second", ["2"])):
        mine = children[by_dir[name].info.run_id]
        assert sorted(r.data.tags["tune.trial"] for r in mine) == trials
        assert all(r.info.status == "FINISHED" for r in mine)
        assert all("trainer.lr=" in r.data.tags["tune.params"] for r in mine)
    artifacts = {a.path for a in mlflow_client.list_artifacts(by_dir["second"].info.run_id)}
    assert {"tune.md", "trials.csv", "pareto.png"} <= artifacts


# -- pareto mode, and a failing trial the study gets past ---------------------------------------
def test_pareto_mode_reports_a_non_empty_front_past_a_failed_trial(tmp_path):
    storage, name = f"sqlite:///{tmp_path / 'pareto.db'}", "2x2-regretnet-pareto"
    # The first trial is RochetNet on 2 bidders: it fails at once (nothing is trained), is FAIL in
    # the study, and the search goes on until one trial is complete.
    waiting = optuna.create_study(
        study_name=name, storage=storage, directions=["maximize", "minimize"]
    )
    waiting.enqueue_trial({"trainer.lr": 0.003, "mechanism": "rochetnet"})
    out = tmp_path / "run"
    overrides = [
        "scale=smoke",
        "threads=1",
        "tune.mode=pareto",
        "tune.trials=1",
        "tune.max_failures=5",
        "tune.sampler=random",
        f"tune.storage={storage}",
        *rewrite_args([*SPACE[:2], "+tune.space.mechanism=choice(regretnet,rochetnet)"]),
    ]
    error = run_stage("tune", overrides, out, task_function)  # in-process, as reproduce runs jobs
    assert error is None, error
    study = optuna.load_study(study_name=name, storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    *failed, done = study.trials
    assert failed and done.state == optuna.trial.TrialState.COMPLETE
    for trial in failed:
        assert trial.state == optuna.trial.TrialState.FAIL
        assert trial.params["mechanism"] == "rochetnet"
        assert "needs one bidder" in trial.user_attrs["error"]
    assert [t.number for t in study.best_trials] == [done.number]
    assert json.loads((out / "metrics.json").read_text())["front_size"] == 1
    report = (out / "tune.md").read_text()
    assert "## Pareto trials" in report and "val_revenue" in report and "val_regret_mean" in report
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["state"] for r in rows] == ["FAIL"] * len(failed) + ["COMPLETE"]
    assert [r["selected"] for r in rows][-1] == "True" and float(rows[-1]["val_regret_mean"]) >= 0
    assert (out / "pareto.png").stat().st_size > 0


@pytest.mark.slow  # two loky workers start (torch, mlflow): seconds of CPU on a busy machine
def test_parallel_trials_with_evaluate_run_side_by_side(cli, tmp_path, list_runs):
    out = tmp_path / "parallel"
    done = cli(
        "tune",
        "scale=smoke",
        "threads=1",
        "tune.parallel=2",
        "tune.trials=2",
        "tune.evaluate=true",
        "tune.study=parallel",
        f"tune.storage={tmp_path / 'p.db'}",
        f"hydra.run.dir={out}",
        *SPACE[:2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for number in ("0", "1"):
        assert (out / "trials" / number / "metrics.json").is_file()
        assert (out / "trials" / number / "evaluate" / "metrics.json").is_file()
    runs = _tune_runs(list_runs, "parallel")
    assert sorted(r.data.tags["task"] for r in runs) == ["evaluate"] * 2 + ["train"] * 2 + ["tune"]
    assert "revenue" in (out / "tune.md").read_text()  # evaluate's objective scores the trials
