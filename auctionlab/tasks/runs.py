"""``auctionlab runs``: recent MLflow runs with their key metrics, one line each.

Revenue and regret come from the run's headline metrics (``val_``-prefixed for ``train``, the
final validation), and regret is always shown with the attacker budget that produced it
(``restarts x steps @ profiles``). Nothing is written; a missing sqlite store is reported, not
created.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from auctionlab.errors import ConfigError
from auctionlab.schema import validate
from auctionlab.tasks.common import integer
from auctionlab.tracking import resolve_uri, with_retry

#: Metric prefix of a task's headline numbers.
PREFIX = {"train": "val_", "evaluate": ""}
COLUMNS = ["started", "status", "task", "env", "mechanism", "revenue", "regret", "budget", "name"]


def prepare(cfg: DictConfig) -> tuple[str, str | None]:
    """Check the options; returns the store URI and the search filter."""
    validate(cfg)
    if not bool(cfg.tracking.get("enabled", True)):
        raise ConfigError("tracking.enabled=false: runs lists MLflow runs; use tracking=mlflow")
    integer(cfg, "limit", 1)
    parts = []
    if cfg.get("parent"):
        parent = str(cfg.parent)
        if not parent.isalnum():
            raise ConfigError(f"parent={parent} is not an MLflow run id")
        parts.append(f"tags.mlflow.parentRunId = '{parent}'")
    if cfg.get("filter"):
        parts.append(str(cfg.filter))
    return resolve_uri(cfg.tracking.get("uri"), create=False), " and ".join(parts) or None


def _number(metrics: dict[str, float], key: str) -> float:
    return float(metrics.get(key, math.nan))


def describe(run) -> dict[str, str]:
    """One row for an MLflow run: when, status, what, revenue, regret and its budget."""
    tags, metrics = run.data.tags, run.data.metrics
    task = tags.get("task", "")
    prefix = PREFIX.get(task, "")
    revenue = _number(metrics, f"{prefix}revenue")
    regret = _number(metrics, f"{prefix}regret_mean")
    budget = ""
    if not math.isnan(regret):
        restarts = _number(metrics, f"{prefix}attack_restarts")
        steps = _number(metrics, f"{prefix}attack_steps")
        profiles = _number(metrics, f"{prefix}profiles")
        budget = f"{restarts:.0f}x{steps:.0f} @{profiles:.0f}"
    started = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    return {
        "started": started,
        "status": run.info.status,
        "task": task,
        "env": tags.get("choice.env", ""),
        "mechanism": tags.get("choice.mechanism", tags.get("experiment", "")),
        "revenue": "" if math.isnan(revenue) else f"{revenue:.4f}",
        "regret": "" if math.isnan(regret) else f"{regret:.2e}",
        "budget": budget,
        "name": tags.get("mlflow.runName", ""),
        "run_id": run.info.run_id,
    }


def run(cfg: DictConfig) -> list[dict[str, str]]:
    """Print the most recent runs (``limit``), newest first; returns the rows."""
    from mlflow import MlflowClient

    uri, filter_string = prepare(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"no MLflow store at {uri} (run a task first)")
        return []
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in with_retry(client.search_experiments)]
    if not experiments:
        print(f"no runs in {uri}")
        return []
    try:
        runs = with_retry(
            client.search_runs,
            experiments,
            filter_string=filter_string or "",
            order_by=["attributes.start_time DESC"],
            max_results=int(cfg.limit),
        )
    except Exception as err:  # noqa: BLE001 - a bad filter gets one line
        first = str(err).strip().splitlines()
        raise ConfigError(f"filter={cfg.filter}: {first[0] if first else err}") from err
    rows = [describe(r) for r in runs]
    if not rows:
        print(f"no runs in {uri}" + (f" matching {filter_string}" if filter_string else ""))
        return rows
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "run_id"])
    print(f"{len(rows)} most recent runs in {uri} (regret: mean per bidder, budget: restarts x")
    print("steps @ profiles of the attacker that measured it):")
    print(frame.to_string(index=False))
    return rows
