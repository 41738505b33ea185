"""``reproduce.json``: what a reproduce run was, written into its directory when it ends.

The record a results page is made from (:mod:`auctionlab.reporting.results_page`): the exact
command, start and end time (UTC), provenance (code version and machine), scale, the attacker
budgets of the scale and of the jobs, and how many points and jobs ran and failed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from auctionlab.experiments.plan import Plan
from auctionlab.reporting.results_page import (
    RECORD,
    command_line,
    job_budgets,
    job_provenance,
    scale_budgets,
)
from auctionlab.runs import write_json

#: Provenance keys the record takes from the jobs: what they ran on, not the parent process.
JOB_KEYS = ("device", "threads", "cuda_device")


def recorded_overrides(out: Path) -> list[str] | None:
    """The reproduce command's overrides: Hydra's, else the run's ``.hydra/overrides.yaml``.

    Returns:
        The overrides as typed, or ``None`` for an in-process run that has neither.

    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return [str(o) for o in HydraConfig.get().overrides.task]
    path = out / ".hydra" / "overrides.yaml"
    if path.is_file():
        return [str(o) for o in OmegaConf.load(path)]
    return None


def write_record(
    cfg: DictConfig,
    plan: Plan,
    out: Path,
    summary: dict[str, float],
    provenance: dict[str, str],
) -> Path:
    """Write ``<out>/reproduce.json`` (strict JSON, atomically) at the end of a reproduce run.

    Args:
        cfg: the ``reproduce`` config (its resolved ``scale`` and ``experiment.cite``).
        plan: the experiment's plan (name, title, what it reproduces, scale).
        out: the reproduce run's directory (its jobs under ``points/``).
        summary: ``points``, ``jobs``, ``jobs_failed`` and ``seconds`` of the run.
        provenance: the run's code version and machine (``Tracker.provenance``).

    Returns:
        The record's path.

    """
    finished = datetime.now(UTC)
    # The run's duration is measured with a monotonic clock; its start follows from it.
    started = finished - timedelta(seconds=float(summary["seconds"]))
    overrides = recorded_overrides(out)
    cite = OmegaConf.select(cfg, "experiment.cite", default=None)
    cite = [] if cite is None else [str(cite)] if isinstance(cite, str) else [str(k) for k in cite]
    scale = OmegaConf.to_container(cfg.scale, resolve=True)
    # The jobs set their own device and torch threads (``threads=1`` reaches them, not the
    # reproduce process's tracker, which recorded its own before the first job ran).
    jobs = job_provenance(out)
    found = {**provenance, **{k: jobs[k] for k in JOB_KEYS if k in jobs}}
    record = {
        "experiment": plan.name,
        "title": plan.title,
        "reproduces": plan.reproduces,
        "cite": cite,
        "command": None if overrides is None else command_line(overrides),
        "overrides": overrides,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "provenance": found,
        "scale": plan.scale,
        "attacker_budgets": {"scale": scale_budgets(scale), "jobs": job_budgets(out)},
        "points": int(summary["points"]),
        "jobs": int(summary["jobs"]),
        "failed": int(summary["jobs_failed"]),
        "seconds": float(summary["seconds"]),
    }
    return write_json(out / RECORD, record)
