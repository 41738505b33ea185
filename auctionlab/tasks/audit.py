"""``auctionlab audit``: write the audit log of a combinatorial mechanism ([lemma2026solver] §8).

``auctionlab audit run=<train dir>`` (a trained solver-backed mechanism) or
``auctionlab audit mechanism=ca_vcg env=ca_2x3``: ``profiles`` held-out bid profiles, one
batch, each logged with scores, allocation, alpha, payments, solver certificate and blocking
sets (``audit.jsonl`` in the run directory, sealed by a hash chain); the header records the
profile seed, so ``auctionlab replay log=<that file>`` regenerates the profiles and re-derives
every record.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from auctionlab.audit import SEED_RANGE, header, records, write_log
from auctionlab.components import build_env_and_mechanism
from auctionlab.errors import ConfigError
from auctionlab.runs import save_config, write_metrics
from auctionlab.tasks.common import choices, integer, log, run_dir, setup_runtime
from auctionlab.tracking import Tracker
from auctionlab.utils import make_generator


def prepare(cfg: DictConfig):
    """Env, mechanism and the configs that rebuild them; ``ConfigError`` on bad input."""
    device = setup_runtime(cfg)
    if cfg.run:
        from auctionlab.runs import load_trained, read_run_config

        env, mechanism, _ = load_trained(str(cfg.run), device)
        trained = read_run_config(str(cfg.run))
        configs = {
            "env": OmegaConf.to_container(trained.env, resolve=True),
            "mechanism": OmegaConf.to_container(trained.mechanism, resolve=True),
        }
    else:
        env, mechanism = build_env_and_mechanism(cfg)
        if mechanism.learnable:
            raise ConfigError("audit: a learned mechanism needs run=<train run dir>")
        configs = {
            "env": OmegaConf.to_container(cfg.env, resolve=True),
            "mechanism": OmegaConf.to_container(cfg.mechanism, resolve=True),
        }
    if not mechanism.auditable:
        raise ConfigError(
            f"audit: mechanism {type(mechanism).__name__} is not a combinatorial mechanism; "
            "audit logs cover env=ca_* mechanisms (solver_backed, ca_vcg, ca_fixed_alpha...)"
        )
    integer(cfg, "profiles", 1)
    seed = integer(cfg, "profile_seed")
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise ConfigError(f"profile_seed={seed} must be a 64-bit integer (a torch generator seed)")
    return env, mechanism.to(device), configs, device


def run(cfg: DictConfig) -> dict[str, float]:
    """Write ``audit.jsonl`` for ``profiles`` held-out profiles; returns summary metrics."""
    env, mechanism, configs, device = prepare(cfg)
    out = run_dir()
    picked = choices()
    tags = {"task": "audit", "run_dir": str(out.resolve()), "audited": str(cfg.run or "")}
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    with Tracker(cfg, cfg.tracking, f"audit {type(mechanism).__name__} {env.name}", tags) as tr:
        save_config(cfg, out)
        reports = env.sample(int(cfg.profiles), make_generator(int(cfg.profile_seed), device))
        rows = records(mechanism, env, reports.values)
        head = header(
            mechanism,
            env,
            configs,
            len(rows),
            str(cfg.run) if cfg.run else None,
            profile_seed=int(cfg.profile_seed),  # replay regenerates the profiles from it
            device=device,
            dtype=reports.values.dtype,
        )
        path = write_log(out / "audit.jsonl", head, rows)
        metrics = {
            "profiles": float(len(rows)),
            "infeasible": float(sum(not r["feasible"] for r in rows)),
            "tied_instances": float(sum(r["certificate"].get("ties", 1) > 1 for r in rows)),
            "losing_bidders_explained": float(sum(len(r["explanations"]) for r in rows)),
            "revenue": sum(sum(r["payments"]) for r in rows) / len(rows),
        }
        write_metrics(out, metrics, tr.provenance)
        tr.log_metrics(metrics)
        tr.log_artifacts([out / "config.yaml", out / "metrics.json", path])
    log.info(
        "audit log of %d profiles -> %s (replay: auctionlab replay log=%s)", len(rows), path, path
    )
    print(path)
    return metrics
