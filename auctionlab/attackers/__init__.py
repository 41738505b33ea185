"""Attackers: misreport search for all bidders at once."""

from auctionlab.attackers.base import AttackResult, deviation_profiles, deviation_utility
from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.attackers.random import RandomAttacker

__all__ = [
    "AttackResult",
    "PGDAttacker",
    "RandomAttacker",
    "deviation_profiles",
    "deviation_utility",
]
