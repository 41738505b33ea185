"""Lipschitz-controlled blocks with a priori l1 -> l1 Lipschitz bounds ([lemma2026certified] §4).

Every block reports ``l1_factor()``: an upper bound on ``||f(x) - f(x')||_1 / ||x - x'||_1``
computed from its current weights (exact operator norms, no sampling), so a network's bound is
the product of its blocks' factors. Weight control (``spectral`` or ``l1``) only shrinks a
weight matrix whose norm exceeds ``bound``; the a priori bound is computed from the effective
weights either way, so it stays valid whatever the normalisation estimated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auctionlab.errors import ConfigError

#: Weight controls: ``spectral`` (largest singular value <= bound, power iteration),
#: ``l1`` (l1 -> l1 operator norm <= bound, exact) or ``none`` (the ablation).
WEIGHT_NORMS = ("spectral", "l1", "none")
#: Activations and their Lipschitz constants (GELU's derivative peaks at about 1.129).
ACTIVATION_LIPSCHITZ = {
    "tanh": 1.0,
    "relu": 1.0,
    "leaky_relu": 1.0,
    "softplus": 1.0,
    "elu": 1.0,
    "gelu": 1.13,
}
ACTIVATION_MODULES = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def l1_operator_norm(weight: Tensor) -> Tensor:
    """``max_j sum_i |W_ij|``: the exact l1 -> l1 operator norm of ``x -> W x``.

    Args:
        weight: ``[out, in]``.

    Returns:
        Scalar tensor (differentiable).

    """
    return weight.abs().sum(0).max()


def check_weight_norm(weight_norm: str, bound: float) -> None:
    """One-line ``ConfigError`` for a bad ``mechanism.weight_norm`` / ``weight_bound``."""
    if weight_norm not in WEIGHT_NORMS:
        raise ConfigError(
            f"mechanism.weight_norm={weight_norm} is not valid; choose one of "
            + ", ".join(WEIGHT_NORMS)
        )
    if not (math.isfinite(bound) and bound > 0):
        raise ConfigError(f"mechanism.weight_bound={bound} must be > 0 and finite")


class ControlledLinear(nn.Module):
    """``y = W x + b`` whose weight norm is kept at or below ``bound``.

    ``spectral``: ``W = V / max(1, sigma(V) / bound)``, ``sigma`` by one power-iteration step
    per training forward (the vector ``u`` is a buffer, so eval mode is deterministic);
    ``l1``: ``W = V / max(1, ||V||_{1->1} / bound)`` (exact); ``none``: ``W = V``.

    Args:
        in_features: input width.
        out_features: output width.
        weight_norm: ``spectral``, ``l1`` or ``none``.
        bound: the norm bound.

    """

    def __init__(
        self, in_features: int, out_features: int, weight_norm: str = "spectral", bound: float = 1.0
    ) -> None:
        super().__init__()
        check_weight_norm(weight_norm, bound)
        self.weight_norm, self.bound = weight_norm, float(bound)
        self.raw_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.raw_weight)
        u = torch.randn(out_features, generator=torch.Generator().manual_seed(out_features))
        self.register_buffer("u", F.normalize(u, dim=0))
        if weight_norm == "spectral":
            with torch.no_grad():
                for _ in range(30):
                    self._power_step()

    def _power_step(self) -> None:
        v = F.normalize(self.raw_weight.detach().t() @ self.u, dim=0)
        self.u.copy_(F.normalize(self.raw_weight.detach() @ v, dim=0))

    def weight(self) -> Tensor:
        """The effective ``[out, in]`` weight."""
        raw = self.raw_weight
        if self.weight_norm == "none":
            return raw
        if self.weight_norm == "l1":
            norm = l1_operator_norm(raw)
        else:
            if self.training and torch.is_grad_enabled():
                with torch.no_grad():
                    self._power_step()
            v = F.normalize(raw.detach().t() @ self.u, dim=0)
            norm = self.u @ raw @ v
        return raw / torch.clamp(norm / self.bound, min=1.0)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in] -> [..., out]``."""
        return F.linear(x, self.weight(), self.bias)

    def block_l1_norms(self, splits: list[int]) -> Tensor:
        """l1 -> l1 norms of the column blocks ``W[:, a:b]`` of the effective weight.

        Args:
            splits: widths of consecutive input blocks (summing to ``in_features``).

        Returns:
            ``[len(splits)]``.

        """
        weight = self.weight()
        return torch.stack([l1_operator_norm(w) for w in weight.split(splits, dim=1)])


