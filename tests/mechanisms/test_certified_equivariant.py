"""``mechanism=certified_equivariant`` ([lemma2026certified] §4): feasible, equivariant, Lipschitz.

Variants cover the encoders (DeepSets, shared-weight attention, the flat-MLP ablation) and the
feasibility layers (softmax with dummy, Sinkhorn with slack; unit demand through Sinkhorn).

Properties are checked at random initialisation and after the weights are pushed far from it
(scaled up, as training could), for every payment head and weight control: the guarantees are
structural, so they must hold whatever the weights.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import compose_cfg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auctionlab.components import build_env_and_mechanism
from auctionlab.errors import ConfigError

VARIANTS = {
    "default": [],
    "l1": ["mechanism.weight_norm=l1", "mechanism.activation=relu"],
    "fractional": ["mechanism.payment=fractional", "mechanism.activation=gelu"],
    "zero_floor": ["mechanism.payment=zero_floor", "mechanism.hidden=[16,16,16]"],
    "no_lipschitz": ["mechanism.weight_norm=none", "mechanism.score_bound=null"],
    "attention": ["mechanism.encoder=attention"],
    "attention_l1": [
        "mechanism.encoder=attention",
        "mechanism.weight_norm=l1",
        "mechanism.attention_heads=3",
        "mechanism.attention_dim=4",
        "mechanism.payment=fractional",
    ],
    "mlp": ["mechanism.encoder=mlp"],
    "sinkhorn": ["mechanism.allocation=sinkhorn", "mechanism.sinkhorn_iterations=5"],
    "sinkhorn_attention": [
        "mechanism.allocation=sinkhorn",
        "mechanism.encoder=attention",
        "mechanism.payment=zero_floor",
        "mechanism.sinkhorn_temperature=0.5",
    ],
}
ENVS = ["2x2", "3x10", "1x2_asym"]
#: (variant, env) pairs: every variant on the additive envs, Sinkhorn also on unit demand.
PAIRS = [(v, e) for v in VARIANTS for e in ENVS] + [
    ("sinkhorn", "2x2_unit"),
    ("sinkhorn_attention", "2x2_unit"),
]
TOL = 1e-5


@functools.cache
def built(variant: str, env: str, scale: float = 1.0):
    """``(env, mechanism)`` in eval mode; ``scale`` multiplies every raw weight and bias."""
    torch.manual_seed(0)
    cfg = compose_cfg(
        "train", ["mechanism=certified_equivariant", f"env={env}", *VARIANTS[variant]]
    )
    environment, mechanism = build_env_and_mechanism(cfg)
    with torch.no_grad():
        for p in mechanism.parameters():
            p.mul_(scale).add_(0.1 * (scale - 1.0) * torch.randn_like(p))
    mechanism.double().eval()
    return environment, mechanism


def _box(env):
    return env.report_space.low.double(), env.report_space.high.double()


#: Unit-cube coordinates biased to the edges: exact 0, exact 1 and ties.
coordinates = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))


@pytest.mark.parametrize(("variant", "env"), PAIRS)
@pytest.mark.parametrize("scale", [1.0, 25.0])
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_feasible_for_all_inputs(variant, env, scale, data):
    environment, mechanism = built(variant, env, scale)
    n, m = environment.n_bidders, environment.n_items
    unit = torch.tensor(
        data.draw(st.lists(coordinates, min_size=n * m, max_size=n * m)), dtype=torch.float64
    ).view(1, n, m)
    if data.draw(st.booleans()):  # every bidder reports the same: a full tie
        unit = unit[:, :1].expand(1, n, m)
    low, high = _box(environment)
    reports = low + (high - low) * unit
    with torch.no_grad():
        outcome = mechanism(reports)
    allocation, payment = outcome.allocation, outcome.payment
    assert torch.isfinite(allocation).all() and torch.isfinite(payment).all()
    assert allocation.min() >= 0 and (allocation.sum(1) <= 1 + TOL).all()
    if environment.demand == "unit":  # Sinkhorn rows: at most one item per bidder
        assert (allocation.sum(2) <= 1 + TOL).all(), allocation.sum(2).max()
    assert payment.min() >= 0
    if mechanism.payment_kind == "fractional":
        assert (environment.utility(outcome, reports) >= -TOL).all()
    else:
        assert payment.max() <= mechanism.payment_bound + TOL


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "mlp"])
@pytest.mark.parametrize("env", ["2x2", "3x10"])
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_permuting_bidders_permutes_outcome(variant, env, seed):
    environment, mechanism = built(variant, env, 25.0)
    generator = torch.Generator().manual_seed(seed)
    reports = environment.sample(16, generator).values.double()
    perm = torch.randperm(environment.n_bidders, generator=generator)
    with torch.no_grad():
        base, permuted = mechanism(reports), mechanism(reports[:, perm])
    torch.testing.assert_close(permuted.allocation, base.allocation[:, perm], atol=1e-9, rtol=0)
    torch.testing.assert_close(permuted.payment, base.payment[:, perm], atol=1e-9, rtol=1e-9)


def _ratios(mechanism, environment, generator, count: int, radius: float) -> torch.Tensor:
    """``(||dp||_1 + ||dt||_1) / ||db||_1`` on random pairs inside the report box."""
    low, high = _box(environment)
    n, m = environment.n_bidders, environment.n_items
    first = low + (high - low) * torch.rand(count, n, m, generator=generator, dtype=torch.float64)
    step = radius * (high - low) * (2 * torch.rand(count, n, m, generator=generator) - 1)
    # Some pairs move one bidder only (a misreport), the others move everyone.
    one = torch.zeros(count, n, 1, dtype=torch.float64)
    one[torch.arange(count), torch.randint(n, (count,), generator=generator)] = 1.0
    step = torch.where(torch.arange(count).view(-1, 1, 1) % 2 == 0, step * one, step)
    second = torch.minimum(torch.maximum(first + step, low), high)
    with torch.no_grad():
        a, b = mechanism(first), mechanism(second)
    change = (a.allocation - b.allocation).abs().sum((1, 2)) + (a.payment - b.payment).abs().sum(1)
    moved = (first - second).abs().sum((1, 2))
    keep = moved > 0
    return change[keep] / moved[keep]


@pytest.mark.parametrize(("variant", "env"), PAIRS)
@pytest.mark.parametrize("scale", [1.0, 25.0])
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(seed=st.integers(0, 2**31 - 1), radius=st.sampled_from([1e-4, 1e-2, 0.3, 1.0]))
def test_computed_lipschitz_constant_bounds_observed_ratios(variant, env, scale, seed, radius):
    environment, mechanism = built(variant, env, scale)
    bound = mechanism.lipschitz_constant()
    ratios = _ratios(mechanism, environment, torch.Generator().manual_seed(seed), 256, radius)
    assert ratios.numel() > 0
    assert float(ratios.max()) <= bound * (1 + 1e-9), (float(ratios.max()), bound)


def test_lipschitz_check_can_fail():
    """The ratio measurement sees large sensitivities: without control it exceeds a capped L."""
    environment, ablation = built("no_lipschitz", "2x2", 25.0)
    _, controlled = built("l1", "2x2", 25.0)
    ratios = _ratios(ablation, environment, torch.Generator().manual_seed(0), 2048, 1e-3)
    assert float(ratios.max()) > controlled.lipschitz_constant()


def test_lipschitz_control_caps_the_constant_and_the_ablation_does_not():
    _, controlled = built("l1", "2x2", 25.0)
    _, ablation = built("no_lipschitz", "2x2", 25.0)
    assert controlled.lipschitz_constant() < 20  # l1 control: product of bounded layer norms
    assert ablation.lipschitz_constant() > 100 * controlled.lipschitz_constant()


def test_lipschitz_constant_is_stored_with_the_weights():
    torch.manual_seed(1)
    cfg = compose_cfg("train", ["mechanism=certified_equivariant", "env=2x2"])
    _, mechanism = build_env_and_mechanism(cfg)
    optimizer = torch.optim.Adam(mechanism.parameters(), lr=0.05)
    reports = torch.rand(64, 2, 2)
    for _ in range(5):  # move the weights (power iteration runs in train mode)
        optimizer.zero_grad()
        (-mechanism(reports).payment.sum()).backward()
        optimizer.step()
    state = mechanism.state_dict()
    assert float(state["lipschitz_l1"]) == pytest.approx(mechanism.lipschitz_constant())
    _, fresh = build_env_and_mechanism(cfg)
    fresh.load_state_dict(state)
    assert float(fresh.lipschitz_l1) == pytest.approx(fresh.lipschitz_constant())
    assert float(fresh.lipschitz_l1) == pytest.approx(float(state["lipschitz_l1"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mechanism.weight_norm=frobenius", "mechanism.weight_norm=frobenius is not valid"),
        ("mechanism.weight_bound=0", "mechanism.weight_bound=0"),
        ("mechanism.score_bound=-1", "mechanism.score_bound=-1"),
        ("mechanism.payment=free", "mechanism.payment=free is not valid"),
        ("mechanism.activation=sin", "mechanism.activation=sin is not valid"),
        ("env=2x2_unit", "supports demand additive.*mechanism.allocation=sinkhorn"),
        ("mechanism.encoder=transformer", "mechanism.encoder=transformer is not valid"),
        ("mechanism.allocation=hungarian", "mechanism.allocation=hungarian is not valid"),
        ("mechanism.attention_heads=0", "mechanism.attention_heads=0"),
        ("mechanism.sinkhorn_iterations=0", "mechanism.sinkhorn_iterations=0"),
        ("mechanism.sinkhorn_temperature=-1", "mechanism.sinkhorn_temperature=-1"),
    ],
)
def test_bad_options_fail_in_one_line(override, message):
    cfg = compose_cfg("train", ["mechanism=certified_equivariant", "env=2x2", override])
    with pytest.raises(ConfigError, match=message) as err:
        build_env_and_mechanism(cfg)
    assert "\n" not in str(err.value)


def test_mlp_ablation_is_not_equivariant_and_says_so():
    """The no-equivariance ablation: relabelling bidders changes the outcome, and the
    mechanism does not promise the symmetry (the fuzz test reads ``symmetric_in``)."""
    environment, mechanism = built("mlp", "2x2", 1.0)
    assert mechanism.symmetric_in == () and built("default", "2x2")[1].symmetric_in
    reports = environment.sample(64, torch.Generator().manual_seed(0)).values.double()
    with torch.no_grad():
        base, swapped = mechanism(reports), mechanism(reports[:, [1, 0]])
    assert float((swapped.payment - base.payment[:, [1, 0]]).abs().max()) > 1e-4


def test_attention_bound_is_much_larger_than_observed_but_finite():
    """The attention bound is a priori (a product of worst cases): report how loose it is."""
    environment, mechanism = built("attention", "2x2", 1.0)
    ratios = _ratios(mechanism, environment, torch.Generator().manual_seed(0), 2048, 1e-3)
    bound = mechanism.lipschitz_constant()
    assert 0 < float(ratios.max()) < bound < float("inf")
    assert mechanism.describe()["class"].startswith("shared-weight self-attention")


def test_unit_demand_training_steps_move_revenue():
    """``env=2x2_unit`` with Sinkhorn: gradients flow through the layer and rows stay <= 1."""
    torch.manual_seed(0)
    cfg = compose_cfg(
        "train",
        ["mechanism=certified_equivariant", "env=2x2_unit", "mechanism.allocation=sinkhorn"],
    )
    environment, mechanism = build_env_and_mechanism(cfg)
    optimizer = torch.optim.Adam(mechanism.parameters(), lr=0.01)
    types = environment.sample(256, torch.Generator().manual_seed(3))

    def revenue() -> torch.Tensor:
        return mechanism(types.values).payment.sum(1).mean()

    before = float(revenue().detach())
    for _ in range(20):
        optimizer.zero_grad()
        (-revenue()).backward()
        optimizer.step()
    outcome = mechanism(types.values)
    assert float(revenue().detach()) > before + 0.05
    assert (outcome.allocation.sum(2) <= 1 + TOL).all() and (
        outcome.allocation.sum(1) <= 1 + TOL
    ).all()
    utility = environment.utility(outcome, types.values)
    assert utility.shape == (256, 2) and torch.isfinite(utility).all()
