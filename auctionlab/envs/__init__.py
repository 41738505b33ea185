"""Environments: valuation distributions and markets."""

from auctionlab.envs.additive import AuctionEnv
from auctionlab.envs.base import Env, ReportSpace

__all__ = ["AuctionEnv", "Env", "ReportSpace"]
