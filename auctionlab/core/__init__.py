"""The bottom layer: the contracts every part of auctionlab is written against.

``auctionlab.core.protocols`` states them (``Env``, ``Mechanism``, ``Attacker``,
``ConstraintHandler``; ``Certifier`` is stated by the certify package). The shared data types
live in ``auctionlab.types`` and the errors in ``auctionlab.errors``; both are re-exported
here. Imports only point down:

    core (types, errors) <- envs <- mechanisms <- attackers
        <- training / evaluation / certify <- reporting <- tasks <- cli

and ``solvers`` import only ``core`` / ``auctionlab.types`` / ``auctionlab.errors``.
"""

from auctionlab.core.protocols import (
    AttackerProtocol,
    ConstraintHandlerProtocol,
    EnvProtocol,
    MechanismProtocol,
)
from auctionlab.errors import ConfigError, NonFiniteError, RunError
from auctionlab.types import Outcome, Types

__all__ = [
    "AttackerProtocol",
    "ConfigError",
    "ConstraintHandlerProtocol",
    "EnvProtocol",
    "MechanismProtocol",
    "NonFiniteError",
    "Outcome",
    "RunError",
    "Types",
]
