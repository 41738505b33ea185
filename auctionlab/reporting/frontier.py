"""The revenue-regret frontier of any set of runs: a sweep, a tune, or run directories.

``python -m auctionlab.reporting.frontier <dir> [<dir> ...]`` reads every finished run under
the given directories (a multirun's sweep directory, a tune run's directory, single run
directories: anything with ``metrics.json`` and ``config.yaml``), and writes
``frontier.png`` (metric against regret, every point labelled with its run directory below the
runs' common folder, the Pareto front joined, the attacker
budget in the regret axis's label, zero regret on the axis's ``0`` line) and ``frontier.csv``
(one row per point: its label in the figure, whether it is on the front, the numbers, the
budget, its overrides and its directory).

A ``train`` run contributes its validation numbers (``val_<metric>``); an ``evaluate`` run its
own. An ``evaluate`` run of a train run in the same set replaces that train run's point: its
stress test is the stronger measurement (a tune trial with ``tune.evaluate``, a reproduce
pipeline's evaluate stage). The front is :func:`~auctionlab.reporting.tuning.front_mask`'s and
the figure :func:`~auctionlab.reporting.tuning.draw_front`'s, as for ``auctionlab tune``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from auctionlab.errors import ConfigError
from auctionlab.reporting.plots import Plotted
from auctionlab.reporting.tuning import draw_front, front_mask

#: Metric prefix of a task's headline numbers in ``metrics.json`` (train: its validation).
PREFIX = {"train": "val_", "evaluate": ""}


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Every finished run directory at or below ``paths`` (``metrics.json`` + ``config.yaml``).

    Raises:
        ConfigError: a path that does not exist, or no finished run under any of them.

    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ConfigError(f"frontier: {path} is not a directory")
        found += [m.parent for m in sorted(path.rglob("metrics.json"))]
    runs = [r for r in dict.fromkeys(p.resolve() for p in found) if (r / "config.yaml").is_file()]
    if not runs:
        where = ", ".join(map(str, paths))
        raise ConfigError(f"frontier: no finished run (metrics.json and config.yaml) under {where}")
    return runs


def _overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def read_point(run: Path, metric: str, regret: str) -> dict[str, Any] | None:
    """One run's point: ``metric``, ``regret``, the attacker budget behind it, its overrides.

    Args:
        run: a finished run directory.
        metric: the metric's ``evaluate`` name (``revenue``; a train run's ``val_revenue``).
        regret: the regret's ``evaluate`` name (``regret_mean``).

    Returns:
        ``{run, task, metric, regret, budget, overrides, evaluated}`` (``evaluated``: the train
        run an evaluate run measured, resolved, or ``None``; an evaluate run's overrides are
        that train run's, then its own); ``None`` for a run of another task or one without
        the metric or the regret.

    """
    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    task = str(config.get("task", ""))
    if task not in PREFIX:
        return None
    prefix = PREFIX[task]
    metrics = json.loads((run / "metrics.json").read_text())

    def number(name: str) -> float | None:
        for key in (prefix + name, name):
            value = metrics.get(key)
            if isinstance(value, int | float):
                return float(value)
        return None

    y, x = number(metric), number(regret)
    if y is None or x is None:
        return None
    restarts, steps, profiles = (number(k) for k in ("attack_restarts", "attack_steps", "profiles"))
    budget = ""
    if restarts is not None and steps is not None:
        budget = f"{restarts:.0f} restarts x {steps:.0f} steps"
        budget += f", {profiles:.0f} profiles" if profiles is not None else ""
    evaluated = config.get("run") if task == "evaluate" else None
    overrides = _overrides(run)
    if evaluated:  # what was evaluated, then how: the train run's overrides first
        evaluated = Path(str(evaluated)).resolve()
        own = [o for o in overrides if o.split("=", 1)[0] != "run"]
        overrides = [*_overrides(evaluated), *own]
    return {
        "run": run,
        "task": task,
        "metric": y,
        "regret": x,
        "budget": budget,
        "overrides": overrides,
        "evaluated": evaluated,
    }


def collect_points(
    paths: Sequence[Path], metric: str = "revenue", regret: str = "regret_mean"
) -> list[dict[str, Any]]:
    """The points of every run under ``paths`` (:func:`read_point`), each named (``trial``).

    A point's name is its directory relative to the folder all the runs share (a sweep's job
    number, ``evaluate_0``...).

    A train run that an evaluate run in the set measured is left out (the evaluate run's
    stress test stands for it).

    Raises:
        ConfigError: no run under ``paths`` has both ``metric`` and ``regret``.

    """
    points = [p for p in (read_point(r, metric, regret) for r in find_runs(paths)) if p]
    superseded = {p["evaluated"] for p in points if p["evaluated"] is not None}
    points = [p for p in points if p["run"] not in superseded]
    if not points:
        raise ConfigError(
            f"frontier: no train or evaluate run under {', '.join(map(str, paths))} has both "
            f"{metric} and {regret} in its metrics.json"
        )
    # Each point is named by its directory below the runs' common folder ("3", "evaluate_0",
    # a tune's "trials/4/evaluate"): the figure's labels find their run without a lookup.
    root = Path(os.path.commonpath([p["run"] for p in points]))
    for point in points:
        point["trial"] = point["run"].relative_to(root).as_posix() if len(points) > 1 else "."
        if point["trial"] == ".":
            point["trial"] = point["run"].name
    return points


def write_frontier(
    points: list[dict[str, Any]],
    out: Path,
    metric: str = "revenue",
    regret: str = "regret_mean",
    maximize: bool = True,
    title: str = "",
) -> Plotted:
    """``frontier.png`` and ``frontier.csv`` in ``out`` for ``points`` (:func:`collect_points`).

    Args:
        points: named points (``trial``: the label, ``metric``, ``regret``, ``budget``...).
        out: the directory the files go to.
        metric: the y axis's name.
        regret: the x axis's name; the attacker budget is added when every point shares one.
        maximize: whether more ``metric`` is better (``False``: a procurement cost).
        title: the figure's title (default: how many runs, how many on the front).

    Returns:
        The figure (its ``data`` is :func:`~auctionlab.reporting.tuning.draw_front`'s, plus
        ``mask``: per point, whether it is on the front) ; ``frontier.csv`` lies next to it.

    """
    mask = front_mask([p["metric"] for p in points], [p["regret"] for p in points], maximize)
    for point, front in zip(points, mask, strict=True):
        point["front"] = front
    budgets = {p["budget"] for p in points}
    if len(budgets) == 1 and next(iter(budgets)):
        label = f"{regret} (attacker: {next(iter(budgets))})"
    else:
        label = f"{regret} (attacker budgets differ between runs: see frontier.csv)"
    out.mkdir(parents=True, exist_ok=True)
    # What tells the points apart: the overrides that are not the same in every run.
    common = set.intersection(*(set(p["overrides"]) for p in points)) if points else set()
    with (out / "frontier.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["point", "front", metric, regret, "budget", "task", "differs", "run_dir"])
        for p in points:
            differs = " ".join(o for o in p["overrides"] if o not in common)
            writer.writerow(
                [p["trial"], int(p["front"]), repr(p["metric"]), repr(p["regret"]), p["budget"]]
                + [p["task"], differs, str(p["run"])]
            )
    count = sum(mask)
    title = title or f"{len(points)} runs, {count} on the Pareto front (labels: run directories)"
    drawn = draw_front(
        points, out / "frontier.png", metric, label, title, noun="runs", number_all=True
    )
    return Plotted(drawn.path, {**drawn.data, "mask": mask})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m auctionlab.reporting.frontier DIR [DIR ...] [--out DIR] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m auctionlab.reporting.frontier",
        description="Revenue-regret frontier of the finished runs under the given directories "
        "(a multirun sweep directory, a tune run, run directories).",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="directories holding finished runs")
    parser.add_argument(
        "--out", type=Path, help="where frontier.png/.csv go (default: the first directory)"
    )
    parser.add_argument("--metric", default="revenue", help="y axis (default: revenue)")
    parser.add_argument("--regret", default="regret_mean", help="x axis (default: regret_mean)")
    parser.add_argument(
        "--minimize", action="store_true", help="lower metric is better (procurement cost)"
    )
    args = parser.parse_args(argv)
    try:
        points = collect_points(args.paths, args.metric, args.regret)
        drawn = write_frontier(
            points, args.out or args.paths[0], args.metric, args.regret, not args.minimize
        )
    except ConfigError as err:
        print(f"auctionlab: {err}", file=sys.stderr)
        return 2
    front = [p for p in points if p["front"]]
    print(f"{len(points)} runs, {len(front)} on the Pareto front -> {drawn.path}")
    for p in sorted(front, key=lambda p: p["regret"]):
        print(
            f"  {p['trial']}  {args.metric}={p['metric']:.4g}  {args.regret}={p['regret']:.3g}"
            f"  {p['run']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
