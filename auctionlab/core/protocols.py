"""The contracts between envs, mechanisms, attackers and trainers, in one place.

Each contract is a ``typing.Protocol`` listing every method and attribute shared code may
use, optional capabilities included. The base classes that implement them give every
optional capability a default, so shared code calls a capability instead of probing for it
with ``getattr`` / ``hasattr``, and never branches on a concrete class or a family name:
behaviour that differs by family is a method of the object.

| Contract | Base class (defaults live there) | Implemented by |
|---|---|---|
| ``Env`` | ``auctionlab.envs.base.Env`` | ``auctionlab.envs.*`` |
| ``Mechanism`` | ``auctionlab.mechanisms.base.Mechanism`` | ``auctionlab.mechanisms.*`` |
| ``Attacker`` | ``auctionlab.attackers.base.Attacker`` | ``auctionlab.attackers.*`` |
| ``ConstraintHandler`` | ``auctionlab.training.constraints`` | ``auctionlab.training.*`` |
| ``Certifier`` | stated by ``auctionlab.certify`` | ``auctionlab.certify.*`` |

Shapes: ``B`` profiles, ``n`` bidders, ``m`` items (the allocation's last axis), ``d`` report
coordinates per bidder (``d = m`` for item auctions; allocation envs report values and
demands, ``d = 2m``; budget envs add the budget, ``d = m + 1``), ``R`` restarts.

This module imports nothing from the layers above it: the data classes of higher layers
appear as documented ``Any`` aliases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from auctionlab.types import Outcome, Types

#: ``auctionlab.envs.base.ReportSpace``: bounds ``low`` / ``high`` ``[n, d]``, ``project``,
#: ``restrict``, ``width``, ``draw`` (its class sits a layer up, so it is not imported here).
ReportSpace = Any
#: ``auctionlab.attackers.base.AttackResult``: misreports ``[B, n, d]``, utility ``[B, n]``,
#: truthful_utility ``[B, n]`` or ``None``, budget, curve ``{(restarts, steps): [B, n]}``.
AttackResult = Any
#: ``auctionlab.training.constraints.DualState``: iteration, objective ``[]``, regret ``[n]``,
#: mechanism, env, attacker.
DualState = Any


@runtime_checkable
class EnvProtocol(Protocol):
    """A valuation distribution / market: who the bidders are and what they get from outcomes.

    Required: ``family``, ``name``, ``n_bidders``, ``n_items``, ``demand``, ``report_space``,
    ``sample`` and ``utility``. Optional capabilities (defaults in ``envs.base.Env``):

    - ``sample_training``: training draws (default ``sample``);
    - ``training_adversary`` / ``set_best_response`` / ``best_response``: training data that
      are best responses to a reference mechanism, built above the env and installed on it;
    - ``objective`` / ``objective_name``: the trainer's objective instead of revenue
      (``None``: revenue);
    - ``welfare`` (default ``sum a * v``) and ``outcome_metrics`` (default none);
    - ``fairness`` (``None``: no fairness statistic), ``fairness_range``,
      ``ir_violation_range``, ``context_dim``.
    """

    family: str
    name: str
    n_bidders: int
    n_items: int
    demand: str
    report_space: ReportSpace
    objective: Callable[[Outcome, Types], Tensor] | None
    objective_name: str
    fairness: Callable[[Outcome, Types], Tensor] | None
    fairness_range: float
    ir_violation_range: float | None
    context_dim: int
    best_response: Callable[[Types, torch.Generator], Tensor] | None

    def sample(self, batch: int, generator: torch.Generator) -> Types:
        """``batch`` test profiles: values ``[batch, n, d]`` and public inputs."""
        ...

    def sample_training(self, batch: int, generator: torch.Generator) -> Types:
        """``batch`` training profiles ``[batch, n, d]``."""
        ...

    def training_adversary(self) -> dict | None:
        """``{"mechanism": dotted class, "attacker": PGD kwargs}`` or ``None``."""
        ...

    def set_best_response(self, search: Callable[[Types, torch.Generator], Tensor] | None) -> None:
        """Install ``search(types, generator) -> [B, n, d]`` misreports."""
        ...

    def utility(self, outcome: Outcome, values: Tensor) -> Tensor:
        """``[..., n]`` utilities of ``outcome`` for agents with ``values`` ``[..., n, d]``."""
        ...

    def welfare(self, outcome: Outcome, values: Tensor) -> Tensor:
        """``[B]`` welfare per profile."""
        ...

    def outcome_metrics(self, outcome: Outcome, types: Types) -> dict[str, Tensor]:
        """``{name: [B]}`` family-specific outcome metrics."""
        ...


@runtime_checkable
class MechanismProtocol(Protocol):
    """A rule mapping reports ``[B, n, d]`` to an ``Outcome`` (an ``nn.Module``).

    The outcome holds allocation ``[B, n, m]`` and payment ``[B, n]``.

    Optional capabilities (defaults in ``mechanisms.base.Mechanism``): ``ir_by_design``,
    ``symmetric_in``, ``dsic_by_design`` (trainer skips regret), ``payment_bound``
    (``None``: unknown), ``auxiliary_loss`` (``None``), ``last_wdp`` / ``wdp_membership`` /
    ``tie_tol`` / ``priority_seed`` / ``mip_rel_gap`` (winner determination to re-solve),
    ``gradient_strategy`` (``None``: no ``trainer.grad`` choice), ``describe`` (``None``),
    ``teacher_run`` / ``set_teacher`` (distillation teacher, loaded by the caller) and
    ``config_children`` (nested config nodes the builder checks).
    """

    family: str
    learnable: bool
    demands: tuple[str, ...]
    config_name: str
    ir_by_design: bool
    symmetric_in: tuple[str, ...]
    dsic_by_design: bool
    payment_bound: float | None
    last_wdp: Any
    tie_tol: float
    priority_seed: int
    mip_rel_gap: float
    gradient_strategy: Callable[[str, Any], Any] | None

    def __call__(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """The outcome of ``[B, n, d]`` reports."""
        ...

    def check_env(self, env: EnvProtocol) -> None:
        """Raise ``ConfigError`` when the mechanism cannot serve ``env``."""
        ...

    def auxiliary_loss(self, reports: Tensor, outcome: Outcome) -> Tensor | None:
        """Extra scalar training loss, or ``None``."""
        ...

    def wdp_membership(self) -> Tensor | None:
        """``[n, k, m]`` bundle membership of a combinatorial rule, else ``None``."""
        ...

    def describe(self) -> dict[str, object] | None:
        """Architecture facts, or ``None``."""
        ...

    def teacher_run(self) -> str | None:
        """A teacher's ``train`` run directory to load, or ``None``."""
        ...

    def set_teacher(self, teacher: Any) -> None:
        """Accept the loaded teacher."""
        ...


