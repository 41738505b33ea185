"""auctionlab: learn mechanisms with neural networks, then measure how far they can be gamed."""

from auctionlab.types import Outcome, Types

__all__ = ["Outcome", "Types"]
__version__ = "0.1.0"
