"""Exact mixed-integer encoding of a certifiable RegretNet ([curry2020certifying] §2.3, §3.1, §3.2).

For a profile ``v`` and a bidder ``i`` the program maximises bidder ``i``'s true utility
``sum_j v_ij a_ij(b_i, v_-i) - p_i(b_i, v_-i)`` over reports ``b_i`` in the report space:

* inputs: all ``n * m`` reports are columns; the other bidders' are fixed by their bounds;
* ReLU ``y = max(z, 0)`` with pre-activation bounds ``[l, u]`` (eq. 4, Tjeng et al.):
  ``y >= 0, y >= z, y <= U delta, y <= z - L (1 - delta)`` with ``L = min(l, 0)``,
  ``U = max(u, 0)``; a stable unit (``l >= 0`` or ``u <= 0``) has its binary fixed by its
  bounds, so presolve removes it: no branching on it;
* sparsemax per item over the ``n + 1`` logits ``x`` by its KKT conditions (eq. 6, with the
  redundant ``z <= 1`` multiplier dropped): ``z = x - tau + s``, ``sum z = 1``, ``z, s >= 0``,
  complementarity ``z_k s_k = 0`` as a binary ``sigma_k`` with ``z_k <= sigma_k`` and
  ``s_k <= M_k (1 - sigma_k)``, ``M_k = tau_max - l_k`` (HiGHS has no SOS1);
* payment: the free head ``q_i`` exactly (clip ``nonneg`` is one more ReLU unit); the
  fractional IR head ``hardsigmoid(q_i) * sum_j a_ij b_ij`` and the ``ir`` clip are bilinear
  and are kept as a list of products ``w = x * y`` for a nonconvex backend (SCIP).

The structure (columns, rows, sparsity) depends only on the network and the bidder, so it is
built once; an instance (profile) only changes column bounds, row bounds, the big-M
coefficients and the objective (``BidderEncoding.instance``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from auctionlab.errors import ConfigError
from auctionlab.solvers.bounds import LayerBounds, interval_bounds, lp_tighten

INF = float("inf")


@dataclass
class NetworkSpec:
    """A certifiable network as float64 numpy arrays (picklable, for worker processes).

    Attributes:
        n: bidders.
        m: items.
        trunk: ``(weight [out, in], bias [out])`` per ReLU layer; the first takes raw reports
            ``[n * m]`` (bidder-major), the input normalisation folded in.
        alloc: allocation head ``(weight [(n + 1) * m, h], bias)``, logits viewed ``[n + 1, m]``.
        pay: payment head ``(weight [n, h], bias [n])``.
        payment: ``free`` or ``fractional``.
        clip: clip of free payments (``nonneg``, ``ir``, ``none``).
        low: ``[n, m]`` report space lower corner.
        high: ``[n, m]`` report space upper corner.

    """

    n: int
    m: int
    trunk: list[tuple[np.ndarray, np.ndarray]]
    alloc: tuple[np.ndarray, np.ndarray]
    pay: tuple[np.ndarray, np.ndarray]
    payment: str
    clip: str
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_mechanism(cls, mechanism) -> NetworkSpec:
        """The encoding the mechanism declares (``mechanism.network_spec()``).

        Raises:
            ConfigError: the mechanism is not a ReLU / sparsemax network.

        """
        return mechanism.network_spec()

    @property
    def bilinear(self) -> bool:
        """Whether the payment needs products of variables (a nonconvex solver)."""
        return self.payment == "fractional" or self.clip == "ir"

    def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Trunk layers, then both heads stacked as one final (unrectified) layer."""
        head_w = np.concatenate([self.alloc[0], self.pay[0]])
        head_b = np.concatenate([self.alloc[1], self.pay[1]])
        return [*self.trunk, (head_w, head_b)]

    def forward(self, reports: np.ndarray) -> dict[str, np.ndarray]:
        """Float64 forward pass (clipped payments, as the mechanism in eval mode).

        Args:
            reports: ``[B, n, m]``.

        Returns:
            ``pre`` / ``post`` (lists per trunk layer, ``[B, width]``), ``logits``
            ``[B, n + 1, m]``, ``tau`` ``[B, m]``, ``allocation`` ``[B, n, m]`` (with dummy:
            ``z`` ``[B, n + 1, m]``), ``q`` ``[B, n]`` and ``payment`` ``[B, n]``.

        """
        B = reports.shape[0]
        h = reports.reshape(B, -1)
        pre, post = [], []
        for weight, bias in self.trunk:
            z = h @ weight.T + bias
            h = np.maximum(z, 0.0)
            pre.append(z)
            post.append(h)
        logits = (h @ self.alloc[0].T + self.alloc[1]).reshape(B, self.n + 1, self.m)
        tau = _sparsemax_tau(logits)
        z = np.maximum(logits - tau[:, None, :], 0.0)
        allocation = z[:, : self.n]
        q = h @ self.pay[0].T + self.pay[1]
        bid_value = (allocation * reports).sum(-1)
        if self.payment == "fractional":
            payment = np.clip(q / 6.0 + 0.5, 0.0, 1.0) * bid_value
        elif self.clip == "nonneg":
            payment = np.maximum(q, 0.0)
        elif self.clip == "ir":
            payment = np.minimum(np.maximum(q, 0.0), bid_value)
        else:
            payment = q
        return {
            "pre": pre,
            "post": post,
            "logits": logits,
            "tau": tau,
            "z": z,
            "allocation": allocation,
            "q": q,
            "payment": payment,
        }


