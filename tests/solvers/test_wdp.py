"""Winner determination: enumeration, HiGHS and the Pyomo export give the same allocation."""

from __future__ import annotations

import math

import pytest
import torch

from auctionlab.envs.combinatorial import bundle_language
from auctionlab.errors import ConfigError
from auctionlab.solvers.wdp import (
    ExactWDP,
    HighsWDP,
    choice_to_allocation,
    enumerate_allocations,
    export_lp,
    feasibility_violation,
    greedy_choice,
)


def _scores(n: int, k: int, count: int, seed: int) -> torch.Tensor:
    """Half continuous scores, half small integers (many exact ties), some negative."""
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.rand(count // 2, n, k, generator=generator) * 2 - 0.2
    tied = torch.randint(-1, 3, (count - count // 2, n, k), generator=generator).float()
    return torch.cat([smooth, tied])


def test_allocation_counts():
    # 2 bidders, powerset: every item goes to bidder 1, bidder 2 or nobody -> 3^m
    for m in (2, 3, 5):
        assert len(enumerate_allocations(bundle_language(2, m))) == 3**m
    # 3 bidders, singletons and pairs of 2 items: a bidder-to-bundle matching count
    assert len(enumerate_allocations(bundle_language(3, 2, "pairs"))) == 1 + 3 * 3 + 3 * 2


def test_exact_picks_a_maximiser_with_the_tie_rule():
    membership = bundle_language(2, 3)
    wdp = ExactWDP(membership)
    scores = _scores(2, membership.shape[1], 400, seed=0)
    result = wdp.solve(scores, count_ties=True)
    totals = wdp.totals(scores)  # [B, A]
    best = totals.max(1).values
    assert torch.equal(
        result.objective, totals.gather(1, wdp.solve_index(scores)[0][:, None])[:, 0]
    )
    assert (result.objective >= best - wdp.tie_tol).all()
    # among the tied allocations, the chosen one has the largest priority <pi, x>
    tied = totals >= best[:, None] - wdp.tie_tol
    prio = torch.where(tied, wdp.allocation_priority, -math.inf).max(1).values
    chosen = choice_to_allocation(result.choice, membership.shape[1]).double()
    assert torch.allclose((chosen * wdp.priority).sum((-1, -2)), prio)
    assert (result.certificate["ties"] > 1).float().mean() > 0.2  # the integer half ties a lot
    assert (feasibility_violation(chosen, membership) == 0).all()


@pytest.mark.parametrize("shape", [(2, 2), (2, 3), (3, 3)])
def test_enumeration_and_highs_agree_including_ties(shape):
    n, m = shape
    membership = bundle_language(n, m)
    scores = _scores(n, membership.shape[1], 300, seed=n * 10 + m)
    exact = ExactWDP(membership).solve(scores)
    highs = HighsWDP(membership).solve(scores)
    assert torch.equal(exact.choice, highs.choice)
    assert torch.allclose(exact.objective, highs.objective, atol=1e-9)
    cert = highs.certificate
    assert (cert["gap"] == 0).all() and (cert["optimal"] == 1).all()
    assert (cert["bound"] >= highs.objective - 1e-6).all() and (cert["nodes"] >= 0).all()
    assert (cert["seconds"] > 0).all()


def test_sampled_language_agrees_with_highs_without_warm_start():
    membership = bundle_language(3, 6, "sampled", bundles_per_bidder=6, max_bundle_size=3)
    scores = _scores(3, membership.shape[1], 100, seed=5)
    exact = ExactWDP(membership).solve(scores)
    cold = HighsWDP(membership, warm_start=False).solve(scores)
    assert torch.equal(exact.choice, cold.choice)


@pytest.mark.slow
def test_enumeration_and_highs_agree_on_10000_instances():
    """Acceptance: 10 000 instances (half with integer scores, i.e. many ties) on 2x3 and 2x5."""
    for m in (3, 5):
        membership = bundle_language(2, m)
        scores = _scores(2, membership.shape[1], 10_000, seed=m)
        exact = ExactWDP(membership).solve(scores)
        highs = HighsWDP(membership).solve(scores)
        assert int((exact.choice != highs.choice).any(1).sum()) == 0


def test_eta_optimal_solver_reports_its_gap():
    membership = bundle_language(3, 8, "sampled", bundles_per_bidder=12, max_bundle_size=4)
    scores = _scores(3, membership.shape[1], 40, seed=3)[:20]
    loose = HighsWDP(membership, mip_rel_gap=0.05).solve(scores)
    cert = loose.certificate
    assert (cert["gap"] <= 0.05 + 1e-9).all()
    assert (cert["bound"] * (1 - 0.05) <= loose.objective + 1e-6).all()
    exact = ExactWDP(membership).solve(scores)
    assert (loose.objective <= exact.objective + 1e-9).all()


def test_greedy_is_feasible_and_no_better_than_exact():
    membership = bundle_language(2, 4)
    scores = _scores(2, membership.shape[1], 500, seed=7).clamp_min(0)
    choice = greedy_choice(scores, membership)
    allocation = choice_to_allocation(choice, membership.shape[1])
    assert (feasibility_violation(allocation, membership) == 0).all()
    greedy_total = (allocation * scores).sum((-1, -2)).double()
    exact = ExactWDP(membership).solve(scores)
    assert (greedy_total <= exact.objective + 1e-6).all()
    assert (greedy_total < exact.objective - 1e-3).any()  # greedy is not optimal everywhere
    with pytest.raises(ConfigError, match="rank=nope"):
        greedy_choice(scores, membership, rank="nope")


def test_pyomo_export_is_canonical_and_solves_to_the_same_optimum(tmp_path):
    import highspy

    membership = bundle_language(2, 3)
    scores = _scores(2, membership.shape[1], 4, seed=11)
    names = [["_".join(map(str, r.nonzero().flatten().tolist())) for r in b] for b in membership]
    exact = ExactWDP(membership).solve(scores)
    for b in range(len(scores)):
        first = export_lp(membership, scores[b], tmp_path / f"a{b}.lp", names)
        second = export_lp(membership, scores[b], tmp_path / f"b{b}.lp", names)
        text = first.read_text()
        assert text == second.read_text() and "x(bidder1_items0_2)" in text and "max" in text
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.readModel(str(first))
        h.run()
        assert h.getInfo().objective_function_value == pytest.approx(
            float(exact.objective[b]), abs=1e-7
        )


def test_enumeration_refuses_huge_markets():
    with pytest.raises(ConfigError, match="backend=highs"):
        enumerate_allocations(bundle_language(3, 10), limit=1000)
