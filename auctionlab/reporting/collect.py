"""Metrics of finished jobs: from MLflow (preferred) or from their ``metrics.json``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from auctionlab.tracking import is_setting, with_retry


def read_metrics_json(run_dir: Path) -> dict[str, float]:
    """The numeric entries of ``<run_dir>/metrics.json`` (``{}`` when it is missing)."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}


def logged_record(client, run) -> dict[str, float]:
    """The numbers of ``run``'s ``metrics.json`` artifact, else its settings' params.

    MLflow holds a run's settings (attacker budgets, sample sizes) as params and its curves as
    stepped metrics (:meth:`auctionlab.tracking.Tracker.log_metrics`); the artifact has every
    number under its ``metrics.json`` name (``evaluate.curve_r1_s10_regret_mean``,
    ``evaluate.attack_restarts``), as the tables ask for them.
    """
    try:
        with tempfile.TemporaryDirectory() as folder, _no_progress_bar():
            path = with_retry(client.download_artifacts, run.info.run_id, "metrics.json", folder)
            return read_metrics_json(Path(path).parent)
    except Exception:  # noqa: BLE001 - no such artifact (a failed run, an older store)
        record: dict[str, float] = {}
        for key, text in run.data.params.items():
            if "." not in key and is_setting(key):  # not the config's (``scale.x.profiles``)
                try:
                    record[key] = float(text)
                except ValueError:
                    continue
        return record


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """No MLflow download bar per job on stderr (unless the user asked for one)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    given = name in os.environ
    os.environ.setdefault(name, "false")
    try:
        yield
    finally:
        if not given:
            os.environ.pop(name, None)


def child_metrics(client, experiment_id: str, parent_run_id: str) -> dict[str, dict]:
    """Latest metrics of every child run of ``parent_run_id``, keyed by their ``run_dir`` tag.

    Args:
        client: an ``MlflowClient`` on the store.
        experiment_id: the experiment the children were logged to.
        parent_run_id: the parent run (tag ``mlflow.parentRunId`` of the children).

    Returns:
        ``{resolved run dir: {"run_id", "status", "metrics"}}``; ``metrics`` are the run's
        latest MLflow metrics over its :func:`logged_record`.

    """
    runs = with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=10000,
    )
    found: dict[str, dict] = {}
    for run in runs:
        directory = run.data.tags.get("run_dir")
        if directory is None:
            continue
        metrics = {k: v for k, v in run.data.metrics.items() if not math.isnan(v)}
        metrics = {**logged_record(client, run), **metrics}
        found[str(Path(directory).resolve())] = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "metrics": metrics,
        }
    return found