def _sparsemax_tau(logits: np.ndarray) -> np.ndarray:
    """Sparsemax thresholds over axis 1 of ``[B, K, m]`` logits: ``[B, m]``."""
    x = np.moveaxis(logits, 1, -1)
    k = x.shape[-1]
    z = -np.sort(-x, axis=-1)
    cumulative = np.cumsum(z, axis=-1)
    ranks = np.arange(1, k + 1)
    size = (1 + ranks * z > cumulative).sum(-1)
    return (np.take_along_axis(cumulative, size[..., None] - 1, -1)[..., 0] - 1) / size


@dataclass
class InstanceBounds:
    """Pre-activation bounds of one (profile, bidder) instance.

    Attributes:
        trunk: one ``LayerBounds`` per trunk layer.
        head: bounds of the stacked head outputs: ``(n + 1) * m`` logits then ``n`` payments.

    """

    trunk: list[LayerBounds]
    head: LayerBounds

    def unstable(self) -> int:
        """Number of unstable trunk ReLUs (each needs a binary)."""
        return int(sum(b.unstable.sum() for b in self.trunk))


def input_box(spec: NetworkSpec, profiles: np.ndarray, bidders: np.ndarray):
    """``[N, n * m]`` input boxes: bidder ``bidders[k]`` free, the others at ``profiles[k]``."""
    N = profiles.shape[0]
    low = profiles.copy()
    high = profiles.copy()
    low[np.arange(N), bidders] = spec.low[bidders]
    high[np.arange(N), bidders] = spec.high[bidders]
    return low.reshape(N, -1), high.reshape(N, -1)


def instance_bounds(
    spec: NetworkSpec, profiles: np.ndarray, bidders: np.ndarray, tighten: str = "ibp"
) -> list[InstanceBounds]:
    """Bounds for many instances: IBP batched in torch, optionally LP-tightened one by one.

    Args:
        spec: the network.
        profiles: ``[N, n, m]`` true profiles.
        bidders: ``[N]`` the deviating bidder of each instance.
        tighten: ``ibp`` or ``lp`` (triangle-relaxation LPs on top of IBP).

    Returns:
        One ``InstanceBounds`` per instance.

    """
    if tighten not in ("ibp", "lp"):
        raise ConfigError(f"certifier.bounds={tighten} is not valid; choose one of ibp, lp")
    low, high = input_box(spec, profiles, bidders)
    layers = spec.layers()
    with torch.no_grad():
        tlayers = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in layers]
        ibp = interval_bounds(tlayers, torch.from_numpy(low), torch.from_numpy(high))
    out = []
    for k in range(profiles.shape[0]):
        per = [LayerBounds(lo[k].numpy().copy(), hi[k].numpy().copy()) for lo, hi in ibp]
        if tighten == "lp":
            per = lp_tighten(layers, low[k], high[k], per, upto=len(layers))
        out.append(InstanceBounds(per[:-1], per[-1]))
    return out


