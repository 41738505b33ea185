"""Certifiable RegretNet ([curry2020certifying]): ReLU trunk, sparsemax, exact payments.

Every operation is piecewise linear (or bilinear for the fractional IR payment), so the
mechanism can be written exactly as a mixed-integer program (``auctionlab.solvers``) and each
bidder's best misreport at a profile can be certified.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.layers.sparsemax import sparsemax_allocation
from auctionlab.mechanisms.base import Mechanism
from auctionlab.solvers.bounds import interval_bounds, relu_stability_loss
from auctionlab.types import Outcome

PAYMENTS = ("fractional", "free")
CLIPS = ("none", "nonneg", "ir")


class RegretNetSparsemax(Mechanism):
    """Shared ReLU trunk, a sparsemax allocation head and a payment head ([curry2020certifying] §3).

    Allocation: per item, sparsemax over the ``n`` bidders plus a dummy (eq. 5).
    Payment (``payment``):

    * ``fractional`` (IR by construction, §3.2 "Nonconvex integer programs"):
      ``p_i = hardsigmoid(q_i) * sum_j a_ij b_ij`` with the piecewise linear
      ``hardsigmoid(q) = clamp(q / 6 + 1/2, 0, 1)`` in place of the sigmoid. Certifying it is a
      bilinear (nonconvex) program: it needs the SCIP backend.
    * ``free`` (§3.2 "Individual rationality penalty"): ``p_i = q_i`` during training, with the
      IR penalty ``ir_penalty * sum_i irv_i^2`` of eq. (8), ``irv_i = max(p_i - a_i . b_i, 0)``,
      and optionally distilled from a softmax RegretNet ``teacher``. The multipliers ``mu_i``
      start at ``ir_penalty`` and grow by dual ascent, ``mu_i += ir_lr * mean(irv_i)`` per
      step (a fixed ``mu`` would leave ``irv ~ 1 / (2 mu)``: revenue pulls with slope one).
      After training (``mechanism.eval()``) payments are clipped (``payment_clip``): ``nonneg``
      ``max(q_i, 0)`` (a mixed-integer *linear* program), ``ir`` ``min(max(q_i, 0), a_i . b_i)``
      (bilinear again) or ``none``.

    Training-time options (terms of ``auxiliary_loss``, which the training loop adds to the loss
    at every step; they do not change the mechanism's outcome): ``ir_penalty``,
    ``distill_weight`` with ``teacher``, and ``relu_stability`` (IBP-based regulariser of §3.3
    over each bidder's report box with the others truthful: exactly the region a certificate
    searches).

    Args:
        env: the auction environment (additive demand).
        hidden: widths of the shared ReLU trunk.
        payment: ``fractional`` or ``free``.
        payment_clip: clipping of free payments after training: ``nonneg``, ``ir``, ``none``.
        normalize_inputs: rescale reports to ``[0, 1]`` with the report space's box.
        ir_penalty: initial multiplier ``mu`` of eq. (8) (free payment only).
        ir_lr: dual step of the IR multipliers (0 keeps them fixed).
        distill_weight: weight of the MSE between this network's and the teacher's outcome.
        teacher: a finished ``train`` run directory of a softmax RegretNet on the same env.
        relu_stability: weight of the ReLU-stability regulariser (0 disables it).

    """

    config_name = "regretnet_sparsemax"
    demands = ("additive",)

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (64, 64),
        payment: str = "free",
        payment_clip: str = "nonneg",
        normalize_inputs: bool = True,
        ir_penalty: float = 10.0,
        ir_lr: float = 1.0,
        distill_weight: float = 0.0,
        teacher: str | None = None,
        relu_stability: float = 0.0,
    ) -> None:
        super().__init__(env)
        if payment not in PAYMENTS:
            raise ConfigError(
                f"mechanism.payment={payment} is not valid; choose one of {', '.join(PAYMENTS)}"
            )
        if payment_clip not in CLIPS:
            raise ConfigError(
                f"mechanism.payment_clip={payment_clip} is not valid; choose one of "
                f"{', '.join(CLIPS)}"
            )
        if not hidden:
            raise ConfigError("mechanism.hidden must list at least one layer width")
        for key, value in (
            ("ir_penalty", ir_penalty),
            ("ir_lr", ir_lr),
            ("distill_weight", distill_weight),
            ("relu_stability", relu_stability),
        ):
            if float(value) < 0:
                raise ConfigError(f"mechanism.{key}={value} must be >= 0")
        if float(distill_weight) > 0 and not teacher:
            raise ConfigError(
                f"mechanism.distill_weight={distill_weight} needs mechanism.teacher=<train run dir>"
            )
        if teacher and not (Path(str(teacher)).expanduser() / "config.yaml").exists():
            raise ConfigError(
                f"mechanism.teacher={teacher}: not a train run directory (no config.yaml)"
            )
        n, m = self.n_bidders, self.n_items
        self.payment_mode, self.payment_clip = payment, payment_clip
        self.ir_penalty, self.distill_weight = float(ir_penalty), float(distill_weight)
        self.relu_stability, self.ir_lr = float(relu_stability), float(ir_lr)
        self.register_buffer("ir_multiplier", torch.full((n,), float(ir_penalty)))
        self.teacher_dir = None if not teacher else str(teacher)
        self._teacher: list[nn.Module] = []  # not a submodule: never in the checkpoint
        layers: list[nn.Module] = []
        last = n * m
        for width in hidden:
            layers += [nn.Linear(last, int(width)), nn.ReLU()]
            last = int(width)
        self.trunk = nn.Sequential(*layers)
        self.allocation_head = nn.Linear(last, (n + 1) * m)
        self.payment_head = nn.Linear(last, n)
        for layer in [*self.trunk, self.allocation_head, self.payment_head]:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        low, high = env.report_space.low, env.report_space.high
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ConfigError(
                f"mechanism={self.config_name} needs a bounded report space (a certificate "
                f"searches all of it); env={env.name} is unbounded"
            )
        self.register_buffer("report_low", low.clone().float())
        self.register_buffer("report_high", high.clone().float())
        shift = low.flatten() if normalize_inputs else torch.zeros(n * m)
        scale = (1.0 / (high - low)).flatten() if normalize_inputs else torch.ones(n * m)
        self.register_buffer("input_shift", shift.clone().float())
        self.register_buffer("input_scale", scale.clone().float())

    # -- the network ------------------------------------------------------------------------
    def affine_layers(self) -> list[tuple[Tensor, Tensor]]:
        """Trunk layers with the input normalisation folded into the first one.

        Returns:
            ``(weight [out, in], bias [out])`` per trunk layer; a ReLU follows each. The first
            layer takes raw reports ``[n * m]`` (bidder-major).

        """
        linears = [layer for layer in self.trunk if isinstance(layer, nn.Linear)]
        first = linears[0]
        weight = first.weight * self.input_scale
        bias = first.bias - weight @ self.input_shift
        return [(weight, bias)] + [(layer.weight, layer.bias) for layer in linears[1:]]

    def _heads(self, reports: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, n, m = reports.shape
        x = (reports.reshape(batch, n * m) - self.input_shift) * self.input_scale
        h = self.trunk(x)
        logits = self.allocation_head(h).view(batch, n + 1, m)
        allocation = sparsemax_allocation(logits)
        return allocation, self.payment_head(h), (allocation * reports).sum(-1)

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Outcome for ``[B, n, m]`` reports: allocation ``[B, n, m]``, payment ``[B, n]``."""
        allocation, q, bid_value = self._heads(reports)
        if self.payment_mode == "fractional":
            payment = F.hardsigmoid(q) * bid_value
        elif self.training or self.payment_clip == "none":
            payment = q
        elif self.payment_clip == "nonneg":
            payment = q.clamp_min(0.0)
        else:
            payment = torch.minimum(q.clamp_min(0.0), bid_value)
        return Outcome(allocation, payment)

    # -- training-time terms ----------------------------------------------------------------
    def relu_bounds(self, reports: Tensor) -> list[tuple[Tensor, Tensor]]:
        """IBP bounds of the trunk over each bidder's report box, the others at ``reports``.

        Args:
            reports: ``[B, n, m]``.

        Returns:
            Per trunk layer ``(lower, upper)``, each ``[B * n, width]`` (box of bidder ``i``
            of profile ``b`` at row ``b * n + i``).

        """
        batch, n, m = reports.shape
        eye = torch.eye(n, dtype=torch.bool, device=reports.device).view(1, n, n, 1)
        base = reports.unsqueeze(1).expand(batch, n, n, m)
        low = torch.where(eye, self.report_low.view(1, 1, n, m), base).reshape(batch * n, n * m)
        high = torch.where(eye, self.report_high.view(1, 1, n, m), base).reshape(batch * n, n * m)
        return interval_bounds(self.affine_layers(), low, high)

    def teacher_run(self) -> str | None:
        """The ``mechanism.teacher`` run directory to distil from (``None``: no teacher)."""
        return self.teacher_dir

    def set_teacher(self, teacher: nn.Module) -> None:
        """Accept the loaded teacher (the mechanism of ``teacher_run``); frozen, eval mode.

        Raises:
            ConfigError: no ``mechanism.teacher`` is configured, or the teacher's
                ``n_bidders x n_items`` differ from this mechanism's.

        """
        if not self.teacher_dir:
            raise ConfigError(f"mechanism={self.config_name} has no mechanism.teacher to load")
        shape = (teacher.n_bidders, teacher.n_items)
        if shape != (self.n_bidders, self.n_items):
            raise ConfigError(
                f"mechanism.teacher={self.teacher_dir}: trained on a {shape[0]}x{shape[1]} env; "
                f"this env is {self.n_bidders}x{self.n_items}"
            )
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher[:] = [teacher]

    def teacher(self, device: torch.device) -> nn.Module | None:
        """The distillation teacher on ``device`` (``None`` without ``mechanism.teacher``).

        Raises:
            ConfigError: a teacher is configured but was never passed to ``set_teacher``.

        """
        if not self.teacher_dir:
            return None
        if not self._teacher:
            raise ConfigError(
                f"mechanism.teacher={self.teacher_dir} is not loaded: the caller that trains "
                "loads teacher_run() (auctionlab.runs.load_trained) and calls set_teacher"
            )
        return self._teacher[0].to(device)

    def auxiliary_loss(self, reports: Tensor, outcome: Outcome) -> Tensor | None:
        """IR penalty (eq. 8), distillation MSE and ReLU-stability terms, weighted.

        Args:
            reports: ``[B, n, m]`` truthful reports of the batch.
            outcome: this network's outcome on them (training mode: unclipped payments).

        Returns:
            The weighted sum of the enabled terms, or ``None`` when all weights are zero.

        """
        terms = []
        if self.payment_mode == "free" and self.ir_penalty > 0:
            irv = (outcome.payment - (outcome.allocation * reports).sum(-1)).clamp_min(0.0)
            terms.append((self.ir_multiplier.clone() * irv.pow(2)).sum(-1).mean())
            if self.training and self.ir_lr > 0:
                with torch.no_grad():
                    self.ir_multiplier += self.ir_lr * irv.mean(0)
        if self.distill_weight > 0:
            teacher = self.teacher(reports.device)
            with torch.no_grad():
                target = teacher(reports)
            mse = F.mse_loss(outcome.allocation, target.allocation) + F.mse_loss(
                outcome.payment, target.payment
            )
            terms.append(self.distill_weight * mse)
        if self.relu_stability > 0:
            terms.append(self.relu_stability * relu_stability_loss(self.relu_bounds(reports)))
        if not terms:
            return None
        return torch.stack(terms).sum()

    def network_spec(self):
        """The trained weights as float64 numpy arrays for the MIP encoding (certifier=mip).

        Returns:
            An ``auctionlab.solvers.mip_encoding.NetworkSpec`` (trunk with the input
            normalisation folded in, allocation and payment heads, report box ``[n, m]``).

        """
        import numpy as np

        from auctionlab.solvers.mip_encoding import NetworkSpec

        def arr(t: Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float64).numpy().copy()

        with torch.no_grad():
            trunk = [(arr(w), arr(b)) for w, b in self.affine_layers()]
        return NetworkSpec(
            n=self.n_bidders,
            m=self.n_items,
            trunk=trunk,
            alloc=(arr(self.allocation_head.weight), arr(self.allocation_head.bias)),
            pay=(arr(self.payment_head.weight), arr(self.payment_head.bias)),
            payment=self.payment_mode,
            clip=self.payment_clip,
            low=arr(self.report_low),
            high=arr(self.report_high),
        )
