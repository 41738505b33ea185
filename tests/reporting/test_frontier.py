"""The frontier plot kind (experiment ca_frontier; formerly scripts/ca_frontier_plot.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from auctionlab.errors import ConfigError
from auctionlab.reporting.plots import check_plot, dominated_by, pareto_front, plot_table

TABLE = pd.DataFrame(
    {
        "mechanism": ["learned", "learned", "learned", "greedy", "greedy"],
        "regret_mean": [0.01, 0.02, 0.03, 0.015, 0.001],
        "regret_se": [0.001] * 5,
        "revenue": [0.8, 0.7, 0.9, 0.75, 0.5],
        "revenue_se": [0.01] * 5,
        "restarts": [4] * 5,
        "steps": [20] * 5,
        "profiles": [128] * 5,
    }
)
PLOT = {
    "kind": "frontier",
    "x": "regret_mean",
    "xerr": "regret_se",
    "hue": "mechanism",
    "y": "revenue",
    "yerr": "revenue_se",
    "frontier": "learned",
    "budget": {"restarts": "restarts", "steps": "steps", "profiles": "profiles"},
}


def test_the_pareto_front_drops_points_beaten_at_no_more_regret():
    learned = TABLE[TABLE.mechanism == "learned"]
    front = pareto_front(learned, "regret_mean", "revenue")
    # (0.02, 0.7) is beaten by (0.01, 0.8): more revenue at less regret
    assert front[["regret_mean", "revenue"]].values.tolist() == [[0.01, 0.8], [0.03, 0.9]]
    others = TABLE[TABLE.mechanism == "greedy"]
    # (0.015, 0.75) is dominated by (0.01, 0.8); (0.001, 0.5) has less regret than any
    assert dominated_by(others, front, "regret_mean", "revenue").tolist() == [True, False]


def test_the_frontier_plot_is_written(tmp_path):
    path = plot_table(TABLE, PLOT, tmp_path / "frontier.png")
    assert path.exists() and path.stat().st_size > 1000


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"kind": "violin"}, "kind=violin"),
        ({"hue": None}, "needs 'hue'"),
        ({"xerr": "nope"}, "xerr"),
    ],
)
def test_bad_frontier_plots_fail(change, words):
    plot = {k: v for k, v in {**PLOT, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=words):
        check_plot(plot, list(TABLE.columns))