@dataclass
class Relu:
    """Columns and rows of one encoded ReLU unit."""

    pre: int
    post: int
    delta: int
    row_upper: int  # y - U delta <= 0
    row_tri: int  # y - z - L delta <= -L


@dataclass
class InstanceData:
    """What changes per instance: bounds, big-M coefficients, objective."""

    col_lb: np.ndarray
    col_ub: np.ndarray
    row_lb: np.ndarray
    row_ub: np.ndarray
    coef_rows: np.ndarray
    coef_cols: np.ndarray
    coef_vals: np.ndarray
    cost: np.ndarray


@dataclass
class BidderEncoding:
    """The program for one network and one deviating bidder (structure only).

    Attributes:
        spec: the network.
        bidder: the deviating bidder ``i``.
        col_lb: default column lower bounds.
        col_ub: default column upper bounds.
        integer: integrality flag per column.
        names: column names (readable LP files and debugging).
        rows: ``(lower, upper, {col: coef})`` per row.
        bilinear: ``(w, x, y)``: constraints ``w = x * y`` (nonconvex backends only).

    """

    spec: NetworkSpec
    bidder: int
    col_lb: list[float] = field(default_factory=list)
    col_ub: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    rows: list[tuple[float, float, dict[int, float]]] = field(default_factory=list)
    bilinear: list[tuple[int, int, int]] = field(default_factory=list)

    # -- building ------------------------------------------------------------------------------
    def col(self, name: str, lb: float = -INF, ub: float = INF, integer: bool = False) -> int:
        """Add a column; returns its index."""
        self.col_lb.append(lb)
        self.col_ub.append(ub)
        self.integer.append(integer)
        self.names.append(name)
        return len(self.names) - 1

    def row(self, lb: float, ub: float, coefs: dict[int, float]) -> int:
        """Add a row ``lb <= sum coef * col <= ub``; returns its index."""
        self.rows.append((lb, ub, dict(coefs)))
        return len(self.rows) - 1

    def relu(self, pre: int, name: str) -> Relu:
        """Encode ``post = max(pre, 0)`` (eq. 4); big-M values are set per instance."""
        post = self.col(f"{name}.y", 0.0, INF)
        delta = self.col(f"{name}.d", 0.0, 1.0, integer=True)
        self.row(0.0, INF, {post: 1.0, pre: -1.0})
        upper = self.row(-INF, 0.0, {post: 1.0, delta: -1.0})
        tri = self.row(-INF, 0.0, {post: 1.0, pre: -1.0, delta: 0.0})
        return Relu(pre, post, delta, upper, tri)

    @classmethod
    def build(cls, spec: NetworkSpec, bidder: int) -> BidderEncoding:
        """The program of ``spec`` for deviating bidder ``bidder``."""
        enc = cls(spec, bidder)
        n, m = spec.n, spec.m
        enc.inputs = [enc.col(f"b[{k // m},{k % m}]") for k in range(n * m)]
        enc.trunk_relus: list[list[Relu]] = []
        prev = enc.inputs
        for layer, (weight, bias) in enumerate(spec.trunk):
            units = []
            for r in range(weight.shape[0]):
                pre = enc.col(f"h{layer}[{r}].z")
                coefs = {pre: 1.0}
                for c, w in zip(prev, weight[r], strict=True):
                    if w != 0.0:
                        coefs[c] = coefs.get(c, 0.0) - float(w)
                enc.row(float(bias[r]), float(bias[r]), coefs)
                units.append(enc.relu(pre, f"h{layer}[{r}]"))
            enc.trunk_relus.append(units)
            prev = [u.post for u in units]

        def affine(weight_row: np.ndarray, bias: float, name: str) -> int:
            out = enc.col(name)
            coefs = {out: 1.0}
            for c, w in zip(prev, weight_row, strict=True):
                if w != 0.0:
                    coefs[c] = -float(w)
            enc.row(bias, bias, coefs)
            return out

        K = n + 1
        enc.logits = [
            [
                affine(spec.alloc[0][k * m + j], float(spec.alloc[1][k * m + j]), f"x[{k},{j}]")
                for j in range(m)
            ]
            for k in range(K)
        ]
        # sparsemax per item: z = x - tau + s, sum z = 1, z <= sigma, s <= M (1 - sigma)
        enc.tau, enc.z, enc.s, enc.sigma, enc.comp_rows = [], [], [], [], []
        for j in range(m):
            tau = enc.col(f"tau[{j}]")
            zs, ss, sig, comp = [], [], [], []
            for k in range(K):
                z = enc.col(f"a[{k},{j}]", 0.0, 1.0)
                s = enc.col(f"s[{k},{j}]", 0.0, INF)
                sg = enc.col(f"sigma[{k},{j}]", 0.0, 1.0, integer=True)
                enc.row(0.0, 0.0, {z: 1.0, enc.logits[k][j]: -1.0, tau: 1.0, s: -1.0})
                enc.row(-INF, 0.0, {z: 1.0, sg: -1.0})
                comp.append(enc.row(-INF, 0.0, {s: 1.0, sg: 0.0}))
                zs.append(z)
                ss.append(s)
                sig.append(sg)
            enc.row(1.0, 1.0, {z: 1.0 for z in zs})
            enc.tau.append(tau)
            enc.z.append(zs)
            enc.s.append(ss)
            enc.sigma.append(sig)
            enc.comp_rows.append(comp)
        i = bidder
        enc.q = affine(spec.pay[0][i], float(spec.pay[1][i]), f"q[{i}]")
        enc.payment_relus: list[Relu] = []
        enc.extra: dict[str, int] = {}
        if spec.payment == "fractional" or spec.clip == "ir":
            # y = sum_j a_ij b_ij through products w_j = a_ij * b_ij
            ws = []
            for j in range(m):
                w = enc.col(f"w[{j}]")
                enc.bilinear.append((w, enc.z[j][i], enc.inputs[i * m + j]))
                ws.append(w)
            y = enc.col("bid_value", 0.0, INF)
            enc.row(0.0, 0.0, {y: 1.0, **{w: -1.0 for w in ws}})
            enc.extra["bid_value"] = y
        if spec.payment == "fractional":
            # g = clamp(q / 6 + 1/2, 0, 1) = relu(t) - relu(t - 1), p = g * y
            t1 = enc.col("t1")
            enc.row(0.5, 0.5, {t1: 1.0, enc.q: -1.0 / 6.0})
            t2 = enc.col("t2")
            enc.row(-0.5, -0.5, {t2: 1.0, enc.q: -1.0 / 6.0})
            r1, r2 = enc.relu(t1, "g1"), enc.relu(t2, "g2")
            enc.payment_relus = [r1, r2]
            g = enc.col("fraction", 0.0, 1.0)
            enc.row(0.0, 0.0, {g: 1.0, r1.post: -1.0, r2.post: 1.0})
            p = enc.col("payment", 0.0, INF)
            enc.bilinear.append((p, g, enc.extra["bid_value"]))
        elif spec.clip == "nonneg":
            r = enc.relu(enc.q, "p")
            enc.payment_relus = [r]
            p = r.post
        elif spec.clip == "ir":
            r = enc.relu(enc.q, "p")
            enc.payment_relus = [r]
            y = enc.extra["bid_value"]
            # p = min(r, y): p <= r, p <= y, p >= r - M beta, p >= y - M (1 - beta)
            p = enc.col("payment", 0.0, INF)
            beta = enc.col("beta", 0.0, 1.0, integer=True)
            enc.row(-INF, 0.0, {p: 1.0, r.post: -1.0})
            enc.row(-INF, 0.0, {p: 1.0, y: -1.0})
            enc.extra["min_r"] = enc.row(-INF, 0.0, {r.post: 1.0, p: -1.0, beta: 0.0})
            enc.extra["min_y"] = enc.row(-INF, 0.0, {y: 1.0, p: -1.0, beta: 0.0})
            enc.extra["beta"] = beta
        else:
            p = enc.q
        enc.payment = p
        return enc

    # -- per instance ----------------------------------------------------------------------------
    def instance(self, profile: np.ndarray, bounds: InstanceBounds) -> InstanceData:
        """Bounds, big-M coefficients and objective of the instance ``(profile, bidder)``.

        Args:
            profile: ``[n, m]`` true values.
            bounds: the instance's pre-activation bounds.

        """
        spec, i, m, K = self.spec, self.bidder, self.spec.m, self.spec.n + 1
        col_lb = np.array(self.col_lb, dtype=np.float64)
        col_ub = np.array(self.col_ub, dtype=np.float64)
        row_lb = np.array([r[0] for r in self.rows], dtype=np.float64)
        row_ub = np.array([r[1] for r in self.rows], dtype=np.float64)
        rows, cols, vals = [], [], []

        def set_relu(unit: Relu, lo: float, hi: float) -> None:
            col_lb[unit.pre], col_ub[unit.pre] = lo, hi
            low, up = min(lo, 0.0), max(hi, 0.0)
            col_lb[unit.post], col_ub[unit.post] = max(lo, 0.0), up
            if lo >= 0.0:
                col_lb[unit.delta] = col_ub[unit.delta] = 1.0
            elif hi <= 0.0:
                col_lb[unit.delta] = col_ub[unit.delta] = 0.0
            else:
                col_lb[unit.delta], col_ub[unit.delta] = 0.0, 1.0
            rows.extend([unit.row_upper, unit.row_tri])
            cols.extend([unit.delta, unit.delta])
            vals.extend([-up, -low])
            row_ub[unit.row_tri] = -low

        flat = profile.reshape(-1)
        for k, c in enumerate(self.inputs):
            bidder = k // m
            if bidder == i:
                col_lb[c], col_ub[c] = spec.low.reshape(-1)[k], spec.high.reshape(-1)[k]
            else:
                col_lb[c] = col_ub[c] = flat[k]
        for units, lb in zip(self.trunk_relus, bounds.trunk, strict=True):
            for r, unit in enumerate(units):
                set_relu(unit, float(lb.lower[r]), float(lb.upper[r]))
        head_lo, head_hi = bounds.head.lower, bounds.head.upper
        for j in range(m):
            lx = np.array([head_lo[k * m + j] for k in range(K)])
            ux = np.array([head_hi[k * m + j] for k in range(K)])
            for k in range(K):
                col_lb[self.logits[k][j]], col_ub[self.logits[k][j]] = lx[k], ux[k]
            tau_lo, tau_hi = lx.max() - 1.0, ux.max() - 1.0 / K
            col_lb[self.tau[j]], col_ub[self.tau[j]] = tau_lo, tau_hi
            for k in range(K):
                big = max(tau_hi - lx[k], 0.0)
                col_ub[self.s[j][k]] = big
                rows.append(self.comp_rows[j][k])
                cols.append(self.sigma[j][k])
                vals.append(big)
                row_ub[self.comp_rows[j][k]] = big
                sg = self.sigma[j][k]
                if ux[k] <= tau_lo:  # never in the support
                    col_lb[sg] = col_ub[sg] = 0.0
                    col_ub[self.z[j][k]] = 0.0
                elif lx[k] >= tau_hi:  # always in the support
                    col_lb[sg] = col_ub[sg] = 1.0
                    col_ub[self.s[j][k]] = 0.0
                else:
                    col_lb[sg], col_ub[sg] = 0.0, 1.0
        n_alloc = K * m
        q_lo, q_hi = float(head_lo[n_alloc + i]), float(head_hi[n_alloc + i])
        col_lb[self.q], col_ub[self.q] = q_lo, q_hi
        bid_high = float((spec.high[i]).sum())
        if "bid_value" in self.extra:
            col_ub[self.extra["bid_value"]] = bid_high
            for w, _, _ in self.bilinear[:m]:
                col_lb[w], col_ub[w] = 0.0, float(spec.high[i].max())
        if spec.payment == "fractional":
            r1, r2 = self.payment_relus
            set_relu(r1, q_lo / 6.0 + 0.5, q_hi / 6.0 + 0.5)
            set_relu(r2, q_lo / 6.0 - 0.5, q_hi / 6.0 - 0.5)
            col_ub[self.payment] = bid_high
        elif spec.clip in ("nonneg", "ir"):
            set_relu(self.payment_relus[0], q_lo, q_hi)
            if spec.clip == "ir":
                big = max(q_hi, 0.0) + bid_high
                beta = self.extra["beta"]
                rows.extend([self.extra["min_r"], self.extra["min_y"]])
                cols.extend([beta, beta])
                vals.extend([-big, big])
                row_ub[self.extra["min_y"]] = big
                col_ub[self.payment] = max(q_hi, 0.0)
        cost = np.zeros(len(self.names))
        for j in range(m):
            cost[self.z[j][i]] = profile[i, j]
        cost[self.payment] -= 1.0
        return InstanceData(
            col_lb,
            col_ub,
            row_lb,
            row_ub,
            np.array(rows, dtype=np.int64),
            np.array(cols, dtype=np.int64),
            np.array(vals, dtype=np.float64),
            cost,
        )

    def assignment(self, profile: np.ndarray, report: np.ndarray) -> np.ndarray:
        """Values of every column when bidder ``i`` reports ``report`` (a MIP start).

        Args:
            profile: ``[n, m]`` true values.
            report: ``[m]`` bidder ``i``'s report.

        """
        spec, i, m = self.spec, self.bidder, self.spec.m
        reports = profile.copy()
        reports[i] = report
        fw = spec.forward(reports[None])
        x = np.zeros(len(self.names))
        x[self.inputs] = reports.reshape(-1)

        def put(unit: Relu, z: float) -> None:
            x[unit.pre], x[unit.post], x[unit.delta] = z, max(z, 0.0), float(z > 0)

        for units, pre in zip(self.trunk_relus, fw["pre"], strict=True):
            for r, unit in enumerate(units):
                put(unit, float(pre[0, r]))
        for j in range(m):
            x[self.tau[j]] = fw["tau"][0, j]
            for k in range(spec.n + 1):
                x[self.logits[k][j]] = fw["logits"][0, k, j]
                z = fw["z"][0, k, j]
                x[self.z[j][k]] = z
                x[self.s[j][k]] = z - fw["logits"][0, k, j] + fw["tau"][0, j]
                x[self.sigma[j][k]] = float(z > 0)
        q = float(fw["q"][0, i])
        x[self.q] = q
        bid_value = float((fw["allocation"][0, i] * report).sum())
        if "bid_value" in self.extra:
            x[self.extra["bid_value"]] = bid_value
            for j, (w, _, _) in enumerate(self.bilinear[:m]):
                x[w] = fw["allocation"][0, i, j] * report[j]
        if spec.payment == "fractional":
            put(self.payment_relus[0], q / 6.0 + 0.5)
            put(self.payment_relus[1], q / 6.0 - 0.5)
            x[self.payment - 1] = min(max(q / 6.0 + 0.5, 0.0), 1.0)  # fraction column
            x[self.payment] = fw["payment"][0, i]
        elif spec.clip in ("nonneg", "ir"):
            put(self.payment_relus[0], q)
            if spec.clip == "ir":
                x[self.payment] = fw["payment"][0, i]
                x[self.extra["beta"]] = float(bid_value <= max(q, 0.0))
        return x

    def decode(self, values: np.ndarray) -> dict[str, np.ndarray | float]:
        """Bidder ``i``'s report, allocation and payment read from a column vector."""
        i, m = self.bidder, self.spec.m
        return {
            "report": np.array([values[self.inputs[i * m + j]] for j in range(m)]),
            "allocation": np.array([values[self.z[j][i]] for j in range(m)]),
            "payment": float(values[self.payment]),
        }
