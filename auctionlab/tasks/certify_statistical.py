"""``auctionlab certify certifier=statistical``: holdout certificates of seed 000 §6.

``run=<train run>`` certifies trained weights; ``mechanism=<classical> env=...`` a fixed rule.
The holdout is drawn from ``certifier.holdout_seed``, checked against every seed the training
used and, row by row (SHA-256 of each profile), against the regenerated training, validation
and dual-step sets: a holdout that shares any profile with them is refused. Outputs
(``certificate.json`` / ``.md``, ``per_sample.csv``, ``regret_vs_budget.csv/.png``,
``metrics.json``) are logged to MLflow.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from auctionlab.attackers.random import RandomAttacker
from auctionlab.certify.statistical import (
    SLACKS,
    PortfolioOracle,
    certificate_bounds,
    exact_oracle,
    ir_range,
    mean_upper_bounds,
    mip_regret_upper,
    projected_gradient_norm,
    regret_range,
)
from auctionlab.errors import ConfigError
from auctionlab.evaluation import write_curve
from auctionlab.runs import load_trained
from auctionlab.tasks.common import (
    build_env_and_mechanism,
    choices,
    integer,
    log,
    progress_enabled,
    run_dir,
    save_config,
    setup_runtime,
    sha256_file,
    write_json,
)
from auctionlab.tracking import Tracker
from auctionlab.types import Types
from auctionlab.utils import make_generator

ORACLES = ("pgd", "exact", "random")
#: How the oracle gap eta is obtained: a stronger adversary (``estimated``), MIP best
#: responses (``exact``: regretnet_sparsemax only), or exact where the MIP applies (``auto``).
ETAS = ("estimated", "exact", "auto")


def _fraction(cfg: DictConfig, key: str, low_open: bool = True) -> float:
    value = OmegaConf.select(cfg, key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} must be a number in (0, 1)") from None
    if not (0 < number < 1 if low_open else 0 <= number <= 1):
        raise ConfigError(f"{key}={value} must be in {'(0, 1)' if low_open else '[0, 1]'}")
    return number


def check_certifier(cfg: DictConfig) -> dict:
    """Every ``certifier.*`` option checked; returns them as plain values (one-line errors)."""
    c = cfg.certifier
    delta = _fraction(cfg, "certifier.delta")
    split = {k: _fraction(cfg, f"certifier.delta_split.{k}", False) for k in ("regret", "ir")}
    split["fairness"] = _fraction(cfg, "certifier.delta_split.fairness", False)
    if sum(split.values()) > 1 + 1e-12 or split["regret"] <= 0 or split["ir"] <= 0:
        raise ConfigError(
            f"certifier.delta_split={split}: shares must be > 0 (regret, ir) and sum to <= 1"
        )
    if str(c.slack) not in SLACKS:
        raise ConfigError(
            f"certifier.slack={c.slack} is not valid; choose one of {', '.join(SLACKS)}"
        )
    if str(c.oracle) not in ORACLES:
        raise ConfigError(
            f"certifier.oracle={c.oracle} is not valid; choose one of {', '.join(ORACLES)}"
        )
    steps = list(c.step_sizes)
    if not steps or any(not float(s) > 0 for s in steps):
        raise ConfigError(f"certifier.step_sizes={steps} must be a non-empty list of numbers > 0")
    eta = _choice(cfg, "certifier.eta", ETAS)
    eta_profiles = c.get("eta_profiles")
    if eta_profiles is not None:
        eta_profiles = integer(cfg, "certifier.eta_profiles", 1)
    budgets = [tuple(int(v) for v in b) for b in c.budget_curve]
    if any(len(b) != 2 or b[0] < 1 or b[1] < 0 for b in budgets):
        raise ConfigError(
            f"certifier.budget_curve={OmegaConf.to_container(c.budget_curve)} must list "
            "[restarts >= 1, steps >= 0] pairs"
        )
    return {
        "delta": delta,
        "split": split,
        "slack": str(c.slack),
        "oracle": str(c.oracle),
        "random_oracle_samples": integer(cfg, "certifier.random_oracle_samples", 1),
        "random_ablation": bool(c.get("random_ablation", False)),
        "eta": eta,
        "eta_profiles": eta_profiles,
        "mip": _mip_settings(cfg) if eta != "estimated" else None,
        "mip_workers": integer(cfg, "certifier.mip.workers", 0),
        "holdout_profiles": integer(cfg, "certifier.holdout_profiles", 2),
        "holdout_seed": integer(cfg, "certifier.holdout_seed"),
        "restarts": integer(cfg, "certifier.restarts", 0),
        "steps": integer(cfg, "certifier.steps", 0),
        "corners": integer(cfg, "certifier.corners", 0),
        "step_sizes": [float(s) for s in steps],
        "final_step_size": None if c.final_step_size is None else float(c.final_step_size),
        "gap_profiles": integer(cfg, "certifier.gap.profiles", 0),
        "gap_restarts_factor": integer(cfg, "certifier.gap.restarts_factor", 1),
        "gap_steps_factor": integer(cfg, "certifier.gap.steps_factor", 1),
        "stationarity_tol": float(c.gap.stationarity_tol),
        "curve_profiles": integer(cfg, "certifier.curve_profiles", 0),
        "budget_curve": budgets,
        "train_profiles": integer(cfg, "certifier.train_profiles", 0),
        "stress_profiles": integer(cfg, "certifier.stress.profiles", 0),
        "perturbation": float(c.stress.perturbation),
        "random_samples": integer(cfg, "certifier.stress.random_samples", 1),
        "slices": integer(cfg, "certifier.stress.slices", 1),
        "chunk_size": integer(cfg, "certifier.chunk_size", 1),
        "dtype": {"float32": torch.float32, "float64": torch.float64}[
            _choice(cfg, "certifier.dtype", ("float32", "float64"))
        ],
    }


def _mip_settings(cfg: DictConfig):
    """``certifier.mip.*`` as the MIP certifier's ``SolverSettings`` (checked)."""
    from auctionlab.certify.mip import SolverSettings

    node = cfg.certifier.mip
    bounds = _choice(cfg, "certifier.mip.bounds", ("ibp", "lp"))
    numbers = {}
    for key in ("time_limit", "mip_gap"):
        value = OmegaConf.select(cfg, f"certifier.mip.{key}")
        try:
            numbers[key] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"certifier.mip.{key}={value} must be a number > 0") from None
        if not numbers[key] > 0:
            raise ConfigError(f"certifier.mip.{key}={value} must be > 0")
    return SolverSettings(
        backend=str(node.backend),
        bounds=bounds,
        time_limit=numbers["time_limit"],
        mip_gap=numbers["mip_gap"],
        threads=1,
    )


