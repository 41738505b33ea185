"""Revenue against regret for every row of a ``ca_frontier`` table (seed 001 §7.5).

    python scripts/ca_frontier_plot.py outputs/runs/<date>/<time>_reproduce/ca_frontier.csv \
        [more ca_frontier CSVs] [--evaluations <evaluate run dir> ...] [--baselines <csv>]

Writes ``ca_frontier_scatter.png`` next to the first CSV: one marker per trained point
(revenue ± SE against mean regret ± SE under the table's attacker), one colour per mechanism.
Several CSVs (restricted sweeps run one by one) and single ``auctionlab evaluate`` runs of a
trained point (``--evaluations``: its ``metrics.json``, the final budget from its training
run's ``config.yaml``) join one frontier. Prints the learned mechanism's Pareto frontier
(no other learned point has more revenue at no more regret), then for every baseline point
the learned points that dominate it (at least its revenue at no more regret) or "not
dominated", and a count. Every point must come from the same attacker budget (checked).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from auctionlab.reporting.plots import save_figure  # noqa: E402


def evaluation_row(run: Path) -> dict:
    """One table row from an ``auctionlab evaluate`` run directory of a trained point."""
    import yaml

    metrics = json.loads((run / "metrics.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    train_dir = Path(config["run"])
    trained = yaml.safe_load((train_dir / "config.yaml").read_text())
    return {
        "mechanism": json.loads((train_dir / "choices.json").read_text()).get("mechanism", "?"),
        "trainer.constraint.budget_end": trained["trainer"]["constraint"].get("budget_end"),
        "revenue": metrics["revenue"],
        "revenue_se": metrics["revenue_se"],
        "regret_mean": metrics["regret_mean"],
        "regret_se": metrics["regret_se"],
        "regret_max": metrics["regret_max"],
        "restarts": metrics["attack_restarts"],
        "steps": metrics["attack_steps"],
        "profiles": metrics["profiles"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, nargs="+")
    parser.add_argument("--evaluations", type=Path, nargs="*", default=[])
    parser.add_argument("--learned", default="solver_backed")
    parser.add_argument(
        "--baselines",
        type=Path,
        help="a ca_baselines CSV: its rows on the same env join the plot (e.g. alpha grids)",
    )
    parser.add_argument("--env", default="combinatorial/ca_2x3")
    args = parser.parse_args()
    table = pd.concat(
        [pd.read_csv(path) for path in args.csv]
        + [pd.DataFrame([evaluation_row(run) for run in args.evaluations])],
        ignore_index=True,
    )
    if args.baselines:
        extra = pd.read_csv(args.baselines)
        extra = extra[extra["env"] == args.env].copy()
        alpha = extra.get("mechanism.alpha")
        if alpha is not None:
            extra["mechanism"] = [
                f"{m} (alpha grid)" if pd.notna(a) else m
                for m, a in zip(extra["mechanism"], alpha, strict=True)
            ]
        table = pd.concat([table, extra], ignore_index=True)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, rows in table.groupby("mechanism"):
        ax.errorbar(
            rows["regret_mean"],
            rows["revenue"],
            xerr=rows.get("regret_se"),
            yerr=rows["revenue_se"],
            fmt="o",
            label=name,
            capsize=2,
        )
    budgets = table[["restarts", "steps", "profiles"]].drop_duplicates()
    if len(budgets) > 1:
        raise SystemExit(f"points measured with different attacker budgets:\n{budgets}")
    budget = table.iloc[0]
    ax.set_xlabel(
        f"mean regret per bidder (hybrid attacker, PGD {int(budget['restarts'])}x"
        f"{int(budget['steps'])}, {int(budget['profiles'])} profiles)"
    )
    ax.set_ylabel("revenue")
    ax.grid(alpha=0.3)
    ax.legend()
    out = save_figure(fig, args.csv[0].with_name("ca_frontier_scatter.png"))
    learned = table[table["mechanism"] == args.learned]
    print(
        f"attacker: hybrid, PGD {int(budget['restarts'])} restarts x {int(budget['steps'])} steps, "
        f"{int(budget['profiles'])} profiles"
    )
    print(f"{args.learned} Pareto frontier (revenue / mean regret per bidder):")
    for _, row in learned.sort_values("regret_mean").iterrows():
        beaten = (
            (learned["revenue"] > row["revenue"]) & (learned["regret_mean"] <= row["regret_mean"])
        ).any()
        if not beaten:
            budget_end = row.get("trainer.constraint.budget_end")
            print(
                f"  {row['revenue']:.4f} ± {row['revenue_se']:.4f} at {row['regret_mean']:.3g}"
                + (f" (final budget {budget_end:g})" if pd.notna(budget_end) else "")
            )
    dominated = 0
    baselines = table[table["mechanism"] != args.learned].sort_values(["mechanism", "revenue"])
    for _, row in baselines.iterrows():
        better = learned[
            (learned["revenue"] >= row["revenue"]) & (learned["regret_mean"] <= row["regret_mean"])
        ]
        dominated += bool(len(better))
        verdict = (
            "dominated by "
            + ", ".join(f"{r.revenue:.4f}/{r.regret_mean:.3g}" for r in better.itertuples())
            if len(better)
            else "not dominated"
        )
        alpha = row.get("mechanism.alpha")
        label = row["mechanism"] + (f" alpha={alpha:g}" if pd.notna(alpha) else "")
        print(f"{label} rev {row['revenue']:.4f} rgt {row['regret_mean']:.3g}: {verdict}")
    print(f"{dominated} of {len(baselines)} baseline points dominated by a {args.learned} point")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
