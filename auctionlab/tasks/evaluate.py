"""``auctionlab evaluate``: stress-test a trained run or a classical mechanism."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError
from auctionlab.evaluation import evaluate_mechanism, write_curve
from auctionlab.tasks.common import (
    build,
    build_env_and_mechanism,
    choices,
    integer,
    load_checkpoint,
    log,
    progress_enabled,
    run_dir,
    save_config,
    setup_runtime,
    sha256_file,
    write_json,
)
from auctionlab.tracking import Tracker
from auctionlab.utils import make_generator


def load_trained(run: str, device):
    """Env and mechanism of a finished ``train`` run directory, weights loaded."""
    directory = Path(run).expanduser()
    config = directory / "config.yaml"
    if not config.exists():
        raise ConfigError(f"run={run}: not a train run directory (no config.yaml)")
    failure = directory / "failure.json"
    if failure.exists():
        reason = json.loads(failure.read_text()).get("reason", "see failure.json")
        raise ConfigError(f"run={run}: that training failed ({reason}); its weights are no result")
    if not (directory / "metrics.json").exists():
        raise ConfigError(
            f"run={run}: training has not finished (no metrics.json); finish it with "
            f"`auctionlab train resume={run}`"
        )
    train_cfg = OmegaConf.load(config)
    env, mechanism = build_env_and_mechanism(train_cfg)
    state = load_checkpoint(directory / "checkpoint.pt", device)
    mechanism.load_state_dict(state["mechanism"])
    picked_path = directory / "choices.json"
    picked = json.loads(picked_path.read_text()) if picked_path.exists() else {}
    picked.setdefault("mechanism", type(mechanism).__name__.lower())
    # Deployed form: e.g. regretnet_sparsemax clips its free payments only in eval mode.
    return env, mechanism.to(device).eval(), picked


def prepare(cfg: DictConfig):
    """Build and check the mechanism, env and attacker; raises ``ConfigError`` on bad input.

    Returns:
        ``(env, mechanism, mechanism_name, label, attacker, device, choices)``.

    """
    device = setup_runtime(cfg)
    picked = choices()
    if cfg.run:
        env, mechanism, trained_choices = load_trained(str(cfg.run), device)
        # Tag the evaluation with what was evaluated, not with evaluate.yaml's defaults.
        picked.update(trained_choices)
        mechanism_name = trained_choices["mechanism"]
        label = f"{mechanism_name} ({Path(str(cfg.run)).name})"
    else:
        env, mechanism = build_env_and_mechanism(cfg)
        mechanism = mechanism.to(device)
        if mechanism.learnable:
            raise ConfigError(
                f"mechanism={picked.get('mechanism', mechanism.config_name)} is learned: pass "
                "run=<train run dir> to evaluate trained weights"
            )
        mechanism_name = picked.get("mechanism", mechanism.config_name)
        label = mechanism_name
    attacker = build(cfg.attacker, "attacker")
    if getattr(attacker, "name", "") == "local":
        raise ConfigError(
            "attacker=local searches only next to the truth (a training device): stress tests "
            "need attacker=pgd or random; evaluate reports the local LIC metrics anyway"
        )
    attacker.progress = progress_enabled(cfg)
    integer(cfg, "profiles", 1)
    integer(cfg, "profile_seed")
    if cfg.get("wdp_instances") is not None:
        integer(cfg, "wdp_instances", 0)
    return env, mechanism, mechanism_name, label, attacker, device, picked


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate; returns the metrics written to metrics.json."""
    env, mechanism, mechanism_name, label, attacker, device, picked = prepare(cfg)
    out = run_dir()
    tags = {
        "task": "evaluate",
        "run_dir": str(out.resolve()),
        "device": str(device),
        "evaluated": str(cfg.run or mechanism_name),
    }
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    if cfg.run:  # exactly which weights these numbers belong to (verified when loaded)
        tags["checkpoint_sha256"] = sha256_file(Path(str(cfg.run)) / "checkpoint.pt")
    with Tracker(cfg, cfg.tracking, f"evaluate {label} {env.name}", tags) as tracker:
        save_config(cfg, out)
        types = env.sample(int(cfg.profiles), make_generator(int(cfg.profile_seed), device))
        log.info(
            "evaluating %s on %s: %d profiles, attacker %s",
            label,
            env.name,
            int(cfg.profiles),
            attacker.describe(),
        )
        metrics, curve = evaluate_mechanism(
            mechanism,
            env,
            attacker,
            types,
            make_generator(int(cfg.seed), device),
            wdp_instances=int(cfg.get("wdp_instances") or 0),
        )
        files = write_curve(curve, out, f"{env.name} {label}: {attacker.describe()}")
        write_json(out / "metrics.json", metrics)
        report = out / "evaluation.md"
        report.write_text(render_report(label, env.name, attacker.describe(), metrics, curve))
        tracker.log_metrics(metrics)
        tracker.log_artifacts([out / "config.yaml", out / "metrics.json", report, *files])
    print(render_report(label, env.name, attacker.describe(), metrics, curve))
    return metrics


def render_report(label: str, env: str, budget: str, metrics: dict, curve: list[dict]) -> str:
    """Markdown summary: headline metrics (regret with its attacker budget) and the curve."""
    lines = [
        f"# Evaluation of {label} on {env}",
        "",
        f"Attacker: {budget}, truthful report among the starts; "
        f"{int(metrics['profiles'])} held-out profiles.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "revenue",
        "revenue_se",
        "welfare",
        "regret_mean",
        "regret_se",
        "regret_max",
        "regret_q90",
        "regret_q99",
        "ir_violation_mean",
        "ir_violation_max",
    ):
        lines.append(f"| {key} | {metrics[key]:.6g} |")
    if curve:
        lines += [
            "",
            "Regret vs attacker budget:",
            "",
            "| restarts | steps | mean regret | max regret |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {int(r['restarts'])} | {int(r['steps'])} | {r['regret_mean']:.6g} | "
            f"{r['regret_max']:.6g} |"
            for r in curve
        ]
    return "\n".join(lines) + "\n"
