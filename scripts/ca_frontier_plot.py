"""Revenue against regret for every row of a ``ca_frontier`` table (seed 001 §7.5).

    python scripts/ca_frontier_plot.py outputs/runs/<date>/<time>_reproduce/ca_frontier.csv

Writes ``ca_frontier_scatter.png`` next to the CSV: one marker per trained point (revenue ±
SE against mean regret ± SE under the table's attacker), one colour per mechanism, and prints
for every baseline point whether a solver-backed point has at least its revenue at no more
regret.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--learned", default="solver_backed")
    parser.add_argument(
        "--baselines",
        type=Path,
        help="a ca_baselines CSV: its rows on the same env join the plot (e.g. alpha grids)",
    )
    parser.add_argument("--env", default="combinatorial/ca_2x3")
    args = parser.parse_args()
    table = pd.read_csv(args.csv)
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
    budget = table.iloc[0]
    ax.set_xlabel(
        f"mean regret per bidder (hybrid attacker, PGD {int(budget['restarts'])}x"
        f"{int(budget['steps'])}, {int(budget['profiles'])} profiles)"
    )
    ax.set_ylabel("revenue")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = args.csv.with_name("ca_frontier_scatter.png")
    fig.savefig(out, dpi=120)
    learned = table[table["mechanism"] == args.learned]
    for _, row in table[table["mechanism"] != args.learned].sort_values("mechanism").iterrows():
        better = learned[
            (learned["revenue"] >= row["revenue"]) & (learned["regret_mean"] <= row["regret_mean"])
        ]
        verdict = (
            "dominated by "
            + ", ".join(f"{r.revenue:.4f}/{r.regret_mean:.2e}" for r in better.itertuples())
            if len(better)
            else "not dominated"
        )
        print(
            f"{row['mechanism']} rev {row['revenue']:.4f} rgt {row['regret_mean']:.2e}: {verdict}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