def _eta_mode(options: dict, mechanism, label: str) -> str:
    """``estimated`` or ``exact`` for ``certifier.eta`` (``auto``: exact where a MIP applies).

    Raises:
        ConfigError: ``eta=exact`` for a network the MIP cannot encode, or without a solver.

    """
    from auctionlab.solvers.backends import check_backend, resolve_backend
    from auctionlab.solvers.mip_encoding import NetworkSpec

    if options["eta"] == "estimated" or options["oracle"] == "exact":
        return "estimated" if options["oracle"] != "exact" else "closed_form"
    try:
        spec = NetworkSpec.from_mechanism(mechanism)
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


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = str(OmegaConf.select(cfg, key))
    if value not in allowed:
        raise ConfigError(f"{key}={value} is not valid; choose one of {', '.join(allowed)}")
    return value


def prepare(cfg: DictConfig) -> dict:
    """Load or build the mechanism and check every option; ``ConfigError`` before any work."""
    options = check_certifier(cfg)
    device = setup_runtime(cfg)
    picked = choices()
    if cfg.get("run"):
        if cfg.get("mechanism") is not None:
            raise ConfigError("certify: pass either run=<train run> or mechanism=<classical>")
        env, mechanism, picked_run = load_trained(str(cfg.run), torch.device("cpu"))
        picked.update(picked_run)
        train_cfg = OmegaConf.load(Path(str(cfg.run)) / "config.yaml")
    else:
        if cfg.get("mechanism") is None:
            raise ConfigError(
                "certifier=statistical needs run=<train run dir> or mechanism=<classical> env=..."
            )
        env, mechanism = build_env_and_mechanism(cfg)
        if mechanism.learnable:
            raise ConfigError(
                f"mechanism={picked.get('mechanism', mechanism.config_name)} is learned: pass "
                "run=<train run dir> to certify trained weights"
            )
        train_cfg = None
    if options["oracle"] == "exact" and exact_oracle(mechanism) is None:
        raise ConfigError(
            f"certifier.oracle=exact has no closed form for mechanism="
            f"{picked.get('mechanism', mechanism.config_name)} (first_price only); use pgd"
        )
    options["eta_mode"] = _eta_mode(
        options, mechanism, picked.get("mechanism", mechanism.config_name)
    )
    used = _training_seeds(train_cfg)
    if options["holdout_seed"] in used:
        raise ConfigError(
            f"certifier.holdout_seed={options['holdout_seed']} is a seed the training used "
            f"({used[options['holdout_seed']]}); pick another"
        )
    mechanism = mechanism.to(dtype=options["dtype"]).eval()
    for p in mechanism.parameters():
        p.requires_grad_(False)
    return {
        "env": env,
        "mechanism": mechanism,
        "options": options,
        "device": device,
        "choices": picked,
        "train_cfg": train_cfg,
    }


