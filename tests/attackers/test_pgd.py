"""Misreport search: deviation utilities, PGD guarantees, known regret, budgets, chunking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from auctionlab.attackers import PGDAttacker, RandomAttacker, deviation_utility
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Triangle, Uniform
from auctionlab.mechanisms.regretnet import RegretNet
from auctionlab.types import Outcome, Types


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uniform_env(n: int, m: int, **kwargs) -> AuctionEnv:
    return AuctionEnv(f"{n}x{m}", n, m, Uniform(), **kwargs)


def regretnet(env, seed: int = 0) -> RegretNet:
    torch.manual_seed(seed)
    return RegretNet(env, hidden=(32, 32)).eval()


class WithFee(nn.Module):
    """A RegretNet whose payments add a public per-bidder fee (exercises public inputs)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, reports, public=None):
        outcome = self.net(reports)
        return Outcome(outcome.allocation, outcome.payment + public["fee"])


class Shading(nn.Module):
    """Pay-as-bid with a quadratic price: ``a_ij = b_ij / n``, ``p_i = sum_j b_ij^2 / 2``.

    A bidder with values ``v`` in ``[0, 1]`` gets ``sum_j (v_j b_j / n - b_j^2 / 2)``, maximised
    at ``b = v / n``; with two bidders the truthful utility is ``sum_j v_j^2 (1/2 - 1/2) = 0``
    and the best misreport ``b = v / 2`` gains ``sum_j v_j^2 / 8``.
    """

    def forward(self, reports, public=None):
        n = reports.shape[-2]
        return Outcome(reports / n, (reports**2).sum(-1) / 2)


class PostedPrice(nn.Module):
    """Posted price per item: win every item whose bid clears the price (piecewise constant)."""

    def __init__(self, price: float = 0.5, trainable: bool = False) -> None:
        super().__init__()
        price = torch.tensor(price)
        if trainable:
            self.price = nn.Parameter(price)
        else:
            self.register_buffer("price", price)

    def forward(self, reports, public=None):
        win = (reports > self.price).to(reports.dtype)
        return Outcome(win, (win * self.price).sum(-1))


def naive_deviation_utility(mechanism, types: Types, misreports: torch.Tensor) -> torch.Tensor:
    """One profile and one bidder at a time."""
    values = types.values
    R, B, n, _ = misreports.shape
    out = torch.empty(R, B, n)
    with torch.no_grad():
        for r in range(R):
            for b in range(B):
                for i in range(n):
                    profile = values[b].clone()
                    profile[i] = misreports[r, b, i]
                    public = {k: v[b : b + 1] for k, v in types.public.items()}
                    outcome = mechanism(profile[None], public)
                    own = (outcome.allocation[0, i] * values[b, i]).sum()
                    out[r, b, i] = own - outcome.payment[0, i]
    return out


@pytest.mark.parametrize(("n", "m", "demand"), [(2, 3, "additive"), (3, 1, "additive")])
def test_deviation_utility_matches_naive_loop(n, m, demand):
    env = uniform_env(n, m, demand=demand)
    mechanism = regretnet(env)
    types = env.sample(5, gen(0))
    misreports = env.report_space.draw(3 * 5, gen(1)).view(3, 5, n, m)
    with torch.no_grad():
        fast = deviation_utility(mechanism, env, types, misreports)
    assert fast.shape == (3, 5, n)
    assert torch.allclose(fast, naive_deviation_utility(mechanism, types, misreports), atol=1e-5)


def test_deviation_utility_aligns_public_inputs():
    env = uniform_env(2, 2, demand="unit")
    mechanism = WithFee(regretnet(env))
    types = env.sample(4, gen(2))
    types.public["fee"] = torch.rand(4, 2, generator=gen(3))
    misreports = env.report_space.draw(2 * 4, gen(4)).view(2, 4, 2, 2)
    with torch.no_grad():
        fast = deviation_utility(mechanism, env, types, misreports)
    assert torch.allclose(fast, naive_deviation_utility(mechanism, types, misreports), atol=1e-5)


