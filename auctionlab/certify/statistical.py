"""Statistical certificates ([lemma2026certified] §6-7): holdout estimate + slack + oracle gap.

For a fixed mechanism and an i.i.d. holdout of ``N`` profiles, each bidder's per-sample regret
``phi_i(v)`` lies in ``[0, U_r]``, its IR violation in ``[0, U_ir]`` and the fairness statistic
in ``[0, U_f]``. One-sided upper confidence bounds on the population means:

* Hoeffding: ``mean + U sqrt(ln(1/d) / (2N))``;
* empirical Bernstein (Maurer & Pontil 2009, Thm. 4, rescaled to ``[0, U]``):
  ``mean + sqrt(2 V ln(2/d) / N) + 7 U ln(2/d) / (3 (N - 1))`` with ``V`` the sample variance;
* ``min``: the smaller of the two, each at level ``d/2`` (union bound over the two methods).

The level ``delta`` is split as ``delta_r + delta_ir + delta_f <= delta`` and, for the max over
bidders, each bidder's bound uses ``delta_r / n`` (union bound), so with probability at least
``1 - delta`` every reported bound holds at once. The regret bound adds the oracle gap
``eta``: the numerical best response may under-estimate ``phi`` (Proposition 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from auctionlab.attackers.base import deviation_utility
from auctionlab.errors import ConfigError
from auctionlab.types import Types

SLACKS = ("hoeffding", "bernstein", "min")


def hoeffding_slack(value_range: float, count: int, delta: float) -> float:
    """One-sided Hoeffding slack for the mean of ``count`` i.i.d. draws in ``[0, range]``."""
    if value_range == 0:
        return 0.0
    return value_range * math.sqrt(math.log(1.0 / delta) / (2.0 * count))


def bernstein_slack(samples: Tensor, value_range: float, delta: float) -> Tensor:
    """One-sided empirical-Bernstein slack per column.

    Args:
        samples: ``[N, k]`` i.i.d. draws (rows) of ``k`` bounded statistics.
        value_range: ``U``, every entry lies in ``[0, U]``.
        delta: failure probability of each column's bound.

    Returns:
        ``[k]`` slacks (``inf`` when ``N < 2``).

    """
    count = samples.shape[0]
    if count < 2:
        return torch.full(samples.shape[1:], math.inf, dtype=torch.float64)
    if value_range == 0:
        return torch.zeros(samples.shape[1:], dtype=torch.float64)
    variance = samples.double().var(0, unbiased=True)
    log_term = math.log(2.0 / delta)
    return (2.0 * variance * log_term / count).sqrt() + 7.0 * value_range * log_term / (
        3.0 * (count - 1)
    )


@dataclass
class MeanBound:
    """Upper confidence bounds on per-column means.

    Attributes:
        estimate: ``[k]`` sample means.
        hoeffding: ``[k]`` Hoeffding slacks (at the level the method uses for them).
        bernstein: ``[k]`` empirical-Bernstein slacks (same).
        slack: ``[k]`` the slack the bound uses.
        bound: ``[k]`` estimate + slack.
        delta_each: failure probability of each column's bound.

    """

    estimate: Tensor
    hoeffding: Tensor
    bernstein: Tensor
    slack: Tensor
    bound: Tensor
    delta_each: float


def mean_upper_bounds(
    samples: Tensor, value_range: float, delta: float, method: str, columns_union: bool = True
) -> MeanBound:
    """Upper bounds on each column's population mean, jointly valid w.p. ``>= 1 - delta``.

    Args:
        samples: ``[N, k]`` (rows i.i.d.; e.g. per-sample regret of ``k`` bidders).
        value_range: ``U``: every entry is in ``[0, U]`` a priori.
        delta: total failure probability for all ``k`` bounds together.
        method: ``hoeffding``, ``bernstein`` or ``min`` (both, each at half the level).
        columns_union: split ``delta`` over the ``k`` columns (union bound); ``False`` for a
            single statistic.

    """
    if method not in SLACKS:
        raise ConfigError(
            f"certifier.slack={method} is not valid; choose one of {', '.join(SLACKS)}"
        )
    samples = samples.double()
    count, k = samples.shape
    each = delta / k if columns_union else delta
    level = each / 2 if method == "min" else each
    estimate = samples.mean(0)
    hoeffding = torch.full((k,), hoeffding_slack(value_range, count, level), dtype=torch.float64)
    bernstein = bernstein_slack(samples, value_range, level)
    if method == "hoeffding":
        slack = hoeffding
    elif method == "bernstein":
        slack = bernstein
    else:
        slack = torch.minimum(hoeffding, bernstein)
    return MeanBound(estimate, hoeffding, bernstein, slack, estimate + slack, each)


# -- regret oracles ---------------------------------------------------------------------------
def projected_gradient_norm(mechanism, env, types: Types, misreports: Tensor) -> Tensor:
    """``[B, n]`` norm of the projected gradient of each deviator's utility at its misreport.

    Components that push out of the report box at an active bound are zeroed; a stationary
    point of the box-constrained problem has norm 0. Gradients are per unit of report range.
    """
    x = misreports.detach().clone().unsqueeze(0).requires_grad_(True)  # [1, B, n, m]
    with torch.enable_grad():
        utility = deviation_utility(mechanism, env, types, x)
        (grad,) = torch.autograd.grad(utility.sum(), x, allow_unused=True)
    if grad is None:
        return torch.zeros(misreports.shape[:-1], dtype=misreports.dtype)
    grad = grad[0] * env.report_space.width(misreports.device)
    low = env.report_space.low.to(misreports)
    high = env.report_space.high.to(misreports)
    tol = 1e-9 * (1 + high.abs())
    at_low = misreports <= low + tol
    at_high = misreports >= high - tol
    grad = torch.where(at_low & (grad < 0), torch.zeros_like(grad), grad)
    grad = torch.where(at_high & (grad > 0), torch.zeros_like(grad), grad)
    return grad.norm(dim=-1).detach()


# -- closed forms -------------------------------------------------------------------------------
def first_price_population_regret(n_bidders: int, n_items: int) -> float:
    """``E[phi_i]`` for item-wise first price with i.i.d. U[0,1] values: ``m / (n (n + 1))``.

    ``E[(V - M)^+]`` with ``M`` the max of ``n - 1`` uniforms is
    ``int_0^1 int_0^v (v - x) (n - 1) x^(n-2) dx dv = int_0^1 v^n / n dv = 1 / (n (n + 1))``.
    """
    if n_bidders == 1:
        return n_items * 0.5
    return n_items / (n_bidders * (n_bidders + 1))


def exact_oracle(mechanism) -> Callable[[Tensor], Tensor] | None:
    """The mechanism's closed-form per-sample regret (``[B, n, m]`` -> ``[B, n]``), or ``None``.

    Asked of the mechanism (``Mechanism.exact_regret``, ``None`` by default) on a one-profile
    probe, so no concrete class is named here.
    """
    probe = torch.zeros(1, mechanism.n_bidders, mechanism.n_items, dtype=torch.float64)
    if mechanism.exact_regret(probe) is None:
        return None
    return mechanism.exact_regret


def ibp_payment_range(mechanism) -> tuple[float, float] | None:
    """Interval bounds ``(low, high)`` on every payment over the whole report box.

    For a MIP-certifiable ReLU network (``regretnet_sparsemax``) with free payments, whose
    payment head is unbounded a priori, interval propagation of the report box through the
    trunk and the payment head gives a rigorous (if loose) range, clipped as the deployed
    mechanism clips (``nonneg``: ``>= 0``). ``None`` for other mechanisms.
    """
    from auctionlab.solvers.bounds import interval_bounds

    try:
        spec = mechanism.network_spec()
    except ConfigError:
        return None
    if spec.payment == "fractional":
        return None  # bounded by the bid value: the IR-by-design path covers it
    layers = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in spec.layers()]
    low = torch.from_numpy(spec.low.reshape(1, -1))
    high = torch.from_numpy(spec.high.reshape(1, -1))
    with torch.no_grad():
        out_low, out_high = interval_bounds(layers, low, high)[-1]
    pay_low, pay_high = float(out_low[0, -spec.n :].min()), float(out_high[0, -spec.n :].max())
    if spec.clip in ("nonneg", "ir"):
        pay_low, pay_high = max(pay_low, 0.0), max(pay_high, 0.0)
    return pay_low, pay_high


def _payment_range(mechanism) -> tuple[float, float] | None:
    cap = mechanism.payment_bound  # None unless the class caps payments
    if cap is not None:
        return 0.0, float(cap)
    return ibp_payment_range(mechanism)


def regret_range(mechanism, env) -> float:
    """A priori ``U_r`` with ``0 <= phi_i <= U_r``.

    A deviator's utility is at most the largest bundle value ``sum_j high_j`` minus the least
    payment (``>= 0`` for capped payments); truthful utility is >= 0 for IR-by-design
    mechanisms, else >= minus the largest payment (the cap, or interval bounds of a ReLU
    network's payment head, ``ibp_payment_range``).
    """
    cap = mechanism.payment_bound  # None unless the class caps payments
    # Envs whose utility is not value minus payment (procurement: transfer minus cost) state
    # their own range.
    own_range = env.regret_range(cap)
    if own_range is not None:
        return own_range
    high = env.report_space.high
    value_max = float(high.abs().sum(-1).max())
    if mechanism.ir_by_design:
        return value_max
    payments = _payment_range(mechanism)
    if payments is None:
        return math.inf
    return value_max - min(payments[0], 0.0) + max(payments[1], 0.0)


def ir_range(mechanism, env=None) -> float:
    """A priori ``U_ir``: 0 for IR-by-design mechanisms, else the env's own bound.

    Procurement states it (the largest cost); auctions: the largest payment (the cap, or
    interval bounds of a ReLU network's payment head), or inf.
    """
    if mechanism.ir_by_design:
        return 0.0
    if env is not None and env.ir_violation_range is not None:  # procurement states one
        return float(env.ir_violation_range)
    payments = _payment_range(mechanism)
    return max(payments[1], 0.0) if payments is not None else math.inf


# -- exact oracle gap by MIP ([lemma2026certified] §6 + [curry2020certifying]) -----------------
def mip_regret_upper(
    mechanism,
    env,
    types: Types,
    misreports: Tensor | None,
    settings,
    workers: int = 1,
    progress: bool = False,
) -> dict:
    """Exact best responses by MIP: an upper bound on every per-sample regret ``[N, n]``.

    Each ``(profile, bidder)`` is solved by the MIP certifier's encoding (``certifier=mip``);
    the solver's dual bound ``U*`` bounds the best-response utility from above whatever the
    status (``optimal``: ``U*`` equals the optimum up to ``mip_gap``; ``unknown``: a time
    limit, ``U*`` still valid). ``phi_i <= max(U* - u_i(truth), 0)``. An instance without a
    finite bound (solver failure) gets ``nan`` (the caller uses the a priori range).

    Args:
        mechanism: a ``regretnet_sparsemax`` network (eval mode).
        env: its env.
        types: ``N`` profiles.
        misreports: ``[N, n, m]`` incumbents for the solver (e.g. PGD's), or ``None``.
        settings: ``auctionlab.certify.mip.SolverSettings``.
        workers: solver processes (``1``: here; ``0``: one per core).
        progress: show a progress bar.

    Returns:
        ``upper`` ``[N, n]`` (float64), ``status`` (counts), ``seconds`` (total solve time),
        ``numerical`` (instances where a misreport beat the bound by more than 1e-6).

    """
    import copy

    import numpy as np

    from auctionlab.certify.mip import solve_instances

    spec = mechanism.network_spec()
    values = types.values.detach().to(torch.float64)
    N, n, _ = values.shape
    exact = copy.deepcopy(mechanism).double().eval()
    with torch.no_grad():
        truthful = env.utility(exact(values), values)  # [N, n]
    index = np.repeat(np.arange(N), n)
    bidders = np.tile(np.arange(n), N)
    starts = None
    if misreports is not None:
        starts = misreports.detach().to(torch.float64).reshape(N * n, -1).numpy()
    results, _ = solve_instances(
        spec,
        values.numpy()[index],
        bidders,
        settings,
        starts=starts,
        workers=workers,
        progress=progress,
    )
    bound = torch.tensor(
        [r.bound if r.status in ("optimal", "unknown") else math.nan for r in results],
        dtype=torch.float64,
    ).view(N, n)
    bound = torch.where(torch.isfinite(bound), bound, torch.full_like(bound, math.nan))
    upper = (bound - truthful).clamp_min(0.0)
    status: dict[str, int] = {}
    for r in results:
        status[r.status] = status.get(r.status, 0) + 1
    numerical = 0
    if misreports is not None:  # a found misreport above the dual bound: solver tolerance
        with torch.no_grad():
            found = deviation_utility(
                exact, env, Types(values, types.public), misreports.to(torch.float64)[None]
            )[0]
        numerical = int((found > bound + 1e-6).sum())
    return {
        "upper": upper,
        "status": status,
        "seconds": float(sum(r.seconds for r in results if math.isfinite(r.seconds))),
        "numerical": numerical,
    }


# -- the certificate ----------------------------------------------------------------------------
def _as_list(x: Tensor) -> list[float]:
    return [float(v) for v in x.flatten()]


def certificate_bounds(
    regret: Tensor,
    ir_violation: Tensor,
    fairness: Tensor | None,
    *,
    regret_range: float,
    ir_range: float,
    fairness_range: float,
    delta: float,
    split: dict[str, float],
    slack: str,
    eta: float,
) -> dict:
    """The population upper bounds of [lemma2026certified] §6 ("Certification output").

    Args:
        regret: ``[N, n]`` per-sample holdout regret (oracle estimate).
        ir_violation: ``[N, n]`` per-sample IR violation.
        fairness: ``[N]`` per-sample fairness statistic, or ``None`` when not applicable.
        regret_range: ``U_r``.
        ir_range: ``U_ir``.
        fairness_range: ``U_f``.
        delta: total failure probability.
        split: shares of ``delta`` for ``regret``, ``ir`` and ``fairness`` (sum <= 1).
        slack: ``hoeffding``, ``bernstein`` or ``min``.
        eta: oracle gap added to every regret bound.

    Returns:
        Plain data: per constraint the per-bidder estimates, both slacks, the slack used, the
        bounds and the bound on the max over bidders, with the levels they hold at.

    """
    n = regret.shape[1]
    out: dict = {
        "delta": delta,
        "delta_split": dict(split),
        "slack_method": slack,
        "union_bound": f"over the {n} bidders (each bidder's bound at delta_c / {n})"
        + ("; hoeffding and bernstein each at half that level (min)" if slack == "min" else ""),
    }
    parts = [
        ("regret", regret, regret_range, eta, True),
        ("ir", ir_violation, ir_range, 0.0, True),
    ]
    if fairness is not None:
        parts.append(("fairness", fairness.view(-1, 1), fairness_range, 0.0, False))
    for name, samples, value_range, gap, per_bidder in parts:
        level = delta * float(split[name])
        result = mean_upper_bounds(samples, value_range, level, slack, columns_union=per_bidder)
        bounds = result.bound + gap
        out[name] = {
            "range": value_range,
            "delta": level,
            "delta_each": result.delta_each,
            "samples": int(samples.shape[0]),
            "estimate": _as_list(result.estimate),
            "estimate_max": float(result.estimate.max()),
            "hoeffding_slack": _as_list(result.hoeffding),
            "bernstein_slack": _as_list(result.bernstein),
            "slack": _as_list(result.slack),
            "eta": gap,
            "bound": _as_list(bounds),
            "bound_max": float(bounds.max()),
        }
    if fairness is None:
        out["fairness"] = None
    return out
