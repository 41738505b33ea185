"""Plots of a table: grouped bars or a frontier.

Bars: a metric with error bars and reference marks, plus regret. Frontier: one metric against
regret, one colour per mechanism, a Pareto frontier marked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from auctionlab.core.figures import save_figure
from auctionlab.errors import ConfigError

#: Keys of an ``experiment.plot`` node.
PLOT_KEYS = ("kind", "x", "xerr", "hue", "y", "yerr", "reference", "regret", "budget", "title")
PLOT_KEYS += ("frontier",)
#: ``experiment.plot.kind``: grouped bars (default) or a scatter with a Pareto frontier.
PLOT_KINDS = ("bars", "frontier")


@dataclass(frozen=True)
class Plotted:
    """A figure written to ``path`` and the numbers drawn in it (for tables and tests)."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)


def zero_floor(values: Sequence[float]) -> float:
    """Where a zero goes on a log axis through ``values``: a decade below the smallest positive.

    ``1e-6`` when no value is positive (nothing else on the axis to anchor it).
    """
    positive = [float(v) for v in values if math.isfinite(float(v)) and float(v) > 0]
    return min(positive) / 10 if positive else 1e-6


def _plain_log_ticks(target) -> None:
    """Ticks at 1, 2 and 5 per decade of a log axis, written plainly (``0.002``).

    Within a decade or two matplotlib labels every minor tick in scientific notation, and the
    labels overlap.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    target.set_minor_formatter(NullFormatter())


def mark_zeros(ax, positions: Sequence[float], floor: float, color: Any, label: str | None) -> None:
    """Hollow markers at ``positions`` on the zero line ``floor`` of a log y axis.

    Args:
        ax: a matplotlib axes whose y axis went through :func:`log_axis_with_zeros`.
        positions: x positions of the values that are exactly 0 (nothing drawn if empty).
        floor: the zero line, as returned by :func:`log_axis_with_zeros`.
        color: the markers' edge colour (the series' colour).
        label: the legend entry, or ``None`` for none.

    """
    if not positions:
        return
    ax.scatter(
        list(positions),
        [floor] * len(positions),
        marker="o",
        s=36,
        facecolors="none",
        edgecolors=color,
        linewidths=1.5,
        zorder=3,
        label=label,
    )


def log_axis_with_zeros(
    ax, values: Sequence[float], axis: str = "y", mark: bool | None = None
) -> float:
    """Put ``ax``'s ``axis`` on a log scale that still shows the zeros among ``values``.

    A log axis cannot hold 0, and matplotlib silently drops what it cannot draw. The zeros
    belong on a dotted line labelled ``0`` at :func:`zero_floor` (a decade below the smallest
    positive value); the caller draws them there. Limits span the floor and the largest value.

    Args:
        ax: a matplotlib axes.
        values: every value the axis shows (NaN ignored).
        axis: ``"x"`` or ``"y"``.
        mark: draw the ``0`` line; ``None``: when some value is 0.

    Returns:
        The floor, the position of a zero on the axis.

    """
    from matplotlib.transforms import blended_transform_factory

    floor = zero_floor(values)
    positive = [float(v) for v in values if math.isfinite(float(v)) and float(v) > 0]
    high = max(positive) if positive else floor * 10
    if mark is None:
        mark = any(float(v) == 0 for v in values)
    # the axis reaches down to the floor only where something is drawn there
    low = floor if mark or not positive else min(positive)
    if axis == "x":
        ax.set_xscale("log")
        ax.set_xlim(low / 3, high * 3)
        _plain_log_ticks(ax.xaxis if axis == "x" else ax.yaxis)
        if not mark:
            return floor
        ax.axvline(floor, linestyle=":", color="0.4", linewidth=1)
        where = blended_transform_factory(ax.transData, ax.transAxes)
        ax.text(floor, 0.02, " 0", transform=where, fontsize=8, color="0.3")
    else:
        ax.set_yscale("log")
        ax.set_ylim(low / 3, high * 3)
        _plain_log_ticks(ax.xaxis if axis == "x" else ax.yaxis)
        if not mark:
            return floor
        ax.axhline(floor, linestyle=":", color="0.4", linewidth=1)
        where = blended_transform_factory(ax.transAxes, ax.transData)
        ax.text(0.005, floor, "0", transform=where, fontsize=8, color="0.3", va="bottom")
    return floor


def check_plot(plot: Mapping[str, Any], columns: list[str]) -> None:
    """Raise ``ConfigError`` when the plot names keys or columns the table does not have."""
    unknown = set(plot) - set(PLOT_KEYS)
    if unknown:
        raise ConfigError(
            f"experiment.plot: unknown keys {sorted(unknown)}; valid keys: {', '.join(PLOT_KEYS)}"
        )
    kind = plot.get("kind", "bars")
    if kind not in PLOT_KINDS:
        raise ConfigError(f"experiment.plot.kind={kind}: choose one of {', '.join(PLOT_KINDS)}")
    if kind == "frontier" and not plot.get("hue"):
        raise ConfigError(
            "experiment.plot: kind=frontier needs 'hue' (the column naming a point's group)"
        )
    for key in ("x", "y"):
        if not plot.get(key):
            raise ConfigError(f"experiment.plot needs '{key}' (a table column)")
    for key in ("x", "xerr", "hue", "y", "yerr", "reference", "regret"):
        value = plot.get(key)
        # x may also be a list of columns: one bar group per combination (labels joined)
        wanted = value if key == "x" and isinstance(value, list | tuple) else [value]
        if value and any(v not in columns for v in wanted):
            raise ConfigError(
                f"experiment.plot.{key}={value} is not a table column; columns: "
                + ", ".join(columns)
            )


def _budget_label(table: pd.DataFrame, budget: Mapping[str, str]) -> str:
    """``"4 restarts x 20 steps, 128 profiles"`` when every row shares one budget."""
    parts = []
    for word, column in (("restarts", "restarts"), ("steps", "steps"), ("profiles", "profiles")):
        name = budget.get(column)
        if not name or name not in table:
            continue
        values = {v for v in table[name].tolist() if not (isinstance(v, float) and math.isnan(v))}
        if len(values) != 1:
            return "attacker budget per row: see the table"
        parts.append(f"{int(next(iter(values)))} {word}")
    if not parts:
        return ""
    return "attacker: " + " x ".join(parts[:2]) + (f", {parts[2]}" if len(parts) > 2 else "")


def plot_table(table: pd.DataFrame, plot: Mapping[str, Any], path: Path) -> Path:
    """Bars of ``plot.y`` (± ``plot.yerr``) per ``plot.x``, one colour per ``plot.hue``.

    ``plot.reference`` draws a red mark per bar (closed form or literature value);
    ``plot.regret`` adds a second panel (log scale) titled with the attacker budget, whose
    columns ``plot.budget`` names (``{restarts, steps, profiles}`` -> table columns). A zero
    regret, which a log axis cannot show, is a hollow marker on the dotted ``0`` line at the
    bottom of that panel (:func:`log_axis_with_zeros`).

    Args:
        table: the numeric table from :func:`~auctionlab.reporting.tables.build_table`.
        plot: the ``experiment.plot`` node as a mapping.
        path: the PNG to write.

    Returns:
        ``path``.

    """
    return draw_table(table, plot, path).path


def draw_table(table: pd.DataFrame, plot: Mapping[str, Any], path: Path) -> Plotted:
    """:func:`plot_table`, with what it drew.

    Returns:
        The figure; for bars with a regret panel, ``data["zero_floor"]`` (where zeros sit on
        its log axis, ``None`` for a linear one) and ``data["zeros"]``, one
        ``{"x", "hue", "position"}`` per zero-regret bar marked there.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_plot(plot, list(table.columns))
    if plot.get("kind") == "frontier":
        return Plotted(plot_frontier(table, plot, path))
    x_key, hue_key, y_key = plot["x"], plot.get("hue"), plot["y"]
    if isinstance(x_key, list | tuple):  # several row keys: one label per combination
        label = " / ".join(x_key)
        # map(str), not astype(str): a label missing on some rows (NaN) stays "nan" text
        table = table.assign(**{label: table[list(x_key)].map(str).agg(" ".join, axis=1)})
        x_key = label
    xs = list(dict.fromkeys(table[x_key].astype(str)))
    hues = list(dict.fromkeys(table[hue_key].astype(str))) if hue_key else [None]
    panels = [("y", y_key)] + ([("regret", plot["regret"])] if plot.get("regret") else [])
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(min(12.0, max(5.0, 0.7 * len(xs) * len(hues) + 2)), 3.2 * len(panels)),
    )
    axes = [axes] if len(panels) == 1 else list(axes)
    width = 0.8 / len(hues)
    data: dict[str, Any] = {}
    for ax, (kind, column) in zip(axes, panels, strict=True):
        floor = None
        if kind == "regret":
            values = [v for v in table[column].tolist() if v == v]
            if any(v > 0 for v in values):  # else a linear axis that says so (below)
                floor = log_axis_with_zeros(ax, values, "y")
            data.update(zero_floor=floor, zeros=[])
        for h, hue in enumerate(hues):
            rows = table if hue is None else table[table[hue_key].astype(str) == hue]
            positions, heights, errors, marks = [], [], [], []
            for _, row in rows.iterrows():
                positions.append(xs.index(str(row[x_key])) + (h - (len(hues) - 1) / 2) * width)
                heights.append(float(row[column]))
                if kind == "y" and plot.get("yerr"):
                    errors.append(float(row[plot["yerr"]]))
                if kind == "y" and plot.get("reference"):
                    marks.append(float(row[plot["reference"]]))
            if floor is not None:  # zeros: a marker on the floor, not an invisible bar
                zeros = [p for p, v in zip(positions, heights, strict=True) if v == 0]
                labels = [str(r[x_key]) for _, r in rows.iterrows() if float(r[column]) == 0]
                data["zeros"] += [
                    {"x": x, "hue": hue, "position": p} for x, p in zip(labels, zeros, strict=True)
                ]
                bar = ax.bar(positions, heights, width=width * 0.95, label=hue)
                # one legend entry, with the first hue that has a zero
                first = len(data["zeros"]) == len(zeros)
                mark_zeros(
                    ax,
                    zeros,
                    floor,
                    bar.patches[0].get_facecolor(),
                    f"{column} = 0" if first else None,
                )
                continue
            ax.bar(
                positions,
                heights,
                width=width * 0.95,
                yerr=errors or None,
                capsize=3,
                error_kw={"ecolor": "0.45", "elinewidth": 1},
                label=hue,
            )
            if marks:
                ax.scatter(
                    positions,
                    marks,
                    marker="_",
                    s=400 * width,
                    linewidths=2.5,
                    color="crimson",
                    zorder=3,
                    label=plot["reference"] if h == 0 else None,
                )
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(x_key)
        ax.set_ylabel(column)
        ax.grid(axis="y", alpha=0.3)
        if kind == "regret":
            values = [v for v in table[column].tolist() if v == v]
            if floor is None and values:
                ax.set_ylim(0, 1)
                ax.text(0.5, 0.5, f"{column} = 0 in every row", ha="center", transform=ax.transAxes)
            ax.set_title(_budget_label(table, plot.get("budget") or {}), fontsize=9)
        elif plot.get("title"):
            ax.set_title(str(plot["title"]), fontsize=9)
        if hue_key or (kind == "y" and plot.get("reference")) or data.get("zeros"):
            ax.legend(fontsize=8)
    return Plotted(save_figure(fig, path), data)


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows no other row beats: none has more ``y`` at no more ``x`` (sorted by ``x``).

    Args:
        points: ``P`` rows with numeric columns ``x`` (a cost: regret) and ``y`` (a gain:
            revenue).
        x: the cost column.
        y: the gain column.

    """
    rows = points.dropna(subset=[x, y])
    kept = [i for i, row in rows.iterrows() if not ((rows[y] > row[y]) & (rows[x] <= row[x])).any()]
    return rows.loc[kept].sort_values(x)


def dominated_by(others: pd.DataFrame, front: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Per row of ``others``: whether a ``front`` row has at least its ``y`` at no more ``x``."""
    return others.apply(
        lambda row: bool(((front[y] >= row[y]) & (front[x] <= row[x])).any()), axis=1
    )


