"""``certifier=mip``: exact regret certificates per (profile, bidder) ([curry2020certifying]).

For ``profiles`` held-out profiles and every bidder, the certifier solves
``max_{b_i} u_i(b_i, v_-i)`` exactly (a MIP over the network the mechanism declares through
``network_spec()``), re-evaluates the certified misreport with the torch forward pass and runs
the comparison attacker on the same profiles. A solve that stops at a limit gives an interval
``[incumbent, bound]`` marked ``unknown`` (its sound upper bound is reported, never a
certificate); other solver failures are reported per instance.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from auctionlab.attackers.base import AttackResult, deviation_utility
from auctionlab.certify import options as opt
from auctionlab.certify.base import Certificate, Certifier, Source
from auctionlab.certify.holdout import Holdout
from auctionlab.certify.mip import SolverSettings, solve_instances, utility_at
from auctionlab.certify.report import (
    mean_std,
    plot_best_bids,
    render_markdown,
    summary_rows,
    write_rows_csv,
)
from auctionlab.errors import ConfigError
from auctionlab.solvers.backends import (
    SolveResult,
    check_backend,
    resolve_backend,
    scip_available,
)
from auctionlab.types import Types
from auctionlab.utils import make_generator

log = logging.getLogger("auctionlab")
CPU = torch.device("cpu")


class MIPCertifier(Certifier):
    """Exact best responses by mixed-integer programming (HiGHS, or SCIP when bilinear).

    Args:
        profiles: held-out profiles; every bidder of each is certified.
        revenue_profiles: further held-out profiles for revenue and held-out PGD regret.
        backend: ``auto`` | ``highs`` | ``pyomo`` | ``scip``.
        bounds: big-M bounds, ``ibp`` or ``lp`` (IBP then LP tightening).
        time_limit: seconds per instance (``None``: none); a solve that hits it is ``unknown``.
        mip_gap: relative gap at which a solve counts as optimal.
        workers: solver processes (``0``: one per core).
        solver_threads: threads per solver.
        warm_start: the attacker's misreport is the solver's first incumbent.
        check_tol: program vs forward pass at the certified misreport; larger is ``numerical``.
        figure_threshold: ``best_bids.png`` arrows for certified regret at least this.
        name: the ``certifier=`` choice.
        attacker: the comparison attacker (injected by the task).
        seed: the attacker's restarts seed (injected).
        profile_seed: the certified profiles' seed; revenue profiles use ``profile_seed + 1``.
        progress: show progress bars (injected).

    """

    name = "mip"

    def __init__(
        self,
        profiles: int,
        revenue_profiles: int,
        backend: str = "auto",
        bounds: str = "lp",
        time_limit: float | None = 60.0,
        mip_gap: float = 1e-6,
        workers: int = 1,
        solver_threads: int = 1,
        warm_start: bool = True,
        check_tol: float = 1e-5,
        figure_threshold: float = 0.005,
        name: str = "mip",
        attacker=None,
        seed: int = 0,
        profile_seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.backend = str(backend)
        self.bounds = opt.choice(bounds, "certifier.bounds", ("ibp", "lp"))
        self.profiles = opt.integer(profiles, "certifier.profiles", 1)
        self.workers = opt.integer(workers, "certifier.workers", 0)
        self.revenue_profiles = opt.integer(revenue_profiles, "certifier.revenue_profiles", 1)
        self.profile_seed = opt.integer(profile_seed, "profile_seed")
        self.time_limit = opt.seconds(time_limit, "certifier.time_limit")
        self.mip_gap = opt.number(mip_gap, "certifier.mip_gap")
        self.threads = opt.integer(solver_threads, "certifier.solver_threads", 1)
        self.check_tol = opt.number(check_tol, "certifier.check_tol")
        self.warm_start = bool(warm_start)
        self.figure_threshold = float(figure_threshold)
        self.attacker, self.seed, self.progress = attacker, int(seed), bool(progress)
        self.spec = None
        self.settings: SolverSettings | None = None

    # -- contract -------------------------------------------------------------------------
    def check(self, mechanism, source: Source):
        """The network encoding and a solver for it; the mechanism in float64 eval mode.

        Raises:
            ConfigError: the mechanism declares no MIP encoding, or an explicit backend cannot
                solve its program.

        """
        try:
            spec = mechanism.network_spec()
        except ConfigError:
            raise ConfigError(
                "certifier=mip needs a ReLU / sparsemax network (mechanism=regretnet_sparsemax); "
                f"run={source.run} trained mechanism={source.label}"
            ) from None
        backend = resolve_backend(self.backend, spec)
        if self.backend == "auto" and backend == "scip" and not scip_available():
            # Optional solver missing: the task still runs (PGD, revenue) and every instance is
            # reported `unsupported`, never a number. An explicit backend fails here instead.
            log.warning(
                "this network's payment is bilinear and needs the SCIP backend, but pyscipopt is "
                "not installed (pip install 'auctionlab[scip]'): no certificate will be computed"
            )
            backend = "unavailable"
        else:
            check_backend(self.backend, spec)
        self.spec = spec
        self.settings = SolverSettings(
            backend=backend,
            bounds=self.bounds,
            time_limit=self.time_limit,
            mip_gap=self.mip_gap,
            threads=self.threads,
        )
        return mechanism.double().eval()

    def holdout(self, env, source: Source) -> Holdout:
        """``profiles`` profiles from ``profile_seed`` (revenue: ``profile_seed + 1``), float64."""
        types = env.sample(self.profiles, make_generator(self.profile_seed, CPU))
        types.values = types.values.double()
        revenue = env.sample(self.revenue_profiles, make_generator(self.profile_seed + 1, CPU))
        revenue.values = revenue.values.double()
        return Holdout(types, self.profile_seed, source, extra=revenue)

    def certify(self, mechanism, env, holdout: Holdout) -> Certificate:
        """Solve every (profile, bidder); the Table-1 summary, per-instance CSV and figure."""
        if self.settings is None:
            raise ConfigError("MIPCertifier.check(mechanism, source) must run before certify")
        settings, attacker = self.settings, self.attacker
        started = time.perf_counter()
        types, n_profiles, n = holdout.types, holdout.types.batch_size, env.n_bidders
        values = types.values  # [P, n, m]
        # Empirical regret on the same profiles: the attacker (budget logged with it).
        log.info("stress test on %d profiles: %s", n_profiles, attacker.describe())
        attack = attack_in_float32(attacker, mechanism, env, types, self.seed)
        pgd_regret = attack.gain  # [P, n]
        truthful = attack.truthful_utility  # [P, n]
        profiles_idx = np.repeat(np.arange(n_profiles), n)
        bidders = np.tile(np.arange(n), n_profiles)
        starts = None
        if self.warm_start:
            starts = attack.misreports.numpy().reshape(n_profiles * n, -1)
        log.info(
            "certifying %d instances (%d profiles x %d bidders) with %s, %s bounds, %d workers",
            len(bidders),
            n_profiles,
            n,
            settings.backend,
            settings.bounds,
            self.workers,
        )
        if settings.backend == "unavailable":
            note = "bilinear program needs SCIP: pip install pyscipopt"
            results = [SolveResult("unsupported", note) for _ in bidders]
            unstable = [0] * len(bidders)
        else:
            results, unstable = solve_instances(
                self.spec,
                values.numpy()[profiles_idx],
                bidders,
                settings,
                starts=starts,
                workers=self.workers,
                progress=self.progress,
            )
        instances = instance_records(
            self.check_tol,
            mechanism,
            values,
            profiles_idx,
            bidders,
            results,
            unstable,
            truthful,
            pgd_regret,
            attack.misreports,
        )
        # Revenue of the (clipped, eval-mode) mechanism on held-out profiles.
        rev_types = holdout.extra
        with torch.no_grad():
            revenue = mechanism(rev_types.values).payment.sum(-1)  # [R]
        revenue_ms = (float(revenue.mean()), float(revenue.std(unbiased=False)))
        # Empirical regret on those held-out profiles too ([curry2020certifying] Table 1
        # measures it on other points than the certified ones), same attacker budget.
        held_out = attack_in_float32(attacker, mechanism, env, rev_types, self.seed + 1)
        train_cfg = holdout.source.train_cfg
        relu = float(train_cfg.mechanism.get("relu_stability", 0)) if train_cfg else 0.0
        setting = {
            "env": env.name,
            "ir": "yes" if self.spec.payment == "fractional" else "no",
            "relu_reg": "yes" if relu > 0 else "no",
            "attack_restarts": attacker.budget["restarts"],
            "attack_steps": attacker.budget["steps"],
            "attacker": attacker.describe(),
        }
        rows = summary_rows(instances, setting, revenue_ms)
        metrics = self._metrics(instances, rows, revenue_ms, attacker.budget, n_profiles)
        metrics["regret_mean"] = float(held_out.gain.mean())
        metrics["regret_max"] = float(held_out.gain.max())
        if "deviation_steps" in held_out.budget:  # what the held-out attack actually spent
            instances_count = held_out.gain.numel()
            metrics["attack_deviation_steps_per_instance"] = (
                float(held_out.budget["deviation_steps"]) / instances_count
            )
        metrics["profiles"] = float(rev_types.batch_size)
        metrics["seconds"] = time.perf_counter() - started
        notes = self._notes(metrics)
        figure_title = f"{env.name}: certified best misreports"

        def figure(out: Path) -> list[Path]:
            path = plot_best_bids(
                instances, out / "best_bids.png", self.figure_threshold, figure_title
            )
            return [] if path is None else [path]

        return Certificate(
            name="certify",
            title=f"MIP certificates: {holdout.source.label} on {env.name} ({holdout.source.run})",
            markdown=render_markdown(rows, notes),
            report={"rows": rows, "notes": notes, "summary": metrics},
            metrics=metrics,
            # measured on every profile; certified numbers may be NaN (all unknown/failed)
            finite=("revenue", "revenue_std", "regret_empirical_mean_all"),
            artifacts=[
                lambda out: [write_instances(instances, out / "instances.csv")],
                lambda out: [write_rows_csv(rows, out / "certify.csv")],
                figure,
            ],
        )

    # -- summaries --------------------------------------------------------------------------
    def _metrics(self, instances, rows, revenue, budget, n_profiles) -> dict[str, float]:
        done = [r for r in instances if r["status"] == "optimal"]
        c_mean, c_std = mean_std([r["certified_regret"] for r in done])
        e_mean, e_std = mean_std([r["pgd_regret"] for r in done])
        e_all, _ = mean_std([r["pgd_regret"] for r in instances])
        seconds = [r["seconds"] for r in instances if math.isfinite(r["seconds"])]
        t_mean, t_std = mean_std(seconds)
        metrics = {
            "revenue": revenue[0],
            "revenue_std": revenue[1],
            "revenue_profiles": float(self.revenue_profiles),
            "regret_certified_mean": c_mean,
            "regret_certified_std": c_std,
            "regret_certified_max": max([r["certified_regret"] for r in done], default=math.nan),
            "regret_empirical_mean": e_mean,
            "regret_empirical_std": e_std,
            "regret_empirical_mean_all": e_all,
            "ratio": e_mean / c_mean if c_mean and math.isfinite(c_mean) else math.nan,
            "solve_seconds_mean": t_mean,
            "solve_seconds_std": t_std,
            "solve_seconds_median": float(np.median(seconds)) if seconds else math.nan,
            "solve_seconds_max": float(max(seconds)) if seconds else math.nan,
            "encoding_error_max": max(
                [r["encoding_error"] for r in done if math.isfinite(r["encoding_error"])],
                default=math.nan,
            ),
            "regret_certified_below_pgd": float(
                sum(r["certified_regret"] < r["pgd_regret"] - 1e-6 for r in done)
            ),
            "certified_profiles": float(n_profiles),
            "instances": float(len(instances)),
            "certified": float(len(done)),
            "unknown": float(sum(r["status"] == "unknown" for r in instances)),
            "failed": float(sum(r["status"] not in ("optimal", "unknown") for r in instances)),
            "attack_restarts": float(budget["restarts"]),
            "attack_steps": float(budget["steps"]),
            "time_limit": float(self.time_limit or math.inf),
            # Sound upper bound on every solved instance's regret (certified or `unknown`).
            "regret_upper_max": max(
                [r["regret_upper"] for r in instances if math.isfinite(r["regret_upper"])],
                default=math.nan,
            ),
        }
        for row in rows:
            b = row["bidder"]
            metrics[f"regret_certified_mean_b{b}"] = row["certified_regret_mean"]
            metrics[f"regret_empirical_mean_b{b}"] = row["empirical_regret_mean"]
            metrics[f"solve_seconds_mean_b{b}"] = row["solve_s_mean"]
        return metrics

    def _notes(self, metrics: dict[str, float]) -> list[str]:
        settings = self.settings
        return [
            f"Certified regret: exact maximum of u_i(b_i, v_-i) - u_i(v) over the report space "
            f"({settings.backend}, {settings.bounds} bounds, relative gap {settings.mip_gap:g}, "
            f"time limit {settings.time_limit:g} s per instance), re-evaluated by the network's "
            f"forward pass; mean (std) over the {int(metrics['certified'])} certified instances "
            f"of {int(metrics['instances'])} ({int(metrics['certified_profiles'])} profiles x "
            "bidders).",
            f"Empirical regret: {self.attacker.describe()} (truthful start included) on the "
            "same profiles and bidders, averaged over the same certified instances; Emp./Cert. "
            "is the ratio of the means.",
            f"Unknown (limit reached, interval [incumbent, bound] only, no certificate): "
            f"{int(metrics['unknown'])}, largest sound upper bound on their regret in "
            f"instances.csv (regret_upper; max over solved instances "
            f"{metrics['regret_upper_max']:.4g}); failed (infeasible / unbounded / solver error "
            f"/ numerical mismatch / unsupported: no solver for the program): "
            f"{int(metrics['failed'])}. See instances.csv.",
            f"Revenue: mean (std) of the payments over {int(metrics['revenue_profiles'])} "
            "held-out profiles (eval mode: clipped payments); on them the same attacker gives "
            f"regret_mean {metrics['regret_mean']:.4g} per bidder (metrics.json).",
            "Solve time: solver wall time per (profile, bidder), one thread per worker.",
        ]


def attack_in_float32(attacker, mechanism, env, types: Types, seed: int) -> AttackResult:
    """The stress test on a float32 copy of the float64 network, its finds re-scored in float64.

    The certificate's network runs in float64 (the MIP's precision); the search itself does not
    need it and runs about twice as fast in float32. The misreports it finds are evaluated again
    on the float64 network, so the regret reported next to the certificate is that network's.

    Args:
        attacker: the stress-test attacker.
        mechanism: the float64 network (eval mode).
        env: the environment.
        types: profiles with float64 ``values`` ``[P, n, m]``.
        seed: the attacker's restarts.

    Returns:
        Misreports ``[P, n, m]``, utilities and truthful utilities ``[P, n]`` in float64, with
        the attacker's budget.

    """
    fast = copy.deepcopy(mechanism).float()
    single = Types(types.values.float(), {k: v.float() for k, v in types.public.items()})
    found = attacker.attack(fast, env, single, make_generator(seed, CPU))
    misreports = found.misreports.double()
    with torch.no_grad():
        utility = deviation_utility(mechanism, env, types, misreports.unsqueeze(0))[0]
    truthful = attacker.truthful_utility(mechanism, env, types)
    return AttackResult(misreports, utility, truthful, found.budget, found.curve, found.curve_cost)


def instance_records(
    tol, mechanism, values, profiles_idx, bidders, results, unstable, truthful, pgd_regret, pgd_x
) -> list[dict]:
    """Per-instance records; certified misreports re-evaluated by the torch forward pass.

    Args:
        tol: largest program vs forward-pass difference of a certificate.
        mechanism: the network (float64, eval mode).
        values: ``[P, n, m]`` true values.
        profiles_idx: ``[N]`` profile of each instance.
        bidders: ``[N]`` deviating bidder of each instance.
        results: ``N`` solver results.
        unstable: ``N`` unstable ReLU counts.
        truthful: ``[P, n]`` truthful utilities.
        pgd_regret: ``[P, n]`` attacker gains.
        pgd_x: ``[P, n, m]`` attacker misreports.

    """
    N, m = len(bidders), values.shape[-1]
    reports = torch.zeros(N, m, dtype=torch.float64)
    for k, r in enumerate(results):
        if r.report is not None:
            reports[k] = torch.from_numpy(np.asarray(r.report, dtype=np.float64))
    pidx = torch.from_numpy(profiles_idx)
    bidx = torch.from_numpy(bidders)
    u_mip, a_mip, p_mip = utility_at(mechanism, values[pidx], bidx, reports)
    records = []
    for k, r in enumerate(results):
        p, i = int(profiles_idx[k]), int(bidders[k])
        u_true = float(truthful[p, i])
        pgd = float(pgd_regret[p, i])
        status, note = r.status, ""
        forward_u = float(u_mip[k]) if r.report is not None else math.nan
        err = math.nan
        if r.report is not None:
            err = max(
                abs(forward_u - r.objective),
                float((a_mip[k] - torch.from_numpy(r.allocation)).abs().max()),
                abs(float(p_mip[k]) - r.payment),
            )
        if status == "optimal":
            if not err <= tol:
                status, note = "numerical", f"program and forward pass differ by {err:.2e}"
            elif pgd + u_true > r.bound + tol:
                status, note = "numerical", "PGD beat the solver's bound"
        certified = max(forward_u - u_true, 0.0) if status == "optimal" else math.nan
        bounded = status in ("optimal", "unknown")
        records.append(
            {
                "profile": p,
                "bidder": i,
                "values": [float(x) for x in values[p, i]],
                "status": status,
                "solver_status": r.solver_status,
                "note": note,
                "truthful_utility": u_true,
                "certified_utility": forward_u if status == "optimal" else math.nan,
                "certified_regret": certified,
                "regret_lower": max(r.objective - u_true, 0.0)
                if bounded and math.isfinite(r.objective)
                else math.nan,
                "regret_upper": max(r.bound - u_true, 0.0)
                if bounded and math.isfinite(r.bound)
                else math.nan,
                "pgd_regret": pgd,
                "certified_report": [float(x) for x in reports[k]] if r.report is not None else [],
                "pgd_report": [float(x) for x in pgd_x[p, i]],
                "encoding_error": err,
                "seconds": r.seconds,
                "nodes": r.nodes,
                "gap": r.gap,
                "bound": r.bound,
                "objective": r.objective,
                "unstable_relus": unstable[k],
            }
        )
    return records


def write_instances(instances: list[dict], path: Path) -> Path:
    """``instances.csv``: one row per (profile, bidder), vectors spread over columns."""
    fields = [k for k in instances[0] if k not in ("values", "certified_report", "pgd_report")]
    m = len(instances[0]["values"])
    header = [
        *fields,
        *[f"value_{j}" for j in range(m)],
        *[f"certified_report_{j}" for j in range(m)],
        *[f"pgd_report_{j}" for j in range(m)],
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in instances:
            report = r["certified_report"] or [math.nan] * m
            writer.writerow(
                [r[k] for k in fields] + list(r["values"]) + list(report) + list(r["pgd_report"])
            )
    return path


def load_instances(path: Path) -> list[dict]:
    """Read ``instances.csv`` back (numbers as floats, for analysis and tests)."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                pass
    return rows
