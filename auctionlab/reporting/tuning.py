"""What ``auctionlab tune`` writes at the end: the revenue-regret front of its trials.

The trials' numbers come from :mod:`auctionlab.experiments.tune`; here they are only drawn and
ranked, so the same figure can be made from any list of (metric, regret) points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auctionlab.core.figures import save_figure
from auctionlab.reporting.plots import Plotted, log_axis_with_zeros


def front_mask(
    metric: Sequence[float], regret: Sequence[float], maximize: bool = True
) -> list[bool]:
    """Which points no other point beats: none has a better metric at no more regret.

    Args:
        metric: ``P`` values of the tuned metric (revenue: higher is better with ``maximize``).
        regret: ``P`` regrets (lower is better).
        maximize: whether a higher metric is better (``False``: procurement cost).

    Returns:
        ``P`` flags; non-finite points are never on the front.

    """
    sign = 1.0 if maximize else -1.0
    finite = [math.isfinite(m) and math.isfinite(r) for m, r in zip(metric, regret, strict=True)]
    keep = []
    for i, (m, r) in enumerate(zip(metric, regret, strict=True)):
        if not finite[i]:
            keep.append(False)
            continue
        beaten = any(
            finite[j]
            and sign * metric[j] >= sign * m
            and regret[j] <= r
            and (sign * metric[j] > sign * m or regret[j] < r)
            for j in range(len(metric))
        )
        keep.append(not beaten)
    return keep


def plot_front(
    points: Sequence[Mapping[str, Any]],
    path: Path,
    metric: str,
    regret: str,
    title: str = "",
    best: int | None = None,
    baseline: int | None = None,
) -> Path:
    """The trials' metric (y) against their regret (x, log scale with zero marked).

    Every trial is a grey dot; the front's trials are highlighted, joined in regret order and
    labelled with their numbers; ``best`` is starred. Regret 0 cannot sit on a log axis: those
    trials are drawn on a dotted line labelled ``0``, a decade left of the smallest positive
    regret (:func:`~auctionlab.reporting.plots.log_axis_with_zeros`).

    Args:
        points: one mapping per complete trial: ``trial`` (its number), ``metric``,
            ``regret`` and ``front`` (whether it is highlighted).
        path: the PNG to write.
        metric: the y axis's name (``val_revenue``...).
        regret: the x axis's name, with the attacker budget that measured it if known.
        title: the figure's title.
        best: the number of the trial to star (single-objective search), or ``None``.
        baseline: the number of the trial that trains the config's own values (an open
            square), or ``None``.

    Returns:
        ``path``.

    """
    return draw_front(points, path, metric, regret, title, best, baseline=baseline).path


def draw_front(
    points: Sequence[Mapping[str, Any]],
    path: Path,
    metric: str,
    regret: str,
    title: str = "",
    best: int | None = None,
    noun: str = "trials",
    number_all: bool = False,
    baseline: int | None = None,
) -> Plotted:
    """:func:`plot_front`, with what it drew.

    ``noun`` names the points in the legend (``runs`` for a sweep); ``number_all`` numbers
    every point, not only the front's.

    Returns:
        The figure; ``data``: ``front`` (the highlighted points' ``(trial, regret, metric)``
        in regret order), ``zero_floor`` (where regret 0 sits on the x axis) and ``zeros``
        (the trials drawn there).

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [
        p for p in points if math.isfinite(float(p["metric"])) and math.isfinite(float(p["regret"]))
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    zero = log_axis_with_zeros(ax, [float(p["regret"]) for p in shown], "x")

    def x_of(point: Mapping[str, Any]) -> float:
        return max(float(point["regret"]), 0.0) or zero

    if not shown:
        ax.text(
            0.5,
            0.5,
            f"no {noun.rstrip('s')} with a finite metric and regret",
            ha="center",
            transform=ax.transAxes,
        )
    ax.scatter(
        [x_of(p) for p in shown],
        [float(p["metric"]) for p in shown],
        color="0.6",
        s=22,
        label=noun,
        zorder=2,
    )
    if number_all:
        for p in shown:
            if not p.get("front"):
                ax.annotate(
                    str(p["trial"]),
                    (x_of(p), float(p["metric"])),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color="0.4",
                )
    front = sorted((p for p in shown if p.get("front")), key=x_of)
    if front:
        ax.plot(
            [x_of(p) for p in front],
            [float(p["metric"]) for p in front],
            color="tab:blue",
            marker="o",
            markersize=6,
            linewidth=1.2,
            label="Pareto front",
            zorder=3,
        )
        for p in front:
            ax.annotate(
                str(p["trial"]),
                (x_of(p), float(p["metric"])),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    # the best trial starred, the baseline trial in an open square
    marks = (
        (
            best,
            f"best (trial {best})",
            {
                "marker": "*",
                "s": 160,
                "color": "tab:orange",
                "edgecolors": "black",
                "linewidths": 0.5,
                "zorder": 4,
            },
        ),
        (
            baseline,
            f"baseline: the config's values (trial {baseline})",
            {
                "marker": "s",
                "s": 90,
                "facecolors": "none",
                "edgecolors": "tab:red",
                "linewidths": 1.5,
                "zorder": 5,
            },
        ),
    )
    for number, label, style in marks:
        marked = [p for p in shown if number is not None and int(p["trial"]) == number]
        if marked:
            ax.scatter(
                [x_of(p) for p in marked],
                [float(p["metric"]) for p in marked],
                label=label,
                **style,
            )
    zeros = [p["trial"] for p in shown if float(p["regret"]) <= 0]
    ax.set_xlabel(f"{regret} (log scale" + ("; dotted line: regret 0)" if zeros else ")"))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title, fontsize=9)
    if shown:
        ax.legend(fontsize=8, loc="best")
    data = {
        "front": [(p["trial"], float(p["regret"]), float(p["metric"])) for p in front],
        "zero_floor": zero,
        "zeros": zeros,
    }
    return Plotted(save_figure(fig, path), data)
