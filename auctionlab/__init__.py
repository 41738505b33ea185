"""auctionlab: learn mechanisms with neural networks, then measure how far they can be gamed."""

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so a job with more threads
# than free cores does not take CPU from the jobs beside it (an explicit setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from auctionlab.types import Outcome, Types  # noqa: E402 - after the OpenMP setting

__all__ = ["Outcome", "Types"]
__version__ = "0.1.0"
