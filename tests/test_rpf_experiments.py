"""[zeng2025rpf] reproduce experiments (rpf_*): plans, fixed-rule points, figures, timing.

The experiments themselves are smoke-run end to end by tests/test_reproduce.py; here the
pieces are checked without running jobs (a second or two each).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf

from auctionlab.conf import CONF_DIR
from auctionlab.envs.allocation import AllocationEnv
from auctionlab.errors import ConfigError
from auctionlab.mechanisms import ExSNet, ProportionalFairness, RPFNet
from auctionlab.reporting import TableSpec, build_table, plot_table
from auctionlab.reporting.figures import allocation_figures, time_inference
from auctionlab.tasks import reproduce
from auctionlab.utils import make_generator

CONF = CONF_DIR
#: The [zeng2025rpf] tables and figures (rpf_stages, a staged schedule: tests/test_rpf_stages.py).
RPF = sorted(p.stem for p in (CONF / "experiment").glob("rpf_*.yaml") if p.stem != "rpf_stages")


def test_the_five_seed_002_experiments_exist():
    assert RPF == ["rpf_fig1", "rpf_fig3", "rpf_fig5", "rpf_table1", "rpf_table2"]


@pytest.mark.parametrize("name", RPF)
def test_fixed_rules_skip_train_and_budgets_follow_the_scale(name):
    smoke = reproduce.prepare(compose_cfg("reproduce", [f"experiment={name}", "scale=smoke"]))
    cpu_cfg = compose_cfg("reproduce", [f"experiment={name}"])
    cpu = OmegaConf.to_container(cpu_cfg.experiment.overrides, resolve=True)  # no job built
    assert smoke.pipeline == ["train", "evaluate"]
    fixed = {"pf", "pa", "pf_pa_mixture"}
    for point in smoke.points:
        # PF, PA and the mixture are evaluated directly; the networks are trained first
        assert point.skip == (("train",) if point.labels["mechanism"] in fixed else ())
    assert {p.labels["mechanism"] for p in smoke.points} & fixed
    assert {p.labels["mechanism"] for p in smoke.points} - fixed
    # smoke keeps the scale's budgets (seconds); cpu takes the scale's allocation budgets
    # (rpf_table2: its timing budgets)
    budget = cpu_cfg.scale.allocation_timing if name == "rpf_table2" else cpu_cfg.scale.allocation
    assert "train.iterations=20" in smoke.stage_overrides["train"]
    assert f"train.iterations={budget.iterations}" in cpu["train"]
    assert f"attack_budget.steps={budget.train_steps}" in cpu["train"]
    assert "scale.evaluation.steps=20" in smoke.stage_overrides["evaluate"]
    assert "scale.validation.steps=10" in smoke.stage_overrides["train"]
    assert f"scale.validation.steps={budget.val_steps}" in cpu["train"]
    assert f"scale.evaluation.steps={budget.steps}" in cpu["evaluate"]


def test_table1_rows_cover_three_training_variants_and_both_conventions():
    plan = reproduce.prepare(compose_cfg("reproduce", ["experiment=rpf_table1"]))
    rows = {
        (p.labels["mechanism"], p.labels["env.variant"], p.labels["env.empty_demand"])
        for p in plan.points
    }
    assert {("rpfnet", v, "resample") for v in ("truthful", "cauchy", "adversarial_pf")} <= rows
    for mechanism in ("pf", "pa", "pf_pa_mixture"):
        assert {(mechanism, "truthful", c) for c in ("resample", "keep")} <= rows


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("experiment.fixed_rules=skip", ["fixed_rules=skip", "error", "evaluate"]),
        ("experiment.pipeline=[evaluate]", ["fixed_rules=evaluate", "[train|resume, evaluate]"]),
    ],
)
def test_bad_fixed_rules_fail_in_one_line(override, words):
    cfg = compose_cfg("reproduce", ["experiment=rpf_fig1", "scale=smoke", override])
    with pytest.raises(ConfigError) as info:
        reproduce.prepare(cfg)
    assert all(w in str(info.value) for w in words) and "\n" not in str(info.value)


def test_a_fixed_rule_in_a_train_pipeline_is_still_refused_by_default():
    cfg = compose_cfg(
        "reproduce",
        ["experiment=rpf_fig1", "scale=smoke", "experiment.fixed_rules=error"],
    )
    with pytest.raises(ConfigError, match="nothing to train"):
        reproduce.prepare(cfg)


def test_fixed_rule_points_pass_their_overrides_to_evaluate():
    point = reproduce.Point(0, ["mechanism=pf", "env=allocation/2x2"], skip=("train",))
    args = reproduce.stage_arguments("evaluate", point, ["train", "evaluate"], {})
    assert args == ["mechanism=pf", "env=allocation/2x2"]
    trained = reproduce.Point(1, ["mechanism=rpfnet"])
    done = {"train": Path("/runs/t")}
    assert reproduce.stage_arguments("evaluate", trained, ["train", "evaluate"], done) == [
        "run='/runs/t'"
    ]


def test_fig1_example_pf_gains_about_17_percent(tmp_path):
    env = AllocationEnv("allocation/2x2", 2, 2)
    metrics, files = allocation_figures(ProportionalFairness(env), env, tmp_path, "PF")
    assert 16.0 <= metrics["fig1_max_gain_pct"] <= 17.5
    assert 0.25 <= metrics["fig1_best_ratio"] <= 0.27  # just above 0.25 (§2.1)
    assert metrics["fig1_truthful_utility"] == pytest.approx(0.75, abs=1e-4)
    assert {p.name for p in files} == {
        "fig1_ratio_curve.csv",
        "fig1_ratio_curve.png",
        "fig5_allocation_map.csv",
        "fig5_allocation_map.png",
    }
    assert all(p.stat().st_size > 0 for p in files)
    rows = (tmp_path / "fig5_allocation_map.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 41 * 41
    # PF's boundary is sharp: some neighbouring cells differ by most of a resource
    assert metrics["fig5_max_jump"] > 0.5


def test_rpfnet_with_a_zero_regulariser_draws_pf_figures(tmp_path):
    env = AllocationEnv("allocation/2x2", 2, 2)
    # z = 0 (start_at_pf) at PF's tolerance: the same programs, solved alike.
    net = RPFNet(env, hidden=[8], start_at_pf=True, tol=1e-7)
    (tmp_path / "pf").mkdir()
    (tmp_path / "net").mkdir()
    pf, _ = allocation_figures(ProportionalFairness(env), env, tmp_path / "pf", "PF")
    zero, _ = allocation_figures(net, env, tmp_path / "net", "RPF-Net z=0")
    assert zero == pytest.approx(pf, abs=1e-4)


def test_figures_only_for_two_by_two_and_timing_is_positive(tmp_path):
    env = AllocationEnv("allocation/10x3", 10, 3)
    assert allocation_figures(ExSNet(env, hidden=[8]), env, tmp_path, "x") == ({}, [])
    types = env.sample(16, make_generator(0, torch.device("cpu")))
    timing = time_inference(ExSNet(env, hidden=[8]), types, repeats=2)
    assert timing["inference_seconds"] > 0 and timing["inference_profiles"] == 16
    assert timing["inference_us_per_profile"] == pytest.approx(
        1e6 * timing["inference_seconds"] / 16
    )


def test_table1_spec_normalises_by_pf_under_the_same_convention(tmp_path):
    node = compose_cfg("reproduce", ["experiment=rpf_table1", "scale=smoke"]).experiment.table
    spec = TableSpec.from_config(OmegaConf.to_container(node, resolve=True))
    base = {
        "evaluate.nsw_se": 0.0,
        "evaluate.regret_se": 0.0,
        "evaluate.efficiency": 0.6,
        "evaluate.attack_restarts": 4.0,
        "evaluate.attack_steps": 20.0,
        "evaluate.profiles": 128.0,
    }
    records = [
        {
            "mechanism": m,
            "env.variant": "truthful",
            "env.empty_demand": c,
            **base,
            "evaluate.nsw": nsw,
            "evaluate.regret_mean": expl,
        }
        for m, c, nsw, expl in [
            ("pf", "resample", 0.1, 1e-2),
            ("pf", "keep", 0.05, 5e-3),
            ("rpfnet", "resample", 0.098, 1e-3),
        ]
    ]
    table = build_table(records, spec)
    rpf = table[table["mechanism"] == "rpfnet"].iloc[0]
    assert rpf["nsw_vs_pf"] == pytest.approx(0.98) and rpf["expl_vs_pf"] == pytest.approx(0.1)
    assert bool(rpf["meets_target"])
    keep = table[table["env.empty_demand"] == "keep"].iloc[0]
    assert keep["nsw_vs_pf"] == pytest.approx(1.0)
    assert rpf["paper_expl"] == pytest.approx(3.99e-4)
    # one bar per row, labelled by all three keys (plot.x is a list of columns)
    plot = OmegaConf.to_container(
        compose_cfg("reproduce", ["experiment=rpf_table1"]).experiment.plot, resolve=True
    )
    path = plot_table(table, plot, tmp_path / "table1.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="plot.x"):
        plot_table(table, {**plot, "x": ["mechanism", "ghost"]}, tmp_path / "bad.png")
