"""The grid attacker: an exhaustive best response for reports of at most two dimensions."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg

from auctionlab.attackers import GridAttacker, PGDAttacker
from auctionlab.components import build
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.classical import FirstPrice, SecondPrice
from auctionlab.mechanisms.regretnet import RegretNet


def setup(n: int = 2, m: int = 2, batch: int = 16, seed: int = 1):
    env = AuctionEnv(f"{n}x{m}", n, m, Uniform())
    types = env.sample(batch, torch.Generator().manual_seed(seed))
    return env, types


def small_regretnet(env):
    torch.manual_seed(0)
    return RegretNet(env, hidden=(8, 8)).eval()


def attack(attacker, mechanism, env, types, init=None):
    return attacker.attack(mechanism, env, types, torch.Generator().manual_seed(3), init=init)


@pytest.mark.parametrize("refinements", [0, 2])
def test_first_price_regret_matches_the_closed_form_within_a_cell(refinements):
    # First price: the supremum gain is sum_j (v_ij - max_k v_kj)^+ (bid just above the others).
    env, types = setup(batch=32)
    mechanism = FirstPrice(env)
    grid = GridAttacker(points=41, refinements=refinements, refine_points=11)
    gain = attack(grid, mechanism, env, types).gain
    exact = mechanism.exact_regret(types.values)
    cell = 1.0 / (41 - 1)
    assert (gain <= exact + 1e-5).all()  # never above the supremum
    assert (exact - gain <= env.n_items * cell + 1e-5).all()  # one cell per item at most
    if refinements:  # items won by more than a cell are priced to within the finest cell
        assert float((exact - gain).mean()) < 0.2 * cell


def test_a_truthful_mechanism_has_no_grid_regret():
    env, types = setup()
    result = attack(
        GridAttacker(points=21, refinements=1, refine_points=5), SecondPrice(env), env, types
    )
    assert float(result.gain.max()) <= 1e-6


def test_the_grid_never_finds_less_than_pgd_from_the_same_start():
    env, types = setup()
    mechanism = small_regretnet(env)
    pgd = attack(PGDAttacker(restarts=2, steps=10, include_truthful=True), mechanism, env, types)
    grid = GridAttacker(points=11, refinements=1, refine_points=5)
    found = attack(grid, mechanism, env, types, init=pgd.misreports.unsqueeze(0))
    assert (found.utility >= pgd.utility - 1e-5).all()
    assert (found.gain >= pgd.gain - 1e-5).all()


def test_refinement_only_improves_and_is_counted():
    env, types = setup()
    mechanism = small_regretnet(env)
    B, n = types.values.shape[:2]
    utilities, steps = [], []
    for refinements in (0, 1, 2):
        result = attack(
            GridAttacker(points=11, refinements=refinements, refine_points=5), mechanism, env, types
        )
        utilities.append(result.utility)
        steps.append(result.budget["deviation_steps"])
    assert (utilities[1] >= utilities[0] - 1e-6).all()
    assert (utilities[2] >= utilities[1] - 1e-6).all()
    # truthful + 11^2 grid points + 5^2 per refinement + the re-check, per profile and bidder
    assert steps == [float((1 + 121 + 25 * r + 1) * B * n) for r in (0, 1, 2)]


def test_budget_description_and_chunks():
    env, types = setup(batch=7)
    mechanism = small_regretnet(env)
    whole = attack(GridAttacker(points=9, refinements=1, refine_points=3), mechanism, env, types)
    chunked = GridAttacker(points=9, refinements=1, refine_points=3, chunk_size=3)
    parts = attack(chunked, mechanism, env, types)
    assert torch.allclose(whole.utility, parts.utility, atol=1e-6)
    assert parts.budget == whole.budget
    assert whole.budget == {
        "attacker": "grid",
        "restarts": 81,
        "steps": 0,
        "step_size": 0.125,
        "points": 9,
        "refinements": 1,
        "refine_points": 3,
        "deviation_steps": float((1 + 81 + 9 + 1) * 7 * 2),
    }
    assert chunked.describe() == "grid 9x9 + 1 refinements (3 per dim)"
    assert whole.curve == {}
    one = GridAttacker(points=9, refinements=0)
    env1, types1 = setup(n=3, m=1, batch=4)
    attack(one, FirstPrice(env1), env1, types1)
    assert one.describe() == "grid 9 + 0 refinements (21 per dim)" and one.restarts == 9


def test_unsupported_names_the_env_and_the_alternatives():
    grid = GridAttacker()
    assert grid.unsupported(setup()[0]) is None
    assert PGDAttacker().unsupported(setup(2, 5)[0]) is None  # the base: applies everywhere
    reason = grid.unsupported(setup(2, 5)[0])
    assert reason == (
        "attacker=grid searches every bidder's report on a grid and needs at most 2 report "
        "dimensions; env 2x5 has 5 (use attacker=adaptive or attacker=pgd)"
    )
    unbounded = build(compose_cfg("evaluate", ["env=3x1_exp"]).env, "env")
    assert "unbounded" in grid.unsupported(unbounded)
    env, types = setup(2, 5, batch=2)
    with pytest.raises(ConfigError, match="needs at most 2 report dimensions"):
        attack(grid, SecondPrice(env), env, types)


@pytest.mark.parametrize(
    ("key", "value"), [("points", 1), ("refinements", -1), ("candidates_per_pass", 0)]
)
def test_bad_knobs_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"attacker.{key}={value} must be >="):
        GridAttacker(**{key: value})


def test_evaluate_refuses_the_grid_on_a_wide_env_in_one_line(compose):
    from auctionlab.tasks import evaluate

    cfg = compose("evaluate", ["attacker=grid", "env=2x5", "mechanism=vcg", "tracking=none"])
    with pytest.raises(ConfigError) as caught:
        evaluate.prepare(cfg)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("attacker=grid ") and "env 2x5" in message
    assert "attacker=pgd" in message


def test_the_console_script_says_so_in_one_line(cli):
    done = cli("evaluate", "attacker=grid", "env=2x5", "mechanism=vcg", "tracking=none")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "attacker=grid" in lines[0] and "env 2x5 has 5" in lines[0]


def test_train_refuses_the_grid_on_a_wide_env(compose):
    from auctionlab.tasks import train

    cfg = compose("train", ["attacker=grid", "env=2x5", "scale=smoke", "tracking=none"])
    with pytest.raises(ConfigError, match="^attacker=grid .* env 2x5 has 5"):
        train.prepare(cfg)
