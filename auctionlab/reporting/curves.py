"""Training curves: ``history.csv`` (written as ``train`` logs) and ``training_curves.png``.

Every log point of a training run (``train.log_every``) appends one row to the run's
``history.csv``: ``iteration`` and the window means the trainer logs (``train_revenue``,
``train_regret``, the constraint's multipliers and budget...). A resumed run first drops the
rows after the iteration of the checkpoint it continues from (they are trained again), so the
file holds one row per log point however often the run was interrupted. At the end ``train``
draws revenue (and the env's own objective) and regret against iteration from it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from auctionlab.core.figures import save_figure
from auctionlab.reporting.plots import Plotted, log_axis_with_zeros, mark_zeros

#: The history's file name in a train run directory.
HISTORY = "history.csv"
#: The figure's file name in a train run directory.
CURVES = "training_curves.png"


def read_history(path: Path) -> dict[str, list[float]]:
    """``history.csv`` as columns: ``{"iteration": [...], "train_revenue": [...], ...}``.

    A value a row left empty (a column added later) is NaN; a missing file is an empty
    history. The rows end at the first one that does not parse or does not advance the
    iteration: a write cut short when the process was killed.
    """
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows: list[dict[str, float]] = []
        for row in reader:
            try:
                parsed = {k: float(row[k]) if row[k] != "" else math.nan for k in columns}
            except (TypeError, ValueError):  # a line cut short by a kill: nothing after it
                break
            if rows and not parsed["iteration"] > rows[-1]["iteration"]:
                break  # a cut iteration number ("2" of "220.0"): the file ends before it
            rows.append(parsed)
    return {key: [row[key] for row in rows] for key in columns}


class TrainingHistory:
    """Appends the trainer's log points to ``history.csv`` in a run directory.

    Args:
        directory: the run directory.
        start: the iteration training starts (or resumes) from; rows after it are dropped.

    """

    def __init__(self, directory: Path, start: int = 0) -> None:
        self.path = Path(directory) / HISTORY
        history = read_history(self.path)
        self.columns: list[str] = list(history)
        kept = [
            {k: history[k][i] for k in self.columns}
            for i, step in enumerate(history.get("iteration", []))
            if step <= start
        ]
        if self.path.exists():  # rewritten without the rows training will produce again
            self._rewrite(kept)

    def _rewrite(self, rows: Sequence[Mapping[str, float]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)

    def read(self) -> dict[str, list[float]]:
        """The history so far (:func:`read_history`)."""
        return read_history(self.path)

    def append(self, metrics: Mapping[str, float], iteration: int) -> None:
        """Add the log point of ``iteration`` (the trainer's window means)."""
        row = {"iteration": float(iteration), **{k: float(v) for k, v in metrics.items()}}
        if not self.columns:
            self.columns = list(row)
            self._rewrite([])
        elif set(row) - set(self.columns):  # a metric that appeared later: widen the file
            history = read_history(self.path)
            self.columns += [k for k in row if k not in self.columns]
            old = [
                {k: history[k][i] for k in history}
                for i in range(len(history.get("iteration", [])))
            ]
            self._rewrite(old)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, restval="").writerow(
                {k: repr(v) for k, v in row.items()}
            )


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    path: Path,
    title: str = "",
    objective: str | None = None,
    regret_label: str = "regret",
) -> Plotted:
    """Revenue (and the env's own objective) and regret against iteration.

    Top panel: ``train_revenue``, and ``objective`` (``train_<name>``) when the env trains
    another one (allocation: log-NSW), on its own axis. Bottom panel, when the run measured
    regret: ``train_regret`` on a log axis, a zero marked on its ``0`` line (a regret the
    attacker could not find is a value, not a gap), and ``regret_budget`` dashed where the
    constraint has one.

    Args:
        history: columns of ``history.csv`` (:func:`read_history`), ``I`` log points.
        path: the PNG to write.
        title: the figure's title (the run, the training attacker's budget).
        objective: the history column of the env's objective, or ``None`` (revenue).
        regret_label: what the family calls regret.

    Returns:
        The figure; ``data``: ``iteration``, ``revenue``, ``objective`` (or ``None``),
        ``regret`` (or ``None``), ``regret_budget`` (or ``None``), ``zero_floor`` and ``zeros``
        (the iterations drawn on the regret panel's ``0`` line).

    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(history.get("iteration", []))
    revenue = list(history.get("train_revenue", []))
    other = list(history[objective]) if objective and objective in history else None
    regret = list(history["train_regret"]) if "train_regret" in history else None
    budget = list(history["regret_budget"]) if "regret_budget" in history else None
    panels = 2 if regret is not None else 1
    fig, axes = plt.subplots(panels, 1, figsize=(6.4, 2.8 * panels + 0.4), sharex=True)
    axes = [axes] if panels == 1 else list(axes)
    top = axes[0]
    top.plot(steps, revenue, marker=".", color="tab:blue", label="train revenue")
    top.set_ylabel("revenue (batch mean)")
    top.grid(alpha=0.3)
    if other is not None:
        twin = top.twinx()
        twin.plot(steps, other, marker=".", color="tab:green", label=objective)
        twin.set_ylabel(str(objective).removeprefix("train_"))
        lines = top.get_legend_handles_labels()
        extra = twin.get_legend_handles_labels()
        top.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8)
    else:
        top.legend(fontsize=8)
    data: dict = {
        "iteration": steps,
        "revenue": revenue,
        "objective": other,
        "regret": regret,
        "regret_budget": budget,
        "zero_floor": None,
        "zeros": [],
    }
    if regret is not None:
        ax = axes[1]
        shown = [v for v in regret + (budget or []) if math.isfinite(v)]
        floor = log_axis_with_zeros(ax, shown, "y")
        ax.plot(
            steps,
            [v if v > 0 else floor for v in regret],
            marker=".",
            color="tab:red",
            label=f"train {regret_label} (batch mean per bidder)",
        )
        zeros = [s for s, v in zip(steps, regret, strict=True) if v <= 0]
        mark_zeros(ax, zeros, floor, "tab:red", f"{regret_label} = 0")
        if budget is not None:
            ax.plot(
                steps,
                [v if v > 0 else floor for v in budget],
                linestyle="--",
                color="0.3",
                label="regret budget",
            )
        ax.set_ylabel(f"{regret_label} (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        data.update(zero_floor=floor, zeros=zeros)
    axes[-1].set_xlabel("iteration")
    if title:
        fig.suptitle(title, fontsize=9)
    return Plotted(save_figure(fig, path), data)


def training_curves(
    history: TrainingHistory, env, metrics: dict[str, float], out: Path, label: str
) -> Path:
    """``training_curves.png`` from the run's ``history.csv``, titled with the training budget."""
    budget = ": no regret estimated while training"
    if "train_attack_restarts" in metrics:  # regret was measured while training
        restarts, steps = metrics["train_attack_restarts"], metrics["train_attack_steps"]
        budget = (
            f": training attacker {restarts:.0f} restart{'' if restarts == 1 else 's'} x "
            f"{steps:.0f} steps per batch"
        )
    objective = None if env.objective is None else f"train_{env.objective_name}"
    return plot_training_curves(
        history.read(), out / CURVES, f"{label}{budget}", objective, env.regret_label
    ).path
