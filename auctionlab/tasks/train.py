"""``auctionlab train``: fit a learned mechanism, validate it, checkpoint and log everything."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from auctionlab.components import build, build_env_and_mechanism
from auctionlab.errors import ConfigError, InterruptedRunError, NonFiniteError
from auctionlab.evaluation import evaluate_mechanism, write_allocation_map, write_curve
from auctionlab.reporting.curves import TrainingHistory, training_curves
from auctionlab.reporting.summary import headline_tags, summarize, warn_ir
from auctionlab.runs import (
    MANIFEST,
    checkpoint_interrupted,
    hash_path,
    misfit,
    record_failure,
    resume_state,
    save_checkpoint,
    save_config,
    write_json,
    write_manifest,
    write_metrics,
)
from auctionlab.tasks.common import (
    check_applies,
    choices,
    hydra_output_dir,
    integer,
    log,
    one_line_write_errors,
    progress_enabled,
    record_objective,
    run_dir,
    setup_runtime,
)
from auctionlab.tracking import Tracker, previous_run_id
from auctionlab.training import Trainer
from auctionlab.utils import make_generator

#: Profiles in the input example of the exported MLflow model.
EXAMPLE_PROFILES = 8


def export_model(cfg: DictConfig) -> bool:
    """Whether to log the trained mechanism as an MLflow model (``train.mlflow_model``).

    ``auto`` exports at every scale but ``smoke``: there the export (a ``torch.export`` trace,
    seconds) would cost more than the run, whose numbers are meaningless anyway.
    """
    value = cfg.train.get("mlflow_model", "auto")
    if value == "auto":
        return str(OmegaConf.select(cfg, "scale.name")) != "smoke"
    return bool(value)


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
    if mechanism.teacher_run() is not None:  # mechanisms do not load runs themselves
        from auctionlab.runs import load_trained

        mechanism.set_teacher(load_trained(mechanism.teacher_run(), device)[1])
    attacker = build(cfg.attacker, "attacker")
    check_applies(attacker, env)
    grad = cfg.trainer.get("grad")
    if grad is not None:  # gradient strategy of a mechanism with a discrete forward pass
        choose = mechanism.gradient_strategy
        if choose is None:
            raise ConfigError(
                f"trainer.grad={grad}: mechanism={picked.get('mechanism', mechanism.config_name)}"
                " has no gradient strategies to choose from; use trainer.grad=null"
            )
        attacker = choose(str(grad), attacker)
    constraint = build(cfg.trainer.constraint, "trainer.constraint")
    num_samples = cfg.train.num_samples
    decay_start = cfg.trainer.get("lr_decay_start")
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
        detect_anomaly=bool(cfg.train.get("detect_anomaly", False)),
        lr_decay_start=None if decay_start is None else float(decay_start),
        lr_decay_to=float(cfg.trainer.get("lr_decay_to", 0.1)),
    )
    if cfg.get("resume"):
        state = resume_state(Path(str(cfg.resume)), device, hydra_output_dir())
        try:
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ConfigError(f"resume={cfg.resume}: {misfit(err, cfg, 'this config')}") from err
    integer(cfg, "train.checkpoint_every", 0)
    integer(cfg, "validation.profiles", 1)
    validation_attacker = build(cfg.validation.attacker, "validation.attacker")
    check_applies(validation_attacker, env)
    return trainer, validation_attacker, device, picked


@one_line_write_errors
def run(cfg: DictConfig) -> dict[str, float]:
    """Train ``cfg.mechanism`` on ``cfg.env``; returns the metrics written to metrics.json.

    They include ``objective`` (:func:`~auctionlab.tasks.common.record_objective`), the value
    the console script returns to Hydra.

    Raises:
        NonFiniteError: NaN or inf during training or validation. The last good checkpoint
            is kept, ``failure.json`` says why, and the MLflow run is FAILED.
        InterruptedRunError: Ctrl-C or SIGTERM; a checkpoint of the last full step is saved
            first.

    """
    trainer, validation_attacker, device, picked = prepare(cfg)
    env, mechanism, show = trainer.env, trainer.mechanism, trainer.progress
    out = run_dir()
    checkpoint = out / "checkpoint.pt"
    tags = {"task": "train", "run_dir": str(out.resolve()), "device": str(device)}
    if cfg.get("resume"):
        tags["resumed_from"] = str(Path(str(cfg.resume)).resolve())
        tags["resumed_at_iteration"] = str(trainer.iteration)
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    tags.update(headline_tags(env))  # what `auctionlab runs` shows for this family
    name = f"train {picked.get('mechanism', '')} {picked.get('env', env.name)} seed={cfg.seed}"
    resume_run_id = previous_run_id(cfg.get("resume"), cfg.tracking)
    # From the part before a resume (its seal was checked by prepare): unsealed first, so a
    # resume that fails from here on leaves a run that resumes again, not a broken seal.
    for stale in ("metrics.json", "failure.json", MANIFEST):
        (out / stale).unlink(missing_ok=True)
    with Tracker(cfg, cfg.tracking, name, tags, resume_run_id=resume_run_id) as tracker:
        save_config(cfg, out)
        write_json(out / "choices.json", picked)
        tracker.write_record(out)
        # One row per log point; a resume drops the rows it is about to train again.
        history = TrainingHistory(out, trainer.iteration)
        every = int(cfg.train.checkpoint_every)
        # A resumed run starts from a checkpoint that is known to be good.
        saved = {"iteration": trainer.iteration if cfg.get("resume") else None}

        def on_log(metrics: dict[str, float], step: int) -> None:
            history.append(metrics, step)
            tracker.log_metrics(metrics, step)
            if every and step % every == 0:
                trainer.check_parameters()
                save_checkpoint(trainer.state_dict(), checkpoint)
                saved["iteration"] = step

        log.info(
            "training %s on %s for %d iterations (%s)%s",
            type(mechanism).__name__,
            env.name,
            trainer.iterations,
            device,
            f", resuming at iteration {trainer.iteration}" if trainer.iteration else "",
        )
        if "recipe" in picked:  # the scale's measured schedule for this env and mechanism
            log.info("recipe %s (~recipe trains on the scale's plain budget)", picked["recipe"])
        try:
            summary = trainer.fit(on_log)
            trainer.check_parameters()
        except InterruptedRunError as err:
            raise checkpoint_interrupted(err, trainer.state_dict(), checkpoint, out) from None
        except NonFiniteError as err:
            raise record_failure(out, checkpoint, saved["iteration"], str(err)) from None
        digest = save_checkpoint(trainer.state_dict(), checkpoint)

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
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise record_failure(out, checkpoint, trainer.iteration, f"non-finite validation {bad}")
        metrics.update(summary)
        metrics["iterations"] = float(trainer.iteration)
        try:
            objective_tags = record_objective(cfg, metrics)
        except ConfigError as err:  # the trained weights are in the checkpoint already
            raise ConfigError(
                f"{err} (the checkpoint is kept: `auctionlab train resume={out}` with a valid "
                "objective validates it again without training)"
            ) from None
        # Files first: a logging error after hours of training must not lose the results.
        write_metrics(out, metrics, tracker.provenance)
        label = f"{env.name} {picked.get('mechanism', '')}"
        files = write_curve(curve, out, f"{label}: validation")
        files += write_allocation_map(mechanism, env, out, f"{label}: allocation")
        files += [history.path, training_curves(history, env, metrics, out, label)]
        write_manifest(out)  # last: seals config, choices, checkpoint and metrics
        tracker.set_tags({"checkpoint_sha256": digest, **objective_tags})
        tracker.log_metrics(metrics, trainer.iteration)
        sealed = [out / "config.yaml", out / "metrics.json", out / MANIFEST]
        tracker.log_artifacts([*sealed, checkpoint, hash_path(checkpoint), *files])
        # Last: the run's results are logged whatever happens here.
        if export_model(cfg) and tracker.active:
            if val_types.public:  # the exported function takes the reports alone
                log.info(
                    "no MLflow model: %s takes public inputs (%s) besides the reports",
                    type(mechanism).__name__,
                    ", ".join(val_types.public),
                )
            else:
                tracker.log_model(mechanism, val_types.values[:EXAMPLE_PROFILES])
        # Inside the tracking block, so that the train.log it uploads at the end has these lines.
        # The env's own headline (NSW for allocation, cost for procurement...), never revenue
        # alone, and always with IR violation next to it.
        log.info("done: %s -> %s", summarize(env, metrics, "val_"), out)
        warn_ir(metrics, "val_", where=f"train {picked.get('mechanism', '')}")
    if tracker.logging_error:
        log.warning(
            "MLflow logging failed midway (%s); results are in %s", tracker.logging_error, out
        )
    return metrics
