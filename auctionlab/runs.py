"""Run directories: checkpoints with their hashes, resolved configs, loading a trained run.

A run directory may come from someone else: checkpoints are verified against their recorded
SHA-256 and loaded with ``weights_only=True``; a failed or unfinished run is refused; a finished
run's files must match its ``manifest.json`` (their SHA-256, sealed when the run finished), so
an edited ``config.yaml`` or ``metrics.json`` is refused instead of silently giving other
numbers under the same checkpoint hash.

Every file here is written atomically (temp file + rename). A write that fails (disk full,
read-only file system) removes its temp file and raises ``OutputError`` naming the path. JSON is
strict: NaN and inf are never written as the non-standard ``NaN`` / ``Infinity`` literals.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from auctionlab.components import build_env_and_mechanism
from auctionlab.errors import ConfigError, InterruptedRunError, NonFiniteError, OutputError

log = logging.getLogger("auctionlab")

#: The tamper-evidence record of a finished run directory.
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: What a manifest seals (those present), relative to the run directory: everything a later
#: ``evaluate`` / ``certify`` / ``audit`` / ``train resume=`` reads back from a run.
SEALED = (
    "config.yaml",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
    "choices.json",
    "checkpoint.pt",
    "metrics.json",
)
#: Sealed files Hydra writes anew when a job starts in the directory (``train resume=``).
HYDRA_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml")


def write_error(path: Path, err: OSError) -> OutputError:
    """The one-line error of a failed write (``cannot write <path>: <reason>``)."""
    return OutputError(f"cannot write {path}: {err.strerror or err}")


def _write_tmp(path: Path, data: bytes) -> Path:
    """``data`` into ``<path>.tmp``; on failure the temp file is removed (no orphan)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
    except OSError as err:
        _discard(tmp)
        raise write_error(path, err) from err
    return tmp


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):  # e.g. a read-only file system: nothing to remove
            path.unlink(missing_ok=True)


