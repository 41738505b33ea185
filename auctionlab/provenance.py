"""Where a run's numbers came from: code version, library versions, machine, device, threads.

Every task records this as MLflow tags (MLflow's own ``mlflow.source.*`` tags included, which
its automatic detection leaves empty for a console script) and in ``metrics.json``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path

#: Distributions whose versions a run records.
LIBRARIES = ("torch", "hydra-core", "omegaconf", "mlflow", "numpy", "highspy", "pyomo")
#: The directory that holds the ``auctionlab`` package (a git checkout's root when editable).
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def code_version() -> dict[str, str]:
    """The package version and, when it runs from a git checkout, the commit.

    Returns:
        ``auctionlab_version``; from a checkout also ``git_commit`` (40 hex digits) and
        ``git_dirty`` (``"true"`` when tracked files differ from the commit). An installed
        wheel has no commit: its version is the code version.

    """
    from auctionlab import __version__

    found = {"auctionlab_version": _version("auctionlab")}
    if found["auctionlab_version"] == "not installed":
        found["auctionlab_version"] = __version__
    # Only a checkout whose root holds this very package: a wheel inside some other repository
    # (a virtualenv in a project folder) must not borrow that repository's commit.
    top = _git("rev-parse", "--show-toplevel")
    if top and Path(top).resolve() == SOURCE_ROOT:
        commit = _git("rev-parse", "HEAD")
        if commit:
            found["git_commit"] = commit
            found["git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
            found["git_dirty"] = found["git_dirty"].lower()
    return found


def _cpu_model() -> str:
    # /proc/cpuinfo names the model ("AMD EPYC 7B13"); platform.processor() is often only the
    # architecture on Linux, so it is the fallback (macOS, Windows).
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def machine() -> dict[str, str]:
    """The machine a run ran on: CPU model, logical CPU count, operating system.

    Returns:
        ``cpu_model`` (``/proc/cpuinfo``'s model name, else ``platform.processor()``),
        ``cpu_count`` (logical CPUs, ``os.cpu_count()``) and ``platform``
        (``platform.platform()``: OS, kernel, architecture, C library).

    """
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": str(os.cpu_count() or "unknown"),
        "platform": platform.platform(),
    }


def cuda_device_name(device: str) -> str | None:
    """The GPU's name (``NVIDIA H100 80GB HBM3``) on a CUDA ``device``, else ``None``."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    except (ImportError, RuntimeError, AssertionError, ValueError):
        return "unknown"  # a device string that names CUDA on a machine without it


def provenance(device: str, threads: int) -> dict[str, str]:
    """Everything a run records about where it ran.

    Args:
        device: the torch device the run uses (``cpu``, ``cuda:0``).
        threads: torch's intra-op thread count.

    Returns:
        Flat string values: code version (see :func:`code_version`), ``python``, one
        ``<library>_version`` per entry of ``LIBRARIES``, the machine (see :func:`machine`),
        ``device`` and ``threads``; on a CUDA device also ``cuda_device`` (the GPU's name);
        in a Slurm job also ``slurm_job_id`` (``<array job>_<task>`` for an array task, as
        ``sacct`` lists it).

    """
    found = dict(code_version())
    found.update(machine())
    found["python"] = platform.python_version()
    for name in LIBRARIES:
        found[f"{name.replace('-', '_')}_version"] = _version(name)
    found["device"] = device
    found["threads"] = str(threads)
    gpu = cuda_device_name(device)
    if gpu is not None:
        found["cuda_device"] = gpu
    job = slurm_job_id()
    if job is not None:
        found["slurm_job_id"] = job
    return found


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The Slurm job this process runs in (``None`` outside Slurm), as ``sacct`` names it."""
    environ = os.environ if environ is None else environ
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def mlflow_tags(task: str, found: dict[str, str]) -> dict[str, str]:
    """MLflow tags for a provenance record, MLflow's own source tags included.

    Args:
        task: the task's name (``train``...), the run's source name ``auctionlab <task>``.
        found: a :func:`provenance` record.

    """
    tags = {f"provenance.{key}": value for key, value in found.items()}
    tags["mlflow.source.name"] = f"auctionlab {task}"
    tags["mlflow.source.type"] = "LOCAL"
    if "git_commit" in found:
        tags["mlflow.source.git.commit"] = found["git_commit"]
    return tags
