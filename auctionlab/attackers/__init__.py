"""Attackers: misreport search for all bidders at once (every class registered by name)."""

from auctionlab.attackers.adaptive import AdaptiveAttacker
from auctionlab.attackers.base import (
    Attacker,
    AttackResult,
    deviation_profiles,
    deviation_utility,
)
from auctionlab.attackers.cutting_plane import CuttingPlaneAttacker
from auctionlab.attackers.grid import GridAttacker
from auctionlab.attackers.hybrid import HybridAttacker
from auctionlab.attackers.local import LocalAttacker, reverse_lic_search, reverse_lic_violation
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.attackers.portfolio import PortfolioOracle
from auctionlab.attackers.random import RandomAttacker

__all__ = [
    "AdaptiveAttacker",
    "AttackResult",
    "Attacker",
    "CuttingPlaneAttacker",
    "GridAttacker",
    "HybridAttacker",
    "LocalAttacker",
    "PGDAttacker",
    "PortfolioOracle",
    "RandomAttacker",
    "deviation_profiles",
    "deviation_utility",
    "reverse_lic_search",
    "reverse_lic_violation",
]
