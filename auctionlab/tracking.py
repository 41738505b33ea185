"""MLflow glue: every task is one MLflow run (sqlite store under ``outputs/`` by default)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError

DEFAULT_DB = Path("outputs") / "mlflow.db"


def resolve_uri(uri: str | None) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/outputs/mlflow.db``."""
    if uri:
        return str(uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = DEFAULT_DB.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}``; lists are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """Context manager around one MLflow run; a no-op when ``tracking.enabled`` is false.

    Args:
        cfg: the whole task config (logged as flattened params).
        tracking: the ``tracking`` config node (``enabled``, ``uri``, ``experiment``).
        run_name: the MLflow run name.
        tags: extra tags (task, Hydra choices, run directory).

    """

    def __init__(
        self, cfg: DictConfig, tracking: DictConfig, run_name: str, tags: Mapping[str, str]
    ):
        self.enabled = bool(tracking.get("enabled", True))
        self.cfg, self.tracking, self.run_name, self.tags = cfg, tracking, run_name, dict(tags)
        self.run_id: str | None = None
        self.uri: str | None = None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        logging.getLogger("alembic").setLevel(logging.WARNING)
        import mlflow

        self.uri = resolve_uri(self.tracking.get("uri"))
        mlflow.set_tracking_uri(self.uri)
        name = str(self.tracking.get("experiment", "auctionlab"))
        try:
            if mlflow.get_experiment_by_name(name) is None:
                location = None
                if self.uri.startswith("sqlite:"):
                    root = Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts"
                    location = root.resolve().as_uri()
                try:
                    mlflow.create_experiment(name, artifact_location=location)
                except mlflow.exceptions.MlflowException:
                    pass  # created meanwhile by a concurrent job
            mlflow.set_experiment(name)
        except Exception as err:  # noqa: BLE001 - any backend failure gets the same clear message
            raise ConfigError(
                f"tracking.uri={self.uri}: cannot reach the MLflow store ({err})"
            ) from err
        run = mlflow.start_run(run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        params = flatten(OmegaConf.to_container(self.cfg, resolve=True))
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (non-numbers are skipped)."""
        if not self.enabled:
            return
        import mlflow

        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        mlflow.log_metrics(numeric, step=step)

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Attach files to the run."""
        if not self.enabled:
            return
        import mlflow

        for path in paths:
            if Path(path).exists():
                mlflow.log_artifact(str(path))

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        import mlflow

        if exc is not None:
            mlflow.set_tag("failure", f"{exc_type.__name__}: {exc}"[:4000])
        mlflow.end_run(status="FAILED" if exc is not None else "FINISHED")
