"""MLflow glue: every task is one MLflow run (sqlite store under ``outputs/`` by default).

A task's flat metrics (what ``metrics.json`` holds) are split on the way to MLflow: results are
metrics; numbers that say how a result was measured (the attacker's budget and what it spent,
sample sizes, limits: :func:`is_setting`) are params; a regret-vs-budget curve flattened into
names (``curve_r<R>_s<S>_<name>``) is one stepped metric per restart count and statistic. Every
file of the run directory is an artifact once the run ends.

Runs are written through an explicit ``MlflowClient`` and run id (no fluent "active run"), so a
task can open child runs in-process (``auctionlab reproduce``) and every call can be retried
when a shared sqlite store answers ``database is locked`` (parallel multirun jobs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError
from auctionlab.provenance import mlflow_tags, provenance

DEFAULT_DB = Path("outputs") / "mlflow.db"
#: A train run directory's record of its MLflow run (what ``train resume=`` continues).
TRACKING_RECORD = "tracking.json"
#: Words of a transient sqlite failure worth retrying.
LOCKED = ("database is locked", "database table is locked")
T = TypeVar("T")
#: Seconds the start-up probe waits for a connection, and again for the answer.
PROBE_TIMEOUT = 5.0
#: MLflow HTTP client limits used unless set in the environment (see :func:`bound_http_waits`).
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
#: Servers this process found unreachable, and why (each is waited for once).
_DEAD: dict[str, str] = {}
#: The name of a train run's exported mechanism (``runs:/<run id>/model``).
MODEL_NAME = "model"
#: Longest experiment name every MLflow backend stores (the SQL stores' column width).
EXPERIMENT_NAME_LIMIT = 256
#: Last words of a metric name that state how a number was measured rather than a result: the
#: attacker's budget and what it spent, sample sizes (``val_profiles``, ``attack_restarts``,
#: ``oracle_deviation_steps``, ``oracle_points``...). They are MLflow params, one value per run,
#: not metric charts; ``metrics.json`` keeps them next to the results. A result's name must not
#: end in one of them.
SETTING_NAMES = (
    "attack_restarts",
    "attack_steps",
    "attack_step_size",
    "attack_gradient",
    "attack_cached_starts",
    "deviation_steps",
    "deviation_steps_per_instance",
    "profiles",
    "points",
)
#: Whole metric names that are settings too: a certifier's limit and confidence, a known range.
SETTING_KEYS = frozenset({"time_limit", "delta", "regret_range"})
#: A point of a regret-vs-budget curve flattened into a name (``val_curve_r2_s10_regret_mean``).
CURVE_KEY = re.compile(r"^(?P<prefix>.*?)curve_r(?P<restarts>\d+)_s(?P<steps>\d+)_(?P<name>.+)$")
#: Longest value of an MLflow param.
PARAM_LIMIT = 500
#: A multirun's record in its sweep directory: the parent MLflow run of its jobs' runs.
SWEEP_RECORD = "sweep.json"
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


def tag_key(key: str) -> str:
    """``key`` as a name ``set_tag`` accepts (other characters become ``_``).

    MLflow refuses tag names outside alphanumerics, ``_ - . : /`` and space in ``set_tag``;
    Hydra's choice keys can hold ``@`` (``env_variants/2x2@env``).
    """
    return re.sub(r"[^\w\-. :/]", "_", key)


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


def is_setting(key: str) -> bool:
    """Whether the metric ``key`` states how a number was measured, not a result.

    Its name ends in one of :data:`SETTING_NAMES` or is one of :data:`SETTING_KEYS`. A curve
    point's coordinates (``curve_r2_s10_attack_steps``) are not: see
    :func:`curve_metric`.
    """
    if CURVE_KEY.match(key) is not None:
        return False
    return _ends_in_setting(key)


def _ends_in_setting(key: str) -> bool:
    return key in SETTING_KEYS or any(key == n or key.endswith("_" + n) for n in SETTING_NAMES)


def curve_metric(key: str) -> tuple[str, int] | None:
    """``(stepped metric name, step)`` of a flattened curve point, ``None`` for other keys.

    ``val_curve_r2_s10_regret_mean`` is ``("val_curve_r2_regret_mean", 10)``: one metric per
    restart count and statistic, its history the curve over the attacker's steps. The point's
    coordinates (``curve_r2_s10_attack_steps``, ``_profiles``) give ``None`` as well: they are
    in the name, the step and the curve's CSV.
    """
    match = CURVE_KEY.match(key)
    if match is None or _ends_in_setting(match["name"]):
        return None
    return f"{match['prefix']}curve_r{match['restarts']}_{match['name']}", int(match["steps"])


def param_text(value: float) -> str:
    """A setting as an MLflow param: ``2.0`` as ``2`` (as the config param would say it)."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def run_files(root: Path, skip: Iterable[Path] = ()) -> list[Path]:
    """The regular files of the run directory ``root`` and its folders, as artifacts to log.

    Left out: symbolic links (a link may point anywhere on the machine), the directories of
    other runs below this one (a reproduce point's or a tune trial's jobs, which are runs with
    their own artifacts: a folder with a ``.hydra`` folder or a ``config.yaml`` of its own) and
    ``skip`` (files or folders, e.g. a tracking store kept inside the run directory).
    """
    skipped = {Path(p).resolve() for p in skip}
    found: list[Path] = []
    for top, folders, names in os.walk(root):  # never follows links to folders
        here = Path(top)
        folders[:] = sorted(
            d for d in folders if (here / d).resolve() not in skipped and not _other_run(here / d)
        )
        for name in sorted(names):
            path = here / name
            if path.is_file() and not path.is_symlink() and path.resolve() not in skipped:
                found.append(path)
    return found


