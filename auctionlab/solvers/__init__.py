"""Exact solvers: IBP / LP bounds and the MIP encoding of certifiable nets [curry2020certifying]."""

from auctionlab.solvers.bounds import interval_bounds, lp_tighten, relu_stability_loss

__all__ = ["interval_bounds", "lp_tighten", "relu_stability_loss"]
