"""``certifier=statistical``: holdout certificates of [lemma2026certified] §6.

With probability at least ``1 - delta`` over the holdout draw, every bidder's population regret
is at most its holdout estimate + slack + the oracle gap ``eta``, its IR violation at most
estimate + slack (and the fairness statistic, where the env defines one). The holdout is drawn
from ``holdout_seed`` and checked row by row against everything the training saw
(``auctionlab.certify.holdout``); diagnostics outside the statement (tail, regret vs budget,
stress tests, train-holdout gap) come with it (``auctionlab.certify.diagnostics``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from auctionlab.attackers.random import RandomAttacker
from auctionlab.certify import diagnostics as dx
from auctionlab.certify import options as opt
from auctionlab.certify.base import Certificate, Certifier, Source
from auctionlab.certify.holdout import Holdout, check_seed, disjoint_holdout, mechanism_hash
from auctionlab.certify.mip import SolverSettings
from auctionlab.certify.statistical import (
    SLACKS,
    certificate_bounds,
    exact_oracle,
    ir_range,
    regret_range,
)
from auctionlab.certify.statistical_report import (
    statistical_markdown,
    statistical_metrics,
    statistical_title,
    write_per_sample,
)
from auctionlab.errors import ConfigError
from auctionlab.evaluation import write_curve
from auctionlab.utils import make_generator

ORACLES = ("pgd", "exact", "random")
#: How the oracle gap eta is obtained: a stronger adversary (``estimated``), MIP best
#: responses (``exact``: MIP-certifiable networks only), or exact where the MIP applies.
ETAS = ("estimated", "exact", "auto")
log = logging.getLogger("auctionlab")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class StatisticalCertifier(Certifier):
    """Holdout certificate: estimate + Hoeffding / empirical-Bernstein slack + oracle gap.

    Args mirror ``conf/certifier/statistical.yaml`` (budgets from ``scale.certify``); every
    one is checked here and a bad value raises a one-line ``ConfigError`` naming
    ``certifier.<key>``. ``seed`` (oracle restarts) and ``progress`` are injected by the task;
    so are ``attacker`` and ``profile_seed``, which this certifier does not use (its oracle is
    the portfolio below, its profiles come from ``holdout_seed``).
    """

    name = "statistical"

    def __init__(
        self,
        delta: float,
        delta_split: dict,
        slack: str,
        oracle: str,
        random_oracle_samples: int,
        eta: str,
        mip: dict,
        holdout_seed: int,
        holdout_profiles: int,
        restarts: int,
        steps: int,
        corners: int,
        step_sizes: list[float],
        gap: dict,
        curve_profiles: int,
        budget_curve: list,
        train_profiles: int,
        stress: dict,
        chunk_size: int,
        dtype: str = "float32",
        final_step_size: float | None = None,
        eta_profiles: int | None = None,
        random_ablation: bool = False,
        name: str = "statistical",
        attacker=None,
        seed: int = 0,
        profile_seed: int = 0,
        progress: bool = False,
    ) -> None:
        o: dict[str, Any] = {"delta": opt.fraction(delta, "certifier.delta")}
        split = {
            k: opt.fraction(delta_split.get(k), f"certifier.delta_split.{k}", False)
            for k in ("regret", "ir", "fairness")
        }
        if sum(split.values()) > 1 + 1e-12 or split["regret"] <= 0 or split["ir"] <= 0:
            raise ConfigError(
                f"certifier.delta_split={split}: shares must be > 0 (regret, ir) and sum to <= 1"
            )
        o["split"] = split
        o["slack"] = opt.choice(slack, "certifier.slack", SLACKS)
        o["oracle"] = opt.choice(oracle, "certifier.oracle", ORACLES)
        if not step_sizes or any(not float(s) > 0 for s in step_sizes):
            raise ConfigError(
                f"certifier.step_sizes={list(step_sizes)} must be a non-empty list of numbers > 0"
            )
        o["eta"] = opt.choice(eta, "certifier.eta", ETAS)
        if eta_profiles is not None:
            eta_profiles = opt.integer(eta_profiles, "certifier.eta_profiles", 1)
        budgets = [tuple(int(v) for v in b) for b in budget_curve]
        if any(len(b) != 2 or b[0] < 1 or b[1] < 0 for b in budgets):
            raise ConfigError(
                f"certifier.budget_curve={[list(b) for b in budget_curve]} must list "
                "[restarts >= 1, steps >= 0] pairs"
            )
        o.update(
            random_oracle_samples=opt.integer(
                random_oracle_samples, "certifier.random_oracle_samples", 1
            ),
            random_ablation=bool(random_ablation),
            eta_profiles=eta_profiles,
            mip=_mip_settings(mip) if o["eta"] != "estimated" else None,
            mip_workers=opt.integer(mip.get("workers"), "certifier.mip.workers", 0),
            holdout_profiles=opt.integer(holdout_profiles, "certifier.holdout_profiles", 2),
            holdout_seed=opt.integer(holdout_seed, "certifier.holdout_seed"),
            restarts=opt.integer(restarts, "certifier.restarts", 0),
            steps=opt.integer(steps, "certifier.steps", 0),
            corners=opt.integer(corners, "certifier.corners", 0),
            step_sizes=[float(s) for s in step_sizes],
            final_step_size=None if final_step_size is None else float(final_step_size),
            gap_profiles=opt.integer(gap.get("profiles"), "certifier.gap.profiles", 0),
            gap_restarts_factor=opt.integer(
                gap.get("restarts_factor"), "certifier.gap.restarts_factor", 1
            ),
            gap_steps_factor=opt.integer(gap.get("steps_factor"), "certifier.gap.steps_factor", 1),
            stationarity_tol=float(gap["stationarity_tol"]),
            curve_profiles=opt.integer(curve_profiles, "certifier.curve_profiles", 0),
            budget_curve=budgets,
            train_profiles=opt.integer(train_profiles, "certifier.train_profiles", 0),
            stress_profiles=opt.integer(stress.get("profiles"), "certifier.stress.profiles", 0),
            perturbation=float(stress["perturbation"]),
            random_samples=opt.integer(
                stress.get("random_samples"), "certifier.stress.random_samples", 1
            ),
            slices=opt.integer(stress.get("slices"), "certifier.stress.slices", 1),
            chunk_size=opt.integer(chunk_size, "certifier.chunk_size", 1),
            dtype=DTYPES[opt.choice(dtype, "certifier.dtype", tuple(DTYPES))],
        )
        self.options = o
        self.seed = int(seed)
        self.progress = bool(progress)

    # -- contract -------------------------------------------------------------------------
    def check(self, mechanism, source: Source):
        """Closed form / MIP availability and the holdout seed; the mechanism in eval mode.

        Raises:
            ConfigError: ``oracle=exact`` without a closed form, ``eta=exact`` without a MIP
                encoding, or a holdout seed the training used.

        """
        o = self.options
        if o["oracle"] == "exact" and exact_oracle(mechanism) is None:
            raise ConfigError(
                f"certifier.oracle=exact has no closed form for mechanism={source.label} "
                "(first_price only); use pgd"
            )
        o["eta_mode"] = _eta_mode(o, mechanism, source.label)
        check_seed(o["holdout_seed"], source.train_cfg)
        mechanism = mechanism.to(dtype=o["dtype"]).eval()
        for p in mechanism.parameters():
            p.requires_grad_(False)
        return mechanism

    def holdout(self, env, source: Source) -> Holdout:
        """``holdout_profiles`` profiles from ``holdout_seed``, disjoint from training data."""
        o = self.options
        return disjoint_holdout(env, source, o["holdout_seed"], o["holdout_profiles"], o["dtype"])

    def certify(self, mechanism, env, holdout: Holdout) -> Certificate:
        """The certificate, its diagnostics and its files (``certificate.{json,md}``...)."""
        o, show, started = self.options, self.progress, time.perf_counter()
        types = holdout.types
        oracle = dx.portfolio_oracle(o, show)
        if o["oracle"] == "random":  # ablation: a weak, gradient-free oracle certifies
            oracle = RandomAttacker(
                samples=o["random_oracle_samples"], chunk_size=o["chunk_size"], progress=show
            )
        closed_form = exact_oracle(mechanism) if o["oracle"] == "exact" else None
        with torch.no_grad():
            truthful_outcome = mechanism(types.values, types.public)
            truthful_utility = env.utility(truthful_outcome, types.values)
        ir_violation = (-truthful_utility).clamp_min(0.0)  # [N, n]
        revenue = truthful_outcome.payment.sum(-1)  # [N]
        # Optional env hook: only envs with a fairness functional define it.
        fairness_of = env.fairness
        fairness = fairness_of(truthful_outcome, types).detach() if fairness_of else None
        log.info("holdout: %d profiles; oracle: %s", types.batch_size, oracle.describe())
        if closed_form is not None:
            regret = closed_form(types.values)
            misreports = None
            oracle_budget = {"attacker": "exact (closed form)", "restarts": 0, "steps": 0}
        else:
            cpu = torch.device("cpu")
            result = oracle.attack(mechanism, env, types, make_generator(self.seed, cpu))
            regret = (result.utility - truthful_utility).clamp_min(0.0)  # [N, n]
            misreports = result.misreports
            oracle_budget = oracle.budget
        u_r, u_ir = regret_range(mechanism, env), ir_range(mechanism, env)
        split = o["split"]
        # -- oracle gap: exact MIP best responses, or a stronger adversary + stationarity
        if o["eta_mode"] == "exact":
            gap, regret, split = dx.exact_gap(o, env, mechanism, types, regret, misreports, u_r)
        else:
            gap = dx.oracle_gap(
                self.seed, o, env, mechanism, types, regret, misreports, closed_form, show
            )
        bounds = certificate_bounds(
            regret,
            ir_violation,
            fairness,
            regret_range=u_r,
            ir_range=u_ir,
            fairness_range=float(env.fairness_range),
            delta=o["delta"],
            split=split,
            slack=o["slack"],
            eta=gap["eta"],
        )
        ablation = None
        if o["random_ablation"] and o["oracle"] != "random" and closed_form is None:
            ablation = dx.random_certificate(
                o, env, mechanism, types, regret, ir_violation, fairness, (u_r, u_ir), show
            )
        distribution = dx.distribution(regret)
        curve = dx.budget_curve(o, env, mechanism, types, regret, closed_form, show)
        stress = dx.stress_tests(o, env, mechanism, types, regret, closed_form, show)
        train_gap = dx.train_gap(
            o, holdout.training, env, mechanism, oracle, regret, closed_form, o["dtype"]
        )
        report = {
            "mechanism": _mechanism_record(mechanism, env, holdout.source),
            "data": holdout.data,
            "oracle": {
                "holdout": oracle_budget,
                "kind": "exact" if closed_form is not None else "estimated",
                "eta_kind": gap.get("kind"),
                "gap": gap,
            },
            "revenue": {
                "mean": float(revenue.mean()),
                "se": float(revenue.std() / math.sqrt(revenue.numel())),
                "profiles": types.batch_size,
                "objective": dx.objective(env, truthful_outcome, types),
            },
            "certificate": bounds,
            "regret_distribution": distribution,
            "regret_vs_budget": curve,
            "stress_tests": stress,
            "random_oracle_ablation": ablation,
            "train_holdout_gap": train_gap,
            "statement": dx.statement(bounds, o, gap),
            "seconds": time.perf_counter() - started,
        }
        title = f"{env.name} {holdout.source.label}: regret vs adversary budget"
        return Certificate(
            name="certificate",
            title=statistical_title(report),
            markdown=statistical_markdown(report),
            report=report,
            metrics=statistical_metrics(report),
            # estimates from the holdout; bounds may be inf by definition (unbounded range)
            finite=(
                "revenue",
                "revenue_se",
                "regret_estimate_max",
                "regret_mean",
                "ir_estimate_max",
            ),
            artifacts=[
                lambda out: [write_per_sample(out / "per_sample.csv", regret, ir_violation)],
                lambda out: list(write_curve(curve, out, title)),
            ],
        )

    def describe(self) -> str:
        """The holdout oracle, for the log."""
        return dx.portfolio_oracle(self.options, False).describe()


def _mechanism_record(mechanism, env, source: Source) -> dict:
    lipschitz = dx.lipschitz(mechanism)
    return {
        "name": source.label,
        "env": env.name,
        **mechanism_hash(mechanism, source),
        "ir_by_design": bool(mechanism.ir_by_design),
        "lipschitz": lipschitz,
        # Optional mechanism hook: an architecture summary where the class provides one.
        "architecture": mechanism.describe(),
    }


def _mip_settings(node: dict) -> SolverSettings:
    """``certifier.mip.*`` as the MIP certifier's ``SolverSettings`` (checked)."""
    return SolverSettings(
        backend=str(node.get("backend")),
        bounds=opt.choice(node.get("bounds"), "certifier.mip.bounds", ("ibp", "lp")),
        time_limit=opt.positive(node.get("time_limit"), "certifier.mip.time_limit"),
        mip_gap=opt.positive(node.get("mip_gap"), "certifier.mip.mip_gap"),
        threads=1,
    )


def _eta_mode(options: dict, mechanism, label: str) -> str:
    """``estimated``, ``exact`` or ``closed_form`` for ``certifier.eta``.

    Raises:
        ConfigError: ``eta=exact`` for a network the MIP cannot encode, or without a solver.

    """
    from auctionlab.solvers.backends import check_backend, resolve_backend

    if options["eta"] == "estimated" or options["oracle"] == "exact":
        return "estimated" if options["oracle"] != "exact" else "closed_form"
    try:
        spec = mechanism.network_spec()
        backend = resolve_backend(options["mip"].backend, spec)
        check_backend(backend, spec)
    except ConfigError as err:
        if options["eta"] == "auto":
            log.info("certifier.eta=auto: no exact oracle gap for %s (%s)", label, err)
            return "estimated"
        raise ConfigError(
            f"certifier.eta=exact needs a MIP-certifiable network (mechanism=regretnet_sparsemax "
            f"with a solver): mechanism={label}: {err}; use certifier.eta=estimated or auto"
        ) from None
    options["mip"].backend = backend
    return "exact"
