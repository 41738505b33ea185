"""``auctionlab evaluate``: stress-test a trained run or a classical mechanism."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from auctionlab.components import build, build_env_and_mechanism
from auctionlab.conf import chosen_on_command_line
from auctionlab.errors import ConfigError
from auctionlab.evaluation import evaluate_mechanism, write_curve
from auctionlab.reporting.figures import check_figures, evaluation_figures
from auctionlab.reporting.summary import headline_tags, render_evaluation, warn_ir
from auctionlab.runs import (
    MANIFEST,
    load_trained,
    non_finite_keys,
    save_config,
    sha256_file,
    write_manifest,
    write_metrics,
)
from auctionlab.tasks.common import (
    check_applies,
    choices,
    integer,
    log,
    non_finite_failure,
    one_line_write_errors,
    progress_enabled,
    record_objective,
    run_dir,
    run_label,
    setup_runtime,
)
from auctionlab.tracking import Tracker
from auctionlab.utils import make_generator


def prepare(cfg: DictConfig):
    """Build and check the mechanism, env and attacker; raises ``ConfigError`` on bad input.

    Returns:
        ``(env, mechanism, mechanism_name, label, attacker, oracle, device, choices)``;
        ``oracle`` is the reference search (``None``: ``oracle=null``), which may not apply
        to the env (``oracle_skipped``).

    """
    device = setup_runtime(cfg)
    picked = choices()
    if cfg.run:
        # env=<option> on the command line: serve that env (another prior, or another size for
        # a mechanism whose weights fit any size); otherwise the run's own.
        served = cfg.env if chosen_on_command_line("env") else None
        env, mechanism, trained_choices = load_trained(str(cfg.run), device, served)
        trained_env = trained_choices.get("env", env.name)
        # Tag the evaluation with what was evaluated, not with evaluate.yaml's defaults.
        picked.update(trained_choices)
        mechanism_name = trained_choices["mechanism"]
        label = f"{mechanism_name} ({run_label(str(cfg.run))})"
        if served is not None and env.name != trained_env:
            picked.update(env=env.name, trained_env=trained_env)
            label += f" trained on {trained_env}"
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
    if attacker.training_only:
        raise ConfigError(
            f"attacker={attacker.name} {attacker.training_only}: stress tests need attacker=pgd "
            "or random; evaluate reports the local LIC metrics anyway"
        )
    check_applies(attacker, env)
    attacker.progress = progress_enabled(cfg)
    oracle = None
    if cfg.get("oracle") is not None:
        oracle = build(cfg.oracle, "oracle", group="attacker")
        oracle.progress = attacker.progress
    integer(cfg, "profiles", 1)
    integer(cfg, "profile_seed")
    if cfg.get("wdp_instances") is not None:
        integer(cfg, "wdp_instances", 0)
    check_figures([*env.evaluation_figures, *(cfg.get("figures") or [])])
    return env, mechanism, mechanism_name, label, attacker, oracle, device, picked


def oracle_skipped(oracle, env) -> str | None:
    """Why ``evaluate``'s reference search does not run on ``env`` (``None``: it does)."""
    reason = oracle.unsupported(env)
    return None if reason is None else f"no oracle metrics on env {env.name}: {reason}"


@one_line_write_errors
def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate; returns the metrics written to metrics.json (``objective`` included).

    Raises:
        NonFiniteError: a NaN or inf stress-test metric: ``failure.json`` says which, no
            ``metrics.json`` is written and the MLflow run is FAILED.

    """
    env, mechanism, mechanism_name, label, attacker, oracle, device, picked = prepare(cfg)
    out = run_dir()
    tags = {
        "task": "evaluate",
        "run_dir": str(out.resolve()),
        "device": str(device),
        "evaluated": str(cfg.run or mechanism_name),
    }
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    tags.update(headline_tags(env))  # what `auctionlab runs` shows for this family
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
        skipped = None if oracle is None else oracle_skipped(oracle, env)
        if skipped is not None:
            log.info("%s", skipped)
            oracle = None
        metrics, curve = evaluate_mechanism(
            mechanism,
            env,
            attacker,
            types,
            make_generator(int(cfg.seed), device),
            wdp_instances=int(cfg.get("wdp_instances") or 0),
            oracle=oracle,
        )
        # Every stress-test number must be finite (as train's validation); a figure's own
        # extras may be NaN by definition and are written as null with a reason.
        bad = non_finite_keys(metrics)
        if bad:
            raise non_finite_failure(out, bad, "results")
        files = write_curve(curve, out, f"{env.name} {label}: {attacker.describe()}")
        # Figures the env asks for ([zeng2025rpf] Table 2, Figures 1 and 5 for allocation), then
        # those asked for here (figures=[nsw_loss], options in the node of the same name).
        asked = list(cfg.get("figures") or [])
        options = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in asked if k in cfg}
        extra, figures = evaluation_figures(
            mechanism, env, types, out, f"{env.name} {label}", asked, options
        )
        metrics.update(extra)
        files += figures
        objective_tags = record_objective(cfg, metrics)
        write_metrics(out, metrics, tracker.provenance)
        text = render_evaluation(
            label,
            env,
            attacker.describe(),
            metrics,
            curve,
            None if oracle is None else oracle.describe(),
        )
        report = out / "evaluation.md"
        report.write_text(text)
        write_manifest(out)  # last: seals the config and metrics.json
        tracker.log_metrics(metrics)
        tracker.set_tags(objective_tags)
        sealed = [out / "config.yaml", out / "metrics.json", out / MANIFEST]
        tracker.log_artifacts([*sealed, report, *files])
    warn_ir(metrics, where=f"evaluate {label}")
    print(text)
    return metrics