def _training_seeds(train_cfg: DictConfig | None) -> dict[int, str]:
    """Every seed a train run drew profiles or restarts from, with what it drew."""
    if train_cfg is None:
        return {}
    seeds = {int(train_cfg.seed): "training data and restarts (seed)"}
    seeds[int(train_cfg.validation.seed)] = "validation profiles (validation.seed)"
    seeds[int(train_cfg.validation.seed) + 1] = "validation restarts (validation.seed + 1)"
    heldout = OmegaConf.select(train_cfg, "trainer.constraint.heldout_seed")
    if heldout is not None:
        seeds[int(heldout)] = "dual-step pool (trainer.constraint.heldout_seed)"
        seeds[int(heldout) + 1] = "dual-step restarts (trainer.constraint.heldout_seed + 1)"
    return seeds


def _row_hashes(values: Tensor) -> set[bytes]:
    flat = values.detach().to(torch.float64).reshape(values.shape[0], -1).cpu().numpy()
    return {hashlib.sha256(row.tobytes()).digest() for row in flat}


def _dataset_hash(values: Tensor) -> str:
    array = values.detach().to(torch.float64).contiguous().cpu().numpy()
    return hashlib.sha256(array.tobytes()).hexdigest()


def training_sets(env, train_cfg: DictConfig | None) -> dict[str, Types | str]:
    """The profiles a train run saw, regenerated from its recorded seeds (CPU generators)."""
    if train_cfg is None:
        return {}
    sets: dict[str, Types | str] = {}
    num = train_cfg.train.num_samples
    if num is not None:
        sampler = getattr(env, "sample_training", env.sample)
        sets["training"] = sampler(
            int(num), make_generator(int(train_cfg.seed), torch.device("cpu"))
        )
    else:
        sets["training"] = f"fresh draws from seed {int(train_cfg.seed)} (not regenerable)"
    sets["validation"] = env.sample(
        int(train_cfg.validation.profiles),
        make_generator(int(train_cfg.validation.seed), torch.device("cpu")),
    )
    heldout = OmegaConf.select(train_cfg, "trainer.constraint.heldout_seed")
    if heldout is not None:
        sets["dual_pool"] = env.sample(
            int(train_cfg.trainer.constraint.heldout_profiles),
            make_generator(int(heldout), torch.device("cpu")),
        )
    return sets


def mechanism_hash(mechanism, run: str | None, cfg: DictConfig) -> dict[str, str]:
    """SHA-256 of the weights (and of the checkpoint file), or of a classical rule's config."""
    digest = hashlib.sha256(type(mechanism).__qualname__.encode())
    for name, tensor in sorted(mechanism.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float64).cpu().numpy().tobytes())
    out = {"state_sha256": digest.hexdigest(), "class": type(mechanism).__qualname__}
    if run:
        out["checkpoint_sha256"] = sha256_file(Path(run) / "checkpoint.pt")
        out["run"] = str(Path(run).resolve())
    else:
        config = OmegaConf.to_yaml(cfg.mechanism, resolve=True) + OmegaConf.to_yaml(cfg.env)
        out["config_sha256"] = hashlib.sha256(config.encode()).hexdigest()
    return out


