"""What every task does: build objects from config, own a run directory, write results."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError

log = logging.getLogger("auctionlab")


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our own ``ConfigError`` unwrapped.

    Args:
        node: config node with ``_target_``.
        what: the option's name for error messages (``env``, ``mechanism``...).
        **kwargs: extra constructor arguments (e.g. ``env=`` for mechanisms).

    """
    from auctionlab.schema import check_component

    if isinstance(node, DictConfig):
        check_component(OmegaConf.to_container(node, resolve=True), what)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ConfigError) and cause.__cause__:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        first = str(err).strip().splitlines()
        raise ConfigError(f"{what}: {first[-1] if first else err}") from err


def build_env_and_mechanism(cfg: DictConfig):
    """The environment and a mechanism checked against it (raises ``ConfigError`` early)."""
    env = build(cfg.env, "env")
    mechanism = build(cfg.mechanism, "mechanism", env=env)
    return env, mechanism


def choices() -> dict[str, str]:
    """Hydra's group choices of the current run (``{}`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {
        k: str(v)
        for k, v in HydraConfig.get().runtime.choices.items()
        if v is not None and not k.startswith("hydra")
    }


def run_dir() -> Path:
    """The Hydra run directory (or ``outputs/adhoc`` when called outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    path = Path("outputs") / "adhoc"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


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


def integer(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    """``cfg[key]`` (dotted) as an int, or a ``ConfigError`` naming the option."""
    value = OmegaConf.select(cfg, key)
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value} must be an integer") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")
    return number


def setup_runtime(cfg: DictConfig) -> torch.device:
    """Validate the whole config (types, ranges, targets); then seed, threads and device."""
    from auctionlab.schema import validate
    from auctionlab.utils import resolve_device, seed_everything

    validate(cfg)
    seed_everything(integer(cfg, "seed"))
    if cfg.get("threads") is not None:
        torch.set_num_threads(integer(cfg, "threads", 1))
    return resolve_device(str(cfg.device))


def progress_enabled(cfg: DictConfig) -> bool:
    """Progress bars when asked (``progress=true``) or, on ``auto``, on a terminal."""
    value = cfg.get("progress", "auto")
    if value == "auto":
        return sys.stderr.isatty()
    return bool(value)
