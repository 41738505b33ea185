"""Attackers: misreport search for all bidders at once."""

from auctionlab.attackers.base import (
    Attacker,
    AttackResult,
    deviation_profiles,
    deviation_utility,
)
from auctionlab.attackers.local import LocalAttacker, reverse_lic_search, reverse_lic_violation
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.attackers.portfolio import PortfolioOracle
from auctionlab.attackers.random import RandomAttacker

__all__ = [
    "AttackResult",
    "Attacker",
    "LocalAttacker",
    "PGDAttacker",
    "PortfolioOracle",
    "RandomAttacker",
    "deviation_profiles",
    "deviation_utility",
    "reverse_lic_search",
    "reverse_lic_violation",
]
