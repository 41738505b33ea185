"""A mechanism as one tensor function: what ``train`` exports as the run's MLflow model.

MLflow's PyTorch flavour traces a module with ``torch.export`` (the ``pt2`` format: a graph of
tensor operations plus the weights, no pickled Python objects) and serves it on arrays, so the
module must map one tensor to one tensor. :class:`OutcomeTensor` wraps a mechanism, whose
``forward`` returns an :class:`~auctionlab.types.Outcome`, into that shape; :meth:`split` turns
its output back into an ``Outcome``.

The export is for users (``mlflow.pytorch.load_model("runs:/<run id>/model")``, serving,
comparing runs in the MLflow UI). auctionlab itself never loads it: ``evaluate``, ``certify``
and ``resume`` load the checkpoint, whose hash and manifest are verified, into a mechanism
built from the run's checked config.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from auctionlab.types import Outcome


class OutcomeTensor(nn.Module):
    """``reports [B, n, d] -> [B, n, k + 1]``: each bidder's allocation, then its payment.

    ``output[..., :k]`` is bidder ``i``'s allocation flattened (``k = m`` items for an
    auction; whatever the mechanism's allocation holds per bidder otherwise) and
    ``output[..., k]`` its payment.

    Args:
        mechanism: the mechanism to wrap (its ``forward(reports)``, no public context).

    """

    def __init__(self, mechanism: nn.Module) -> None:
        super().__init__()
        self.mechanism = mechanism

    def forward(self, reports: Tensor) -> Tensor:
        """``[B, n, d]`` reports to ``[B, n, k + 1]`` allocation and payment."""
        return self.join(self.mechanism(reports))

    @staticmethod
    def join(outcome: Outcome) -> Tensor:
        """An ``Outcome`` (``[B, n, ...]`` allocation, ``[B, n]`` payment) as ``[B, n, k + 1]``."""
        B, n = outcome.payment.shape
        allocation = outcome.allocation.reshape(B, n, -1)
        return torch.cat([allocation, outcome.payment.unsqueeze(-1).to(allocation.dtype)], -1)

    @staticmethod
    def split(output: Tensor) -> Outcome:
        """``[B, n, k + 1]`` back to ``Outcome([B, n, k] allocation, [B, n] payment)``."""
        return Outcome(output[..., :-1], output[..., -1])
