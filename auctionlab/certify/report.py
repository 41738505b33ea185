"""Certificate summaries laid out as [curry2020certifying] Table 1, and its §4.2 best-bid figure."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of the finite ``values`` (``nan`` if none)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std())


def fmt(mean: float, std: float, digits: int = 3) -> str:
    """``0.874 (0.285)`` as in the paper's table."""
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ({std:.{digits}f})"


def summary_rows(
    instances: list[dict[str, Any]], setting: Mapping[str, Any], revenue: tuple[float, float]
) -> list[dict[str, Any]]:
    """One Table-1 row per bidder.

    Certified and empirical regret are averaged over the same instances: those with a
    certificate (status ``optimal``). The ratio is mean empirical / mean certified.

    Args:
        instances: the per-instance records.
        setting: ``env``, ``ir`` (yes/no), ``relu_reg`` (yes/no) and the attacker budget.
        revenue: mean and std of the revenue on the held-out profiles.

    """
    rows = []
    bidders = sorted({r["bidder"] for r in instances})
    for b in bidders:
        mine = [r for r in instances if r["bidder"] == b]
        done = [r for r in mine if r["status"] == "optimal"]
        t_mean, t_std = mean_std([r["seconds"] for r in mine])
        e_mean, e_std = mean_std([r["pgd_regret"] for r in done])
        c_mean, c_std = mean_std([r["certified_regret"] for r in done])
        label = setting["env"] if b == 0 else f"{setting['env']} (bidder {b + 1})"
        rows.append(
            {
                "setting": label,
                "bidder": b,
                "ir": setting["ir"],
                "relu_reg": setting["relu_reg"],
                "solve_s_mean": t_mean,
                "solve_s_std": t_std,
                "revenue_mean": revenue[0] if b == 0 else float("nan"),
                "revenue_std": revenue[1] if b == 0 else float("nan"),
                "empirical_regret_mean": e_mean,
                "empirical_regret_std": e_std,
                "certified_regret_mean": c_mean,
                "certified_regret_std": c_std,
                "ratio": e_mean / c_mean if c_mean and math.isfinite(c_mean) else float("nan"),
                "instances": len(mine),
                "certified": len(done),
                "unknown": sum(r["status"] == "unknown" for r in mine),
                "failed": sum(r["status"] not in ("optimal", "unknown") for r in mine),
                "attack_restarts": setting["attack_restarts"],
                "attack_steps": setting["attack_steps"],
                "attacker": setting.get(
                    "attacker", f"PGD {setting['attack_restarts']} x {setting['attack_steps']}"
                ),
            }
        )
    return rows


def render_markdown(rows: list[dict[str, Any]], notes: Sequence[str]) -> str:
    """The Table-1 layout: solve time, revenue, empirical and certified regret, ratio."""
    lines = [
        "| Auction setting | IR | ReLU reg. | Solve time (s) | Revenue | Empirical regret "
        "| Certified regret | Emp./Cert. | certified / unknown / failed | attacker |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['ir']} | {r['relu_reg']} "
            f"| {fmt(r['solve_s_mean'], r['solve_s_std'])} "
            f"| {fmt(r['revenue_mean'], r['revenue_std']) if r['bidder'] == 0 else '-'} "
            f"| {fmt(r['empirical_regret_mean'], r['empirical_regret_std'], 4)} "
            f"| {fmt(r['certified_regret_mean'], r['certified_regret_std'], 4)} "
            f"| {r['ratio']:.3f} | {r['certified']} / {r['unknown']} / {r['failed']} "
            f"| {r['attacker']} |"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_rows_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows as CSV (all keys of the first row, in order)."""
    if not rows:
        path.write_text("")
        return path
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_best_bids(
    instances: list[dict[str, Any]], path: Path, threshold: float, title: str
) -> Path | None:
    """[curry2020certifying] Figure 1: truthful bid -> certified best bid, for two-item bidders.

    Only certified instances with regret at least ``threshold`` get an arrow; marker size grows
    with the regret. One panel per bidder.

    Returns:
        The figure's path, or ``None`` when the setting does not have two items.

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from auctionlab.core.figures import save_figure

    done = [r for r in instances if r["status"] == "optimal"]
    if not instances or len(instances[0]["values"]) != 2:
        return None
    bidders = sorted({r["bidder"] for r in instances})
    fig, axes = plt.subplots(1, len(bidders), figsize=(5 * len(bidders), 5), squeeze=False)
    largest = max([r["certified_regret"] for r in done] + [1e-12])
    for ax, b in zip(axes[0], bidders, strict=True):
        shown = [r for r in done if r["bidder"] == b and r["certified_regret"] >= threshold]
        for r in shown:
            v, w = r["values"], r["certified_report"]
            size = 10 + 150 * r["certified_regret"] / largest
            ax.annotate(
                "", xy=w, xytext=v, arrowprops={"arrowstyle": "->", "color": "gray", "lw": 0.6}
            )
            ax.scatter(*v, s=size, facecolors="none", edgecolors="tab:blue", lw=0.8)
            ax.scatter(*w, s=size, color="tab:red")
        ax.set_xlim(-0.05, 1.05) if max(max(r["values"]) for r in instances) <= 1 else None
        ax.set_xlabel("item 1")
        ax.set_ylabel("item 2")
        ax.set_title(
            f"bidder {b + 1}: {len(shown)} of {sum(r['bidder'] == b for r in done)} certified\n"
            f"points with regret >= {threshold:g}",
            fontsize=10,
        )
        ax.set_aspect("equal", adjustable="box")
    fig.suptitle(title + "\ntruthful bid (blue circle) -> certified best bid (red)")
    return save_figure(fig, path)
