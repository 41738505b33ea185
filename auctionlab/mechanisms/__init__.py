"""Mechanisms: learned networks and classical rules behind one contract."""

from auctionlab.mechanisms.base import ClassicalMechanism, Mechanism

__all__ = ["ClassicalMechanism", "Mechanism"]
