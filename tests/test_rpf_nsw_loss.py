"""The NSW-loss split (``evaluate figures=[nsw_loss]``, formerly scripts/rpf_nsw_loss.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from auctionlab.envs.allocation import AllocationEnv
from auctionlab.errors import ConfigError
from auctionlab.mechanisms import RPFNet
from auctionlab.reporting.figures import check_figures, evaluation_figures, nsw_loss_split


def _split():
    return nsw_loss_split


def _env() -> AllocationEnv:
    return AllocationEnv("allocation/2x2", 2, 2, empty_demand="resample")


def test_an_untrained_rpfnet_is_pf_and_loses_nothing():
    env = _env()
    result = _split()(RPFNet(env, hidden=[8]), env, profiles=32, restarts=1, steps=3)
    assert abs(result["nsw_ratio"] - 1.0) < 1e-5  # the solvers' tolerances apart
    assert math.isnan(result["exploitable_loss_share"])
    budget = result["pf_attack_budget"]
    assert (budget["restarts"], budget["steps"], budget["include_truthful"]) == (1, 3, True)


def test_a_perturbed_rpfnet_splits_its_loss_between_disjoint_profile_sets():
    env = _env()
    torch.manual_seed(0)
    mechanism = RPFNet(env, hidden=[8], start_at_pf=False, z_scale=3.0)
    result = _split()(mechanism, env, profiles=64, restarts=2, steps=5)
    assert result["nsw_ratio"] < 1.0  # PF maximises log-NSW, a z far from 0 costs NSW
    assert 0.0 < result["exploitable_fraction"] < 1.0
    assert 0.0 <= result["clean_fraction"] <= 1.0 - result["exploitable_fraction"]
    shares = ("exploitable_loss_share", "clean_loss_share", "other_loss_share")
    assert abs(sum(result[k] for k in shares) - 1.0) < 1e-9
    assert result["nsw_ratio"] <= result["ratio_without_collateral_loss"] <= 1.0 + 1e-9


def test_evaluate_asks_for_it_by_name_with_its_options(tmp_path):
    env = _env()
    options = {"nsw_loss": {"profiles": 16, "restarts": 1, "steps": 2, "seed": 7}}
    types = env.sample(8, torch.Generator().manual_seed(0))
    metrics, files = evaluation_figures(
        RPFNet(env, hidden=[8]), env, types, tmp_path, "t", ["nsw_loss"], options
    )
    assert tmp_path / "nsw_loss.json" in files
    written = json.loads((tmp_path / "nsw_loss.json").read_text())
    assert metrics["nsw_loss_nsw_ratio"] == written["nsw_ratio"]
    assert metrics["nsw_loss_pf_attack_steps"] == 2 and metrics["nsw_loss_profiles"] == 16
    # the env's own figures come first (2x2: Figure 1's example, inference time)
    assert "fig1_max_gain_pct" in metrics and "inference_seconds" in metrics


def test_an_unknown_figure_is_refused():
    with pytest.raises(ConfigError, match="nsw_lost"):
        check_figures(["nsw_lost"])
