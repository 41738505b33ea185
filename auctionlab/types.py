"""The small data types that flow between envs, mechanisms, attackers and trainers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


class Outcome(NamedTuple):
    """What a mechanism decides for a batch of report profiles.

    Attributes:
        allocation: ``[B, n, m]`` probability that bidder ``i`` receives item ``j``.
        payment: ``[B, n]`` expected payment of each bidder.

    """

    allocation: Tensor
    payment: Tensor


@dataclass
class Types:
    """A batch of agent types.

    Attributes:
        values: ``[B, n, m]`` private values (the strategic, report-shaped part).
        public: public inputs (budgets, context), each with leading batch dim ``B``.

    """

    values: Tensor
    public: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """Number of profiles ``B``."""
        return self.values.shape[0]

    def to(self, device: torch.device | str) -> Types:
        """Copy to ``device``."""
        return Types(self.values.to(device), {k: v.to(device) for k, v in self.public.items()})

    def __getitem__(self, index: slice | Tensor) -> Types:
        """Select profiles along the batch axis."""
        return Types(self.values[index], {k: v[index] for k, v in self.public.items()})
