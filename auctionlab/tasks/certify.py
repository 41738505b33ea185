"""``auctionlab certify certifier=<mip|statistical> run=<train run>``: certify a mechanism.

The certifier is built from ``conf/certifier/<name>.yaml`` (its ``_target_``), like every other
choice; the library does the work (``auctionlab.certify``): ``certifier=mip`` gives exact
per-(profile, bidder) regret certificates ([curry2020certifying]), ``certifier=statistical`` a
holdout certificate of population regret / IR ([lemma2026certified] §6). ``run=`` certifies trained
weights,
``mechanism=<classical> env=...`` a fixed rule. This task composes, calls and logs.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from auctionlab.attackers import Attacker
from auctionlab.certify.base import Certifier, Source
from auctionlab.certify.mip_certifier import load_instances
from auctionlab.components import build, build_env_and_mechanism
from auctionlab.errors import ConfigError
from auctionlab.runs import load_trained, read_run_config, save_config, write_manifest
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
    setup_runtime,
)
from auctionlab.tracking import Tracker

__all__ = ["build_attacker", "build_certifier", "load_instances", "prepare", "run"]


def build_attacker(cfg: DictConfig) -> Attacker:
    """The comparison attacker of the certificate (the ``attacker`` node)."""
    attacker = build(cfg.attacker, "attacker")
    attacker.progress = progress_enabled(cfg)
    return attacker


def build_certifier(cfg: DictConfig, attacker: Attacker | None = None) -> Certifier:
    """The ``certifier`` node's ``_target_``, with the runtime pieces it may use injected.

    Every certifier takes the same injected keywords: the comparison ``attacker`` (built from
    ``attacker`` unless given), ``seed`` (oracle restarts), ``profile_seed`` and ``progress``.
    """
    if attacker is None:
        attacker = build_attacker(cfg)
    certifier = build(
        cfg.certifier,
        "certifier",
        attacker=attacker,
        seed=integer(cfg, "seed"),
        profile_seed=integer(cfg, "profile_seed"),
        progress=progress_enabled(cfg),
    )
    if not isinstance(certifier, Certifier):  # a _target_ outside the contract
        raise ConfigError(
            f"certifier._target_={cfg.certifier.get('_target_')} is not an "
            "auctionlab.certify.base.Certifier"
        )
    return certifier


def _load(cfg: DictConfig, certifier: Certifier, picked: dict) -> tuple:
    """The env, the mechanism and its ``Source`` (a train run, or a classical rule)."""
    if cfg.get("run"):
        if cfg.get("mechanism") is not None:
            raise ConfigError("certify: pass either run=<train run> or mechanism=<classical>")
        env, mechanism, picked_run = load_trained(str(cfg.run), torch.device("cpu"))
        picked.update(picked_run)
        train_cfg = read_run_config(str(cfg.run))
        label = picked.get("mechanism", type(mechanism).__name__)
        return env, mechanism, Source(label, str(cfg.run), train_cfg)
    if cfg.get("mechanism") is None:
        raise ConfigError(
            f"certifier={certifier.name} needs run=<train run dir> (a trained mechanism) or "
            "mechanism=<classical> env=..."
        )
    env, mechanism = build_env_and_mechanism(cfg)
    if mechanism.learnable:
        raise ConfigError(
            f"mechanism={picked.get('mechanism', mechanism.config_name)} is learned: pass "
            "run=<train run dir> to certify trained weights"
        )
    # A classical rule is identified by its resolved config (hashed into the certificate).
    text = OmegaConf.to_yaml(cfg.mechanism, resolve=True) + OmegaConf.to_yaml(cfg.env)
    label = picked.get("mechanism", type(mechanism).__name__)
    return env, mechanism, Source(label, None, None, text)


def prepare(cfg: DictConfig) -> dict:
    """Build the certifier, load the mechanism and check them; ``ConfigError`` before any work.

    Returns:
        ``env``, ``mechanism`` (ready for the certifier), ``certifier``, ``source``,
        ``device``, ``choices`` and the certifier's checked ``options`` (if it has any).

    """
    device = setup_runtime(cfg)
    attacker = build_attacker(cfg)
    certifier = build_certifier(cfg, attacker)
    picked = choices()
    env, mechanism, source = _load(cfg, certifier, picked)
    check_applies(attacker, env)
    mechanism = certifier.check(mechanism, source)
    return {
        "env": env,
        "mechanism": mechanism,
        "certifier": certifier,
        "source": source,
        "device": device,
        "choices": picked,
        "options": dict(certifier.options),
    }


@one_line_write_errors
def run(cfg: DictConfig) -> dict[str, float]:
    """Certify; writes the certificate's files into the run directory and logs them.

    Returns:
        The certificate's metrics (``objective`` included), as written to metrics.json.

    Raises:
        NonFiniteError: a result metric (``Certificate.finite``) is NaN or inf: no certificate
            is written, ``failure.json`` says which, and the MLflow run is FAILED.

    """
    parts = prepare(cfg)
    env, mechanism, certifier = parts["env"], parts["mechanism"], parts["certifier"]
    source, picked = parts["source"], parts["choices"]
    holdout = certifier.holdout(env, source)  # refused here if it overlaps the training data
    out = run_dir()
    tags = {"task": "certify", "certifier": certifier.name, "run_dir": str(out.resolve())}
    if source.run:
        tags["certified"] = source.run
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    name = f"certify {certifier.name} {source.label} {env.name}"
    with Tracker(cfg, cfg.tracking, name, tags) as tracker:
        save_config(cfg, out)
        certificate = certifier.certify(mechanism, env, holdout)
        bad = certificate.non_finite()
        if bad:
            raise non_finite_failure(out, bad, "certificate results")
        certificate.metrics = dict(certificate.metrics)  # its report keeps its own summary
        objective_tags = record_objective(cfg, certificate.metrics)
        files = certificate.write(out, tracker.provenance)
        # last: seals the config, metrics.json and the certificate's JSON
        files.append(write_manifest(out, extra=[f"{certificate.name}.json"]))
        tracker.log_metrics(certificate.metrics)
        tracker.set_tags(objective_tags)
        tracker.log_artifacts([out / "config.yaml", *files])
    print(certificate.to_markdown())
    metrics = certificate.metrics
    if metrics.get("unknown") or metrics.get("failed"):
        log.warning(
            "%d instances unknown (limit hit: interval and sound upper bound only), %d failed "
            "(see instances.csv)",
            int(metrics["unknown"]),
            int(metrics["failed"]),
        )
    return metrics
