"""Bounds on the pre-activations of a ReLU network over a box of inputs.

* ``interval_bounds``: interval bound propagation (IBP, Gowal et al. 2018) in torch, batched
  and differentiable, used both by the MIP encoder (big-M constants, stable units) and by the
  ReLU-stability regulariser at training time ([curry2020certifying] §3.3, Xiao et al. 2019).
* ``lp_tighten``: optional tightening layer by layer with the LP relaxation in which every
  unstable ReLU is replaced by its triangle ("Planet", Ehlers 2017) relaxation, solved by
  HiGHS: two LPs (min and max) per unstable unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def interval_affine(
    weight: Tensor, bias: Tensor, low: Tensor, high: Tensor
) -> tuple[Tensor, Tensor]:
    """Bounds of ``x @ W.T + b`` for ``x`` in the box ``[low, high]``.

    Args:
        weight: ``[out, in]``.
        bias: ``[out]``.
        low: ``[..., in]`` lower corner.
        high: ``[..., in]`` upper corner.

    Returns:
        ``(lower, upper)``, each ``[..., out]``.

    """
    center = (high + low) / 2
    radius = (high - low) / 2
    mid = center @ weight.T + bias
    spread = radius @ weight.abs().T
    return mid - spread, mid + spread


def interval_bounds(
    layers: Sequence[tuple[Tensor, Tensor]], low: Tensor, high: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """Pre-activation bounds of every layer of ``relu(... relu(x W0 + b0) ...)``.

    Args:
        layers: ``(weight [out, in], bias [out])`` per affine layer; a ReLU follows every
            layer but the last one's output is returned unrectified as well.
        low: ``[..., in]`` input box lower corner.
        high: ``[..., in]`` input box upper corner.

    Returns:
        ``(lower, upper)`` pre-activation bounds per layer, each ``[..., out_k]``.

    """
    bounds = []
    lo, hi = low, high
    for k, (weight, bias) in enumerate(layers):
        lo, hi = interval_affine(weight, bias, lo, hi)
        bounds.append((lo, hi))
        if k < len(layers) - 1:
            lo, hi = lo.clamp_min(0.0), hi.clamp_min(0.0)
    return bounds


def relu_stability_loss(bounds: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """Xiao et al. (2019) ReLU-stability regulariser ``mean(-tanh(1 + l * u))``.

    Args:
        bounds: IBP pre-activation bounds of the hidden (rectified) layers.

    Returns:
        A scalar: lower when more units have bounds of one sign.

    """
    terms = [(-torch.tanh(1.0 + lo * hi)).flatten(1) for lo, hi in bounds]
    return torch.cat(terms, dim=1).mean()


@dataclass
class LayerBounds:
    """Numpy pre-activation bounds of one affine layer of one instance.

    Attributes:
        lower: ``[out]``.
        upper: ``[out]``.

    """

    lower: np.ndarray
    upper: np.ndarray

    @property
    def unstable(self) -> np.ndarray:
        """Mask of units whose sign is not fixed over the box."""
        return (self.lower < 0) & (self.upper > 0)


def lp_tighten(
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    low: np.ndarray,
    high: np.ndarray,
    bounds: list[LayerBounds],
    upto: int | None = None,
) -> list[LayerBounds]:
    """Tighten ``bounds`` of the rectified layers with the triangle-relaxation LP.

    Layer by layer: the network up to layer ``k`` is written as an LP (inputs in the box,
    exact affine layers, each earlier unstable ReLU by its triangle relaxation with the
    already tightened bounds), then each unstable unit of layer ``k`` gets its minimum and
    maximum. The result is never looser than the input bounds (intersection).

    Args:
        layers: ``(weight [out, in], bias [out])`` float64 arrays, input layer first.
        low: ``[in]`` input box lower corner.
        high: ``[in]`` input box upper corner.
        bounds: starting bounds (e.g. IBP) per layer; tightened copies are returned.
        upto: tighten layers ``1 .. upto - 1`` (default: every rectified layer; pass
            ``len(layers)`` to tighten the last, unrectified layer too: all its units). Layer 0
            is exact under IBP already.

    Returns:
        The tightened bounds, one per layer.

    """
    import highspy

    out = [LayerBounds(b.lower.copy(), b.upper.copy()) for b in bounds]
    last = len(layers) - 1 if upto is None else upto
    for k in range(1, last):
        targets = out[k].unstable if k < len(layers) - 1 else np.ones_like(out[k].unstable)
        if not targets.any():
            continue
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        inf = highspy.kHighsInf
        x_idx = list(range(len(low)))
        for j in range(len(low)):
            h.addVar(float(low[j]), float(high[j]))
        prev = x_idx
        for layer in range(k + 1):
            weight, bias = layers[layer]
            lb = out[layer]
            pre = []
            for r in range(weight.shape[0]):
                col = h.getNumCol()
                h.addVar(float(lb.lower[r]), float(lb.upper[r]))
                pre.append(col)
                # pre_r - W_r x = b_r
                idx = np.array([col, *prev], dtype=np.int32)
                val = np.array([1.0, *(-weight[r])], dtype=np.float64)
                h.addRow(float(bias[r]), float(bias[r]), len(idx), idx, val)
            if layer == k:
                break
            post = []
            for r, p in enumerate(pre):
                lo, hi = float(lb.lower[r]), float(lb.upper[r])
                col = h.getNumCol()
                post.append(col)
                if hi <= 0:
                    h.addVar(0.0, 0.0)
                elif lo >= 0:
                    h.addVar(lo, hi)
                    h.addRow(0.0, 0.0, 2, np.array([col, p], np.int32), np.array([1.0, -1.0]))
                else:
                    h.addVar(0.0, hi)
                    h.addRow(0.0, inf, 2, np.array([col, p], np.int32), np.array([1.0, -1.0]))
                    # y <= u (z - l) / (u - l)
                    slope = hi / (hi - lo)
                    h.addRow(
                        -inf,
                        -slope * lo,
                        2,
                        np.array([col, p], np.int32),
                        np.array([1.0, -slope]),
                    )
            prev = post
        n_col = h.getNumCol()
        for r in np.flatnonzero(targets):
            target = pre[r]
            for sense, store in ((highspy.ObjSense.kMinimize, 0), (highspy.ObjSense.kMaximize, 1)):
                cost = np.zeros(n_col)
                cost[target] = 1.0
                h.changeColsCost(n_col, np.arange(n_col, dtype=np.int32), cost)
                h.changeObjectiveSense(sense)
                h.run()
                if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                    continue  # keep the IBP bound: never trust a non-optimal LP
                value = h.getInfo().objective_function_value
                if store == 0:
                    out[k].lower[r] = max(out[k].lower[r], value - 1e-7)
                else:
                    out[k].upper[r] = min(out[k].upper[r], value + 1e-7)
    return out