def plot_frontier(table: pd.DataFrame, plot: Mapping[str, Any], path: Path) -> Path:
    """``plot.y`` (± ``yerr``) against ``plot.x`` (± ``xerr``), one colour per ``plot.hue``.

    ``plot.frontier`` names the hue value (the learned mechanism) whose Pareto frontier is
    drawn as a line; the title counts the other points it dominates (at least their ``y`` at no
    more ``x``) and gives the attacker budget (``plot.budget``) that measured the regret.
    Lemma 2026 [lemma2026solver] §7.5's revenue-regret frontier (experiment ca_frontier).

    Args:
        table: the numeric table.
        plot: the ``experiment.plot`` node (``kind: frontier``).
        path: the PNG to write.

    Returns:
        ``path``.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, y_key, hue_key = plot["x"], plot["y"], plot["hue"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, rows in table.groupby(hue_key, sort=False):
        ax.errorbar(
            rows[x_key],
            rows[y_key],
            xerr=rows[plot["xerr"]] if plot.get("xerr") else None,
            yerr=rows[plot["yerr"]] if plot.get("yerr") else None,
            fmt="o",
            capsize=2,
            label=str(name),
        )
    title = [_budget_label(table, plot.get("budget") or {})]
    learned = plot.get("frontier")
    if learned:
        mine = table[table[hue_key].astype(str) == str(learned)]
        front = pareto_front(mine, x_key, y_key)
        ax.plot(front[x_key], front[y_key], "k--", linewidth=1, label=f"{learned} frontier")
        others = table[table[hue_key].astype(str) != str(learned)].dropna(subset=[x_key, y_key])
        beaten = int(dominated_by(others, front, x_key, y_key).sum()) if len(others) else 0
        title.append(f"{beaten} of {len(others)} other points dominated by a {learned} point")
    if plot.get("title"):
        title.insert(0, str(plot["title"]))
    ax.set_title("\n".join(t for t in title if t), fontsize=8)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_curves(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    hlines: Mapping[str, float] | None = None,
    vline: float | None = None,
) -> Path:
    """Line plot of one or more curves over a shared x grid (e.g. utility vs reported ratio).

    Args:
        x: the grid, length ``R``.
        curves: label -> ``R`` values.
        path: the PNG to write.
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: figure title.
        hlines: label -> level drawn dashed (e.g. the truthful utility).
        vline: an x position drawn dotted (e.g. the true ratio).

    Returns:
        ``path``.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, values in curves.items():
        (line,) = ax.plot(list(x), list(values), label=label)
        if hlines and label in hlines:
            ax.axhline(hlines[label], ls="--", lw=0.8, color=line.get_color())
    if vline is not None:
        ax.axvline(vline, ls=":", color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_maps(
    maps: Mapping[str, Any],
    extent: tuple[float, float, float, float],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path:
    """Side-by-side heatmaps in [0, 1] over one 2-D grid (e.g. allocations over two reports).

    Args:
        maps: panel title -> ``[P, P]`` array indexed ``[x, y]``.
        extent: ``(x_low, x_high, y_low, y_high)``.
        path: the PNG to write.
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: figure title.

    Returns:
        ``path``.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(maps), figsize=(4.5 * len(maps), 4), squeeze=False)
    for ax, (name, grid) in zip(axes[0], maps.items(), strict=True):
        image = ax.imshow(
            np.asarray(grid).T,
            origin="lower",
            extent=extent,
            aspect="auto",
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
        )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9)
        fig.colorbar(image, ax=ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