class DeepSetsLayer(nn.Module):
    """Permutation-equivariant layer over bidders: ``h'_i = W [h_i, mean_j h_j] + b`` (eq. 8).

    Weights are shared across bidders, so permuting the bidders permutes the output.
    Its l1 factor is ``||W_self||_{1->1} + ||W_pool||_{1->1}``: a change ``dH`` moves row ``i``
    by ``W_self dh_i + W_pool mean(dH)``, and the pooled part reaches ``n`` rows with weight
    ``1/n`` each.

    Args:
        in_features: per-bidder input width.
        out_features: per-bidder output width.
        weight_norm: ``spectral``, ``l1`` or ``none``.
        bound: norm bound of the stacked ``[W_self, W_pool]``.

    """

    def __init__(
        self, in_features: int, out_features: int, weight_norm: str = "spectral", bound: float = 1.0
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.linear = ControlledLinear(2 * in_features, out_features, weight_norm, bound)

    def forward(self, h: Tensor) -> Tensor:
        """``[B, n, in] -> [B, n, out]``."""
        pooled = h.mean(1, keepdim=True).expand_as(h)
        return self.linear(torch.cat([h, pooled], dim=-1))

    def l1_factor(self) -> Tensor:
        """A priori l1 Lipschitz bound of the layer (over all bidders' features at once)."""
        return self.linear.block_l1_norms([self.in_features, self.in_features]).sum()


class AttentionLayer(nn.Module):
    """Shared-weight self-attention over bidders replacing the DeepSets mean (eqs. 7-8).

    ``h'_i = W [h_i, o^1_i, ..., o^H_i] + b`` with, per head ``k`` of width ``e``,
    ``o^k_i = sum_j a^k_ij v^k_j``, ``a^k_i = softmax_j(<q^k_i, k^k_j> / sqrt(e))`` and bounded
    projections ``q = tanh(W_q h)``, ``k = tanh(W_k h)``, ``v = tanh(W_v h)`` (one controlled
    linear map for all three). Every weight is shared across bidders and the softmax runs over
    the set, so permuting the bidders permutes the output.

    A priori l1 bound (all bidders' features at once, ``||dH||_1 = sum_i ||dh_i||_1``), valid on
    every input because ``tanh`` bounds queries, keys and values in ``[-1, 1]`` whatever the
    features (no bound on the trunk's activations is needed). Per head, with
    ``l_q, l_k, l_v`` the l1 -> l1 norms of the row blocks of ``[W_q; W_k; W_v]``:

    * values: ``sum_i ||sum_j a_ij dv_j||_1 <= max_j (sum_i a_ij) l_v ||dH||_1
      <= n l_v ||dH||_1`` (every bidder may attend to the same ``j``);
    * weights: ``ds_ij = (<dq_i, k_j> + <q_i, dk_j>) / sqrt(e)`` with ``|k_j|, |q_i| <= 1`` gives
      ``||ds_i||_inf <= (l_q ||dh_i||_1 + l_k max_j ||dh_j||_1) / sqrt(e)``; the softmax
      Jacobian ``diag(a) - a a^T`` gives ``(da_i)_j = a_j (x_j - sum_k a_k x_k)`` for
      ``x = ds_i``, and since ``sum_j (da_i)_j = 0``, each value coordinate obeys
      ``|sum_j (da_i)_j v_jc| <= sum_j a_j |x_j - x_bar| <= ||ds_i||_inf`` (``|v_jc| <= 1``);
      over ``e`` coordinates and all ``i``: ``<= sqrt(e) (l_q + n l_k) ||dH||_1``.

    So head ``k`` is ``A_k = n l_v + sqrt(e) (l_q + n l_k)``-Lipschitz and the layer's factor is
    ``||W_self||_{1->1} + sum_k ||W_k||_{1->1} A_k`` (column blocks of ``W``). These are bounds on
    the Jacobian at every point, hence Lipschitz bounds along any segment of inputs.

    Args:
        in_features: per-bidder input width ``d``.
        out_features: per-bidder output width.
        heads: attention heads ``H``.
        head_dim: width ``e`` of each head's queries, keys and values.
        weight_norm: ``spectral``, ``l1`` or ``none``.
        bound: norm bound of each weight matrix (``[W_q; W_k; W_v]`` and ``W``).

    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        heads: int = 2,
        head_dim: int = 8,
        weight_norm: str = "spectral",
        bound: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features, self.heads, self.head_dim = in_features, int(heads), int(head_dim)
        self.qkv = ControlledLinear(in_features, 3 * heads * head_dim, weight_norm, bound)
        self.linear = ControlledLinear(
            in_features + heads * head_dim, out_features, weight_norm, bound
        )

    def forward(self, h: Tensor) -> Tensor:
        """``[B, n, in] -> [B, n, out]``."""
        B, n, _ = h.shape
        H, e = self.heads, self.head_dim
        q, k, v = torch.tanh(self.qkv(h)).view(B, n, 3, H, e).unbind(2)  # [B, n, H, e] each
        scores = torch.einsum("bihe,bjhe->bhij", q, k) / math.sqrt(e)  # [B, H, n, n]
        mixed = torch.einsum("bhij,bjhe->bihe", scores.softmax(-1), v)  # [B, n, H, e]
        return self.linear(torch.cat([h, mixed.reshape(B, n, H * e)], dim=-1))

    def l1_factor(self, n_bidders: int) -> Tensor:
        """A priori l1 Lipschitz bound of the layer over ``n_bidders`` bidders' features."""
        H, e = self.heads, self.head_dim
        projections = self.qkv.weight().view(3, H, e, self.in_features)
        norms = projections.abs().sum(2).amax(-1)  # [3, H]: l1 -> l1 of each row block
        l_q, l_k, l_v = norms.unbind(0)
        per_head = n_bidders * l_v + math.sqrt(e) * (l_q + n_bidders * l_k)  # [H]
        blocks = self.linear.block_l1_norms([self.in_features] + [e] * H)
        return blocks[0] + (blocks[1:] * per_head).sum()
