"""Parts of the statistical certificate ([lemma2026certified] §6): oracle gap, tail, budget, stress.

Everything here is computed on a holdout by a fixed mechanism; only ``eta`` (the oracle gap)
enters the ``1 - delta`` statement, the rest are diagnostics reported next to it ("known
unknowns"). Each oracle run draws from its own fixed seed, so the pieces do not depend on the
order they run in.

Common arguments: ``o`` the statistical certifier's checked options
(``StatisticalCertifier.options``), ``holdout`` the ``N`` holdout profiles (values
``[N, n, m]``), ``regret`` the oracle's per-sample regret ``[N, n]``, ``misreports`` its best
misreports ``[N, n, m]`` (``None`` for a closed form), ``closed_form`` the mechanism's exact
per-sample regret (``[B, n, m]`` -> ``[B, n]``) or ``None``, ``show`` progress bars.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from auctionlab.attackers.portfolio import PortfolioOracle
from auctionlab.attackers.random import RandomAttacker
from auctionlab.certify.statistical import (
    certificate_bounds,
    mean_upper_bounds,
    mip_regret_upper,
    projected_gradient_norm,
)
from auctionlab.types import Outcome, Types
from auctionlab.utils import make_generator


def exact_gap(
    o: dict,
    env,
    mechanism,
    holdout: Types,
    regret: Tensor,
    misreports: Tensor | None,
    u_r: float,
) -> tuple[dict, Tensor, dict]:
    """``eta`` from exact MIP best responses (``certifier.eta=exact``, regretnet_sparsemax).

    On the first ``eta_profiles`` holdout profiles (all when ``null``) every ``(profile,
    bidder)`` is solved by MIP; ``phi* = max(U* - u(truth), 0)`` bounds the true regret
    (``mip_regret_upper``); an instance without a bound gets the a priori range ``U_r``.

    * Whole holdout: the per-sample regret *is* ``phi*`` (never below the oracle's), eta = 0,
      labelled ``exact``: no numerical oracle is trusted.
    * Subsample of ``k < N`` profiles: the per-sample gap ``g = phi* - phi_oracle`` is i.i.d.
      on it; eta = max_i (mean g_i + slack) at level ``delta_r / 2`` (union bound over
      bidders), the estimate's bound gets the other half; labelled ``estimated from k x n
      exact solves``: a statistical bound on the oracle gap, inside the ``1 - delta``.

    Returns:
        The gap report, the per-sample regret to certify ``[N, n]`` and the delta split used.

    """
    N, n = regret.shape
    count = N if o["eta_profiles"] is None else min(o["eta_profiles"], N)
    sub = holdout[slice(0, count)]
    init = None if misreports is None else misreports[:count]
    solved = mip_regret_upper(
        mechanism, env, sub, init, o["mip"], workers=o["mip_workers"], progress=False
    )
    upper = solved["upper"]
    failed = int(torch.isnan(upper).sum())
    upper = torch.where(torch.isnan(upper), torch.full_like(upper, u_r), upper)
    oracle = regret[:count].to(torch.float64)
    upper = torch.maximum(upper, oracle)  # a found misreport is a lower bound on the optimum
    info = {
        "profiles": count,
        "solves": count * n,
        "mip": {
            "backend": o["mip"].backend,
            "bounds": o["mip"].bounds,
            "time_limit": o["mip"].time_limit,
            "mip_gap": o["mip"].mip_gap,
        },
        "status": solved["status"],
        "failed_solves_at_range": failed,
        "numerical": solved["numerical"],
        "solve_seconds": solved["seconds"],
        "holdout_regret_on_subsample": float(oracle.mean()),
        "exact_regret_on_subsample": float(upper.mean()),
        "mean_gap_per_bidder": [float(v) for v in (upper - oracle).mean(0)],
        "max_gap": float((upper - oracle).max()),
    }
    if count == N:
        info.update(
            eta=0.0,
            kind="exact",
            note=f"every holdout instance ({N} x {n}) solved by MIP: per-sample regret = "
            "solver dual bound - truthful utility (an upper bound on the true best-response "
            "gain; a priori range where a solve failed)",
        )
        return info, upper.to(regret.dtype), dict(o["split"])
    share = o["split"]["regret"] / 2
    gap_bound = mean_upper_bounds(
        (upper - oracle).clamp_min(0.0), u_r, o["delta"] * share, o["slack"]
    )
    split = dict(o["split"], regret=share)
    info.update(
        eta=float(gap_bound.bound.max()),
        kind=f"estimated from {count * n} exact solves",
        gap_estimate=[float(v) for v in gap_bound.estimate],
        gap_slack=[float(v) for v in gap_bound.slack],
        gap_delta=o["delta"] * share,
        note=f"eta = max over bidders of (mean exact-minus-oracle gap on {count} profiles + "
        f"{o['slack']} slack at delta {o['delta'] * share:.4g}, union over bidders); the "
        "holdout estimate's bound takes the other half of delta_r",
    )
    return info, regret, split


def random_certificate(
    o: dict,
    env,
    mechanism,
    holdout: Types,
    regret: Tensor,
    ir: Tensor,
    fairness: Tensor | None,
    ranges: tuple[float, float],
    show: bool,
) -> dict:
    """The certificate a random-misreport oracle would issue on the same holdout (ablation).

    [lemma2026certified] §9 ablation (iii): random search (``random_oracle_samples`` uniform reports
    per bidder plus the truthful one) replaces the PGD portfolio; its bound uses the same slack and
    delta but no oracle gap, i.e. what one would claim by trusting the weak oracle. Not part of the
    ``1 - delta`` statement.
    """
    attacker = RandomAttacker(
        samples=o["random_oracle_samples"], chunk_size=o["chunk_size"], progress=show
    )
    weak = attack_regret(attacker, mechanism, env, holdout, 29)
    bounds = certificate_bounds(
        weak,
        ir,
        fairness,
        regret_range=ranges[0],
        ir_range=ranges[1],
        fairness_range=float(env.fairness_range),
        delta=o["delta"],
        split=o["split"],
        slack=o["slack"],
        eta=0.0,
    )
    return {
        "oracle": attacker.budget,
        "profiles": holdout.batch_size,
        "regret_estimate_max": bounds["regret"]["estimate_max"],
        "regret_bound_no_eta": bounds["regret"]["bound_max"],
        "main_oracle_regret_estimate_max": float(regret.mean(0).max()),
        "under_reported": float(regret.mean(0).max()) - bounds["regret"]["estimate_max"],
        "share_of_main_estimate": bounds["regret"]["estimate_max"]
        / max(float(regret.mean(0).max()), 1e-12),
    }


def oracle_gap(
    seed: int,
    o: dict,
    env,
    mechanism,
    holdout: Types,
    regret: Tensor,
    misreports: Tensor | None,
    closed_form: Callable[[Tensor], Tensor] | None,
    show: bool,
) -> dict:
    """``eta``: how much a stronger adversary improves on the holdout oracle, per bidder.

    On the first ``gap.profiles`` holdout profiles, an oracle with ``restarts_factor`` x the
    restarts and ``steps_factor`` x the steps, warm-started from the holdout misreports, is
    run; ``eta`` is the largest per-bidder mean improvement (labelled *estimated*). The
    projected-gradient norm at the holdout misreports is a stationarity diagnostic.
    """
    if closed_form is not None:
        return {"eta": 0.0, "kind": "exact", "note": "closed-form best response: no oracle gap"}
    count = min(o["gap_profiles"], holdout.batch_size)
    if count == 0:
        return {"eta": 0.0, "kind": "not estimated", "profiles": 0}
    sub = holdout[slice(0, count)]
    strong = PortfolioOracle(
        o["restarts"] * o["gap_restarts_factor"],
        o["steps"] * o["gap_steps_factor"],
        o["step_sizes"],
        o["final_step_size"],
        o["corners"],
        o["chunk_size"],
        show,
    )
    result = strong.attack(
        mechanism,
        env,
        sub,
        make_generator(seed + 7, torch.device("cpu")),
        init=misreports[:count].unsqueeze(0),
    )
    with torch.no_grad():
        truthful = env.utility(mechanism(sub.values, sub.public), sub.values)
    strong_regret = (result.utility - truthful).clamp_min(0.0)
    improvement = (strong_regret - regret[:count]).clamp_min(0.0)  # [count, n]
    norms = projected_gradient_norm(mechanism, env, sub, misreports[:count])
    tol = o["stationarity_tol"]
    return {
        "eta": float(improvement.mean(0).max()),
        "kind": "estimated",
        "profiles": count,
        "stronger_oracle": strong.budget,
        "mean_improvement_per_bidder": [float(v) for v in improvement.mean(0)],
        "max_improvement": float(improvement.max()),
        "share_improved": float((improvement > 1e-6).double().mean()),
        "holdout_regret_on_subsample": float(regret[:count].mean()),
        "stronger_regret_on_subsample": float(strong_regret.mean()),
        "projected_gradient_norm_mean": float(norms.mean()),
        "projected_gradient_norm_max": float(norms.max()),
        "share_not_stationary": float((norms > tol).double().mean()),
        "stationarity_tol": tol,
    }


def distribution(regret: Tensor) -> dict:
    """Quantiles and max of per-sample regret, per bidder (tail risk, §6 failure mode 3)."""
    r = regret.double()
    quantiles = (0.5, 0.9, 0.99, 0.999)
    per = {f"q{str(q)[2:]}": [float(v) for v in torch.quantile(r, q, dim=0)] for q in quantiles}
    per["max"] = [float(v) for v in r.max(0).values]
    per["mean"] = [float(v) for v in r.mean(0)]
    per["share_above_0.01"] = [float(v) for v in (r > 0.01).double().mean(0)]
    return per


def attack_regret(attacker, mechanism, env, types: Types, seed: int) -> Tensor:
    """``[B, n]`` best-response gain of ``attacker`` on ``types``, restarts from ``seed``."""
    result = attacker.attack(mechanism, env, types, make_generator(seed, torch.device("cpu")))
    return result.gain


def portfolio_oracle(o: dict, show: bool) -> PortfolioOracle:
    """The certification oracle the certifier options describe."""
    return PortfolioOracle(
        o["restarts"],
        o["steps"],
        o["step_sizes"],
        o["final_step_size"],
        o["corners"],
        o["chunk_size"],
        show,
    )


def _se(gain: Tensor) -> float:
    """Standard error over profiles of ``gain [B, n]``'s per-profile mean over bidders."""
    per_profile = gain.double().mean(-1)
    return float(per_profile.std() / per_profile.numel() ** 0.5) if per_profile.numel() > 1 else 0.0


def budget_curve(
    o: dict,
    env,
    mechanism,
    holdout: Types,
    regret: Tensor,
    closed_form: Callable[[Tensor], Tensor] | None,
    show: bool,
) -> list[dict]:
    """Mean regret on a subsample as the adversary budget grows (§6 failure mode 1)."""
    from auctionlab.attackers.pgd import PGDAttacker

    count = min(o["curve_profiles"], holdout.batch_size)
    if count == 0:
        return []
    sub = holdout[slice(0, count)]
    rows = []
    for restarts, steps in o["budget_curve"]:
        attacker = PGDAttacker(
            restarts=restarts,
            steps=steps,
            step_size=o["step_sizes"][0],
            final_step_size=o["final_step_size"],
            include_truthful=True,
            chunk_size=o["chunk_size"],
            progress=show,
        )
        gain = attack_regret(attacker, mechanism, env, sub, 11)
        rows.append(
            {
                "oracle": "pgd",
                "restarts": restarts,
                "steps": steps,
                "regret_mean": float(gain.mean()),
                "regret_se": _se(gain),
                "regret_max_bidder_mean": float(gain.mean(0).max()),
                "profiles": count,
            }
        )
    random = o["oracle"] == "random"
    rows.append(
        {
            "oracle": "exact"
            if closed_form is not None
            else ("random search (certification)" if random else "certification portfolio"),
            "restarts": o["random_oracle_samples"] if random else o["restarts"],
            "steps": 0 if random else o["steps"],
            "regret_mean": float(regret[:count].mean()),
            "regret_se": _se(regret[:count]),
            "regret_max_bidder_mean": float(regret[:count].mean(0).max()),
            "profiles": count,
        }
    )
    return rows


def stress_tests(
    o: dict,
    env,
    mechanism,
    holdout: Types,
    regret: Tensor,
    closed_form: Callable[[Tensor], Tensor] | None,
    show: bool,
) -> dict:
    """Stress tests outside the 1 - delta statement (§6 "known unknowns").

    Random-misreport ablation, perturbed values, and slices of the holdout by total value.
    """
    count = min(o["stress_profiles"], holdout.batch_size)
    if count == 0:
        return {}
    sub = holdout[slice(0, count)]
    random_gain = attack_regret(
        RandomAttacker(samples=o["random_samples"], chunk_size=o["chunk_size"], progress=show),
        mechanism,
        env,
        sub,
        13,
    )
    noise = torch.randn(sub.values.shape, generator=torch.Generator().manual_seed(17))
    width = env.report_space.width(torch.device("cpu")).to(sub.values)
    perturbed = Types(
        env.report_space.project(sub.values + o["perturbation"] * width * noise.to(sub.values)),
        sub.public,
    )
    if closed_form is not None:
        perturbed_gain = closed_form(perturbed.values)
    else:
        oracle = portfolio_oracle(o, show)
        perturbed_gain = attack_regret(oracle, mechanism, env, perturbed, 19)
    total = holdout.values.sum((1, 2))
    order = torch.argsort(total)
    slices = []
    for k, index in enumerate(order.chunk(o["slices"])):
        slices.append(
            {
                "slice": k,
                "total_value_low": float(total[index].min()),
                "total_value_high": float(total[index].max()),
                "profiles": int(index.numel()),
                "regret_mean": float(regret[index].mean()),
                "regret_max_bidder_mean": float(regret[index].mean(0).max()),
            }
        )
    worst = max(slices, key=lambda s: s["regret_max_bidder_mean"])
    return {
        "profiles": count,
        "random_misreports": {
            "samples": o["random_samples"],
            "regret_mean": float(random_gain.mean()),
            "oracle_regret_mean_same_profiles": float(regret[:count].mean()),
        },
        "perturbed_values": {
            "noise_sd_fraction_of_range": o["perturbation"],
            "regret_mean": float(perturbed_gain.mean()),
            "oracle_regret_mean_unperturbed": float(regret[:count].mean()),
        },
        "slices_by_total_value": slices,
        "worst_slice": worst,
    }


def train_gap(
    o: dict,
    training: Types | None,
    env,
    mechanism,
    oracle,
    regret: Tensor,
    closed_form: Callable[[Tensor], Tensor] | None,
    dtype: torch.dtype,
) -> dict | None:
    """Regret on training profiles vs on the holdout, same oracle (generalisation gap)."""
    count = o["train_profiles"]
    if training is None or count == 0:
        return None
    sub = training[slice(0, min(count, training.batch_size))]
    sub.values = sub.values.to(dtype)
    if closed_form is not None:
        train_regret = closed_form(sub.values)
    else:
        train_regret = attack_regret(oracle, mechanism, env, sub, 23)
    return {
        "train_profiles": sub.batch_size,
        "train_regret_mean": float(train_regret.mean()),
        "train_regret_max_bidder_mean": float(train_regret.mean(0).max()),
        "holdout_regret_mean": float(regret.mean()),
        "holdout_regret_max_bidder_mean": float(regret.mean(0).max()),
        "gap": float(regret.mean() - train_regret.mean()),
        "oracle": oracle.describe() if closed_form is None else "exact",
    }


def objective(env, outcome: Outcome, holdout: Types) -> dict | None:
    """The env's own objective on the holdout (procurement: minus the buyer's cost)."""
    # Optional env hook: only envs with a scalar objective define it.
    objective_of = env.objective
    if objective_of is None:
        return None
    with torch.no_grad():
        value = float(objective_of(outcome, holdout))
    return {"name": env.objective_name, "mean": value}


def lipschitz(mechanism) -> dict | None:
    """Stored vs recomputed a priori Lipschitz constant (mechanisms that declare one)."""
    if mechanism.lipschitz_terms is None:  # only Lipschitz-controlled classes define it
        return None
    stored = float(mechanism.lipschitz_l1)
    terms = mechanism.lipschitz_terms()
    return {
        "L_stored": stored,
        "L_recomputed": terms["L"],
        "agree": bool(math.isclose(stored, terms["L"], rel_tol=1e-4)),
        "norm": "l1 -> l1 w.r.t. raw reports (eq. 11)",
        "terms": terms,
    }


def statement(bounds: dict, o: dict, gap: dict) -> str:
    """The certificate's one-sentence ``1 - delta`` statement, with what eta is."""
    regret = bounds["regret"]
    ir = bounds["ir"]
    text = (
        f"With probability at least {1 - o['delta']:.4g} over the holdout draw, "
        f"max_i RGT_i <= {regret['bound_max']:.4g} (estimate {regret['estimate_max']:.4g} "
        f"+ slack + eta {gap['eta']:.3g}, eta {gap.get('kind')}) and "
        f"max_i IRV_i <= {ir['bound_max']:.4g}"
    )
    if bounds.get("fairness"):
        text += f" and FR <= {bounds['fairness']['bound_max']:.4g}"
    kind = str(gap.get("kind"))
    if kind == "estimated":
        return text + (
            "; the regret part holds as stated only if the oracle gap is at most eta "
            "(estimated, not proven)."
        )
    if kind.startswith("estimated from"):
        return text + (
            "; eta is a (1 - delta_r/2) upper confidence bound on the mean gap between exact "
            "MIP best responses and the oracle, inside the same 1 - delta."
        )
    return text + "."
