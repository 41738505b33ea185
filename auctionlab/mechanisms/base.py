"""The mechanism contract: ``forward(reports, public) -> Outcome``, plus declared capabilities.

Every optional capability of a mechanism is declared on ``Mechanism`` with its default, so
shared code (trainer, evaluation, audits) reads it instead of probing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from auctionlab.core.component import Component
from auctionlab.errors import ConfigError
from auctionlab.types import Outcome


class Mechanism(nn.Module, Component):
    """Base class for every mechanism, learned or classical.

    Subclasses set ``family`` (the problem family they solve), ``learnable`` (whether the
    trainer has anything to fit) and implement ``forward``. ``check_env`` raises a
    ``ConfigError`` when the mechanism cannot serve the environment, before any work starts.
    """

    family: str = "auction"
    learnable: bool = True
    #: Names of env demands this mechanism supports.
    demands: tuple[str, ...] = ("additive", "unit")
    #: Config name, used in error messages.
    config_name: str = "mechanism"
    #: A truthful bidder's utility is never negative, whatever the weights (fuzz-tested).
    ir_by_design: bool = False
    #: Permutations the rule commutes with when the prior is symmetric: "bidders", "items".
    symmetric_in: tuple[str, ...] = ()
    #: Truthful reporting is dominant by construction: the trainer skips the regret estimate.
    dsic_by_design: bool = False
    #: An a priori bound on every payment (certificates' ranges), or ``None``: unknown.
    payment_bound: float | None = None
    #: The last forward pass's winner determination (``solvers.wdp.WDPResult``: ``choice``
    #: ``[B, n]``, ``scores`` ``[B, n, k]`` or ``None``, ``certificate``), or ``None`` for a
    #: mechanism that solves none (item auctions, fractional rules).
    last_wdp: Any = None
    #: Winner determination's tie rule, used when re-solving ``last_wdp``'s scores: scores
    #: within ``tie_tol`` of the best total tie, ties broken by priorities from
    #: ``priority_seed``; ``mip_rel_gap`` is the solver's relative optimality gap.
    tie_tol: float = 1e-6
    priority_seed: int = 0
    mip_rel_gap: float = 0.0
    #: ``None``, or ``gradient_strategy(strategy, attacker) -> attacker``: the mechanism has a
    #: discrete forward pass and ``trainer.grad`` picks how gradients flow through it (the
    #: training attacker to use is returned). An attribute so "no strategies" is visible.
    gradient_strategy: Any = None
    #: The weights do not depend on the number of bidders and items: a net trained on one
    #: ``n x m`` serves any other of its family (``auctionlab evaluate run=<run> env=<size>``,
    #: size generalisation). Property-tested by loading one size's weights into another.
    any_size: bool = False
    #: Whether ``auctionlab audit`` can log this mechanism's decisions instance by instance
    #: (winner determination with a solver certificate: the combinatorial mechanisms).
    auditable: bool = False

    def __init__(self, env) -> None:
        super().__init__()
        self.check_env(env)
        self.n_bidders, self.n_items = env.n_bidders, env.n_items
        self.demand = env.demand

    def check_env(self, env) -> None:
        """Raise ``ConfigError`` when ``env`` is outside what this mechanism handles."""
        if env.family != self.family:
            raise ConfigError(
                f"mechanism={self.config_name} solves '{self.family}' problems; "
                f"env={env.name} is '{env.family}'"
            )
        if env.demand not in self.demands:
            raise ConfigError(
                f"mechanism={self.config_name} supports demand {'/'.join(self.demands)}; "
                f"env={env.name} is {env.demand}"
            )

    @classmethod
    def config_children(cls, node: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Component nodes this mechanism builds itself from its options (default: none).

        The config builder schema-checks each returned ``_target_`` node like a top-level
        one before the mechanism is built (mechanisms do not import the config checker).

        Args:
            node: this mechanism's config node, resolved (``_target_`` and options).

        Returns:
            ``{option path: node}``, e.g. ``{"mechanism.base_options": {"_target_": ...}}``.

        """
        return {}

    def wdp_membership(self) -> Tensor | None:
        """``[n, k, m]`` bool: which goods bundle ``k`` of bidder ``n`` holds, or ``None``.

        Combinatorial mechanisms return their env's membership so evaluation can re-solve
        ``last_wdp``; every other mechanism returns ``None`` (the default).
        """
        return None

    #: ``lipschitz_terms() -> {"L": ..., ...}``: the a priori Lipschitz constant recomputed from
    #: the weights (Lipschitz-controlled classes define it as a method; ``None``: no control).
    lipschitz_terms: Callable[[], dict[str, float]] | None = None

    def describe(self) -> dict[str, object] | None:
        """Architecture facts for certificates and reports, or ``None`` (the default)."""
        return None

    def teacher_run(self) -> str | None:
        """The ``train`` run directory of a distillation teacher to load, or ``None``.

        Mechanisms do not load runs themselves (they sit below run I/O): whoever builds the
        mechanism for training loads this run and passes its mechanism to ``set_teacher``.
        """
        return None

    def set_teacher(self, teacher: nn.Module) -> None:
        """Accept the loaded teacher of ``teacher_run`` (eval mode, weights loaded).

        Raises:
            ConfigError: this mechanism distils from no teacher (the default), or the
                teacher does not fit it.

        """
        raise ConfigError(f"mechanism={self.config_name} distils from no teacher")

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Map ``[B, n, m]`` reports to an ``Outcome``."""
        raise TypeError(f"{type(self).__name__} must implement forward")

    def auxiliary_loss(self, reports: Tensor, outcome: Outcome) -> Tensor | None:
        """Extra training loss of this mechanism (a regulariser, a distillation term...).

        The trainer adds it to the constraint's loss at every step.

        Args:
            reports: ``[B, n, m]`` truthful reports of the batch.
            outcome: the mechanism's outcome on them (with gradients).

        Returns:
            A scalar tensor, or ``None`` (the default) for no extra term.

        """
        return None

    def network_spec(self):
        """The ReLU / sparsemax network as the MIP encoding reads it (certifier=mip).

        Returns:
            An ``auctionlab.solvers.mip_encoding.NetworkSpec``.

        Raises:
            ConfigError: this mechanism is not MIP-certifiable (the default).

        """
        raise ConfigError(
            f"mechanism={self.config_name} is not MIP-certifiable: certifier=mip needs "
            f"mechanism=regretnet_sparsemax (ReLU trunk, sparsemax allocation); this "
            f"mechanism is {type(self).__name__}"
        )

    def exact_regret(self, values: Tensor) -> Tensor | None:
        """Closed-form per-sample regret ``[B, n]`` at true values ``[B, n, m]``, if known.

        Everyone else reports truthfully. ``None`` (the default): no closed form, a numerical
        best-response oracle is needed.
        """
        return None


class ClassicalMechanism(Mechanism):
    """A fixed rule with nothing to train (VCG, Myerson, menus...)."""

    learnable = False

    @classmethod
    def optimal_for(cls, env) -> bool:
        """Whether the rule built with its default options is revenue-optimal on ``env``.

        A theorem, not a measurement: figures overlay the optimal rule where one is known
        (:func:`optimal_mechanism`). Default ``False``: no such result is claimed.
        """
        return False


def optimal_mechanism(env) -> ClassicalMechanism | None:
    """The known revenue-optimal classical rule for ``env`` (default options), or ``None``.

    Every subclass of :class:`ClassicalMechanism` that has been imported is asked
    (``optimal_for``); ``auctionlab.mechanisms`` imports them all.
    """
    pending = list(ClassicalMechanism.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending += cls.__subclasses__()
        if cls.optimal_for(env):
            return cls(env)
    return None