@runtime_checkable
class AttackerProtocol(Protocol):
    """A misreport search for every bidder of every profile at once.

    ``attack(mechanism, env, types, generator, init=None, truthful=True) -> AttackResult``
    gives misreports ``[B, n, d]`` and utilities ``[B, n]``.

    ``attackers.base.Attacker`` owns chunking, progress, budget reporting and the
    regret-vs-budget curve; subclasses implement ``attack_chunk``. Flags: ``exact`` (an
    exact best-response oracle), ``uses_init`` (explicit starts are used; else the trainer
    keeps no cache), ``two_sided`` (training adds the reverse LIC term).
    """

    name: str
    exact: bool
    uses_init: bool
    two_sided: bool
    restarts: int
    steps: int
    progress: bool

    @property
    def budget(self) -> dict:
        """``attacker``, ``restarts``, ``steps``, ``step_size`` and attacker-specific keys."""
        ...

    def describe(self) -> str:
        """Short human-readable budget."""
        ...

    def attack(
        self,
        mechanism: Any,
        env: EnvProtocol,
        types: Types,
        generator: torch.Generator,
        init: Tensor | None = None,
        truthful: bool = True,
    ) -> AttackResult:
        """Best misreport per bidder of every profile (``init``: ``[R0, B, n, d]``)."""
        ...

    def as_cutting_plane(self) -> AttackerProtocol:
        """A cutting-plane attacker with this budget (``ConfigError`` if there is none)."""
        ...


@runtime_checkable
class ConstraintHandlerProtocol(Protocol):
    """How measured violations enter the loss and how multipliers move.

    ``loss(objective [], violations)`` with ``violations = {"regret": [n], "ir": [n],
    "fairness": []}`` (IR / fairness only when ``needs_violations``); after the primal step
    ``dual_step(state)`` with a ``DualState`` (iteration, detached objective and regret,
    and the mechanism / env / attacker for held-out measurements). Never the trainer.
    """

    name: str
    needs_regret: bool
    needs_violations: bool

    def setup(self, n_bidders: int, iterations: int, device: torch.device) -> None:
        """Problem size and iteration budget, once before training."""
        ...

    def loss(self, objective: Tensor, violations: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Scalar loss to minimise."""
        ...

    def dual_step(self, state: DualState) -> None:
        """Multiplier / schedule update after the primal step."""
        ...

    def metrics(self) -> dict[str, float]:
        """Multipliers and schedules to log."""
        ...

    def state_dict(self) -> dict:
        """Checkpointable state."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` output."""
        ...


#: Certifier: stated by ``auctionlab.certify`` (owned there); listed here for completeness.
CERTIFIER_CONTRACT = "auctionlab.certify"
