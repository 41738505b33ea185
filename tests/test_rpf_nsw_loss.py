"""scripts/rpf_nsw_loss.py: the NSW-loss split on tiny 2x2 batches (seconds)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from auctionlab.envs.allocation import AllocationEnv
from auctionlab.mechanisms import RPFNet

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rpf_nsw_loss.py"


def _split():
    spec = importlib.util.spec_from_file_location("rpf_nsw_loss", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.nsw_loss_split


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
