"""Statistical certificates ([lemma2026certified] §6): slack formulas, closed-form regret, coverage.

Coverage is the acceptance check of issue 7: for item-wise first price with i.i.d. U[0,1]
values, the population regret per bidder is ``m / (n (n + 1))`` in closed form, so we can count
how often independent holdouts give a certificate that really holds. The default suite uses the
exact (closed-form) best response, so each repetition costs microseconds; the slow test runs the
PGD portfolio oracle with an estimated oracle gap.
"""

from __future__ import annotations

import math

import pytest
import torch

from auctionlab.attackers.portfolio import PortfolioOracle
from auctionlab.certify.statistical import (
    bernstein_slack,
    certificate_bounds,
    exact_oracle,
    first_price_population_regret,
    hoeffding_slack,
    mean_upper_bounds,
)
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.classical import FirstPrice


def _first_price(n: int, m: int) -> tuple[AuctionEnv, FirstPrice]:
    env = AuctionEnv(f"{n}x{m}", n, m, Uniform(0.0, 1.0))
    return env, FirstPrice(env)


def test_slack_formulas_by_hand():
    assert hoeffding_slack(2.0, 10000, 0.01) == pytest.approx(
        2.0 * math.sqrt(math.log(100) / 20000)
    )
    samples = torch.tensor([[0.0], [1.0], [0.0], [1.0]], dtype=torch.float64)
    variance = 1.0 / 3.0  # unbiased variance of 0, 1, 0, 1
    expected = math.sqrt(2 * variance * math.log(2 / 0.1) / 4) + 7 * math.log(2 / 0.1) / 9
    assert float(bernstein_slack(samples, 1.0, 0.1)) == pytest.approx(expected)
    # min: each method at half the level, per column delta / k (union bound)
    two = torch.rand(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bound = mean_upper_bounds(two, 1.0, 0.05, "min")
    assert bound.delta_each == pytest.approx(0.025)
    assert float(bound.hoeffding[0]) == pytest.approx(hoeffding_slack(1.0, 500, 0.0125))
    torch.testing.assert_close(bound.slack, torch.minimum(bound.hoeffding, bound.bernstein))
    with pytest.raises(ConfigError, match="certifier.slack=chernoff"):
        mean_upper_bounds(two, 1.0, 0.05, "chernoff")


def test_bernstein_is_far_tighter_than_hoeffding_for_small_regret():
    """Small-variance regret in a wide range: the reason a 2x2 bound can be non-vacuous."""
    regret = 0.002 * torch.rand(10000, 2, generator=torch.Generator().manual_seed(1))
    bound = mean_upper_bounds(regret, 2.0, 0.025, "min")
    assert float(bound.bernstein.max()) < float(bound.hoeffding.max()) / 5


@pytest.mark.parametrize(("n", "m"), [(2, 1), (2, 2), (3, 2), (5, 1)])
def test_first_price_exact_regret_matches_the_closed_form(n, m):
    env, _ = _first_price(n, m)
    values = env.sample(200_000, torch.Generator().manual_seed(n * 10 + m)).values.double()
    regret = FirstPrice(env).exact_regret(values)  # [N, n]
    expected = first_price_population_regret(n, m)
    se = float(regret.std(0).max()) / math.sqrt(values.shape[0])
    assert (regret.mean(0) - expected).abs().max() < 4 * se


def test_the_attacker_never_beats_the_closed_form_and_gets_close():
    env, mechanism = _first_price(2, 2)
    types = env.sample(64, torch.Generator().manual_seed(3))
    types.values = types.values.double()
    oracle = PortfolioOracle(4, 100, [0.1, 0.02], 0.0005, 4)
    result = oracle.attack(mechanism.double(), env, types, torch.Generator().manual_seed(4))
    exact = mechanism.exact_regret(types.values)
    assert bool((result.gain <= exact + 1e-9).all())
    assert float(result.gain.mean()) > 0.9 * float(exact.mean())


def coverage(
    n: int, m: int, holdout: int, repetitions: int, delta: float, slack: str, shrink: float = 1.0
) -> float:
    """Share of independent holdouts whose certificate holds for every bidder at once.

    ``shrink`` multiplies the slack (1 = the certificate; 0 = the bare estimate, which must
    fail often: the check has power).
    """
    env, _ = _first_price(n, m)
    truth = first_price_population_regret(n, m)
    generator = torch.Generator().manual_seed(1000 * n + m)
    values = env.sample(holdout * repetitions, generator).values.double()
    regret = FirstPrice(env).exact_regret(values).view(repetitions, holdout, n)
    held = 0
    for r in range(repetitions):
        cert = certificate_bounds(
            regret[r],
            torch.zeros_like(regret[r]),
            None,
            regret_range=float(m),
            ir_range=0.0,
            fairness_range=0.0,
            delta=delta,
            split={"regret": 1.0, "ir": 1.0, "fairness": 0.0},
            slack=slack,
            eta=0.0,
        )["regret"]
        bounds = [e + shrink * s for e, s in zip(cert["estimate"], cert["slack"], strict=True)]
        held += all(b >= truth for b in bounds)
    return held / repetitions


@pytest.mark.parametrize("slack", ["hoeffding", "bernstein", "min"])
@pytest.mark.parametrize(("n", "m"), [(2, 2), (3, 1)])
def test_coverage_of_the_certificate_on_first_price(slack, n, m, capsys):
    """Acceptance: >= 200 independent holdouts, the certificate holds in >= 1 - delta of them."""
    delta, repetitions = 0.1, 400
    rate = coverage(n, m, 100, repetitions, delta, slack)
    with capsys.disabled():
        print(f"\ncoverage first_price {n}x{m} {slack}: {rate:.4f} over {repetitions} holdouts")
    assert rate >= 1 - delta
    # The same check with the slack removed fails: coverage far below 1 - delta.
    assert coverage(n, m, 100, repetitions, delta, slack, shrink=0.0) < 1 - 2 * delta


def test_certificate_bounds_split_delta_and_add_eta():
    regret = torch.full((100, 3), 0.01, dtype=torch.float64)
    ir = torch.zeros(100, 3, dtype=torch.float64)
    fairness = torch.full((100,), 0.2, dtype=torch.float64)
    cert = certificate_bounds(
        regret,
        ir,
        fairness,
        regret_range=2.0,
        ir_range=1.0,
        fairness_range=1.0,
        delta=0.06,
        split={"regret": 0.5, "ir": 0.25, "fairness": 0.25},
        slack="hoeffding",
        eta=0.003,
    )
    assert cert["regret"]["delta"] == pytest.approx(0.03)
    assert cert["regret"]["delta_each"] == pytest.approx(0.01)  # union over 3 bidders
    assert cert["fairness"]["delta_each"] == pytest.approx(0.015)  # one statistic
    hoeffding = hoeffding_slack(2.0, 100, 0.01)
    assert cert["regret"]["bound_max"] == pytest.approx(0.01 + hoeffding + 0.003)
    assert cert["ir"]["bound_max"] == pytest.approx(hoeffding_slack(1.0, 100, 0.005))


@pytest.mark.slow
def test_coverage_with_the_pgd_oracle_and_estimated_eta(capsys):
    """200 holdouts certified with the PGD portfolio (eta from a 4x stronger oracle)."""
    env, mechanism = _first_price(2, 2)
    truth = first_price_population_regret(2, 2)
    repetitions, holdout, delta = 200, 300, 0.1
    oracle = PortfolioOracle(2, 30, [0.1, 0.02], 0.001, 4, chunk_size=holdout)
    strong = PortfolioOracle(4, 120, [0.1, 0.02], 0.0005, 4, chunk_size=holdout)
    held = 0
    for r in range(repetitions):
        types = env.sample(holdout, torch.Generator().manual_seed(50_000 + r))
        generator = torch.Generator().manual_seed(r)
        regret = oracle.attack(mechanism, env, types, generator).gain.double()
        sub = types[slice(0, 50)]
        stronger = strong.attack(mechanism, env, sub, generator).gain.double()
        eta = float((stronger - regret[:50]).clamp_min(0).mean(0).max())
        cert = certificate_bounds(
            regret,
            torch.zeros_like(regret),
            None,
            regret_range=2.0,
            ir_range=0.0,
            fairness_range=0.0,
            delta=delta,
            split={"regret": 1.0, "ir": 1.0, "fairness": 0.0},
            slack="min",
            eta=eta,
        )
        held += all(b >= truth for b in cert["regret"]["bound"])
    rate = held / repetitions
    with capsys.disabled():
        print(f"\ncoverage first_price 2x2, PGD oracle + estimated eta: {rate:.4f}")
    assert rate >= 1 - delta


def test_the_closed_form_is_asked_of_the_mechanism_not_its_class():
    """``exact_oracle`` uses ``Mechanism.exact_regret``; mechanisms without one get ``None``."""
    from auctionlab.mechanisms.classical import VCG

    env, mechanism = _first_price(2, 2)
    values = env.sample(8, torch.Generator().manual_seed(5)).values.double()
    oracle = exact_oracle(mechanism)
    assert oracle is not None and torch.equal(oracle(values), mechanism.exact_regret(values))
    assert exact_oracle(VCG(env)) is None