def run(cfg: DictConfig) -> dict[str, float]:
    """Certify; writes the certificate report and logs it to MLflow."""
    parts = prepare(cfg)
    env, mechanism, o = parts["env"], parts["mechanism"], parts["options"]
    picked, train_cfg = parts["choices"], parts["train_cfg"]
    dtype, cpu = o["dtype"], torch.device("cpu")
    out = run_dir()
    label = picked.get("mechanism", type(mechanism).__name__)
    tags = {"task": "certify", "certifier": "statistical", "run_dir": str(out.resolve())}
    if cfg.get("run"):
        tags["certified"] = str(cfg.run)
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    show = progress_enabled(cfg)
    with Tracker(cfg, cfg.tracking, f"certify statistical {label} {env.name}", tags) as tracker:
        save_config(cfg, out)
        started = time.perf_counter()
        holdout = env.sample(o["holdout_profiles"], make_generator(o["holdout_seed"], cpu))
        holdout.values = holdout.values.to(dtype)
        # -- holdout discipline: row-level disjointness from everything training saw ---------
        data = {"holdout": {"profiles": holdout.batch_size, "seed": o["holdout_seed"]}}
        data["holdout"]["sha256"] = _dataset_hash(holdout.values)
        holdout_rows = _row_hashes(holdout.values)
        seen = training_sets(env, train_cfg)
        for name, dataset in seen.items():
            if isinstance(dataset, str):
                data[name] = {"note": dataset}
                continue
            overlap = len(holdout_rows & _row_hashes(dataset.values))
            data[name] = {
                "profiles": dataset.batch_size,
                "sha256": _dataset_hash(dataset.values),
                "overlap_with_holdout": overlap,
            }
            if overlap:
                raise ConfigError(
                    f"certifier.holdout_seed={o['holdout_seed']}: the holdout shares {overlap} "
                    f"profiles with the {name} set; pick another seed"
                )
        data["seeds_used_by_training"] = {str(k): v for k, v in _training_seeds(train_cfg).items()}
        # -- the certification oracle on the holdout -------------------------------------------
        oracle = _portfolio_oracle(o, show)
        if o["oracle"] == "random":  # ablation: a weak, gradient-free oracle certifies
            oracle = RandomAttacker(
                samples=o["random_oracle_samples"], chunk_size=o["chunk_size"], progress=show
            )
        closed_form = exact_oracle(mechanism) if o["oracle"] == "exact" else None
        with torch.no_grad():
            truthful_outcome = mechanism(holdout.values, holdout.public)
            truthful_utility = env.utility(truthful_outcome, holdout.values)
        ir_violation = (-truthful_utility).clamp_min(0.0)  # [N, n]
        revenue = truthful_outcome.payment.sum(-1)
        fairness_of = getattr(env, "fairness", None)
        fairness = fairness_of(truthful_outcome, holdout).detach() if fairness_of else None
        log.info("holdout: %d profiles; oracle: %s", holdout.batch_size, oracle.describe())
        if closed_form is not None:
            regret = closed_form(holdout.values)
            misreports = None
            oracle_budget = {"attacker": "exact (closed form)", "restarts": 0, "steps": 0}
        else:
            result = oracle.attack(mechanism, env, holdout, make_generator(int(cfg.seed), cpu))
            regret = (result.utility - truthful_utility).clamp_min(0.0)  # [N, n]
            misreports = result.misreports
            oracle_budget = oracle.budget
        u_r, u_ir = regret_range(mechanism, env), ir_range(mechanism, env)
        split = o["split"]
        # -- oracle gap: exact MIP best responses, or a stronger adversary + stationarity ---
        if o["eta_mode"] == "exact":
            gap, regret, split = _exact_gap(o, env, mechanism, holdout, regret, misreports, u_r)
        else:
            gap = _oracle_gap(
                cfg, o, env, mechanism, holdout, regret, misreports, closed_form, show
            )
        # -- the certificate ---------------------------------------------------------------------
        u_f = float(getattr(env, "fairness_range", math.inf))
        bounds = certificate_bounds(
            regret,
            ir_violation,
            fairness,
            regret_range=u_r,
            ir_range=u_ir,
            fairness_range=u_f,
            delta=o["delta"],
            split=split,
            slack=o["slack"],
            eta=gap["eta"],
        )
        ablation = None
        if o["random_ablation"] and o["oracle"] != "random" and closed_form is None:
            ablation = _random_certificate(
                o, env, mechanism, holdout, regret, ir_violation, fairness, (u_r, u_ir), show
            )
        distribution = _distribution(regret)
        curve = _budget_curve(o, env, mechanism, holdout, regret, closed_form, show)
        stress = _stress(o, env, mechanism, holdout, regret, closed_form, show)
        train_gap = _train_gap(o, seen, env, mechanism, oracle, regret, closed_form, dtype)
        lipschitz = _lipschitz(mechanism)
        report = {
            "mechanism": {
                "name": label,
                "env": env.name,
                **mechanism_hash(mechanism, cfg.get("run"), cfg),
                "ir_by_design": bool(getattr(mechanism, "ir_by_design", False)),
                "lipschitz": lipschitz,
                "architecture": mechanism.describe() if hasattr(mechanism, "describe") else None,
            },
            "data": data,
            "oracle": {
                "holdout": oracle_budget,
                "kind": "exact" if closed_form is not None else "estimated",
                "eta_kind": gap.get("kind"),
                "gap": gap,
            },
            "revenue": {
                "mean": float(revenue.mean()),
                "se": float(revenue.std() / math.sqrt(revenue.numel())),
                "profiles": holdout.batch_size,
                "objective": _objective(env, truthful_outcome, holdout),
            },
            "certificate": bounds,
            "regret_distribution": distribution,
            "regret_vs_budget": curve,
            "stress_tests": stress,
            "random_oracle_ablation": ablation,
            "train_holdout_gap": train_gap,
            "statement": _statement(bounds, o, gap),
            "seconds": time.perf_counter() - started,
        }
        files = [
            write_json(out / "certificate.json", report),
            _write_markdown(out / "certificate.md", report),
            _write_per_sample(out / "per_sample.csv", regret, ir_violation),
            *write_curve(curve, out, f"{env.name} {label}: regret vs adversary budget"),
        ]
        metrics = _metrics(report)
        files.append(write_json(out / "metrics.json", metrics))
        tracker.log_metrics(metrics)
        tracker.log_artifacts([out / "config.yaml", *files])
    print((out / "certificate.md").read_text())
    return metrics


