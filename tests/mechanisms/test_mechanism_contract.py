"""The mechanism contract: every optional capability declared on the base with its default."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import auctionlab.mechanisms as mechanisms_package
from auctionlab.envs import AuctionEnv
from auctionlab.envs.distributions import Uniform
from auctionlab.errors import ConfigError
from auctionlab.mechanisms.base import Mechanism
from auctionlab.mechanisms.regretnet import RegretNet
from auctionlab.mechanisms.regretnet_sparsemax import RegretNetSparsemax


def mechanism_classes() -> list[type]:
    found = set()
    for info in pkgutil.iter_modules(mechanisms_package.__path__):
        module = importlib.import_module(f"auctionlab.mechanisms.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and issubclass(obj, torch.nn.Module):
                found.add(obj)
    return sorted(found, key=lambda c: c.__name__)


def test_the_base_declares_each_capability_with_a_default():
    env = AuctionEnv("2x2", 2, 2, Uniform())
    torch.manual_seed(0)
    mechanism = RegretNet(env, hidden=(4,))
    assert mechanism.dsic_by_design is False and Mechanism.ir_by_design is False
    assert mechanism.payment_bound is None and mechanism.last_wdp is None
    assert mechanism.gradient_strategy is None and mechanism.describe() is None
    assert mechanism.wdp_membership() is None and mechanism.teacher_run() is None
    assert (mechanism.tie_tol, mechanism.priority_seed, mechanism.mip_rel_gap) == (1e-6, 0, 0.0)
    assert Mechanism.config_children({"_target_": "x"}) == {}
    with pytest.raises(ConfigError, match="distils from no teacher"):
        mechanism.set_teacher(RegretNet(env, hidden=(4,)))


def test_every_mechanism_with_a_family_is_a_mechanism():
    for cls in mechanism_classes():
        if "family" in vars(cls) or cls.__name__.endswith(("Net", "Mechanism")):
            assert issubclass(cls, Mechanism), cls


def test_the_teacher_is_handed_in_not_loaded(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    env = AuctionEnv("2x2", 2, 2, Uniform())
    torch.manual_seed(0)
    student = RegretNetSparsemax(env, distill_weight=1.0, teacher=str(tmp_path))
    assert student.teacher_run() == str(tmp_path)
    with pytest.raises(ConfigError, match="is not loaded"):
        student.teacher(torch.device("cpu"))
    teacher = RegretNet(env, hidden=(4,))
    student.set_teacher(teacher)
    assert student.teacher(torch.device("cpu")) is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    reports = env.sample(3, torch.Generator().manual_seed(0)).values
    assert student.auxiliary_loss(reports, student(reports)) is not None
    wrong = RegretNet(AuctionEnv("3x2", 3, 2, Uniform()), hidden=(4,))
    with pytest.raises(ConfigError, match="3x2 env; this env is 2x2"):
        student.set_teacher(wrong)


@pytest.mark.parametrize(
    "cls",
    [c for c in mechanism_classes() if getattr(c, "any_size", False)],
    ids=lambda c: c.__name__,
)
def test_any_size_weights_fit_every_size(cls):
    """A class that declares ``any_size`` loads one size's weights into another, unchanged."""
    torch.manual_seed(0)
    small = cls(AuctionEnv("2x2", 2, 2, Uniform()))
    for n, m in ((1, 1), (3, 10), (5, 3)):
        other = cls(AuctionEnv(f"{n}x{m}", n, m, Uniform()))
        other.load_state_dict(small.state_dict())  # strict: same keys, same shapes
        outcome = other(torch.rand(4, n, m))
        assert outcome.allocation.shape == (4, n, m) and outcome.payment.shape == (4, n)


def test_the_sized_mechanisms_do_not_declare_any_size():
    env, wide = AuctionEnv("2x2", 2, 2, Uniform()), AuctionEnv("3x10", 3, 10, Uniform())
    assert RegretNet.any_size is False and Mechanism.any_size is False
    with pytest.raises(RuntimeError, match="size mismatch"):
        RegretNet(wide, hidden=(4,)).load_state_dict(RegretNet(env, hidden=(4,)).state_dict())