def _other_run(folder: Path) -> bool:
    """Whether ``folder`` (below a run directory) is a run directory of its own."""
    if folder.is_symlink():
        return True
    if folder.name == ".hydra":  # this run's Hydra record (its config.yaml is Hydra's)
        return False
    return (folder / ".hydra").is_dir() or (folder / "config.yaml").is_file()


def store_files(uri: str) -> list[Path]:
    """A local sqlite store's database, lock and journal files and its artifact folder."""
    if not uri.startswith("sqlite:///"):
        return []
    db = Path(uri.removeprefix("sqlite:///"))
    suffixes = ("", ".lock", "-journal", "-wal", "-shm")
    return [*(db.with_name(db.name + s) for s in suffixes), db.parent / "mlartifacts"]


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


def bound_http_waits() -> None:
    """Bound every MLflow HTTP call unless the user chose otherwise (``MLFLOW_HTTP_REQUEST_*``).

    MLflow's defaults (120 s per request, 7 retries, backoff factor 2) keep a task waiting
    about 15 minutes on a server that accepts connections and never answers, and 4 minutes on
    one that answers HTTP 500. With these, one call gives up after about 35 s (3 tries of at
    most 10 s each, 2-4 s of backoff); the run then goes on without logging (see
    :class:`Tracker`). Variables already set in the environment are kept. Only HTTP(S)
    stores read them.
    """
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def probe(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast when an ``http(s)://`` tracking server does not answer an MLflow API call.

    One ``GET /api/2.0/mlflow/experiments/search`` without retries, with MLflow's own
    credentials and TLS settings, waiting at most ``timeout`` seconds to connect and as long
    again for the answer: a closed port, a listener that never answers, an HTTP error (500,
    401...) or a server that is not MLflow all fail here in seconds, before any run starts.
    Other URIs are left to the store itself.

    Raises:
        ConfigError: the server cannot be reached or does not answer as an MLflow server.

    """
    from urllib.parse import urlparse

    if urlparse(uri).scheme not in ("http", "https"):
        return
    if uri in _DEAD:  # the task's check found it dead: its job need not wait again
        raise ConfigError(_DEAD[uri])
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            max_retries=0,
            backoff_factor=0,
            timeout=timeout,
            raise_on_status=False,
            params={"max_results": 1},
        )
        problem = None if response.status_code == 200 else f"HTTP {response.status_code}"
        if problem is None:
            response.json()  # a proxy's or another server's HTML page is not an MLflow answer
    except Exception as err:  # noqa: BLE001 - refused, timed out, TLS, not JSON: all unreachable
        problem = _reason(err, timeout)
    if problem is not None:
        _DEAD[uri] = (
            f"tracking.uri={uri}: MLflow server unreachable ({problem}); start it, choose "
            "another tracking.uri, or set tracking.fallback=local"
        )
        raise ConfigError(_DEAD[uri])


def _reason(err: BaseException, timeout: float) -> str:
    """An HTTP failure in a few words: MLflow's own message repeats the URL and urllib3's."""
    text = " ".join(str(err).split())
    if "ReadTimeout" in text:
        return f"no answer within {timeout:g} s"
    if "ConnectTimeout" in text:
        return f"no connection within {timeout:g} s"
    if "Connection refused" in text:
        return "connection refused"
    return text[:200] or type(err).__name__


def _connect(uri: str, name: str):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    bound_http_waits()
    probe(uri)
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


def open_store(tracking: DictConfig | Mapping[str, Any]):
    """Connect to the store of ``tracking`` and make sure its experiment exists.

    A local sqlite database is created (schema migrations) under a file lock, so concurrent
    jobs on one machine never race on it; the experiment is created once. When the store
    cannot be reached and ``tracking.fallback`` is ``local``, a warning is logged and the
    local default store (``outputs/mlflow.db``) is used instead.

    Args:
        tracking: the ``tracking`` config node (``uri``, ``experiment``, ``fallback``).

    Returns:
        ``(client, uri, experiment_id)``.

    Raises:
        ConfigError: the store cannot be reached or created (and no fallback applies).

    """
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = resolve_uri(tracking.get("uri"))
    check_experiment_name(tracking.get("experiment", "auctionlab"))
    name = str(tracking.get("experiment", "auctionlab"))
    try:
        return _connect(uri, name)
    except ConfigError as err:
        local = f"sqlite:///{DEFAULT_DB.resolve()}"
        if str(tracking.get("fallback", "none")) != "local" or uri == local:
            raise
        log.warning("%s; tracking.fallback=local: logging to %s instead", err, local)
        DEFAULT_DB.resolve().parent.mkdir(parents=True, exist_ok=True)
        return _connect(local, name)


def check_experiment_name(name: Any) -> None:
    """``tracking.experiment`` must be a name every MLflow store accepts.

    Raises:
        ConfigError: empty, or longer than :data:`EXPERIMENT_NAME_LIMIT` characters.

    """
    text = "" if name is None else str(name)
    if not text.strip():
        raise ConfigError("tracking.experiment is empty; give the MLflow experiment a name")
    if len(text) > EXPERIMENT_NAME_LIMIT:
        shown = text[:40] + "..."
        raise ConfigError(
            f"tracking.experiment={shown} has {len(text)} characters; MLflow stores take at "
            f"most {EXPERIMENT_NAME_LIMIT}"
        )


def check_tracking(tracking: DictConfig | Mapping[str, Any] | None) -> None:
    """Before a task starts: refuse a bad experiment name, and a dead server (no fallback)."""
    if tracking is None or not tracking.get("enabled", True):
        return
    check_experiment_name(tracking.get("experiment", "auctionlab"))
    uri = resolve_uri(tracking.get("uri"), create=False)
    try:
        probe(uri)
    except ConfigError:
        if str(tracking.get("fallback", "none")) != "local":
            raise


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


def sweep_job_tags(uri: str | None) -> dict[str, str]:
    """Tags that make the running multirun job's run a child of its sweep's parent run.

    The parent is recorded in ``<hydra.sweep.dir>/sweep.json``
    (:class:`auctionlab.experiments.multirun.MultirunSummary`): a file, so jobs in worker
    processes and on other nodes find it too. Empty outside a multirun job, without a record,
    or when the job logs to another store than the parent.

    Returns:
        ``mlflow.parentRunId``, ``sweep`` (the sweep directory) and ``sweep.job`` (the job
        number), or ``{}``.

    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    if hydra.get("mode") != RunMode.MULTIRUN:
        return {}
    try:
        record = json.loads((Path(str(hydra.sweep.dir)) / SWEEP_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or not record.get("parent_run_id") or record.get("uri") != uri:
        return {}
    return {
        "mlflow.parentRunId": str(record["parent_run_id"]),
        "sweep": str(record.get("sweep_dir", "")),
        "sweep.job": str(hydra.job.num),
    }


def run_provenance(cfg: DictConfig) -> dict[str, str]:
    """:func:`auctionlab.provenance.provenance` for a task config (device resolved now)."""
    import torch

    from auctionlab.utils import resolve_device

    try:
        device = str(resolve_device(str(cfg.get("device", "auto"))))
    except ConfigError:
        device = str(cfg.get("device"))
    return provenance(device, torch.get_num_threads())


class Tracker:
    """Context manager around one MLflow run; a no-op when ``tracking.enabled`` is false.

    ``tracking.parent_run_id`` (optional, set by ``auctionlab reproduce``) makes the run a
    child of that run (tag ``mlflow.parentRunId``); without it, a multirun job's run is a child
    of its sweep's parent run (:func:`sweep_job_tags`). ``resume_run_id`` reopens an existing run
    (``train resume=<dir>``) instead of creating one: its status goes back to RUNNING and new
    metrics continue its history; its ``failure`` tag from the part before is removed when
    this part finishes. A run whose ``run_dir`` tag names another directory than ``tags``
    does (the directory was copied or moved) is left alone and a new run is created.

    Logging never kills a run that is doing its work: once the store has started, a logging
    error (after the retries for a locked sqlite store) is reported as a warning, further
    logging is skipped, and the run's files are still written. ``logging_error`` says what
    went wrong.

    On exit the run is FINISHED, KILLED (``InterruptedRunError``, Ctrl-C or SIGTERM: a
    ``KeyboardInterrupt``) or FAILED with the reason in the tag ``failure``.

    Args:
        cfg: the whole task config (logged as flattened params).
        tracking: the ``tracking`` config node (``enabled``, ``uri``, ``experiment``...).
        run_name: the MLflow run name.
        tags: extra tags (task, Hydra choices, run directory).
        resume_run_id: an existing run to continue.

    """

    def __init__(
        self,
        cfg: DictConfig,
        tracking: DictConfig,
        run_name: str,
        tags: Mapping[str, str],
        resume_run_id: str | None = None,
    ):
        self.enabled = bool(tracking.get("enabled", True))
        self.cfg, self.tracking, self.run_name, self.tags = cfg, tracking, run_name, dict(tags)
        self.resume_run_id = resume_run_id
        self.run_id: str | None = None
        self.uri: str | None = None
        self.client = None
        self.logging_error: str | None = None
        self.lost_logging: str | None = None  # after exit: the logging error, if any
        self._stale_failure = False  # a resumed run's ``failure`` tag from the part before
        #: The run directory (tag ``run_dir``) whose files are logged when the run ends.
        self.run_dir = Path(self.tags["run_dir"]) if self.tags.get("run_dir") else None
        self._uploaded: dict[Path, tuple[int, int]] = {}  # file -> (mtime, size) when logged
        #: Where the run ran (code version, libraries, device, threads): tags and metrics.json.
        self.provenance = run_provenance(cfg)

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        from mlflow.entities import Param
        from mlflow.tracking.context.registry import resolve_tags

        self.client, self.uri, experiment_id = open_store(self.tracking)
        previous = self._resumable() if self.resume_run_id else None
        if previous is not None:
            self.run_id = previous.info.run_id
            # The failure of the part before (e.g. an interruption) is stale once this one
            # finishes; it is removed then, not now, so a crash in between still shows it.
            self._stale_failure = "failure" in previous.data.tags
            with_retry(self.client.update_run, self.run_id, status="RUNNING")
            # Only what changed: the run's tags were accepted when it was created, while
            # ``set_tag`` refuses some names ``create_run`` took (Hydra's ``env_variants/2x2@env``).
            before = previous.data.tags
            for key, value in {**self.tags, **self._provenance_tags()}.items():
                if before.get(key) != str(value):
                    with_retry(self.client.set_tag, self.run_id, tag_key(key), str(value))
            return self
        tags = {**self._provenance_tags(), **self.tags}
        parent = self.tracking.get("parent_run_id")
        if parent:
            tags["mlflow.parentRunId"] = str(parent)
        else:
            tags.update(sweep_job_tags(self.uri))
        run = with_retry(
            self.client.create_run, experiment_id, tags=resolve_tags(tags), run_name=self.run_name
        )
        self.run_id = run.info.run_id
        flat = flatten(OmegaConf.to_container(self.cfg, resolve=True))
        params = [Param(k, str(v)[:500]) for k, v in flat.items()]
        for lo in range(0, len(params), 100):
            with_retry(self.client.log_batch, self.run_id, params=params[lo : lo + 100])
        return self

    def _resumable(self):
        """The run ``resume_run_id`` if it may be continued here, else ``None`` (a new run).

        A run belongs to the directory in its ``run_dir`` tag. A copied or moved run
        directory carries the original's ``tracking.json``; continuing that MLflow run would
        overwrite the original's run_dir tag, checkpoint hash, metrics and artifacts.

        Raises:
            ConfigError: the run is not in this store.

        """
        try:
            run = with_retry(self.client.get_run, self.resume_run_id)
        except Exception as err:  # noqa: BLE001
            raise ConfigError(
                f"resume: MLflow run {self.resume_run_id} is not in {self.uri} ({err})"
            ) from None
        recorded, here = run.data.tags.get("run_dir"), self.tags.get("run_dir")
        if recorded and here and Path(recorded) != Path(here):
            log.warning(
                "resume: MLflow run %s belongs to %s, not %s (a copied or moved run "
                "directory); starting a new MLflow run",
                self.resume_run_id,
                recorded,
                here,
            )
            return None
        return run

    def _provenance_tags(self) -> dict[str, str]:
        task = str(self.tags.get("task", self.cfg.get("task", "run")))
        return mlflow_tags(task, self.provenance)

    def write_record(self, directory: Path) -> None:
        """``tracking.json``: where this run is logged, and the directory it was written in.

        ``train resume=<directory>`` continues that MLflow run only from that very directory
        (:func:`previous_run_id`): a copy of it is a new run.
        """
        if self.run_id is None:
            return
        from auctionlab.runs import write_json

        record = {"uri": self.uri, "run_id": self.run_id, "run_dir": str(directory.resolve())}
        write_json(directory / TRACKING_RECORD, record)

    @property
    def active(self) -> bool:
        """Whether calls still reach the store."""
        return self.enabled and self.run_id is not None and self.logging_error is None

    def _safely(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return None
        try:
            return with_retry(fn, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the run's own files are what matters
            first = str(err).strip().splitlines()
            self.logging_error = f"{what}: {type(err).__name__}: {first[0] if first else ''}"
            log.warning(
                "MLflow logging failed (%s); the run goes on and its files are kept, but "
                "nothing more is logged to run %s",
                self.logging_error,
                self.run_id,
            )
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log a task's flat numbers: results as metrics, settings as params, curves stepped.

        Non-numbers are skipped. Names :func:`is_setting` accepts go to :meth:`log_params`;
        curve points (:func:`curve_metric`) are logged at their attacker steps, their
        coordinates not at all (the curve's CSV artifact has them); the rest at ``step``.
        """
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        numeric: list[Metric] = []
        settings: dict[str, float] = {}
        for key, value in metrics.items():
            if not isinstance(value, int | float):
                continue
            if CURVE_KEY.match(key) is not None:
                point = curve_metric(key)  # None: the point's coordinates
                if point is not None:
                    numeric.append(Metric(point[0], float(value), now, point[1]))
            elif is_setting(key):
                settings[key] = float(value)
            else:
                numeric.append(Metric(key, float(value), now, int(step or 0)))
        for lo in range(0, len(numeric), 1000):
            self._safely(
                "log_metrics", self.client.log_batch, self.run_id, metrics=numeric[lo : lo + 1000]
            )
        self.log_params(settings)

    def log_params(self, settings: Mapping[str, float]) -> None:
        """Log settings (numbers that say how a result was measured) as params.

        MLflow keeps one value per param. One this run has already (the config's own
        ``profiles``, the same budget logged by a resumed run's first part) is left as it is
        when the value is the same; a different value (a resumed run measured with another
        budget) becomes a tag of that name, with a log line, since params cannot change.
        """
        if not self.active or not settings:
            return
        from mlflow.entities import Param

        run = self._safely("get_run", self.client.get_run, self.run_id)
        if run is None:
            return
        logged = run.data.params
        text = {k: param_text(v)[:PARAM_LIMIT] for k, v in settings.items()}
        new = [Param(k, v) for k, v in text.items() if k not in logged]
        for lo in range(0, len(new), 100):
            self._safely(
                "log_params", self.client.log_batch, self.run_id, params=new[lo : lo + 100]
            )
        changed = {k: v for k, v in text.items() if k in logged and logged[k] != v}
        if changed:
            log.info(
                "MLflow params %s were logged before with other values; the new values are "
                "tags of the same names",
                ", ".join(sorted(changed)),
            )
            self.set_tags(changed)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Add tags to the run."""
        if not self.active:
            return
        for key, value in tags.items():
            self._safely(
                "set_tag", self.client.set_tag, self.run_id, tag_key(key), str(value)[:5000]
            )

    def tag_run(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Add tags to another run of the store (a child run this task launched)."""
        if not self.active:
            return
        for key, value in tags.items():
            self._safely("set_tag", self.client.set_tag, run_id, tag_key(key), str(value)[:5000])

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Attach files to the run (missing files and links are skipped).

        A file of the run directory keeps its folder (``.hydra/overrides.yaml``); others go
        to the top. A file logged before and unchanged since is not logged again, so the
        files a task logs as soon as they are sealed cost nothing when :meth:`log_run_dir`
        logs the whole directory at the end.
        """
        for path in paths:
            path = Path(path)
            if not self.active:
                return
            if path.is_symlink() or not path.is_file():
                continue
            stat = path.stat()
            key, seen = path.resolve(), (stat.st_mtime_ns, stat.st_size)
            if self._uploaded.get(key) == seen:
                continue
            folder = None
            if self.run_dir is not None:
                with contextlib.suppress(ValueError):  # a file outside the run directory
                    parent = key.relative_to(self.run_dir.resolve()).parent
                    folder = None if parent == Path() else parent.as_posix()
            self._safely("log_artifact", self.client.log_artifact, self.run_id, str(path), folder)
            if self.active:
                self._uploaded[key] = seen

    def log_run_dir(self) -> None:
        """Log every file of the run directory (:func:`run_files`) not logged as it is now.

        Called when the run ends, finished, failed or interrupted: the log, ``choices.json``,
        ``.hydra/``, figures and whatever the task wrote. A tracking store inside the run
        directory is left out.
        """
        if self.run_dir is None or not self.run_dir.is_dir():
            return
        self.log_artifacts(run_files(self.run_dir, skip=store_files(self.uri or "")))

    def log_model(self, mechanism: Any, reports: Any, name: str = MODEL_NAME) -> bool:
        """Export a trained mechanism as this run's MLflow model (``runs:/<run id>/model``).

        The mechanism, wrapped in :class:`~auctionlab.mechanisms.export.OutcomeTensor`
        (``[B, n, d]`` reports to ``[B, n, k + 1]`` allocation and payment), is traced on CPU
        by ``torch.export`` and logged with ``mlflow.pytorch`` in the ``pt2`` format: a graph
        and its weights, which ``mlflow.pytorch.load_model`` rebuilds without unpickling code
        or importing auctionlab. ``reports`` (a few profiles) are its input example and fix
        the signature; the batch dimension stays free. A previous export of this run (a
        resumed run) is replaced.

        An export for users only: auctionlab never loads it. ``evaluate``, ``certify`` and
        ``resume`` load the run's checkpoint (hash and manifest verified) into a mechanism
        built from its checked config.

        Args:
            mechanism: the trained mechanism (copied; the original is not moved or changed).
            reports: ``[B, n, d]`` report profiles, the input example.
            name: the model's name in the run.

        Returns:
            Whether the model was logged. ``False`` with one log line when the mechanism
            cannot be exported (public inputs, a forward pass ``torch.export`` cannot trace);
            ``False`` with the usual warning when logging fails.

        """
        if not self.active:
            return False
        import copy

        import torch

        from auctionlab.mechanisms.export import OutcomeTensor

        label = type(mechanism).__name__
        module = OutcomeTensor(copy.deepcopy(mechanism).cpu().eval())
        example = reports.detach().cpu().float()
        dynamic = ({0: torch.export.Dim.AUTO},)  # any batch size
        try:
            with torch.no_grad():
                torch.export.export(module, (example,), dynamic_shapes=dynamic)
        except Exception as err:  # noqa: BLE001 - torch.export fails in many ways; none is fatal
            first = str(err).strip().splitlines()
            log.info(
                "no MLflow model for %s: torch.export cannot trace it (%s: %s)",
                label,
                type(err).__name__,
                first[0][:200] if first else "",
            )
            return False
        # One attempt: retrying the whole export would log a second model (_export retries
        # its own store calls).
        self._safely("log_model", self._export, module, example, name, attempts=1)
        return self.active

    def _export(self, module: Any, example: Any, name: str) -> None:
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = module(example)
        signature = infer_signature(example.numpy(), output.numpy())
        run = with_retry(self.client.get_run, self.run_id)
        experiment = run.info.experiment_id
        for old in with_retry(
            self.client.search_logged_models, [experiment], filter_string=f"name = '{name}'"
        ):
            if old.source_run_id == self.run_id:
                with_retry(self.client.delete_logged_model, old.model_id)
        # Created here so it lands in this run's experiment (mlflow.pytorch would use the
        # fluent default experiment).
        model = with_retry(
            self.client.create_logged_model, experiment, name=name, source_run_id=self.run_id
        )
        with _global_uri(self.uri):  # mlflow.pytorch takes no client or tracking URI
            mlflow.pytorch.log_model(
                module,
                name=name,
                model_id=model.model_id,
                run_id=self.run_id,
                signature=signature,
                input_example=example.numpy(),
                serialization_format="pt2",
                # given, not inferred: inference loads the model in a subprocess (seconds)
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled or self.run_id is None:
            return
        from auctionlab.errors import InterruptedRunError

        if exc is not None:
            self.set_tags({"failure": f"{exc_type.__name__}: {exc}"[:4000]})
        if isinstance(exc, InterruptedRunError | KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED" if exc is not None else "FINISHED"
        missing = "later metrics are missing"
        if self.logging_error is None:  # a store that failed midway gets no more uploads
            self.log_run_dir()
            missing = "files of the run directory are missing"
        error, self.logging_error = self.logging_error, None
        self.lost_logging = error
        if error is not None:  # one last try: the status and the reason matter most
            self.set_tags({"logging_error": f"{error}; {missing}"})
        if status == "FINISHED" and self._stale_failure:
            self._safely("delete_tag", self.client.delete_tag, self.run_id, "failure")
        self._safely("set_terminated", self.client.set_terminated, self.run_id, status)


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI (and ``MLFLOW_TRACKING_URI``) set to ``uri``, then restored."""
    import mlflow

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None: back to the environment or the default
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def previous_run_id(resume: str | None, tracking: Mapping[str, Any]) -> str | None:
    """The MLflow run a resumed training continues (when it logs to the same store).

    Args:
        resume: the run directory being resumed (``None``: a fresh run).
        tracking: the ``tracking`` config node (``enabled``, ``uri``).

    """
    if not resume:
        return None
    record = Path(str(resume)) / TRACKING_RECORD
    if not record.exists() or not bool(tracking.get("enabled", True)):
        return None
    try:
        previous = json.loads(record.read_text())
        previous = previous if isinstance(previous, dict) else {}
    except (OSError, ValueError):
        previous = {}
    if not previous:
        log.warning("resume: %s cannot be read; starting a new MLflow run", record)
        return None
    if previous.get("uri") != resolve_uri(tracking.get("uri"), create=False):
        log.warning("resume: the first part was logged to %s; starting a new MLflow run", previous)
        return None
    recorded, here = previous.get("run_dir"), str(Path(str(resume)).resolve())
    if recorded is not None and recorded != here:  # copied or moved: never the original's run
        log.warning(
            "resume: %s was written in %s (a copy or a move); starting a new MLflow run, "
            "MLflow run %s stays as it is",
            record,
            recorded,
            previous.get("run_id"),
        )
        return None
    return previous.get("run_id")
