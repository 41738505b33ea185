"""The mechanism contract: ``forward(reports, public) -> Outcome``."""

from __future__ import annotations

from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.types import Outcome


class Mechanism(nn.Module):
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
