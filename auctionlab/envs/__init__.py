"""Environments: valuation distributions and markets."""

from auctionlab.envs.additive import AuctionEnv
from auctionlab.envs.allocation import AllocationEnv
from auctionlab.envs.base import Env, ReportSpace

__all__ = ["AllocationEnv", "AuctionEnv", "Env", "ReportSpace"]
