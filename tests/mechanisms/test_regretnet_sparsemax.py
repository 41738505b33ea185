"""The certifiable RegretNet: sparsemax head, payment options, training-time terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.layers.sparsemax import sparsemax
from auctionlab.mechanisms.regretnet_sparsemax import RegretNetSparsemax


def env(n=2, m=2):
    return AuctionEnv(f"{n}x{m}", n, m, Uniform(0.0, 1.0))


def projection(v: np.ndarray) -> np.ndarray:
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > (css - 1))[0][-1]
    return np.maximum(v - (css[rho] - 1) / (rho + 1), 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6))
def test_sparsemax_is_the_simplex_projection(values):
    x = torch.tensor(values, dtype=torch.float64)
    z = sparsemax(x, dim=0).numpy()
    assert z.min() >= 0 and z.sum() == pytest.approx(1.0)
    assert np.allclose(z, projection(np.array(values)), atol=1e-12)


@pytest.mark.parametrize("payment", ["free", "fractional"])
def test_outcome_is_feasible(payment):
    mech = RegretNetSparsemax(env(), hidden=(16,), payment=payment).eval()
    reports = torch.rand(64, 2, 2)
    out = mech(reports)
    assert out.allocation.shape == (64, 2, 2) and out.payment.shape == (64, 2)
    assert (out.allocation >= 0).all() and (out.allocation.sum(1) <= 1 + 1e-6).all()
    assert (out.payment >= 0).all()
    if payment == "fractional":  # IR by construction
        assert (out.payment <= (out.allocation * reports).sum(-1) + 1e-6).all()


def test_free_payments_clipped_only_after_training():
    mech = RegretNetSparsemax(env(), hidden=(16,), payment="free", payment_clip="ir")
    with torch.no_grad():
        mech.payment_head.bias.fill_(-5.0)
    reports = torch.rand(32, 2, 2)
    assert (mech(reports).payment < 0).any()  # training: free
    mech.eval()
    out = mech(reports)
    assert (out.payment >= 0).all()
    assert (out.payment <= (out.allocation * reports).sum(-1) + 1e-7).all()


def test_auxiliary_terms_and_their_gradients(tmp_path):
    mech = RegretNetSparsemax(env(), hidden=(16, 16), ir_penalty=1.0, relu_stability=0.1)
    reports = torch.rand(32, 2, 2)
    out = mech(reports)
    loss = mech.auxiliary_loss(reports, out)
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    assert mech.trunk[0].weight.grad.abs().sum() > 0
    quiet = RegretNetSparsemax(env(), hidden=(16,), ir_penalty=0.0)
    assert quiet.auxiliary_loss(reports, quiet(reports)) is None


def test_relu_bounds_contain_the_activations():
    mech = RegretNetSparsemax(env(), hidden=(12, 12))
    reports = torch.rand(4, 2, 2)
    bounds = mech.relu_bounds(reports)
    for i in range(2):  # bidder i moves over its box, the others stay
        sample = reports.unsqueeze(1).repeat(1, 200, 1, 1)
        sample[:, :, i] = torch.rand(4, 200, 2)
        x = sample.reshape(-1, 4)
        for k, (weight, bias) in enumerate(mech.affine_layers()):
            pre = x @ weight.T + bias
            lo, hi = bounds[k][0].view(4, 2, -1)[:, i], bounds[k][1].view(4, 2, -1)[:, i]
            pre = pre.view(4, 200, -1)
            assert (pre >= lo[:, None] - 1e-5).all() and (pre <= hi[:, None] + 1e-5).all()
            x = pre.clamp_min(0).view(-1, pre.shape[-1])


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="mechanism.payment=soft"):
        RegretNetSparsemax(env(), payment="soft")
    with pytest.raises(ConfigError, match="needs mechanism.teacher"):
        RegretNetSparsemax(env(), distill_weight=1.0)
    with pytest.raises(ConfigError, match="mechanism.teacher="):
        RegretNetSparsemax(env(), distill_weight=1.0, teacher=str(tmp_path))
    unit = AuctionEnv("2x2_unit", 2, 2, Uniform(0.0, 1.0), demand="unit")
    with pytest.raises(ConfigError, match="supports demand additive"):
        RegretNetSparsemax(unit)
