"""The attacker contract: one base class owns chunking, budget and curve."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import auctionlab.attackers as attackers_package
from auctionlab.attackers import Attacker, PGDAttacker, RandomAttacker
from auctionlab.attackers.cutting_plane import CuttingPlaneAttacker
from auctionlab.attackers.grid import GridAttacker
from auctionlab.attackers.hybrid import HybridAttacker
from auctionlab.attackers.local import LocalAttacker
from auctionlab.attackers.portfolio import PortfolioOracle
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.regretnet import RegretNet


def attacker_classes() -> list[type]:
    found = set()
    for info in pkgutil.iter_modules(attackers_package.__path__):
        module = importlib.import_module(f"auctionlab.attackers.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            named = obj.__name__.endswith(("Attacker", "Oracle"))
            if obj.__module__ == module.__name__ and named and obj is not Attacker:
                found.add(obj)
    return sorted(found, key=lambda c: c.__name__)


def setup(n: int = 2, m: int = 2, batch: int = 10):
    torch.manual_seed(0)
    env = AuctionEnv(f"{n}x{m}", n, m, Uniform())
    mechanism = RegretNet(env, hidden=(8, 8)).eval()
    types = env.sample(batch, torch.Generator().manual_seed(1))
    return env, mechanism, types


def test_every_attacker_subclasses_the_base_and_random_is_not_pgd():
    classes = attacker_classes()
    assert {c.__name__ for c in classes} >= {
        "PGDAttacker",
        "RandomAttacker",
        "LocalAttacker",
        "HybridAttacker",
        "CuttingPlaneAttacker",
        "GridAttacker",
        "PortfolioOracle",
    }
    for cls in classes:
        assert issubclass(cls, Attacker), cls
        assert cls.attack_chunk is not Attacker.attack_chunk, f"{cls.__name__} has no search"
    assert not issubclass(RandomAttacker, PGDAttacker)
    # The chunked loop exists once: only the base defines it (the portfolio pins truthful).
    for cls in classes:
        if cls is not PortfolioOracle:
            assert cls.attack is Attacker.attack, cls


def test_the_base_declares_every_capability_with_a_default():
    assert Attacker.exact is False and Attacker.uses_init is True
    assert Attacker.two_sided is False and Attacker.include_truthful is False
    assert LocalAttacker.uses_init is False
    assert LocalAttacker(two_sided=True).two_sided is True

    class Minimal(Attacker):
        def attack_chunk(self, *args, **kwargs):  # noqa: D102
            raise AssertionError("not reached")

    budget = Minimal().budget
    assert set(budget) == {"attacker", "restarts", "steps", "step_size"}


def test_random_search_is_zero_step_pgd_bit_for_bit():
    env, mechanism, types = setup()
    pgd = PGDAttacker(
        restarts=7, steps=0, include_truthful=True, curve_restarts=(1, 7), curve_steps=(0,)
    )
    rnd = RandomAttacker(samples=7, curve_restarts=(1, 7))
    a = pgd.attack(mechanism, env, types, torch.Generator().manual_seed(3))
    b = rnd.attack(mechanism, env, types, torch.Generator().manual_seed(3))
    assert torch.equal(a.misreports, b.misreports) and torch.equal(a.utility, b.utility)
    assert torch.equal(a.truthful_utility, b.truthful_utility)
    assert a.curve.keys() == b.curve.keys()
    assert all(torch.equal(a.curve[k], b.curve[k]) for k in a.curve)
    assert {**a.budget, "attacker": "random"} == b.budget
    assert rnd.describe() == "random 7 restarts x 0 steps (adam)"


@pytest.mark.parametrize(
    "make",
    [
        lambda chunk: PGDAttacker(
            restarts=2, steps=3, chunk_size=chunk, curve_restarts=(2,), curve_steps=(0, 3)
        ),
        lambda chunk: RandomAttacker(samples=5, chunk_size=chunk, curve_restarts=(5,)),
        lambda chunk: HybridAttacker(
            restarts=2,
            steps=2,
            random_samples=4,
            local_samples=2,
            local_scales=(0.1,),
            coordinate_rounds=1,
            grid=3,
            chunk_size=chunk,
            curve_restarts=(2,),
            curve_steps=(2,),
        ),
        lambda chunk: GridAttacker(points=5, refinements=1, refine_points=3, chunk_size=chunk),
    ],
)
def test_chunks_are_attacked_in_order_and_concatenated(make):
    env, mechanism, types = setup(batch=7)
    whole = make(3).attack(mechanism, env, types, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    single = make(None)
    parts = [single.attack(mechanism, env, types[lo : lo + 3], generator) for lo in (0, 3, 6)]
    assert torch.equal(whole.misreports, torch.cat([p.misreports for p in parts]))
    assert torch.equal(whole.utility, torch.cat([p.utility for p in parts]))
    assert whole.curve.keys() == parts[0].curve.keys()
    assert ("gradient" in whole.budget) == ("gradient" in parts[0].budget)


def test_cutting_plane_comes_from_a_pgd_budget_only():
    pgd = PGDAttacker(restarts=3, steps=4, step_size=0.2, include_truthful=True)
    cutting = pgd.as_cutting_plane()
    assert isinstance(cutting, CuttingPlaneAttacker)
    assert (cutting.restarts, cutting.steps, cutting.pgd.step_size) == (3, 4, 0.2)
    assert cutting.as_cutting_plane() is cutting
    for other in (RandomAttacker(samples=3), LocalAttacker(), HybridAttacker()):
        with pytest.raises(ConfigError, match=f"attacker={other.name} is not pgd"):
            other.as_cutting_plane()
