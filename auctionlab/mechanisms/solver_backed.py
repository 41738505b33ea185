"""Solver-backed neural combinatorial auction ([lemma2026solver] §4).

A bidder-equivariant network maps bids ``b [B, n, k]`` to scores ``s [B, n, k]`` and payment
fractions ``alpha [B, n]`` in ``[0, 1]``; the allocation is the exact maximiser of ``<s, x>``
over the feasible allocations (deterministic tie rule of ``CombinatorialMechanism``) and the
payment is ``alpha_i(b) * b_iS*`` (IR by design: a truthful winner keeps ``(1 - alpha) v``).

Network (§4.1 template): ``e_l = psi(b_l)``, ``h_i = phi(b_i, mean_{l != i} e_l)``,
``s_iS = b_iS + score_scale * rho(h_i)_S`` (``rho``'s last layer starts at zero, so training
starts from welfare maximisation), ``alpha_i = sigmoid(a(h_i))`` starting at ``alpha_init``.

Payment fraction (``payment``): ``free`` is the network's ``sigmoid(a(h_i))`` alone;
``threshold`` (default, §4.3: alpha depends on the gap between the best allocation and the
best one without bidder ``i``) mixes it with the score-threshold fraction
``r_i = clamp(1 - margin_i / b_iS*, 0, 1)``, ``margin_i = <s, x*> - max_x sum_{j != i} s_j(x)``:
``alpha_i = (1 - beta_i) r_i + beta_i sigmoid(a(h_i))`` with a learned ``beta_i = sigmoid(.)``.
With ``beta = 0`` and scores ``b + kappa`` this is the affine maximiser with VCG payments
(§4.5), so training starts next to a DSIC mechanism; alpha stays in ``[0, 1]`` either way.
The threshold needs the enumerated allocations (``backend=enumeration``).

Gradients (``grad``, or per training run ``trainer.grad``, see ``gradient_strategy``): ``ste``
keeps the exact allocation in every forward pass and uses the surrogate's Jacobian (softmax over
the enumerated allocations, or the entropic LP) in the backward pass; ``lp`` trains on the
entropic LP relaxation (``auctionlab.solvers.relaxation.entropic_lp``, implicit KKT gradient)
in training mode; ``cutting_plane`` (trainer only) is ``ste`` with the witness attacker of
§5.3 (iii). Evaluation mode always deploys the exact integral allocation, so revenue and regret
are reported for the deployed mechanism.

The ``lp`` path fights the training-deployment mismatch of §6.4 three ways: every bidder has
a regularised outside option (``lp_outside``: a bundle scored below 0 loses mass to "win
nothing", as the integral rule does not sell it), its own colder temperature
(``lp_temperature``), and ``lp_mix``: the training forward's value is
``lp_mix * x_lp + (1 - lp_mix) * x_exact`` (gradient always ``d x_lp``), so the revenue and
regret that training sees include the deployed allocation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from auctionlab.errors import ConfigError
from auctionlab.layers import mlp
from auctionlab.mechanisms.combinatorial import CombinatorialMechanism
from auctionlab.solvers.relaxation import entropic_lp
from auctionlab.types import Outcome

GRADS = ("ste", "lp")
#: ``trainer.grad`` choices (``cutting_plane``: STE gradients + witness-set attacker).
STRATEGIES = ("ste", "lp", "cutting_plane")
PAYMENTS = ("threshold", "free")


class SolverBacked(CombinatorialMechanism):
    """Equivariant score network + exact winner determination + IR-by-design payments.

    Args:
        env: a ``CombinatorialEnv``.
        hidden: hidden widths of ``phi`` (and of ``psi``).
        embedding: width of the others' summary ``e_l``.
        activation: ``tanh``, ``relu``, ``elu`` or ``gelu``.
        grad: ``ste`` or ``lp`` (see the module docstring).
        score_scale: scale of the learned score correction, in units of ``v_max``.
        alpha_init: the payment fraction at initialisation.
        backend: ``enumeration`` or ``highs``.
        tie_tol: tie tolerance of winner determination.
        priority_seed: seed of the tie-break priorities.
        mip_rel_gap: HiGHS relative gap (``backend=highs``).
        surrogate: ``softmax`` or ``lp``: whose Jacobian the STE path and attackers see.
        temperature: the surrogate's temperature, in units of ``v_max``.
        lp_iterations: sweeps of the entropic LP.
        lp_implicit: ``grad=lp`` differentiates the LP implicitly (KKT) instead of unrolling.
        lp_outside: the LP gives each bidder a regularised outside option with score 0.
        lp_temperature: the LP's temperature in ``grad=lp`` training, in units of ``v_max``
            (``None``: ``temperature``).
        lp_mix: weight of the relaxation in the ``grad=lp`` training forward's value, in
            ``(0, 1]`` (the rest is the exact allocation; the gradient is the LP's).
        payment: ``threshold`` or ``free`` (see the module docstring).
        mix_init: the weight ``beta`` of the free fraction at initialisation.

    """

    ir_by_design = True
    symmetric_in = ("bidders",)
    config_name = "solver_backed"

    #: Scores ``[B, n, k]`` and payment fractions ``[B, n]`` of the last forward pass.
    last_scores: Tensor | None = None
    last_alpha: Tensor | None = None

    def __init__(
        self,
        env,
        hidden: Sequence[int] = (64, 64),
        embedding: int = 32,
        activation: str = "tanh",
        grad: str = "ste",
        score_scale: float = 0.5,
        alpha_init: float = 0.5,
        backend: str = "enumeration",
        tie_tol: float = 1e-6,
        priority_seed: int = 0,
        mip_rel_gap: float = 0.0,
        surrogate: str = "softmax",
        temperature: float = 0.02,
        lp_iterations: int = 30,
        lp_implicit: bool = True,
        lp_outside: bool = True,
        lp_temperature: float | None = None,
        lp_mix: float = 1.0,
        payment: str = "threshold",
        mix_init: float = 0.1,
    ) -> None:
        self.check_env(env)  # before reading the env's combinatorial attributes
        if payment not in PAYMENTS:
            raise ConfigError(
                f"mechanism.payment={payment} is not valid; choose one of {', '.join(PAYMENTS)}"
            )
        if payment == "threshold" and backend == "highs":
            raise ConfigError(
                "mechanism.payment=threshold needs mechanism.backend=enumeration; "
                "use mechanism.payment=free with backend=highs"
            )
        if not 0 < mix_init < 1:
            raise ConfigError(f"mechanism.mix_init={mix_init} must be in (0, 1)")
        if grad not in GRADS:
            raise ConfigError(
                f"mechanism.grad={grad} is not valid; choose one of {', '.join(GRADS)}"
            )
        if not 0 < lp_mix <= 1:
            raise ConfigError(f"mechanism.lp_mix={lp_mix} must be in (0, 1]")
        if lp_temperature is not None and not (
            math.isfinite(lp_temperature) and lp_temperature > 0
        ):
            raise ConfigError(f"mechanism.lp_temperature={lp_temperature} must be > 0")
        if not 0 < alpha_init < 1:
            raise ConfigError(f"mechanism.alpha_init={alpha_init} must be in (0, 1)")
        if not (math.isfinite(score_scale) and score_scale >= 0):
            raise ConfigError(f"mechanism.score_scale={score_scale} must be >= 0")
        if embedding < 1:
            raise ConfigError(f"mechanism.embedding={embedding} must be >= 1")
        super().__init__(
            env,
            backend=backend,
            tie_tol=tie_tol,
            priority_seed=priority_seed,
            mip_rel_gap=mip_rel_gap,
            surrogate=surrogate,
            temperature=temperature * env.v_max,
            lp_iterations=lp_iterations,
        )
        k = self.n_bundles
        self.grad = grad
        self.lp_implicit, self.lp_outside, self.lp_mix = bool(lp_implicit), bool(lp_outside), lp_mix
        self.lp_temperature = (
            temperature if lp_temperature is None else lp_temperature
        ) * env.v_max
        self.score_scale = float(score_scale) * env.v_max
        self.others = mlp(k, hidden, embedding, activation)
        self.trunk = mlp(k + embedding, hidden[:-1], hidden[-1], activation)
        self.activation = nn.Tanh() if activation == "tanh" else nn.ReLU()
        self.score_head = nn.Linear(hidden[-1], k)
        self.alpha_head = nn.Linear(hidden[-1], 1)
        self.payment = payment
        self.mix_head = nn.Linear(hidden[-1], 1)
        nn.init.zeros_(self.mix_head.weight)
        nn.init.constant_(self.mix_head.bias, math.log(mix_init / (1 - mix_init)))
        nn.init.zeros_(self.score_head.weight)
        nn.init.zeros_(self.score_head.bias)
        nn.init.zeros_(self.alpha_head.weight)
        nn.init.constant_(self.alpha_head.bias, math.log(alpha_init / (1 - alpha_init)))
        low, high = env.report_space.low, env.report_space.high
        self.register_buffer("input_shift", low.clone())
        self.register_buffer("input_scale", 1.0 / (high - low).clamp_min(1e-6))

    def gradient_strategy(self, strategy: str, attacker):
        """Train with ``strategy`` (``trainer.grad``); returns the training attacker to use.

        Args:
            strategy: ``ste``, ``lp`` or ``cutting_plane``.
            attacker: the configured training attacker (a PGD attacker for ``cutting_plane``,
                whose budget the witness refresh keeps).

        Raises:
            ConfigError: an unknown strategy, or ``cutting_plane`` without a PGD budget.

        """
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"trainer.grad={strategy} is not valid for mechanism=solver_backed; choose one of "
                f"{', '.join(STRATEGIES)} (or null: mechanism.grad={self.grad})"
            )
        self.grad = "lp" if strategy == "lp" else "ste"
        if strategy != "cutting_plane":
            return attacker
        # The attacker knows whether it has a PGD budget to refresh witnesses with.
        return attacker.as_cutting_plane()

    def relaxed_allocation(self, exact: Tensor, scores: Tensor) -> Tensor:
        """``grad=lp`` training allocation ``[B, n, k]``: the entropic LP, mixed with ``exact``.

        Args:
            exact: ``[B, n, k]`` the integral allocation.
            scores: ``[B, n, k]`` scores.

        """
        soft = entropic_lp(
            scores,
            self.membership,
            self.lp_temperature,
            self.lp_iterations,
            implicit=self.lp_implicit,
            outside=self.lp_outside,
        )
        if self.lp_mix == 1:
            return soft
        # value lp_mix * soft + (1 - lp_mix) * exact, gradient d soft
        return soft + (1 - self.lp_mix) * (exact - soft).detach()

    def scores_and_alpha(self, reports: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Scores ``[B, n, k]``, free payment fractions and mixing weights ``[B, n]``."""
        B, n, k = reports.shape
        x = (reports - self.input_shift) * self.input_scale
        embedded = self.others(x)  # [B, n, e]
        total = embedded.sum(1, keepdim=True)
        others = (total - embedded) / max(n - 1, 1)
        h = self.activation(self.trunk(torch.cat([x, others], -1)))
        scores = reports + self.score_scale * self.score_head(h)
        alpha = torch.sigmoid(self.alpha_head(h)).squeeze(-1)
        mix = torch.sigmoid(self.mix_head(h)).squeeze(-1)
        return scores, alpha, mix

    def threshold_fraction(self, scores: Tensor, exact: Tensor, reports: Tensor) -> Tensor:
        """``[B, n]`` ``clamp(1 - margin_i / b_iS*, 0, 1)`` (0 for bidders that win nothing).

        Args:
            scores: ``[B, n, k]`` scores (gradients flow through the margin).
            exact: ``[B, n, k]`` the integral allocation.
            reports: ``[B, n, k]`` bids.

        """
        B, n, k = scores.shape
        indicator = self.wdp._on(scores.device)[0].to(scores.dtype)  # [A, n * k]
        totals = scores.reshape(B, n * k) @ indicator.T  # [B, A]
        own = torch.einsum("bnk,ank->ban", scores, indicator.view(-1, n, k))  # [B, A, n]
        without = (totals.unsqueeze(-1) - own).max(1).values  # best total without i's part
        margin = (exact * scores).sum((-1, -2)).unsqueeze(-1) - without  # [B, n]
        won = (exact * reports).sum(-1)
        positive = won > 0
        fraction = (1 - margin / torch.where(positive, won, torch.ones_like(won))).clamp(0, 1)
        return torch.where(positive, fraction, torch.zeros_like(fraction))

    def winner_scores(self, reports: Tensor) -> Tensor:
        """``[B, n, k]`` the score net's output of the last forward pass on ``reports``."""
        scores = self.last_scores
        return scores if scores is not None and scores.shape == reports.shape else reports

    def payment_fractions(self, outcome: Outcome) -> Tensor | None:
        """``[B, n]`` the learned payment fractions ``alpha`` of the last forward pass."""
        return self.last_alpha

    def forward(self, reports: Tensor, public: dict[str, Tensor] | None = None) -> Outcome:
        """Exact allocation and ``alpha * b_iS*`` payments for ``[B, n, k]`` bids."""
        scores, free, mix = self.scores_and_alpha(reports)
        exact = self.winners(scores).allocation(self.n_bundles).to(scores)
        if self.payment == "threshold":
            alpha = (1 - mix) * self.threshold_fraction(scores, exact, reports) + mix * free
        else:
            alpha = free
        self.last_scores, self.last_alpha = scores.detach(), alpha.detach()
        if self.training and self.grad == "lp" and torch.is_grad_enabled():
            allocation = self.relaxed_allocation(exact, scores)
        else:
            allocation = self.straight_through(exact, scores)
        payment = alpha * (allocation * reports).sum(-1)
        return Outcome(allocation, payment)
