"""Aggregation, formatting and plotting of experiment tables (no jobs run here)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from omegaconf import OmegaConf

from auctionlab.conf import CONF_DIR
from auctionlab.errors import ConfigError
from auctionlab.reporting import (
    TableSpec,
    build_table,
    check_budget_columns,
    format_table,
    plot_table,
    render_markdown,
    write_table,
)
from auctionlab.reporting.plots import check_plot

CONF = CONF_DIR
BUDGET = {
    "restarts": "evaluate.attack_restarts",
    "steps": "evaluate.attack_steps",
    "profiles": "evaluate.profiles",
}


def _spec(**extra) -> TableSpec:
    node = {
        "index": ["mechanism", "env"],
        "columns": {
            "revenue": "evaluate.revenue",
            "revenue_se": "evaluate.revenue_se",
            "regret_mean": "evaluate.regret_mean",
            **BUDGET,
        },
        **extra,
    }
    return TableSpec.from_config(node)


def _record(mechanism: str, env: str, revenue: float, seed: int = 0, regret: float = 0.0):
    return {
        "mechanism": mechanism,
        "env": env,
        "seed": str(seed),
        "evaluate.revenue": revenue,
        "evaluate.revenue_se": 0.01,
        "evaluate.regret_mean": regret,
        "evaluate.attack_restarts": 4.0,
        "evaluate.attack_steps": 20.0,
        "evaluate.profiles": 128.0,
    }


def test_rows_average_jobs_sharing_the_index_and_join_references():
    spec = _spec(
        reference=[{"mechanism": "vcg", "env": "2x2", "target": 0.6667}],
        derived={"z": "(revenue - target) / revenue_se"},
    )
    records = [
        _record("vcg", "2x2", 0.66, seed=0),
        _record("vcg", "2x2", 0.68, seed=1),
        _record("myerson", "2x2", 0.80),
    ]
    table = build_table(records, spec)
    assert list(table["mechanism"]) == ["vcg", "myerson"]  # sweep order kept
    assert list(table["runs"]) == [2, 1]
    assert table.loc[0, "revenue"] == pytest.approx(0.67)
    assert table.loc[0, "z"] == pytest.approx((0.67 - 0.6667) / 0.01)
    assert math.isnan(table.loc[1, "target"]) and math.isnan(table.loc[1, "z"])


def test_single_jobs_have_no_runs_column_and_order_is_respected():
    order = ["env", "mechanism", "revenue", "regret_mean", "restarts", "steps", "profiles"]
    table = build_table([_record("vcg", "2x2", 0.66)], _spec(order=order))
    assert list(table.columns) == order


def test_missing_metrics_become_missing_cells():
    record = _record("vcg", "2x2", 0.66)
    del record["evaluate.regret_mean"]
    table = build_table([record, {"mechanism": "x", "env": "2x2"}], _spec())
    assert math.isnan(table.loc[0, "regret_mean"])
    assert math.isnan(table.loc[1, "revenue"])
    formatted = format_table(table, _spec())
    assert formatted.loc[1, "revenue"] == "–"


def test_regret_without_its_budget_is_rejected():
    spec = _spec()
    del spec.columns["steps"]
    with pytest.raises(ConfigError, match="regret_mean.*evaluate.attack_steps"):
        check_budget_columns(spec)
    validation = TableSpec.from_config(
        {"index": ["env"], "columns": {"rgt": "train.val_regret_mean"}}
    )
    with pytest.raises(ConfigError, match="train.val_attack_restarts"):
        check_budget_columns(validation)
    check_budget_columns(_spec())


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"index": ["env"]}, "needs 'index'"),
        ({"index": ["env"], "columns": {"a": "evaluate.a"}, "colour": 1}, "unknown keys"),
    ],
)
def test_bad_table_specs(node, message):
    with pytest.raises(ConfigError, match=message):
        TableSpec.from_config(node)


def test_bad_derived_expression_and_order_name_themselves():
    with pytest.raises(ConfigError, match="derived.z"):
        build_table([_record("vcg", "2x2", 0.6)], _spec(derived={"z": "nope +"}))
    with pytest.raises(ConfigError, match="order"):
        build_table([_record("vcg", "2x2", 0.6)], _spec(order=["mechanism", "ghost"]))
    with pytest.raises(ConfigError, match="seedless"):
        build_table([_record("vcg", "2x2", 0.6)], _spec(index=["seedless"]))


def test_formats_markdown_and_files(tmp_path):
    spec = _spec(formats={"revenue": ".3f", "regret_mean": ".1e"}, caption="A caption.")
    table = build_table([_record("vcg", "2x2", 0.66666, regret=0.00123)], spec)
    formatted = format_table(table, spec)
    assert formatted.loc[0, "revenue"] == "0.667"
    assert formatted.loc[0, "regret_mean"] == "1.2e-03"
    assert formatted.loc[0, "steps"] == "20"
    markdown = render_markdown(formatted)
    assert markdown.splitlines()[1].startswith("|---|---|---:|")
    paths = write_table(table, spec, tmp_path, "demo", "Demo", notes=["note one"])
    assert [p.name for p in paths] == ["demo.csv", "demo.md", "demo.tex"]
    assert pd.read_csv(paths[0])["revenue"][0] == pytest.approx(0.66666)
    text = paths[1].read_text()
    assert text.startswith("# Demo") and "A caption." in text and "note one" in text
    assert "\\caption{A caption.}" in paths[2].read_text()


def test_plot_writes_png_with_and_without_regret(tmp_path):
    spec = _spec(reference=[{"mechanism": "vcg", "env": "2x2", "target": 0.6667}])
    records = [_record("vcg", e, 0.6) for e in ("2x2", "2x3")]
    records.append(_record("myerson", "2x2", 0.8, regret=1e-3))
    table = build_table(records, spec)
    plot = {
        "x": "env",
        "hue": "mechanism",
        "y": "revenue",
        "yerr": "revenue_se",
        "reference": "target",
        "regret": "regret_mean",
        "budget": {"restarts": "restarts", "steps": "steps", "profiles": "profiles"},
    }
    path = plot_table(table, plot, tmp_path / "plot.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    path = plot_table(table, {"x": "env", "y": "revenue"}, tmp_path / "bare.png")
    assert path.stat().st_size > 0


def test_plot_spec_is_checked():
    with pytest.raises(ConfigError, match="not a table column"):
        check_plot({"x": "env", "y": "profit"}, ["env", "revenue"])
    with pytest.raises(ConfigError, match="unknown keys"):
        check_plot({"x": "env", "y": "revenue", "colour": "red"}, ["env", "revenue"])


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_table_keeps_regret_with_its_budget(name):
    node = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{name}.yaml"))
    spec = TableSpec.from_config(node["experiment"]["table"])
    check_budget_columns(spec)
    order = spec.order or []
    # Regret (exploitability, for payment-free allocation) is shown, and with its budget.
    shown = [c for c in order if "regret" in spec.columns.get(c, "")]
    assert shown, f"{name}: no regret column in the table"
    for column in ("restarts", "steps", "profiles"):
        assert column in order, column


def test_relative_columns_divide_by_the_matching_base_row():
    records = [
        {"env": e, "attacker": a, "train.train_seconds": s}
        for e, a, s in [("2x2", "pgd", 100.0), ("2x2", "local", 20.0), ("2x5", "pgd", 50.0)]
    ]
    spec = TableSpec.from_config(
        {
            "index": ["env", "attacker"],
            "columns": {"seconds": "train.train_seconds"},
            "relative": {"ratio": {"column": "seconds", "key": "attacker", "to": "pgd"}},
        }
    )
    table = build_table(records, spec)
    assert table["ratio"].tolist() == [1.0, 0.2, 1.0]
    bad = TableSpec.from_config(
        {**spec.__dict__, "relative": {"r": {"column": "nope", "key": "env", "to": "x"}}}
    )
    with pytest.raises(ConfigError, match="experiment.table.relative.r"):
        build_table(records, bad)


def test_relative_by_matches_on_the_named_keys_only():
    # Two local variants (1 and 3 steps) are both compared with the one standard run per env.
    records = [
        {"env": e, "attacker": a, "attacker.steps": k, "train.train_seconds": s}
        for e, a, k, s in [
            ("2x2", "pgd", "25", 100.0),
            ("2x2", "local", "1", 10.0),
            ("2x2", "local", "3", 20.0),
            ("2x5", "pgd", "25", 40.0),
            ("2x5", "local", "1", 8.0),
        ]
    ]
    rule = {"column": "seconds", "key": "attacker", "to": "pgd", "by": ["env"]}
    spec = TableSpec.from_config(
        {
            "index": ["env", "attacker", "attacker.steps"],
            "columns": {"seconds": "train.train_seconds"},
            "relative": {"ratio": rule},
        }
    )
    assert build_table(records, spec)["ratio"].tolist() == [1.0, 0.1, 0.2, 1.0, 0.2]
    without_by = TableSpec.from_config(
        {**spec.__dict__, "relative": {"ratio": {k: v for k, v in rule.items() if k != "by"}}}
    )
    assert build_table(records, without_by)["ratio"].isna().sum() == 3  # steps differ
    bad = TableSpec.from_config({**spec.__dict__, "relative": {"ratio": {**rule, "by": "seed"}}})
    with pytest.raises(ConfigError, match="by=seed"):
        build_table(records, bad)
