"""``auctionlab train``: fit a learned mechanism, validate it, checkpoint and log everything."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

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
    save_checkpoint,
    save_config,
    setup_runtime,
    write_json,
)
from auctionlab.tracking import Tracker
from auctionlab.training import Trainer
from auctionlab.utils import make_generator


def prepare(cfg: DictConfig) -> tuple[Trainer, object, torch.device, dict[str, str]]:
    """Build and check everything a training run needs; raises ``ConfigError`` on bad input.

    Returns:
        The trainer, the validation attacker, the device and the Hydra choices.

    """
    device = setup_runtime(cfg)
    env, mechanism = build_env_and_mechanism(cfg)
    picked = choices()
    if not mechanism.learnable:
        raise ConfigError(
            f"mechanism={picked.get('mechanism', mechanism.config_name)} is a fixed rule with "
            "nothing to train; stress-test it with `auctionlab evaluate mechanism=...`"
        )
    attacker = build(cfg.attacker, "attacker")
    constraint = build(cfg.trainer.constraint, "trainer.constraint")
    num_samples = cfg.train.num_samples
    trainer = Trainer(
        mechanism,
        env,
        attacker,
        constraint,
        iterations=integer(cfg, "train.iterations", 1),
        batch_size=integer(cfg, "train.batch_size", 1),
        num_samples=None if num_samples is None else integer(cfg, "train.num_samples", 1),
        lr=float(cfg.trainer.lr),
        optimizer=str(cfg.trainer.optimizer),
        cache_misreports=bool(cfg.train.cache_misreports),
        log_every=integer(cfg, "train.log_every", 1),
        device=device,
        seed=integer(cfg, "seed"),
        progress=progress_enabled(cfg),
    )
    if cfg.get("resume"):
        state = load_checkpoint(Path(str(cfg.resume)) / "checkpoint.pt", device)
        try:
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"resume={cfg.resume}: checkpoint does not fit this config ({err})"
            ) from err
    integer(cfg, "train.checkpoint_every", 0)
    integer(cfg, "validation.profiles", 1)
    validation_attacker = build(cfg.validation.attacker, "validation.attacker")
    return trainer, validation_attacker, device, picked


def run(cfg: DictConfig) -> dict[str, float]:
    """Train ``cfg.mechanism`` on ``cfg.env``; returns the metrics written to metrics.json."""
    trainer, validation_attacker, device, picked = prepare(cfg)
    env, mechanism, show = trainer.env, trainer.mechanism, trainer.progress
    out = run_dir()
    checkpoint = out / "checkpoint.pt"
    tags = {"task": "train", "run_dir": str(out.resolve()), "device": str(device)}
    if cfg.get("resume"):
        tags["resumed_from"] = str(Path(str(cfg.resume)).resolve())
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    name = f"train {picked.get('mechanism', '')} {picked.get('env', env.name)} seed={cfg.seed}"
    with Tracker(cfg, cfg.tracking, name, tags) as tracker:
        save_config(cfg, out)
        write_json(out / "choices.json", picked)
        every = int(cfg.train.checkpoint_every)

        def on_log(metrics: dict[str, float], step: int) -> None:
            tracker.log_metrics(metrics, step)
            if every and step % every == 0:
                save_checkpoint(trainer.state_dict(), checkpoint)

        log.info(
            "training %s on %s for %d iterations (%s)",
            type(mechanism).__name__,
            env.name,
            trainer.iterations,
            device,
        )
        summary = trainer.fit(on_log)
        save_checkpoint(trainer.state_dict(), checkpoint)

        val_types = env.sample(
            int(cfg.validation.profiles), make_generator(int(cfg.validation.seed), device)
        )
        validation_attacker.progress = show
        metrics, curve = evaluate_mechanism(
            mechanism,
            env,
            validation_attacker,
            val_types,
            make_generator(int(cfg.validation.seed) + 1, device),
            prefix="val_",
        )
        metrics.update(summary)
        metrics["iterations"] = float(trainer.iteration)
        write_json(out / "metrics.json", metrics)
        files = write_curve(curve, out, f"{env.name} {picked.get('mechanism', '')}: validation")
        tracker.log_metrics(metrics, trainer.iteration)
        tracker.log_artifacts([out / "config.yaml", out / "metrics.json", checkpoint, *files])
    log.info(
        "done: revenue %.4f, regret %.2e (validation attacker: %d restarts x %d steps, %d profiles)"
        " -> %s",
        metrics["val_revenue"],
        metrics["val_regret_mean"],
        metrics["val_attack_restarts"],
        metrics["val_attack_steps"],
        metrics["val_profiles"],
        out,
    )
    return metrics