def test_truthful_misreport_gives_truthful_utility():
    env = uniform_env(2, 2)
    mechanism = regretnet(env)
    types = env.sample(6, gen(5))
    with torch.no_grad():
        u = deviation_utility(mechanism, env, types, types.values[None])[0]
        truthful = env.utility(mechanism(types.values), types.values)
    assert torch.allclose(u, truthful, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gains_nonnegative_and_misreports_in_report_space(optimizer):
    env = AuctionEnv("1x2_triangle", 1, 2, Triangle(0.5))
    mechanism = regretnet(env)
    types = env.sample(16, gen(6))
    attacker = PGDAttacker(restarts=3, steps=8, include_truthful=True, optimizer=optimizer)
    result = attacker.attack(mechanism, env, types, gen(7))
    assert result.gain.shape == (16, 1) and (result.gain >= 0).all()
    assert (result.utility >= result.truthful_utility - 1e-5).all()
    projected = env.report_space.project(result.misreports)
    assert torch.allclose(projected, result.misreports, atol=1e-5)
    # the reported utility is the utility of the reported misreport
    with torch.no_grad():
        again = deviation_utility(mechanism, env, types, result.misreports[None])[0]
    assert torch.allclose(again, result.utility, atol=1e-5)


def test_attack_leaves_mechanism_untouched():
    env = uniform_env(2, 2)
    mechanism = regretnet(env).train()
    before = {k: v.clone() for k, v in mechanism.state_dict().items()}
    PGDAttacker(restarts=2, steps=3).attack(mechanism, env, env.sample(4, gen(0)), gen(1))
    assert all(torch.equal(before[k], v) for k, v in mechanism.state_dict().items())
    assert all(p.grad is None for p in mechanism.parameters())


def test_more_steps_never_lower_regret():
    env = uniform_env(2, 2)
    mechanism = regretnet(env, seed=1)
    types = env.sample(32, gen(8))
    gains = []
    for steps in (0, 1, 5, 20):
        attacker = PGDAttacker(restarts=3, steps=steps, step_size=0.1, include_truthful=True)
        gains.append(attacker.attack(mechanism, env, types, gen(9)).gain)
    for fewer, more in zip(gains, gains[1:], strict=False):
        assert (more >= fewer - 1e-6).all()
    assert float(gains[-1].mean()) > float(gains[0].mean())


def test_curve_is_monotone_and_ends_at_the_full_budget():
    env = uniform_env(2, 3)
    mechanism = regretnet(env, seed=2)
    types = env.sample(16, gen(10))
    attacker = PGDAttacker(
        restarts=6,
        steps=12,
        step_size=0.05,
        final_step_size=0.005,
        include_truthful=True,
        curve_restarts=[1, 3, 6, 99],
        curve_steps=[0, 4, 12, 1000],
    )
    result = attacker.attack(mechanism, env, types, gen(11))
    restarts, steps = [1, 3, 6], [0, 4, 12]
    assert sorted(result.curve) == [(r, s) for r in restarts for s in steps]
    for r in restarts:
        for s in steps:
            gain = result.curve[(r, s)]
            assert gain.shape == (16, 2) and (gain >= 0).all()
            for r2 in restarts:
                for s2 in steps:
                    if r2 >= r and s2 >= s:
                        assert (result.curve[(r2, s2)] >= gain - 1e-7).all()
    assert torch.allclose(result.curve[(6, 12)], result.gain)


def test_finds_known_regret_of_bid_shading_mechanism():
    env = uniform_env(2, 2)
    types = env.sample(64, gen(12))
    attacker = PGDAttacker(
        restarts=2, steps=150, step_size=0.05, final_step_size=1e-3, include_truthful=True
    )
    result = attacker.attack(Shading(), env, types, gen(13))
    v = types.values
    assert torch.allclose(result.truthful_utility, torch.zeros(64, 2), atol=1e-6)
    assert torch.allclose(result.gain, (v**2).sum(-1) / 8, atol=2e-4)
    assert torch.allclose(result.misreports, v / 2, atol=2e-2)


def test_budget_is_reported():
    env = uniform_env(1, 2)
    attacker = PGDAttacker(restarts=3, steps=4, step_size=0.2, final_step_size=0.01)
    result = attacker.attack(regretnet(env), env, env.sample(4, gen(0)), gen(1))
    budget = result.budget
    assert budget["attacker"] == "pgd"
    assert (budget["restarts"], budget["steps"]) == (3, 4)
    assert (budget["step_size"], budget["final_step_size"]) == (0.2, 0.01)
    assert budget["optimizer"] == "adam" and budget["include_truthful"] is False
    assert budget["gradient"] is True
    sizes = attacker.step_sizes()
    assert len(sizes) == 4 and sizes[0] == pytest.approx(0.2) and sizes[-1] == pytest.approx(0.01)


def test_random_search_budget_and_gain():
    env = uniform_env(2, 2)
    types = env.sample(8, gen(0))
    result = RandomAttacker(samples=50).attack(Shading(), env, types, gen(1))
    assert result.budget["attacker"] == "random"
    assert (result.budget["restarts"], result.budget["steps"]) == (50, 0)
    assert (result.gain >= 0).all() and float(result.gain.mean()) > 0


def test_piecewise_constant_mechanism_without_parameters():
    env = uniform_env(2, 2)
    types = env.sample(16, gen(0))
    result = PGDAttacker(restarts=4, steps=3, include_truthful=True).attack(
        PostedPrice(), env, types, gen(1)
    )
    assert result.budget["gradient"] is False
    assert torch.allclose(result.gain, torch.zeros(16, 2))  # a posted price is truthful


def test_piecewise_constant_mechanism_with_parameters():
    """Utility needs grad through the parameters but not the reports: no gradient to follow."""
    env = uniform_env(1, 2)
    result = PGDAttacker(restarts=2, steps=3, include_truthful=True).attack(
        PostedPrice(trainable=True), env, env.sample(8, gen(0)), gen(1)
    )
    assert result.budget["gradient"] is False


def test_chunked_equals_unchunked_with_the_same_starts():
    """With every start fixed (truthful + explicit ``init``) chunking changes nothing."""
    env = uniform_env(2, 2)
    mechanism = regretnet(env, seed=3)
    types = env.sample(10, gen(14))
    init = env.report_space.draw(2 * 10, gen(15)).view(2, 10, 2, 2)
    kwargs = dict(restarts=3, steps=6, include_truthful=True, curve_restarts=[1, 3])
    kwargs["curve_steps"] = [0, 6]
    whole = PGDAttacker(**kwargs).attack(mechanism, env, types, gen(16), init=init)
    chunked = PGDAttacker(chunk_size=4, **kwargs).attack(mechanism, env, types, gen(16), init=init)
    assert torch.allclose(whole.utility, chunked.utility, atol=1e-5)
    assert torch.allclose(whole.misreports, chunked.misreports, atol=1e-4)
    assert torch.allclose(whole.truthful_utility, chunked.truthful_utility, atol=1e-6)
    assert whole.curve.keys() == chunked.curve.keys()
    for key, gain in whole.curve.items():
        assert torch.allclose(gain, chunked.curve[key], atol=1e-5)


def test_chunked_random_restarts_are_drawn_per_chunk():
    """Random starts come from the generator chunk by chunk: reproducible per chunk size only."""
    env = uniform_env(2, 2)
    mechanism = regretnet(env, seed=4)
    types = env.sample(12, gen(17))
    attacker = PGDAttacker(restarts=3, steps=2, include_truthful=True, chunk_size=5)
    first = attacker.attack(mechanism, env, types, gen(18))
    second = attacker.attack(mechanism, env, types, gen(18))
    assert torch.equal(first.utility, second.utility)
    assert first.utility.shape == (12, 2) and first.misreports.shape == (12, 2, 2)
    unchunked = PGDAttacker(restarts=3, steps=2, include_truthful=True)
    whole = unchunked.attack(mechanism, env, types, gen(18))
    assert not torch.allclose(whole.utility, first.utility)


def test_chunked_budget_keeps_gradient_flag():
    env = uniform_env(2, 2)
    types = env.sample(8, gen(0))
    result = PGDAttacker(restarts=2, steps=2, chunk_size=3).attack(
        PostedPrice(), env, types, gen(1)
    )
    assert result.budget.get("gradient") is False


@pytest.mark.parametrize("trainable", [False, True])
def test_stalled_search_stops_early_and_matches_random_search(trainable):
    """With no usable gradient every later iterate repeats the starts: stop, same answer."""
    env = uniform_env(2, 2)
    mechanism = PostedPrice(trainable=trainable)
    types = env.sample(64, gen(0))
    curve = {"curve_restarts": (1, 8), "curve_steps": (0, 10, 500)}
    long = PGDAttacker(restarts=8, steps=500, include_truthful=True, **curve)
    short = PGDAttacker(
        restarts=8, steps=0, include_truthful=True, curve_restarts=(1, 8), curve_steps=(0,)
    )
    a = long.attack(mechanism, env, types, gen(1))
    b = short.attack(mechanism, env, types, gen(1))
    assert torch.equal(a.utility, b.utility)
    assert a.budget["gradient"] is False
    # The curve is recorded at every checkpoint, equal to the starts' best.
    for restarts in (1, 8):
        for steps in (10, 500):
            assert torch.equal(a.curve[(restarts, steps)], b.curve[(restarts, 0)])