# -- pieces of the report ---------------------------------------------------------------------
def _exact_gap(o, env, mechanism, holdout, regret, misreports, u_r) -> tuple[dict, Tensor, dict]:
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


def _random_certificate(o, env, mechanism, holdout, regret, ir, fairness, ranges, show) -> dict:
    """The certificate a random-misreport oracle would issue on the same holdout (ablation).

    Seed 000 §9 ablation (iii): random search (``random_oracle_samples`` uniform reports per
    bidder plus the truthful one) replaces the PGD portfolio; its bound uses the same slack and
    delta but no oracle gap, i.e. what one would claim by trusting the weak oracle. Not part of
    the ``1 - delta`` statement.
    """
    attacker = RandomAttacker(
        samples=o["random_oracle_samples"], chunk_size=o["chunk_size"], progress=show
    )
    weak = _attack_regret(attacker, mechanism, env, holdout, 29)
    bounds = certificate_bounds(
        weak,
        ir,
        fairness,
        regret_range=ranges[0],
        ir_range=ranges[1],
        fairness_range=float(getattr(env, "fairness_range", math.inf)),
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


def _oracle_gap(cfg, o, env, mechanism, holdout, regret, misreports, closed_form, show) -> dict:
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
        make_generator(int(cfg.seed) + 7, torch.device("cpu")),
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


def _distribution(regret: Tensor) -> dict:
    """Quantiles and max of per-sample regret, per bidder (tail risk, §6 failure mode 3)."""
    r = regret.double()
    quantiles = (0.5, 0.9, 0.99, 0.999)
    per = {f"q{str(q)[2:]}": [float(v) for v in torch.quantile(r, q, dim=0)] for q in quantiles}
    per["max"] = [float(v) for v in r.max(0).values]
    per["mean"] = [float(v) for v in r.mean(0)]
    per["share_above_0.01"] = [float(v) for v in (r > 0.01).double().mean(0)]
    return per


def _attack_regret(attacker, mechanism, env, types, seed: int) -> Tensor:
    result = attacker.attack(mechanism, env, types, make_generator(seed, torch.device("cpu")))
    return result.gain


def _portfolio_oracle(o: dict, show: bool) -> PortfolioOracle:
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


def _budget_curve(o, env, mechanism, holdout, regret, closed_form, show) -> list[dict]:
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
        gain = _attack_regret(attacker, mechanism, env, sub, 11)
        rows.append(
            {
                "oracle": "pgd",
                "restarts": restarts,
                "steps": steps,
                "regret_mean": float(gain.mean()),
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
            "regret_max_bidder_mean": float(regret[:count].mean(0).max()),
            "profiles": count,
        }
    )
    return rows


def _stress(o, env, mechanism, holdout, regret, closed_form, show) -> dict:
    """Stress tests outside the 1 - delta statement (§6 "known unknowns").

    Random-misreport ablation, perturbed values, and slices of the holdout by total value.
    """
    count = min(o["stress_profiles"], holdout.batch_size)
    if count == 0:
        return {}
    sub = holdout[slice(0, count)]
    random_gain = _attack_regret(
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
        oracle = _portfolio_oracle(o, show)
        perturbed_gain = _attack_regret(oracle, mechanism, env, perturbed, 19)
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


def _train_gap(o, seen, env, mechanism, oracle, regret, closed_form, dtype) -> dict | None:
    """Regret on training profiles vs on the holdout, same oracle (generalisation gap)."""
    training = seen.get("training")
    count = o["train_profiles"]
    if not isinstance(training, Types) or count == 0:
        return None
    sub = training[slice(0, min(count, training.batch_size))]
    sub.values = sub.values.to(dtype)
    if closed_form is not None:
        train_regret = closed_form(sub.values)
    else:
        train_regret = _attack_regret(oracle, mechanism, env, sub, 23)
    return {
        "train_profiles": sub.batch_size,
        "train_regret_mean": float(train_regret.mean()),
        "train_regret_max_bidder_mean": float(train_regret.mean(0).max()),
        "holdout_regret_mean": float(regret.mean()),
        "holdout_regret_max_bidder_mean": float(regret.mean(0).max()),
        "gap": float(regret.mean() - train_regret.mean()),
        "oracle": oracle.describe() if closed_form is None else "exact",
    }


def _objective(env, outcome, holdout) -> dict | None:
    """The env's own objective on the holdout (procurement: minus the buyer's cost)."""
    objective_of = getattr(env, "objective", None)
    if objective_of is None:
        return None
    with torch.no_grad():
        value = float(objective_of(outcome, holdout))
    return {"name": getattr(env, "objective_name", "objective"), "mean": value}


def _lipschitz(mechanism) -> dict | None:
    if not hasattr(mechanism, "lipschitz_terms"):
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


def _statement(bounds: dict, o: dict, gap: dict) -> str:
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


def _metrics(report: dict) -> dict[str, float]:
    cert = report["certificate"]
    gap = report["oracle"]["gap"]
    m = {
        "revenue": report["revenue"]["mean"],
        "revenue_se": report["revenue"]["se"],
        "profiles": float(report["revenue"]["profiles"]),
        "delta": float(cert["delta"]),
        "regret_estimate_max": cert["regret"]["estimate_max"],
        "regret_mean": float(sum(cert["regret"]["estimate"]) / len(cert["regret"]["estimate"])),
        "regret_slack_max": max(cert["regret"]["slack"]),
        "regret_hoeffding_slack": max(cert["regret"]["hoeffding_slack"]),
        "regret_bernstein_slack_max": max(cert["regret"]["bernstein_slack"]),
        "eta": float(gap["eta"]),
        # 1: eta from exact MIP solves (whole holdout or subsample + slack), 0: estimated.
        "eta_exact": float(str(gap.get("kind", "")).startswith(("exact", "estimated from"))),
        "eta_exact_solves": float(gap.get("solves", 0)),
        "regret_bound": cert["regret"]["bound_max"],
        "regret_range": cert["regret"]["range"],
        "ir_estimate_max": cert["ir"]["estimate_max"],
        "ir_slack_max": max(cert["ir"]["slack"]),
        "ir_bound": cert["ir"]["bound_max"],
        "regret_max_sample": max(report["regret_distribution"]["max"]),
        "regret_q99": max(report["regret_distribution"]["q99"]),
        "attack_restarts": float(report["oracle"]["holdout"].get("restarts", 0)),
        "attack_steps": float(report["oracle"]["holdout"].get("steps", 0)),
        "seconds": report["seconds"],
    }
    for i, (est, bound) in enumerate(
        zip(cert["regret"]["estimate"], cert["regret"]["bound"], strict=True)
    ):
        m[f"regret_estimate_b{i}"] = est
        m[f"regret_bound_b{i}"] = bound
    if cert.get("fairness"):
        m["fairness_estimate"] = cert["fairness"]["estimate_max"]
        m["fairness_bound"] = cert["fairness"]["bound_max"]
    if report["train_holdout_gap"]:
        m["train_regret_mean"] = report["train_holdout_gap"]["train_regret_mean"]
        m["train_holdout_gap"] = report["train_holdout_gap"]["gap"]
    if report["revenue"]["objective"]:
        m[report["revenue"]["objective"]["name"]] = report["revenue"]["objective"]["mean"]
    if report["mechanism"]["lipschitz"]:
        m["lipschitz_L"] = report["mechanism"]["lipschitz"]["L_recomputed"]
    if report.get("random_oracle_ablation"):
        ablation = report["random_oracle_ablation"]
        m["random_regret_estimate_max"] = ablation["regret_estimate_max"]
        m["random_regret_bound"] = ablation["regret_bound_no_eta"]
        # the random oracle's own budget, next to its regret (uniform draws, no steps)
        m["random_attack_restarts"] = ablation["oracle"]["restarts"]
        m["random_attack_steps"] = 0.0
        m["random_profiles"] = ablation["profiles"]
    if "share_not_stationary" in gap:
        m["share_not_stationary"] = gap["share_not_stationary"]
    return {k: float(v) for k, v in m.items()}


def _fmt(values: list[float], digits: int = 5) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _write_markdown(path: Path, r: dict) -> Path:
    cert, mech, oracle = r["certificate"], r["mechanism"], r["oracle"]
    gap = oracle["gap"]
    lines = [
        f"# Statistical certificate: {mech['name']} on {mech['env']}",
        "",
        f"**{r['statement']}**",
        "",
        "| constraint | per-bidder estimate | Hoeffding slack | emp. Bernstein slack | slack used "
        "| eta | per-bidder bound | bound (max over bidders) | range U | delta |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("regret", "ir", "fairness"):
        c = cert.get(name)
        if not c:
            lines.append(
                f"| {name} | n/a (the env defines no fairness functional) | | | | | | | | |"
            )
            continue
        lines.append(
            f"| {name} | {_fmt(c['estimate'])} | {_fmt(c['hoeffding_slack'])} "
            f"| {_fmt(c['bernstein_slack'])} | {_fmt(c['slack'])} | {c['eta']:.5f} "
            f"| {_fmt(c['bound'])} | **{c['bound_max']:.5f}** | {c['range']:g} "
            f"| {c['delta']:.4g} ({c['delta_each']:.4g} each) |"
        )
    lines += [
        "",
        f"- Confidence: delta = {cert['delta']} split {cert['delta_split']} "
        f"(unused shares are simply not spent); slack `{cert['slack_method']}`; union bound "
        f"{cert['union_bound']}.",
        f"- Holdout oracle ({oracle['kind']} gap): `{oracle['holdout']}`.",
        f"- Oracle gap eta = {gap['eta']:.3g} ({gap.get('kind')}): "
        + (
            f"stronger oracle `{gap.get('stronger_oracle')}` on {gap.get('profiles')} profiles "
            f"raised mean regret from {gap.get('holdout_regret_on_subsample', 0):.5f} to "
            f"{gap.get('stronger_regret_on_subsample', 0):.5f}; projected-gradient norm mean "
            f"{gap.get('projected_gradient_norm_mean', 0):.3g}, max "
            f"{gap.get('projected_gradient_norm_max', 0):.3g}, share above "
            f"{gap.get('stationarity_tol')}: {gap.get('share_not_stationary', 0):.3f}."
            if gap.get("kind") == "estimated"
            else f"{gap.get('note', '')}"
            + (
                f" MIP solves: {gap['solves']} ({gap['status']}), "
                f"{gap['solve_seconds']:.1f} s; mean regret on them: oracle "
                f"{gap['holdout_regret_on_subsample']:.5f}, exact "
                f"{gap['exact_regret_on_subsample']:.5f}."
                if "solves" in gap
                else ""
            )
        ),
        f"- Revenue (truthful, holdout): {r['revenue']['mean']:.4f} ± {r['revenue']['se']:.4f}.",
        f"- Mechanism: `{mech['class']}`, state SHA-256 `{mech['state_sha256']}`"
        + (
            f", checkpoint SHA-256 `{mech['checkpoint_sha256']}`"
            if "checkpoint_sha256" in mech
            else ""
        )
        + (f", config SHA-256 `{mech['config_sha256']}`" if "config_sha256" in mech else "")
        + ".",
    ]
    if mech.get("lipschitz"):
        lip = mech["lipschitz"]
        lines.append(
            f"- A priori Lipschitz constant L = {lip['L_recomputed']:.4g} ({lip['norm']}); "
            f"stored with the weights: {lip['L_stored']:.4g} (agree: {lip['agree']})."
        )
    lines.append("- Data (SHA-256 of the float64 profile arrays; row-level overlap with holdout):")
    for name, d in r["data"].items():
        if name == "seeds_used_by_training":
            continue
        lines.append(f"  - {name}: {d}")
    dist = r["regret_distribution"]
    lines += [
        "",
        "## Per-sample regret (tail)",
        "",
        "| bidder | mean | q50 | q90 | q99 | q999 | max | share > 0.01 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i in range(len(dist["mean"])):
        lines.append(
            f"| {i} | {dist['mean'][i]:.5f} | {dist['q5'][i]:.5f} | {dist['q9'][i]:.5f} "
            f"| {dist['q99'][i]:.5f} | {dist['q999'][i]:.5f} | {dist['max'][i]:.5f} "
            f"| {dist['share_above_0.01'][i]:.4f} |"
        )
    if r["regret_vs_budget"]:
        lines += [
            "",
            "## Regret vs adversary budget",
            "",
            "| oracle | restarts | steps | mean regret | max over bidders | profiles |",
            "|---|---|---|---|---|---|",
        ]
        for row in r["regret_vs_budget"]:
            lines.append(
                f"| {row['oracle']} | {row['restarts']} | {row['steps']} | "
                f"{row['regret_mean']:.5f} | {row['regret_max_bidder_mean']:.5f} "
                f"| {row['profiles']} |"
            )
    if r["stress_tests"]:
        s = r["stress_tests"]
        lines += [
            "",
            "## Stress tests (not part of the 1 - delta statement)",
            "",
            f"- Random misreports ({s['random_misreports']['samples']} per bidder): mean regret "
            f"{s['random_misreports']['regret_mean']:.5f} vs the oracle's "
            f"{s['random_misreports']['oracle_regret_mean_same_profiles']:.5f} on the same "
            f"{s['profiles']} profiles.",
            f"- Perturbed values (noise sd {s['perturbed_values']['noise_sd_fraction_of_range']} "
            f"of the range): mean regret {s['perturbed_values']['regret_mean']:.5f} (unperturbed "
            f"{s['perturbed_values']['oracle_regret_mean_unperturbed']:.5f}).",
            f"- Worst slice by total value: {s['worst_slice']}.",
        ]
    if r.get("random_oracle_ablation"):
        a = r["random_oracle_ablation"]
        lines += [
            "",
            "## Random-misreport certification (ablation, not part of the statement)",
            "",
            f"Random search ({a['oracle']['restarts']} uniform reports per bidder + truthful) "
            f"on all {a['profiles']} holdout profiles: max-bidder regret estimate "
            f"{a['regret_estimate_max']:.5f} against the main oracle's "
            f"{a['main_oracle_regret_estimate_max']:.5f} ({100 * a['share_of_main_estimate']:.0f}"
            f"%); the bound it would certify without eta: {a['regret_bound_no_eta']:.5f}.",
        ]
    if r["train_holdout_gap"]:
        t = r["train_holdout_gap"]
        lines += [
            "",
            f"## Train vs holdout regret (same oracle)\n\ntrain {t['train_regret_mean']:.5f} "
            f"({t['train_profiles']} training profiles), holdout {t['holdout_regret_mean']:.5f}: "
            f"gap {t['gap']:.5f}.",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_per_sample(path: Path, regret: Tensor, ir: Tensor) -> Path:
    n = regret.shape[1]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [*(f"regret_b{i}" for i in range(n)), *(f"ir_violation_b{i}" for i in range(n))]
        )
        for row in torch.cat([regret, ir], dim=1).double().tolist():
            writer.writerow([f"{v:.8g}" for v in row])
    return path
