"""MLflow glue: every task is one MLflow run (sqlite store under ``outputs/`` by default).

Runs are written through an explicit ``MlflowClient`` and run id (no fluent "active run"), so a
task can open child runs in-process (``auctionlab reproduce``) and every call can be retried
when a shared sqlite store answers ``database is locked`` (parallel multirun jobs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError

DEFAULT_DB = Path("outputs") / "mlflow.db"
#: Words of a transient sqlite failure worth retrying.
LOCKED = ("database is locked", "database table is locked")
T = TypeVar("T")
log = logging.getLogger("auctionlab")


def resolve_uri(uri: str | None, create: bool = True) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/outputs/mlflow.db``.

    Args:
        uri: the configured ``tracking.uri`` (``None`` for the defaults).
        create: make the default store's folder (``False`` to only read).

    """
    if uri:
        return str(uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = DEFAULT_DB.resolve()
    if create:
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


def is_locked(err: BaseException | None) -> bool:
    """Whether ``err`` (or an exception it was raised from) is sqlite's ``database is locked``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(word in str(err) for word in LOCKED):
            return True
        err = err.__cause__ or err.__context__
    return False


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with jittered exponential backoff while sqlite is locked.

    Waits 0.1 s, 0.2 s, 0.4 s... (capped at 5 s, about 25 s in all) before giving up and
    raising the last error. Any other error is raised at once.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if attempt == attempts - 1 or not is_locked(err):
                raise
            wait = min(5.0, 0.1 * 2**attempt) * (0.5 + random.random())
            log.debug("MLflow store locked (%s); retrying in %.2f s", fn.__name__, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock next to a local sqlite store while it is created or migrated."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(tracking: DictConfig | Mapping[str, Any]):
    """Connect to the store of ``tracking`` and make sure its experiment exists.

    A local sqlite database is created (schema migrations) under a file lock, so concurrent
    jobs on one machine never race on it; the experiment is created once.

    Args:
        tracking: the ``tracking`` config node (``uri``, ``experiment``).

    Returns:
        ``(client, uri, experiment_id)``.

    Raises:
        ConfigError: the store cannot be reached or created.

    """
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = resolve_uri(tracking.get("uri"))
    name = str(tracking.get("experiment", "auctionlab"))
    try:
        with _store_lock(uri):
            client = MlflowClient(tracking_uri=uri)  # a new sqlite store is migrated here
            experiment = with_retry(client.get_experiment_by_name, name)
            if experiment is not None:
                return client, uri, experiment.experiment_id
            location = None
            if uri.startswith("sqlite:"):
                root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
                location = root.resolve().as_uri()
            try:
                return client, uri, with_retry(client.create_experiment, name, location)
            except MlflowException:  # created meanwhile by a job on another machine
                experiment = with_retry(client.get_experiment_by_name, name)
                if experiment is None:
                    raise
                return client, uri, experiment.experiment_id
    except Exception as err:  # noqa: BLE001 - any backend failure gets the same clear message
        first = str(err).strip().splitlines()
        raise ConfigError(
            f"tracking.uri={uri}: cannot reach the MLflow store ({first[0] if first else err})"
        ) from err


class PrepareStore(Callback):
    """Hydra callback: create the MLflow store and experiment once, before a multirun starts.

    Configured in ``conf/hydra_settings.yaml`` as ``hydra.callbacks.mlflow_init``. Parallel
    launchers (joblib, submitit) then find the sqlite schema and the experiment in place.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the store of ``config.tracking`` (no-op when tracking is disabled)."""
        tracking = config.get("tracking")
        if tracking is None or not tracking.get("enabled", True):
            return
        try:
            open_store(tracking)
        except ConfigError as err:
            print(f"auctionlab: error: {err}", file=sys.stderr)
            raise SystemExit(2) from err


class Tracker:
    """Context manager around one MLflow run; a no-op when ``tracking.enabled`` is false.

    ``tracking.parent_run_id`` (optional, set by ``auctionlab reproduce``) makes the run a
    child of that run (tag ``mlflow.parentRunId``).

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
        self.client = None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        from mlflow.entities import Param
        from mlflow.tracking.context.registry import resolve_tags

        self.client, self.uri, experiment_id = open_store(self.tracking)
        tags = dict(self.tags)
        parent = self.tracking.get("parent_run_id")
        if parent:
            tags["mlflow.parentRunId"] = str(parent)
        run = with_retry(
            self.client.create_run, experiment_id, tags=resolve_tags(tags), run_name=self.run_name
        )
        self.run_id = run.info.run_id
        flat = flatten(OmegaConf.to_container(self.cfg, resolve=True))
        params = [Param(k, str(v)[:500]) for k, v in flat.items()]
        for lo in range(0, len(params), 100):
            with_retry(self.client.log_batch, self.run_id, params=params[lo : lo + 100])
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (non-numbers are skipped)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        numeric = [
            Metric(k, float(v), now, int(step or 0))
            for k, v in metrics.items()
            if isinstance(v, int | float)
        ]
        for lo in range(0, len(numeric), 1000):
            with_retry(self.client.log_batch, self.run_id, metrics=numeric[lo : lo + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Add tags to the run."""
        if not self.enabled:
            return
        for key, value in tags.items():
            with_retry(self.client.set_tag, self.run_id, key, str(value))

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Attach files to the run."""
        if not self.enabled:
            return
        for path in paths:
            if Path(path).exists():
                with_retry(self.client.log_artifact, self.run_id, str(path))

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled or self.run_id is None:
            return
        if exc is not None:
            self.set_tags({"failure": f"{exc_type.__name__}: {exc}"[:4000]})
        status = "FAILED" if exc is not None else "FINISHED"
        with_retry(self.client.set_terminated, self.run_id, status)