def _replace(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Rename each temp file onto its target; on failure no temp file is left behind."""
    try:
        for tmp, path in pairs:
            os.replace(tmp, path)
    except OSError as err:
        _discard(*(tmp for tmp, _ in pairs))
        raise write_error(path, err) from err


def write_bytes(path: Path, data: bytes) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a file."""
    _replace([(_write_tmp(path, data), path)])
    return path


def _non_finite(value: Any) -> str | None:
    """``"nan"``, ``"inf"`` or ``"-inf"`` for a non-finite float, else ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return None


def _reason(value: Any) -> Any:
    """What ``<key>_reason`` records for ``value`` (``None``: nothing to say).

    A non-finite number's kind; for a list, each entry's reason (``None`` for finite ones).
    """
    if isinstance(value, list | tuple):
        reasons = [None if isinstance(v, Mapping) else _reason(v) for v in value]
        return reasons if any(r is not None for r in reasons) else None
    return _non_finite(value)


def strict_json(value: Any) -> Any:
    """``value`` as strict JSON data: NaN and inf become ``null`` with a reason next to them.

    In a mapping, ``"x": nan`` becomes ``"x": null, "x_reason": "nan"`` (``"inf"``,
    ``"-inf"``; for a list, a list of reasons); a key of that name already there is kept.
    """
    if isinstance(value, Mapping):
        out = {key: strict_json(item) for key, item in value.items()}
        for key, item in value.items():
            reason = _reason(item)
            if reason is not None and f"{key}_reason" not in value:
                out[f"{key}_reason"] = reason
        return out
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return None if _non_finite(value) else value


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write strict JSON atomically (see :func:`strict_json`; never ``NaN`` / ``Infinity``)."""
    text = json.dumps(strict_json(dict(data)), indent=2, sort_keys=True, allow_nan=False)
    return write_bytes(path, text.encode())


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


def non_finite_keys(metrics: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """The sorted names among ``keys`` (default: all) whose value is a NaN or inf number."""
    names = metrics if keys is None else keys
    return sorted(k for k in names if _non_finite(metrics.get(k)) is not None)


def write_failure(directory: Path, reason: str, **details: Any) -> Path:
    """``failure.json``: why a started run has no result (it never gets a ``metrics.json``)."""
    return write_json(directory / "failure.json", {"status": "failed", "reason": reason, **details})


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

    ``state`` holds only tensors and plain data. It is serialised in memory and hashed, both
    files are written to temp names, then renamed; ``<name>.sha256`` (``sha256sum -c`` format)
    follows the checkpoint. A failed write leaves no temp file behind.

    Returns:
        The hex SHA-256 of the checkpoint.

    Raises:
        OutputError: a file could not be written (disk full, read-only file system).

    """
    # In memory first: torch's own file writer reports a full disk as a bare RuntimeError.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    record = hash_path(path)
    tmp = _write_tmp(path, data)
    try:
        record_tmp = _write_tmp(record, f"{digest}  {path.name}\n".encode())
    except OutputError:
        _discard(tmp)
        raise
    _replace([(tmp, path), (record_tmp, record)])
    return digest


def verify_checkpoint(path: Path) -> None:
    """Check a checkpoint against its recorded SHA-256 (``<name>.sha256``) without loading it.

    Raises:
        ConfigError: no checkpoint, no recorded hash, or a hash mismatch (truncated or altered).

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


def load_checkpoint(path: Path, device: torch.device, verified: bool = False) -> dict:
    """Load a checkpoint after checking its recorded SHA-256, with ``weights_only=True``.

    Args:
        path: the checkpoint.
        device: where its tensors go.
        verified: :func:`verify_checkpoint` has just been called on it.

    Raises:
        ConfigError: no checkpoint, no recorded hash, a hash mismatch (truncated or altered
            file) or content that is not plain tensors and data.

    """
    if not verified:
        verify_checkpoint(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        first = str(err).strip().splitlines()
        raise ConfigError(
            f"run={path.parent}: {path.name} cannot be loaded safely ({first[0] if first else err})"
        ) from err


def save_config(cfg: DictConfig, directory: Path) -> Path:
    """The resolved config, next to the results."""
    return write_bytes(directory / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())


def _inside(name: str) -> bool:
    """Whether a manifest entry names a path inside the run directory."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts


def write_manifest(directory: Path, extra: Sequence[str] = ()) -> Path:
    """Seal a finished run: ``manifest.json`` with the SHA-256 of its files (written last).

    Args:
        directory: the run directory; its ``metrics.json`` must already be written.
        extra: more files to seal besides :data:`SEALED` (relative names).

    Returns:
        The manifest's path.

    """
    directory = Path(directory)
    files = {
        name: sha256_file(directory / name)
        for name in dict.fromkeys((*SEALED, *extra))
        if (directory / name).is_file()
    }
    record = {"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": files}
    return write_json(directory / MANIFEST, record)


def verify_manifest(directory: Path, where: str | None = None, skip: Sequence[str] = ()) -> None:
    """Check a finished run's files against its ``manifest.json``.

    Args:
        directory: the run directory.
        where: how messages name it (default ``run=<directory>``).
        skip: sealed names not to check (files Hydra has just rewritten, ``HYDRA_FILES``).

    Raises:
        ConfigError: no or unreadable manifest, or a sealed file that is missing, differs from
            its recorded hash, or appeared after the run was sealed (one line naming the file).

    """
    directory = Path(directory)
    where = where or f"run={directory}"

    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{where}: {what}; refusing to use it")

    path = directory / MANIFEST
    if not path.is_file():
        raise refuse(
            f"{MANIFEST} is missing, so its files cannot be verified (a finished run records "
            "their SHA-256 there)"
        )
    try:
        record = json.loads(path.read_text())
        files, version = dict(record["files"]), record["format"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise refuse(f"{MANIFEST} cannot be read ({' '.join(str(err).split())})") from err
    if version != MANIFEST_FORMAT:
        raise refuse(f"{MANIFEST} has format {version!r}; this version reads {MANIFEST_FORMAT}")
    for name in dict.fromkeys((*SEALED, *sorted(files))):
        file = directory / name
        if name in skip:
            continue
        if name not in files:
            if os.path.lexists(file):
                raise refuse(f"{name} is not in {MANIFEST} (added after the run finished?)")
            continue
        if not isinstance(name, str) or not _inside(name):
            raise refuse(f"{MANIFEST} names {name!r}, which is not inside the run directory")
        if not file.is_file():  # also a link to a device: never read it
            raise refuse(f"{name} is missing (recorded in {MANIFEST})")
        if sha256_file(file) != files[name]:
            raise refuse(f"{name} does not match {MANIFEST} (edited after the run finished?)")


#: torch's message for one tensor of a state dict with another shape than the model's.
_SIZE_MISMATCH = re.compile(
    r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) "
    r"from checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


def misfit(err: Exception, cfg: DictConfig, config: str = "its config") -> str:
    """One line for a checkpoint whose tensors do not fit the model built from ``cfg``.

    Args:
        err: what ``load_state_dict`` raised (a multi-line ``RuntimeError`` from torch).
        cfg: the config the model was built from.
        config: how the message names that config (``its config``, ``this config``).

    """
    text = str(err)
    sizes = _SIZE_MISMATCH.search(text)
    if sizes:
        detail = f"{sizes[1]} is [{sizes[2]}] in the checkpoint, [{sizes[3]}] here"
    else:  # missing / unexpected keys: torch's first detail line
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else repr(err))[:300]
    hidden = OmegaConf.select(cfg, "mechanism.hidden", default=None)
    if isinstance(hidden, ListConfig):
        setting = f"mechanism.hidden={OmegaConf.to_container(hidden)}"
    else:
        setting = "mechanism"
    return f"checkpoint does not fit {config} ({setting}: {detail})"


def load_trained(run: str, device, env: DictConfig | None = None):
    """Env and mechanism of a finished ``train`` run directory, weights loaded.

    Args:
        run: the train run directory.
        device: where the mechanism goes.
        env: another env node to serve (``None``: the run's own): a different prior of the same
            size for any mechanism, another number of bidders or items for one that declares
            ``any_size`` (size generalisation). The mechanism is built for this env with the
            run's mechanism config, and the run's weights are loaded into it. An env of the
            run's env's name is the run's own.

    Raises:
        ConfigError: not a finished train run, files that do not match its manifest, a damaged
            checkpoint, one that does not fit its config, or an ``env`` of another size for a
            mechanism whose weights are sized for its training env.

    """
    directory = Path(run).expanduser()
    config = directory / "config.yaml"
    if not config.exists():
        raise ConfigError(f"run={run}: not a train run directory (no config.yaml)")
    failure = directory / "failure.json"
    if failure.exists():
        reason = _read_json(failure, f"run={run}").get("reason", "see failure.json")
        raise ConfigError(f"run={run}: that training failed ({reason}); its weights are no result")
    if not (directory / "metrics.json").exists():
        raise ConfigError(
            f"run={run}: training has not finished (no metrics.json); finish it with "
            f"`auctionlab train resume={run}`"
        )
    checkpoint = directory / "checkpoint.pt"
    verify_checkpoint(checkpoint)  # the more precise diagnosis of a damaged checkpoint first
    # Before anything in the directory is used: nothing is built from an edited config.
    verify_manifest(directory, f"run={run}")
    train_cfg = _read_config(config, f"run={run}")
    trained_env, mechanism = build_env_and_mechanism(train_cfg)
    env_built = trained_env
    # Same name: the run's own env (its family's variant of that option, as trained).
    if env is not None and env.get("name") != train_cfg.env.get("name"):
        served = train_cfg.copy()
        OmegaConf.update(served, "env", env, merge=False)
        env_built, built = build_env_and_mechanism(served)
        size, trained_size = _size(env_built), _size(trained_env)
        if size != trained_size and not mechanism.any_size:
            raise ConfigError(
                f"env={env.get('name', '?')} ({size}): mechanism={mechanism.config_name} of "
                f"run={run} has weights sized for its training env {trained_env.name} "
                f"({trained_size}); only mechanisms whose weights fit any size evaluate on "
                f"another one ({', '.join(any_size_mechanisms()) or 'none'})"
            )
        train_cfg, mechanism = served, built
    state = load_checkpoint(checkpoint, device, verified=True)
    try:
        mechanism.load_state_dict(state["mechanism"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ConfigError(f"run={run}: {misfit(err, train_cfg)}") from err
    env = env_built
    picked_path = directory / "choices.json"
    picked = _read_json(picked_path, f"run={run}") if picked_path.exists() else {}
    picked = {str(k): str(v) for k, v in picked.items()}
    picked.setdefault("mechanism", type(mechanism).__name__.lower())
    # Deployed form: e.g. regretnet_sparsemax clips its free payments only in eval mode.
    return env, mechanism.to(device).eval(), picked


def _size(env) -> str:
    return f"{env.n_bidders} bidders x {env.n_items} items"


def any_size_mechanisms() -> list[str]:
    """The packaged mechanism options whose class declares ``any_size``."""
    from auctionlab.conf import CONF_DIR, group_options
    from auctionlab.schema import check_target

    found = []
    for option in group_options("mechanism"):
        target = OmegaConf.load(Path(CONF_DIR) / "mechanism" / f"{option}.yaml").get("_target_")
        with contextlib.suppress(ConfigError):
            if target and getattr(check_target(str(target), "mechanism"), "any_size", False):
                found.append(option)
    return found


def _read_json(path: Path, where: str) -> dict:
    """A run directory's JSON object, or a one-line ``ConfigError`` naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: {path.name} cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path.name} is not a JSON object")
    return data


def read_recorded_overrides(path: Path, where: str) -> list[str]:
    """A run's ``.hydra/overrides.yaml``, refused when it is not what Hydra writes there.

    The file may come from someone else. Hydra records only the task's overrides in it, so a
    ``hydra.*`` or ``hydra/*`` entry (callbacks, launchers, search paths: code Hydra would
    build or load) can only have been written by hand. The task's own entries are checked by
    the config gate when they are composed.

    Args:
        path: the ``overrides.yaml`` file.
        where: how messages name the run (``resume=<dir>``).

    Raises:
        ConfigError: unreadable, not a list of strings, or setting Hydra's own options.

    """
    from omegaconf import ListConfig
    from omegaconf.errors import OmegaConfBaseException

    where = f"{where}: {path.parent.name}/{path.name}"
    try:
        recorded = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as err:
        raise ConfigError(f"{where} cannot be read ({' '.join(str(err).split())})") from None
    if not isinstance(recorded, ListConfig) or not all(isinstance(o, str) for o in recorded):
        raise ConfigError(f"{where} is not a list of overrides")
    for override in recorded:
        if override.lstrip("+~").startswith(("hydra.", "hydra/", "hydra=")):
            raise ConfigError(
                f"{where} sets {override!r}; Hydra's own options are never recorded there, so "
                "the file was edited; refusing to resume from it"
            )
    return [str(o) for o in recorded]


def read_run_config(run: str) -> DictConfig:
    """The ``config.yaml`` of a finished train run, its manifest and the gate checked."""
    directory = Path(run).expanduser()
    verify_manifest(directory, f"run={run}")
    return _read_config(directory / "config.yaml", f"run={run}")


def _read_config(path: Path, where: str) -> DictConfig:
    """A run's ``config.yaml``, gated before anything is built from it.

    Every ``_target_`` in the whole file (not only the nodes that get built) must name a
    component class, and the file must hold no interpolation (it is saved resolved).
    """
    from omegaconf.errors import OmegaConfBaseException

    from auctionlab.schema import check_resolved, check_targets

    try:
        cfg = OmegaConf.load(path)
        tree = OmegaConf.to_container(cfg, resolve=False)
    except (OmegaConfBaseException, OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise ConfigError(f"{where}: {path.name} cannot be read ({reason})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{where}: {path.name} is not a config mapping")
    try:
        check_targets(tree)
        check_resolved(tree)
    except ConfigError as err:
        raise ConfigError(f"{where}: {path.name}: {err}") from None
    return cfg


def resume_state(directory: Path, device: torch.device, job_dir: Path | None) -> dict:
    """The checkpoint ``train resume=<directory>`` continues from, the run's seal checked first.

    Args:
        directory: the run directory being resumed.
        device: where to load the tensors.
        job_dir: the running job's directory (``None`` before the job): when it is
            ``directory``, Hydra has already rewritten the run's ``.hydra/`` files.

    Raises:
        ConfigError: a finished run whose files do not match its manifest, or a damaged
            checkpoint.

    """
    if (directory / "metrics.json").exists():  # a finished run: its files as sealed
        rewritten = HYDRA_FILES if job_dir and job_dir.resolve() == directory.resolve() else ()
        verify_manifest(directory, f"resume={directory}", skip=rewritten)
    return load_checkpoint(directory / "checkpoint.pt", device)


def checkpoint_interrupted(
    err: InterruptedRunError, state: dict, checkpoint: Path, out: Path
) -> InterruptedRunError:
    """Save ``state`` and return the error an interrupted training ends with.

    Args:
        err: the interruption (its signal is kept: the exit status is 128 + signal).
        state: the trainer's state after its last full step.
        checkpoint: where to save it.
        out: the run directory, for the resume command (quoted for a shell).

    """
    save_checkpoint(state, checkpoint)
    return InterruptedRunError(
        f"{err}; checkpoint saved to {checkpoint}; continue with: "
        f"auctionlab train {shlex.quote(f'resume={out}')}",
        err.signum,
    )


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
    write_failure(out, reason, last_good_checkpoint_iteration=kept)
    return NonFiniteError(f"{reason}; {where}; to locate it, rerun with train.detect_anomaly=true")
