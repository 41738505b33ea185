"""``auctionlab certify certifier=mip run=<train run>``: exact regret certificates (seed 004).

For ``certifier.profiles`` held-out profiles and every bidder, the certifier solves
``max_{b_i} u_i(b_i, v_-i)`` exactly (a MIP over the ReLU / sparsemax network), re-evaluates
the certified misreport with the torch forward pass and runs the PGD attacker on the same
profiles. A solve that stops at a limit gives an interval ``[incumbent, bound]`` marked
``unknown``, never a certificate; other solver failures are reported per instance.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from auctionlab.certify.mip import SolverSettings, solve_instances, utility_at
from auctionlab.certify.report import (
    mean_std,
    plot_best_bids,
    render_markdown,
    summary_rows,
    write_rows_csv,
)
from auctionlab.errors import ConfigError
from auctionlab.runs import load_trained
from auctionlab.solvers.backends import (
    SolveResult,
    check_backend,
    resolve_backend,
    scip_available,
)
from auctionlab.solvers.mip_encoding import NetworkSpec
from auctionlab.tasks.common import (
    build,
    choices,
    integer,
    log,
    progress_enabled,
    run_dir,
    save_config,
    setup_runtime,
    write_json,
)
from auctionlab.tracking import Tracker
from auctionlab.utils import make_generator

CERTIFIERS = ("mip", "statistical")


def _number(cfg: DictConfig, key: str, minimum: float = 0.0) -> float:
    value = OmegaConf.select(cfg, key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} must be a number") from None
    if not number > minimum and not (number == minimum == 0.0):
        raise ConfigError(f"{key}={value} must be > {minimum}")
    return number


def prepare(cfg: DictConfig) -> dict:
    """Load the run and check the certifier against it; raises ``ConfigError`` before any work."""
    name = str(cfg.certifier.get("name", ""))
    if name not in CERTIFIERS:
        raise ConfigError(
            f"certifier={name} is not implemented by this task; choose one of "
            + ", ".join(CERTIFIERS)
        )
    if name == "statistical":  # seed 000 §6: holdout certificates
        from auctionlab.tasks import certify_statistical

        return certify_statistical.prepare(cfg)
    if not cfg.get("run"):
        raise ConfigError("certify needs run=<train run dir> (a trained regretnet_sparsemax)")
    device = setup_runtime(cfg)
    env, mechanism, picked_run = load_trained(str(cfg.run), torch.device("cpu"))
    try:
        spec = NetworkSpec.from_mechanism(mechanism)
    except ConfigError:
        raise ConfigError(
            f"certifier=mip needs a ReLU / sparsemax network (mechanism=regretnet_sparsemax); "
            f"run={cfg.run} trained mechanism={picked_run.get('mechanism')}"
        ) from None
    backend = resolve_backend(str(cfg.certifier.backend), spec)
    if str(cfg.certifier.backend) == "auto" and backend == "scip" and not scip_available():
        # Optional solver missing: the task still runs (PGD, revenue) and every instance is
        # reported `unsupported`, never a number. An explicit backend fails here instead.
        log.warning(
            "this network's payment is bilinear and needs the SCIP backend, but pyscipopt is "
            "not installed (pip install 'auctionlab[scip]'): no certificate will be computed"
        )
        backend = "unavailable"
    else:
        check_backend(str(cfg.certifier.backend), spec)
    bounds = str(cfg.certifier.bounds)
    if bounds not in ("ibp", "lp"):
        raise ConfigError(f"certifier.bounds={bounds} is not valid; choose one of ibp, lp")
    integer(cfg, "certifier.profiles", 1)
    integer(cfg, "certifier.workers", 0)
    integer(cfg, "certifier.revenue_profiles", 1)
    integer(cfg, "profile_seed")
    time_limit = cfg.certifier.time_limit
    settings = SolverSettings(
        backend=backend,
        bounds=bounds,
        time_limit=math.inf if time_limit is None else _number(cfg, "certifier.time_limit"),
        mip_gap=_number(cfg, "certifier.mip_gap"),
        threads=integer(cfg, "certifier.solver_threads", 1),
    )
    _number(cfg, "certifier.check_tol")
    attacker = build(cfg.attacker, "attacker")
    attacker.progress = progress_enabled(cfg)
    mechanism = mechanism.double().eval()
    picked = choices()
    picked.update(picked_run)
    return {
        "env": env,
        "mechanism": mechanism,
        "spec": spec,
        "settings": settings,
        "attacker": attacker,
        "device": device,
        "choices": picked,
    }


def run(cfg: DictConfig) -> dict[str, float]:
    """Certify; writes instances.csv, certify.{md,csv,json}, metrics.json and the figure."""
    if str(cfg.certifier.get("name", "")) == "statistical":
        from auctionlab.tasks import certify_statistical

        return certify_statistical.run(cfg)
    parts = prepare(cfg)
    env, mechanism, spec = parts["env"], parts["mechanism"], parts["spec"]
    settings, attacker, picked = parts["settings"], parts["attacker"], parts["choices"]
    out = run_dir()
    tags = {"task": "certify", "run_dir": str(out.resolve()), "certified": str(cfg.run)}
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    n_profiles = int(cfg.certifier.profiles)
    with Tracker(
        cfg, cfg.tracking, f"certify {picked.get('mechanism', '')} {env.name}", tags
    ) as tr:
        save_config(cfg, out)
        started = time.perf_counter()
        types = env.sample(n_profiles, make_generator(int(cfg.profile_seed), torch.device("cpu")))
        types.values = types.values.double()
        n = env.n_bidders
        values = types.values  # [P, n, m]
        # Empirical regret on the same profiles: the PGD attacker (budget logged with it).
        log.info("PGD on %d profiles: %s", n_profiles, attacker.describe())
        attack = attacker.attack(
            mechanism, env, types, make_generator(int(cfg.seed), torch.device("cpu"))
        )
        pgd_regret = attack.gain  # [P, n]
        truthful = attack.truthful_utility  # [P, n]
        profiles_idx = np.repeat(np.arange(n_profiles), n)
        bidders = np.tile(np.arange(n), n_profiles)
        np_values = values.numpy()
        starts = None
        if bool(cfg.certifier.warm_start):
            starts = attack.misreports.numpy().reshape(n_profiles * n, -1)
        log.info(
            "certifying %d instances (%d profiles x %d bidders) with %s, %s bounds, %d workers",
            len(bidders),
            n_profiles,
            n,
            settings.backend,
            settings.bounds,
            int(cfg.certifier.workers),
        )
        if settings.backend == "unavailable":
            note = "bilinear program needs SCIP: pip install pyscipopt"
            results = [SolveResult("unsupported", note) for _ in bidders]
            unstable = [0] * len(bidders)
        else:
            results, unstable = solve_instances(
                spec,
                np_values[profiles_idx],
                bidders,
                settings,
                starts=starts,
                workers=int(cfg.certifier.workers),
                progress=progress_enabled(cfg),
            )
        instances = _records(
            cfg,
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
        rev_types = env.sample(
            int(cfg.certifier.revenue_profiles),
            make_generator(int(cfg.profile_seed) + 1, torch.device("cpu")),
        )
        rev_types.values = rev_types.values.double()
        with torch.no_grad():
            revenue = mechanism(rev_types.values).payment.sum(-1)
        revenue_ms = (float(revenue.mean()), float(revenue.std(unbiased=False)))
        # Empirical regret on those held-out profiles too (seed 004 Table 1 measures it on
        # other points than the certified ones), same attacker budget.
        held_out = attacker.attack(
            mechanism, env, rev_types, make_generator(int(cfg.seed) + 1, torch.device("cpu"))
        ).gain
        train_cfg = OmegaConf.load(Path(str(cfg.run)) / "config.yaml")
        setting = {
            "env": env.name,
            "ir": "yes" if spec.payment == "fractional" else "no",
            "relu_reg": "yes" if float(train_cfg.mechanism.get("relu_stability", 0)) > 0 else "no",
            "attack_restarts": attacker.budget["restarts"],
            "attack_steps": attacker.budget["steps"],
        }
        rows = summary_rows(instances, setting, revenue_ms)
        metrics = _metrics(instances, rows, revenue_ms, attacker.budget, n_profiles, cfg)
        metrics["regret_mean"] = float(held_out.mean())
        metrics["regret_max"] = float(held_out.max())
        metrics["profiles"] = float(rev_types.batch_size)
        metrics["seconds"] = time.perf_counter() - started
        notes = _notes(cfg, settings, attacker, metrics)
        files = [
            _write_instances(instances, out / "instances.csv"),
            write_rows_csv(rows, out / "certify.csv"),
            write_json(out / "certify.json", {"rows": rows, "notes": notes, "summary": metrics}),
            write_json(out / "metrics.json", metrics),
        ]
        (out / "certify.md").write_text(
            f"# MIP certificates: {picked.get('mechanism', '')} on {env.name} ({cfg.run})\n\n"
            + render_markdown(rows, notes)
        )
        files.append(out / "certify.md")
        figure = plot_best_bids(
            instances,
            out / "best_bids.png",
            float(cfg.certifier.figure_threshold),
            f"{env.name}: certified best misreports",
        )
        if figure is not None:
            files.append(figure)
        tr.log_metrics(metrics)
        tr.log_artifacts([out / "config.yaml", *files])
    print((out / "certify.md").read_text())
    if metrics["unknown"] or metrics["failed"]:
        log.warning(
            "%d instances unknown (limit hit: interval only), %d failed (see instances.csv)",
            int(metrics["unknown"]),
            int(metrics["failed"]),
        )
    return metrics


def _records(
    cfg, mechanism, values, profiles_idx, bidders, results, unstable, truthful, pgd_regret, pgd_x
) -> list[dict]:
    """Per-instance records; certified misreports re-evaluated by the torch forward pass."""
    tol = float(cfg.certifier.check_tol)
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
                if status in ("optimal", "unknown") and math.isfinite(r.objective)
                else math.nan,
                "regret_upper": max(r.bound - u_true, 0.0)
                if status in ("optimal", "unknown") and math.isfinite(r.bound)
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


def _metrics(instances, rows, revenue, budget, n_profiles, cfg) -> dict[str, float]:
    done = [r for r in instances if r["status"] == "optimal"]
    c_mean, c_std = mean_std([r["certified_regret"] for r in done])
    e_mean, e_std = mean_std([r["pgd_regret"] for r in done])
    e_all, _ = mean_std([r["pgd_regret"] for r in instances])
    seconds = [r["seconds"] for r in instances if math.isfinite(r["seconds"])]
    t_mean, t_std = mean_std(seconds)
    metrics = {
        "revenue": revenue[0],
        "revenue_std": revenue[1],
        "revenue_profiles": float(cfg.certifier.revenue_profiles),
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
        "time_limit": float(cfg.certifier.time_limit or math.inf),
    }
    for row in rows:
        b = row["bidder"]
        metrics[f"regret_certified_mean_b{b}"] = row["certified_regret_mean"]
        metrics[f"regret_empirical_mean_b{b}"] = row["empirical_regret_mean"]
        metrics[f"solve_seconds_mean_b{b}"] = row["solve_s_mean"]
    return metrics


def _notes(cfg, settings: SolverSettings, attacker, metrics) -> list[str]:
    return [
        f"Certified regret: exact maximum of u_i(b_i, v_-i) - u_i(v) over the report space "
        f"({settings.backend}, {settings.bounds} bounds, relative gap {settings.mip_gap:g}, "
        f"time limit {settings.time_limit:g} s per instance), re-evaluated by the network's "
        f"forward pass; mean (std) over the {int(metrics['certified'])} certified instances of "
        f"{int(metrics['instances'])} ({int(metrics['certified_profiles'])} profiles x bidders).",
        f"Empirical regret: {attacker.describe()} (truthful start included) on the same "
        "profiles and bidders, averaged over the same certified instances; Emp./Cert. is "
        "the ratio of the means.",
        f"Unknown (limit reached, interval [incumbent, bound] only, no certificate): "
        f"{int(metrics['unknown'])}; failed (infeasible / unbounded / solver error / numerical "
        f"mismatch / unsupported: no solver for the program): {int(metrics['failed'])}. "
        "See instances.csv.",
        f"Revenue: mean (std) of the payments over {int(metrics['revenue_profiles'])} held-out "
        "profiles (eval mode: clipped payments); on them the same PGD attacker gives "
        f"regret_mean {metrics['regret_mean']:.4g} per bidder (metrics.json).",
        "Solve time: solver wall time per (profile, bidder), one thread per worker.",
    ]


def _write_instances(instances: list[dict], path: Path) -> Path:
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
