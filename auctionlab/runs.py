"""Run directories: checkpoints with their hashes, resolved configs, loading a trained run.

A run directory may come from someone else: checkpoints are verified against their recorded
SHA-256 and loaded with ``weights_only=True``; a failed or unfinished run is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from auctionlab.components import build_env_and_mechanism
from auctionlab.errors import ConfigError, NonFiniteError

log = logging.getLogger("auctionlab")


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def write_metrics(
    directory: Path, metrics: Mapping[str, Any], provenance: Mapping[str, str]
) -> Path:
    """``metrics.json``: the run's numbers, and under ``provenance`` where they came from.

    Args:
        directory: the run directory.
        metrics: flat numbers (what MLflow logs as metrics).
        provenance: code version, library versions, device, threads (``Tracker.provenance``).

    """
    return write_json(directory / "metrics.json", {**metrics, "provenance": dict(provenance)})


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_path(checkpoint: Path) -> Path:
    """Where a checkpoint's recorded hash lives (``sha256sum -c`` format)."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + ".sha256")


def save_checkpoint(state: dict, path: Path) -> str:
    """``torch.save`` atomically and record the file's SHA-256 next to it.

    ``state`` holds only tensors and plain data. The file is written to a temp name, hashed,
    then renamed; ``<name>.sha256`` (``sha256sum -c`` format) follows it.

    Returns:
        The hex SHA-256 of the checkpoint.

    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    digest = sha256_file(tmp)
    record = hash_path(path)
    record_tmp = record.with_suffix(".sha256.tmp")
    record_tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, path)
    os.replace(record_tmp, record)
    return digest


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """Load a checkpoint after checking its recorded SHA-256, with ``weights_only=True``.

    Raises:
        ConfigError: no checkpoint, no recorded hash, a hash mismatch (truncated or altered
            file) or content that is not plain tensors and data.

    """
    where = f"run={path.parent}"
    if not path.exists():
        raise ConfigError(f"{where}: no {path.name} there")
    record = hash_path(path)
    if not record.exists():
        raise ConfigError(f"{where}: {record.name} is missing, so {path.name} cannot be verified")
    expected = record.read_text().split()[0] if record.read_text().split() else ""
    actual = sha256_file(path)
    if actual != expected:
        raise ConfigError(
            f"{where}: {path.name} does not match its recorded SHA-256 (truncated or altered: "
            f"{actual[:12]}... != {expected[:12]}...); refusing to load it"
        )
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        first = str(err).strip().splitlines()
        raise ConfigError(
            f"{where}: {path.name} cannot be loaded safely ({first[0] if first else err})"
        ) from err


def save_config(cfg: DictConfig, directory: Path) -> Path:
    """The resolved config, next to the results."""
    path = directory / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


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


def record_failure(out: Path, checkpoint: Path, kept: int | None, reason: str) -> NonFiniteError:
    """Write ``failure.json`` (never ``metrics.json``) and the error a failed run ends with.

    Args:
        out: the run directory.
        checkpoint: its checkpoint path (removed when no good one was written yet).
        kept: the iteration of the last good checkpoint (``None``: none).
        reason: what went wrong.

    """
    if kept is None:
        checkpoint.unlink(missing_ok=True)
        hash_path(checkpoint).unlink(missing_ok=True)
        where = "no checkpoint had been written yet"
    else:
        where = f"last good checkpoint kept: {checkpoint} (iteration {kept})"
    write_json(
        out / "failure.json",
        {"status": "failed", "reason": reason, "last_good_checkpoint_iteration": kept},
    )
    return NonFiniteError(f"{reason}; {where}; to locate it, rerun with train.detect_anomaly=true")
