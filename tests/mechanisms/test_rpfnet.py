"""Allocation mechanisms ([zeng2025rpf]): PF, PA, mixture, RPF-Net, ExS-Net, softmax; CLI family."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from auctionlab.attackers import PGDAttacker
from auctionlab.components import build_env_and_mechanism
from auctionlab.envs.allocation import AllocationEnv, split_reports
from auctionlab.errors import ConfigError
from auctionlab.mechanisms import (
    ExSNet,
    PartialAllocation,
    ProportionalFairness,
    RPFNet,
    SoftmaxNet,
)

MECHANISMS = ["pf", "pa", "pf_pa_mixture", "rpfnet", "exsnet", "softmax_net"]


@pytest.mark.parametrize("name", MECHANISMS)
def test_builds_on_allocation_envs_and_refuses_auctions(name):
    env, mechanism = build_env_and_mechanism(
        compose_cfg("evaluate", [f"mechanism={name}", "env=allocation/2x2"])
    )
    types = env.sample(6, torch.Generator().manual_seed(0))
    with torch.no_grad():
        outcome = mechanism(types.values, types.public)
    _, demands = split_reports(types.values)
    assert outcome.allocation.shape == demands.shape and (outcome.payment == 0).all()
    assert (outcome.allocation >= -1e-9).all() and (outcome.allocation <= demands + 1e-7).all()
    assert (outcome.allocation.sum(1) <= types.public["budgets"] + 1e-7).all()
    with pytest.raises(ConfigError, match="solves 'allocation' problems"):
        build_env_and_mechanism(compose_cfg("evaluate", [f"mechanism={name}", "env=1x2"]))


def test_pa_scales_pf_and_mixture_interpolates():
    env = AllocationEnv("t", 3, 2)
    types = env.sample(16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        pf = ProportionalFairness(env)(types.values, types.public).allocation
        pa = PartialAllocation(env)(types.values, types.public).allocation
    ratio = pa.sum(-1) / pf.sum(-1).clamp_min(1e-12)
    assert (ratio <= 1 + 1e-6).all() and (ratio >= 0).all()
    torch.testing.assert_close(pa, ratio.unsqueeze(-1) * pf, atol=1e-6, rtol=0)


def test_rpfnet_gradients_reach_the_trunk_and_start_near_pf():
    env = AllocationEnv("t", 2, 2)
    torch.manual_seed(0)
    net = RPFNet(env, hidden=[16], z_scale=1e-3, start_at_pf=False)
    types = env.sample(32, torch.Generator().manual_seed(2))
    allocation = net(types.values, types.public).allocation
    with torch.no_grad():
        pf = ProportionalFairness(env)(types.values, types.public).allocation
    assert float((allocation.detach() - pf).abs().max()) < 1e-2
    env.objective(net.outcome(allocation), types).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_rpfnet_start_at_pf_is_exactly_pf_until_trained():
    env = AllocationEnv("t", 3, 2)
    torch.manual_seed(0)
    net = RPFNet(env, hidden=[16], start_at_pf=True, tol=1e-7)  # PF's tolerance
    types = env.sample(16, torch.Generator().manual_seed(5))
    allocation = net(types.values, types.public).allocation
    with torch.no_grad():
        pf = ProportionalFairness(env)(types.values, types.public).allocation
    torch.testing.assert_close(allocation.detach(), pf, atol=1e-9, rtol=0)
    env.objective(net.outcome(allocation), types).backward()
    # Only the zeroed output layer's weight moves z; it gets a nonzero gradient.
    assert float(net.trunk[-1].weight.grad.abs().max()) > 0


@pytest.mark.parametrize("net_class", [RPFNet, ExSNet, SoftmaxNet])
@pytest.mark.parametrize("scale_invariant", [True, False])
def test_scale_invariant_nets_ignore_each_agents_value_scale(net_class, scale_invariant):
    env = AllocationEnv("t", 3, 2)
    torch.manual_seed(0)
    kwargs = {"start_at_pf": False} if net_class is RPFNet else {}
    net = net_class(env, hidden=[16], scale_invariant=scale_invariant, **kwargs)
    types = env.sample(32, torch.Generator().manual_seed(6))
    scaled = types.values.clone()
    factor = torch.empty(32, 3, 1).uniform_(0.2, 1.0, generator=torch.Generator().manual_seed(7))
    scaled[..., :2] *= factor
    with torch.no_grad():
        gap = net(types.values, types.public).allocation - net(scaled, types.public).allocation
    # PF itself is scale-invariant; an invariant z keeps RPF-Net so (to solver tolerance).
    if scale_invariant:
        assert float(gap.abs().max()) <= 1e-6
    else:
        assert float(gap.abs().max()) > 1e-3


def test_scale_invariant_is_a_config_option_of_every_learned_allocation_net():
    for name in ("rpfnet", "exsnet", "softmax_net"):
        overrides = [f"mechanism={name}", "env=allocation/2x2", "mechanism.scale_invariant=true"]
        cfg = compose_cfg("evaluate", overrides)
        _, mechanism = build_env_and_mechanism(cfg)
        assert mechanism.scale_invariant is True


def test_pf_exploitability_positive_and_attack_budget_reported():
    env = AllocationEnv("t", 2, 2)
    types = env.sample(32, torch.Generator().manual_seed(3))
    attacker = PGDAttacker(restarts=2, steps=20, step_size=0.05, include_truthful=True)
    result = attacker.attack(
        ProportionalFairness(env), env, types, torch.Generator().manual_seed(4)
    )
    assert float(result.gain.mean()) > 1e-4 and result.budget["gradient"]


def test_dense_search_confirms_pgd_on_the_fig1_example():
    """2x2 check: a dense grid over agent 1's value ratio finds what gradient ascent finds."""
    env = AllocationEnv("t", 2, 2, budget_per_agent=0.5)
    truth = torch.tensor([[[1.0, 0.5, 1.0, 1.0], [1.0, 0.25, 1.0, 1.0]]])
    public = {"budgets": torch.ones(1, 2), "weights": torch.ones(1, 2)}
    pf = ProportionalFairness(env)
    ratios = torch.linspace(0.1, 1.0, 901)
    grid = truth.repeat(len(ratios), 1, 1)
    grid[:, 0, 1] = ratios
    with torch.no_grad():
        allocation = pf(grid, {k: v.expand(len(ratios), -1) for k, v in public.items()}).allocation
    u = env.utility(pf.outcome(allocation), truth.expand(len(ratios), -1, -1))[:, 0]
    truthful = float(u[torch.argmin((ratios - 0.5).abs())])
    dense_gain = float(u.max()) - truthful
    from auctionlab.types import Types

    attacker = PGDAttacker(restarts=8, steps=100, step_size=0.05, final_step_size=0.001)
    result = attacker.attack(pf, env, Types(truth, public), torch.Generator().manual_seed(0))
    assert dense_gain / truthful == pytest.approx(1 / 6, abs=0.01)
    assert float(result.gain[0, 0]) >= 0.98 * dense_gain


def test_exsnet_withholds_softmax_net_does_not_exceed_budget():
    env = AllocationEnv("t", 2, 2)
    torch.manual_seed(0)
    types = env.sample(8, torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = ExSNet(env, hidden=[8])(types.values, types.public).allocation
    assert (a.sum(1) <= types.public["budgets"] + 1e-7).all()
