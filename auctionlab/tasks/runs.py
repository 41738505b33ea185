"""``auctionlab runs``: recent MLflow runs with their key metrics, one line each.

Each run shows its env family's headline metrics (tag ``headline_metrics``, logged by
``train`` and ``evaluate``: NSW / efficiency / exploitability for allocation, revenue / regret
for auctions...; ``val_``-prefixed for ``train``, the final validation), always its IR
violation, and regret with the attacker budget that produced it (``restarts x steps @
profiles``). Nothing is written; a missing sqlite store is reported, not created.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from auctionlab.errors import ConfigError
from auctionlab.reporting.summary import (
    DEFAULT_HEADLINE,
    HEADLINE_TAG,
    REGRET_LABEL_TAG,
    headline_items,
    ir_material,
)
from auctionlab.schema import validate
from auctionlab.tasks.common import integer
from auctionlab.tracking import resolve_uri, with_retry

#: Metric prefix of a task's headline numbers.
PREFIX = {"train": "val_", "evaluate": ""}
COLUMNS = ["started", "status", "task", "env", "mechanism", "headline", "ir_violation", "budget"]
COLUMNS += ["name"]


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


def _setting(run, key: str) -> float:
    """A setting such as ``attack_restarts``: a param (older runs logged it as a metric)."""
    text = run.data.params.get(key)
    if text is None:
        return _number(run.data.metrics, key)
    try:
        return float(text)
    except ValueError:
        return math.nan


def describe(run) -> dict[str, str]:
    """One row for an MLflow run: when, status, what, headline metrics, IR violation, budget."""
    tags, metrics = run.data.tags, run.data.metrics
    task = tags.get("task", "")
    prefix = PREFIX.get(task, "")
    names = tuple(n for n in tags.get(HEADLINE_TAG, "").split(",") if n) or DEFAULT_HEADLINE
    items = headline_items(metrics, names, prefix, tags.get(REGRET_LABEL_TAG, "regret"))
    headline = " ".join(f"{label}={value:.4g}" for label, value in items[:-1])
    violation = items[-1][1]
    regret = _number(metrics, f"{prefix}regret_mean")
    budget = ""
    if not math.isnan(regret):
        restarts = _setting(run, f"{prefix}attack_restarts")
        steps = _setting(run, f"{prefix}attack_steps")
        profiles = _setting(run, f"{prefix}profiles")
        budget = f"{restarts:.0f}x{steps:.0f} @{profiles:.0f}"
    started = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    return {
        "started": started,
        "status": run.info.status,
        "task": task,
        "env": tags.get("choice.env", ""),
        "mechanism": tags.get("choice.mechanism", tags.get("experiment", "")),
        "headline": headline,
        # "!" marks a material violation (auctionlab.reporting.summary.IR_MATERIAL).
        "ir_violation": ""
        if math.isnan(violation)
        else f"{violation:.2e}" + ("!" if ir_material(metrics, prefix) else ""),
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
    print(
        f"{len(rows)} most recent runs in {uri} (headline: the env family's metrics, regret /"
        " exploitability a mean per bidder; budget: restarts x steps @ profiles of the attacker"
        " that measured it; ir_violation: mean, ! when material):"
    )
    print(frame.to_string(index=False))
    return rows
