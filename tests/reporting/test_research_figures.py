"""The figures researchers draw, each checked on the run that writes it and as numbers.

Training curves (``history.csv``, ``training_curves.png``), the known optimal mechanism's
region edges on 1x2 allocation maps, regret-vs-budget error bars, the revenue-regret frontier
of a sweep, and zeros on log axes.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.evaluation import curve_lines, evaluate_mechanism, write_allocation_map
from auctionlab.mechanisms import FirstPrice, ManelliVincent, Pavlov, optimal_mechanism
from auctionlab.reporting.curves import (
    CURVES,
    HISTORY,
    TrainingHistory,
    plot_training_curves,
    read_history,
)
from auctionlab.reporting.frontier import collect_points, main, write_frontier
from auctionlab.reporting.plots import draw_table, zero_floor
from auctionlab.reporting.tuning import draw_front, front_mask
from auctionlab.utils import make_generator

PNG = b"\x89PNG\r\n\x1a\n"
#: A short but real sweep: two settings with a known optimum, 20 iterations, a log point every 5.
SWEEP = [
    "train",
    "-m",
    "env=1x2,1x2_unit",
    "scale=smoke",
    "threads=1",
    "mechanism.hidden=[16,16]",
    "attack_budget.steps=3",
    "validation.profiles=32",
]


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, run_console) -> dict[str, Path]:
    """A two-job train sweep and an evaluate run of its first job, in one sweep directory."""
    cwd = tmp_path_factory.mktemp("sweep")
    done = run_console([*SWEEP, "hydra.sweep.dir=sweep"], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = {}
    for job in (cwd / "sweep").iterdir():
        if (job / "choices.json").is_file():
            jobs[json.loads((job / "choices.json").read_text())["env"]] = job
    assert set(jobs) == {"1x2", "1x2_unit"}
    evaluated = cwd / "sweep" / "evaluate_1x2"
    args = ["evaluate", f"run={jobs['1x2']}", "scale=smoke", "profiles=32", "threads=1"]
    done = run_console([*args, f"hydra.run.dir={evaluated}"], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**jobs, "evaluate": evaluated, "sweep": cwd / "sweep"}


# -- training curves ------------------------------------------------------------------------------
def test_every_train_run_writes_its_history_and_training_curves(sweep, mlflow_uri):
    run = sweep["1x2"]
    history = read_history(run / HISTORY)
    assert history["iteration"] == [5.0, 10.0, 15.0, 20.0]  # scale=smoke: log_every=5
    # the same window means MLflow got, point by point
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    for key in ("train_revenue", "train_regret", "regret_budget"):
        # (the final metrics are logged at the last step once more: same values)
        logged = dict(sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)))
        assert list(logged) == [5, 10, 15, 20]
        assert history[key] == pytest.approx(list(logged.values()), rel=1e-6)
    assert is_png(run / CURVES)
    drawn = plot_training_curves(history, run / "again.png")
    assert drawn.data["revenue"] == history["train_revenue"]
    assert drawn.data["regret"] == history["train_regret"]
    assert drawn.data["zeros"] == []  # the attacker found regret at every log point


def test_a_resumed_history_drops_the_rows_it_trains_again(tmp_path):
    history = TrainingHistory(tmp_path)
    for step in (5, 10, 15):
        history.append({"train_revenue": step / 100, "train_regret": 0.1}, step)
    with (tmp_path / HISTORY).open("a") as handle:
        handle.write("2")  # a kill mid-write: a cut line
    resumed = TrainingHistory(tmp_path, start=10)  # the checkpoint was at iteration 10
    assert resumed.read()["iteration"] == [5.0, 10.0]
    resumed.append({"train_revenue": 0.2, "train_regret": 0.0, "gamma": 1.0}, 15)
    table = resumed.read()
    assert table["iteration"] == [5.0, 10.0, 15.0]
    assert table["train_revenue"] == [0.05, 0.1, 0.2]
    assert math.isnan(table["gamma"][0]) and table["gamma"][-1] == 1.0  # a later column


def test_zero_regret_is_marked_on_the_training_curves_log_axis(tmp_path):
    history = {
        "iteration": [5.0, 10.0, 15.0],
        "train_revenue": [0.3, 0.4, 0.5],
        "train_regret": [0.02, 0.0, 0.004],
    }
    drawn = plot_training_curves(history, tmp_path / CURVES, "zeros")
    assert is_png(drawn.path)
    assert drawn.data["zeros"] == [10.0]
    assert drawn.data["zero_floor"] == pytest.approx(0.0004)


# -- allocation maps with the optimal mechanism's regions -----------------------------------------
def _distance(point: tuple[float, float], segment) -> float:
    (x0, y0), (x1, y1) = segment
    px, py = point
    dx, dy = x1 - x0, y1 - y0
    t = max(0.0, min(1.0, ((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (x0 + t * dx), py - (y0 + t * dy))


def _edges_of(name: str) -> list:
    if name == "manelli_vincent":  # items at p, bundle at b [manelli2006bundling]
        p, b = 2 / 3, (4 - math.sqrt(2)) / 3
        c = b - p  # where buying the bundle instead of one item pays
        return [
            ((c, p), (c, 1)),
            ((p, c), (1, c)),
            ((0, p), (c, p)),
            ((p, 0), (p, c)),
            ((c, p), (p, c)),
        ]
    p = 1 / math.sqrt(3)  # Pavlov: each item at 1/sqrt 3, at most one [pavlov2011optimal]
    return [((p, 0), (p, p)), ((0, p), (p, p)), ((p, p), (1, 1))]


@pytest.mark.parametrize(("env", "optimal"), [("1x2", "manelli_vincent"), ("1x2_unit", "pavlov")])
def test_the_train_run_overlays_the_known_optimal_regions(sweep, env, optimal):
    run = sweep[env]
    assert is_png(run / "allocation_map.png")
    rows = list(csv.DictReader((run / "allocation_map_optimal.csv").open()))
    assert {r["mechanism"] for r in rows} == {optimal}
    points = [(float(r["v1"]), float(r["v2"])) for r in rows]
    edges = _edges_of(optimal)
    step = 1 / 100  # the map's grid: 101 points per axis
    # every drawn point lies on an edge of the optimum's regions, and every edge is drawn
    assert max(min(_distance(q, e) for e in edges) for q in points) <= step
    for (x0, y0), (x1, y1) in edges:
        middle = ((x0 + x1) / 2, (y0 + y1) / 2)
        assert min(math.dist(middle, q) for q in points) <= step


def test_no_overlay_where_no_optimum_is_known(tmp_path):
    asymmetric = AuctionEnv("1x2_asym", 1, 2, Uniform([4.0, 4.0], [16.0, 7.0]))
    assert optimal_mechanism(asymmetric) is None  # the same menu, not optimal there
    files = write_allocation_map(ManelliVincent(asymmetric), asymmetric, tmp_path, "asym")
    assert [f.name for f in files] == ["allocation_map.csv", "allocation_map.png"]
    unit = AuctionEnv("1x2_unit", 1, 2, Uniform(), "unit")
    assert isinstance(optimal_mechanism(unit), Pavlov)
    two = AuctionEnv("2x2", 2, 2, Uniform())
    assert optimal_mechanism(two) is None


# -- regret vs budget with error bars -------------------------------------------------------------
def test_every_curve_point_has_its_standard_error():
    env = AuctionEnv("2x2", 2, 2, Uniform())
    types = env.sample(64, make_generator(0, "cpu"))
    attacker = PGDAttacker(restarts=2, steps=5, curve_restarts=[1, 2], curve_steps=[0, 5])
    metrics, curve = evaluate_mechanism(
        FirstPrice(env), env, attacker, types, make_generator(1, "cpu")
    )
    assert len(curve) == 4 and all(row["regret_se"] > 0 for row in curve)
    top = max(curve, key=lambda row: (row["restarts"], row["steps"]))
    # the full budget's point is the whole attack: its SE is the headline's
    assert top["regret_se"] == pytest.approx(metrics["regret_se"])
    assert top["regret_mean"] == pytest.approx(metrics["regret_mean"])
    lines = curve_lines(curve)
    assert sorted(lines) == ["1 restart", "2 restarts"]
    assert lines["2 restarts"]["regret_se"][-1] == top["regret_se"]


def test_train_and_evaluate_write_the_standard_errors_they_plot(sweep):
    for run, prefix in ((sweep["1x2_unit"], "val_"), (sweep["evaluate"], "")):
        assert is_png(run / "regret_vs_budget.png")
        rows = list(csv.DictReader((run / "regret_vs_budget.csv").open()))
        metrics = json.loads((run / "metrics.json").read_text())
        top = max(rows, key=lambda r: (float(r["restarts"]), float(r["steps"])))
        assert float(top["regret_se"]) == pytest.approx(metrics[f"{prefix}regret_se"], rel=1e-6)
    assert "| SE |" in (sweep["evaluate"] / "evaluation.md").read_text()


# -- the frontier of a sweep ----------------------------------------------------------------------
def test_the_frontier_of_a_sweep_and_its_evaluation(sweep, capsys):
    points = collect_points([sweep["sweep"]])
    runs = {p["run"] for p in points}
    # the evaluate run stands for the train run it measured
    assert runs == {sweep["evaluate"].resolve(), sweep["1x2_unit"].resolve()}
    by_run = {p["run"]: p for p in points}
    measured = json.loads((sweep["evaluate"] / "metrics.json").read_text())
    assert by_run[sweep["evaluate"].resolve()]["metric"] == measured["revenue"]
    validated = json.loads((sweep["1x2_unit"] / "metrics.json").read_text())
    assert by_run[sweep["1x2_unit"].resolve()]["regret"] == validated["val_regret_mean"]

    assert main([str(sweep["sweep"])]) == 0
    assert "2 runs" in capsys.readouterr().out
    # labelled by their directories below the sweep's
    assert sorted(p["trial"] for p in points) == sorted(
        [sweep["evaluate"].name, sweep["1x2_unit"].name]
    )
    assert is_png(sweep["sweep"] / "frontier.png")
    table = list(csv.DictReader((sweep["sweep"] / "frontier.csv").open()))
    expected = front_mask(
        [float(r["revenue"]) for r in table], [float(r["regret_mean"]) for r in table]
    )
    assert [bool(int(r["front"])) for r in table] == expected and any(expected)
    # what tells the points apart: the setting (the evaluate run carries its train run's)
    differs = {r["run_dir"]: r["differs"].split() for r in table}
    assert "env=1x2" in differs[str(sweep["evaluate"].resolve())]
    assert "env=1x2_unit" in differs[str(sweep["1x2_unit"].resolve())]


def test_the_frontier_says_which_budget_measured_the_regret(tmp_path):
    points = [
        {"trial": i, "metric": m, "regret": r, "budget": "4 restarts x 20 steps", "task": "t"}
        | {"overrides": [], "run": tmp_path / str(i)}
        for i, (m, r) in enumerate([(0.5, 0.0), (0.6, 0.01), (0.55, 0.02), (0.7, 0.05)])
    ]
    drawn = write_frontier(points, tmp_path)
    assert drawn.data["mask"] == [True, True, False, True]
    assert [t for t, _, _ in drawn.data["front"]] == [0, 1, 3]
    assert drawn.data["zeros"] == [0]  # regret 0, on the axis's 0 line
    assert drawn.data["zero_floor"] == pytest.approx(0.001)
    assert is_png(drawn.path)
    mixed = [dict(p, budget=f"{p['trial']} restarts x 5 steps") for p in points]
    write_frontier(mixed, tmp_path / "mixed")
    assert (tmp_path / "mixed" / "frontier.csv").read_text().count("restarts x 5 steps") == 4


def test_a_frontier_of_nothing_fails_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"auctionlab: frontier: {tmp_path / 'nowhere'} is not a directory"
    )
    assert main([str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


# -- zeros on log axes ----------------------------------------------------------------------------
def test_the_bar_plot_marks_zero_regret_instead_of_dropping_it(tmp_path):
    table = pd.DataFrame(
        {
            "env": ["1x2", "1x2", "2x2", "2x2"],
            "mechanism": ["menu", "learned", "menu", "learned"],
            "revenue": [0.55, 0.56, 0.87, 0.9],
            "regret_mean": [0.0, 0.003, 0.0, 0.01],
        }
    )
    plot = {"x": "env", "hue": "mechanism", "y": "revenue", "regret": "regret_mean"}
    drawn = draw_table(table, plot, tmp_path / "bars.png")
    assert is_png(drawn.path)
    assert drawn.data["zero_floor"] == pytest.approx(zero_floor([0.003, 0.01])) == 0.0003
    assert [(z["x"], z["hue"]) for z in drawn.data["zeros"]] == [("1x2", "menu"), ("2x2", "menu")]
    everywhere = table.assign(regret_mean=0.0)  # no positive value: a linear axis that says so
    assert draw_table(everywhere, plot, tmp_path / "flat.png").data["zero_floor"] is None


def test_the_tune_front_marks_zero_regret(tmp_path):
    points = [
        {"trial": 0, "metric": 0.5, "regret": 0.0, "front": True},
        {"trial": 1, "metric": 0.6, "regret": 0.02, "front": True},
    ]
    drawn = draw_front(points, tmp_path / "pareto.png", "val_revenue", "val_regret_mean")
    assert drawn.data["zeros"] == [0] and drawn.data["zero_floor"] == pytest.approx(0.002)
    assert [t for t, _, _ in drawn.data["front"]] == [0, 1]


def test_optimal_mechanism_is_built_with_its_optimal_options():
    env = AuctionEnv("1x2", 1, 2, Uniform())
    menu = optimal_mechanism(env)
    assert isinstance(menu, ManelliVincent)
    grid = torch.tensor([[[0.9, 0.9]], [[0.9, 0.1]], [[0.1, 0.1]]])
    assert menu(grid).payment.flatten().tolist() == pytest.approx(
        [(4 - math.sqrt(2)) / 3, 2 / 3, 0]
    )


def test_an_env_objective_gets_its_own_axis_and_no_regret_panel_without_regret(tmp_path):
    history = {
        "iteration": [10.0, 20.0],
        "train_revenue": [0.0, 0.0],
        "train_log_nsw": [-1.2, -0.9],
    }
    drawn = plot_training_curves(history, tmp_path / CURVES, objective="train_log_nsw")
    assert is_png(drawn.path)
    assert drawn.data["objective"] == [-1.2, -0.9]
    assert drawn.data["regret"] is None and drawn.data["zero_floor"] is None
