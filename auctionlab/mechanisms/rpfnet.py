"""Learned payment-free allocation: RPF-Net ([zeng2025rpf] §3), ExS-Net ([zeng2024learning]), MLP.

All three share the trunk (an MLP on the normalised reports and budgets) and differ in the
output activation, which is what [zeng2025rpf] compares:

* ``RPFNet``: the trunk outputs ``z [n, m]``, fed into the regularised PF program (9); the
  allocation is its solution (feasible by construction), differentiated through the KKT
  system (``auctionlab.solvers.pf``).
* ``ExSNet``: softmax over ``n + 1`` agents per resource, the extra (synthetic) agent's share is
  withheld; ``a_im = min(x_im, b_m * share_im)``.
* ``SoftmaxNet``: the same without the synthetic agent (nothing withheld on purpose).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auctionlab.envs.allocation import split_reports
from auctionlab.errors import ConfigError
from auctionlab.layers import mlp
from auctionlab.mechanisms.pf import AllocationMechanism
from auctionlab.types import Outcome


class _AllocationNet(AllocationMechanism):
    """Trunk shared by the learned allocation mechanisms.

    Args:
        env: an ``AllocationEnv``.
        hidden: hidden layer widths.
        activation: ``tanh``, ``relu``, ``elu`` or ``gelu``.
        out_per_resource: outputs per resource (agents, plus one for a synthetic agent).
        tol: KKT tolerance of PF solves (RPF-Net).
        max_iter: interior-point iteration cap (RPF-Net).
        scale_invariant: feed each agent's values divided by their largest entry, so the
            trunk (and, for RPF-Net, the whole mechanism, like PF) ignores a report's scale.

    """

    learnable = True
    symmetric_in = ()

    def __init__(
        self,
        env,
        hidden: Sequence[int],
        activation: str,
        out_per_resource: int,
        tol: float = 1e-7,
        max_iter: int = 200,
        scale_invariant: bool = False,
    ) -> None:
        super().__init__(env, tol=tol, max_iter=max_iter)
        self.scale_invariant = bool(scale_invariant)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ConfigError(
                f"mechanism.hidden={list(hidden)} must be a non-empty list of widths >= 1"
            )
        n, m = self.n_bidders, self.n_items
        self.trunk = mlp(2 * n * m + m, hidden, out_per_resource * m, activation)
        low, high = env.report_space.low, env.report_space.high
        self.register_buffer("input_shift", low.flatten().clone())
        self.register_buffer("input_scale", (1.0 / (high - low)).flatten().clone())
        self.out_per_resource = out_per_resource

    def features(self, reports: Tensor, budgets: Tensor) -> Tensor:
        """``[B, out_per_resource, m]`` trunk output on normalised reports and budgets."""
        B = reports.shape[0]
        if self.scale_invariant:
            # Program (9) gives the same allocation for c * v_i and v_i when z does not move:
            # a z that ignores the scale leaves an attacker one direction fewer than PF has.
            values, demands = split_reports(reports)
            top = values.amax(-1, keepdim=True).clamp_min(1e-12)
            reports = torch.cat([values / top, demands], -1)
        x = (reports.reshape(B, -1) - self.input_shift) * self.input_scale
        b = budgets / self.default_budget
        return self.trunk(torch.cat([x, b], -1)).view(B, self.out_per_resource, self.n_items)


class RPFNet(_AllocationNet):
    """RPF-Net: ``a = argmin -sum_i w_i log(v_i^T a_i) + <a, z_omega(v, x, b)>`` (program 9).

    Args:
        env: an ``AllocationEnv``.
        hidden: hidden layer widths of ``z_omega``.
        activation: trunk activation.
        z_scale: multiplies the trunk output (``z`` starts near 0, i.e. near PF).
        start_at_pf: zero the output layer, so ``z = 0`` and the untrained net is exactly PF
            (training then moves away from PF only as far as the constraints ask).
        tol: KKT tolerance of the program (1e-6: the residual the solver is held to against
            the reference; two interior-point iterations fewer than PF's 1e-7).
        max_iter: interior-point iteration cap.
        scale_invariant: ``z`` sees each agent's values divided by their largest entry, so
            RPF-Net, like PF, gives the same allocation for ``c * v_i`` as for ``v_i``.

    """

    config_name = "rpfnet"

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (100, 100, 100),
        activation: str = "tanh",
        z_scale: float = 1.0,
        start_at_pf: bool = True,
        tol: float = 1e-6,
        max_iter: int = 200,
        scale_invariant: bool = False,
    ) -> None:
        super().__init__(
            env,
            hidden,
            activation,
            env.n_bidders,
            tol=tol,
            max_iter=max_iter,
            scale_invariant=scale_invariant,
        )
        if z_scale <= 0:
            raise ConfigError(f"mechanism.z_scale={z_scale} must be > 0")
        self.z_scale = float(z_scale)
        if start_at_pf:
            torch.nn.init.zeros_(self.trunk[-1].weight)

    def regulariser(self, reports: Tensor, budgets: Tensor) -> Tensor:
        """``[B, n, m]`` the linear term ``z_omega`` of program (9)."""
        return self.z_scale * self.features(reports, budgets)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """``[B, n, 2m]`` reports -> allocation solving program (9)."""
        values, demands, budgets, weights = self.inputs(reports, public)
        z = self.regulariser(reports, budgets)
        return self.outcome(self.pf(values, demands, budgets, weights, z))


class ExSNet(_AllocationNet):
    """ExS-Net (Zeng et al. 2024): softmax over agents plus a synthetic agent that withholds.

    Args:
        env: an ``AllocationEnv``.
        hidden: hidden layer widths.
        activation: trunk activation.
        scale_invariant: the trunk sees each agent's values divided by their largest entry.

    """

    config_name = "exsnet"
    synthetic_agent = True

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (100, 100, 100),
        activation: str = "tanh",
        scale_invariant: bool = False,
    ) -> None:
        extra = 1 if self.synthetic_agent else 0
        super().__init__(
            env, hidden, activation, env.n_bidders + extra, scale_invariant=scale_invariant
        )

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """``[B, n, 2m]`` reports -> ``min(x, b * softmax share)``."""
        values, demands, budgets, weights = self.inputs(reports, public)
        share = torch.softmax(self.features(reports, budgets), dim=1)[:, : self.n_bidders]
        allocation = torch.minimum(demands.clamp_min(0.0), budgets.unsqueeze(1) * share)
        return self.outcome(allocation)


class SoftmaxNet(ExSNet):
    """Plain softmax network ([zeng2025rpf] §6 baseline): ExS-Net without the synthetic agent."""

    config_name = "softmax_net"
    synthetic_agent = False
