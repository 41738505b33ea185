"""Training: one loop, pluggable constraint handlers."""

from auctionlab.errors import NonFiniteError
from auctionlab.training.constraints import (
    AugmentedLagrangian,
    ConstraintHandler,
    DualState,
    PrimalDual,
    RegretBudget,
    Unconstrained,
)
from auctionlab.training.loop import Trainer

__all__ = [
    "AugmentedLagrangian",
    "ConstraintHandler",
    "DualState",
    "NonFiniteError",
    "PrimalDual",
    "RegretBudget",
    "Trainer",
    "Unconstrained",
]
