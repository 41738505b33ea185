"""RochetNet (Dütting et al., 2019): a single bidder chooses from a learned menu of lotteries."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.mechanisms.base import Mechanism
from auctionlab.types import Outcome


class RochetNet(Mechanism):
    """Menu of ``menu_size`` lotteries plus the null option (nothing, price 0).

    The bidder picks the utility-maximising entry, which makes the mechanism DSIC and IR by
    construction. Training replaces the argmax with a softmax at inverse temperature
    ``inverse_temperature`` (per unit of the report range); evaluation uses the argmax.

    Args:
        env: a one-bidder auction environment.
        menu_size: number of learned menu entries ``K``.
        inverse_temperature: softmax sharpness during training.

    """

    ir_by_design = True
    config_name = "rochetnet"
    dsic_by_design = True

    def __init__(self, env, menu_size: int = 1000, inverse_temperature: float = 1000.0) -> None:
        super().__init__(env)
        if menu_size < 1:
            raise ConfigError(f"mechanism.menu_size={menu_size} must be >= 1")
        m = self.n_items
        generator = torch.Generator().manual_seed(0)
        self.allocation_logits = nn.Parameter(torch.randn(menu_size, m, generator=generator))
        width = float(env.report_space.width(torch.device("cpu")).mean())
        top = float(
            torch.where(
                torch.isfinite(env.report_space.high),
                env.report_space.high,
                env.report_space.low + 1.0,
            ).sum()
        )
        self.prices = nn.Parameter(top * torch.rand(menu_size, generator=generator))
        self.inverse_temperature = inverse_temperature / width

    def check_env(self, env) -> None:  # noqa: D102
        super().check_env(env)
        if env.n_bidders != 1:
            raise ConfigError(
                f"mechanism=rochetnet needs one bidder; env={env.name} has {env.n_bidders} "
                "(use mechanism=regretnet for several bidders)"
            )

    def menu(self) -> tuple[Tensor, Tensor]:
        """The menu with the null option appended: allocations ``[K+1, m]``, prices ``[K+1]``."""
        if self.demand == "unit":
            padded = torch.cat([self.allocation_logits, torch.zeros_like(self.prices)[:, None]], -1)
            allocations = torch.softmax(padded, -1)[:, :-1]
        else:
            allocations = torch.sigmoid(self.allocation_logits)
        null = allocations.new_zeros(1, allocations.shape[1])
        return torch.cat([allocations, null]), torch.cat([self.prices, self.prices.new_zeros(1)])

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, 1, m]`` reports."""
        allocations, prices = self.menu()
        utility = reports[:, 0, :] @ allocations.T - prices  # [B, K+1]
        if self.training:
            weights = torch.softmax(utility * self.inverse_temperature, dim=-1)
        else:
            weights = nn.functional.one_hot(utility.argmax(-1), prices.shape[0]).to(utility.dtype)
        return Outcome((weights @ allocations)[:, None, :], (weights @ prices)[:, None])
