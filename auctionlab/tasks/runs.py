"""``auctionlab runs``: recent MLflow runs with their key metrics, one line each.

Runs can be picked by their Hydra choices and seed (``auctionlab runs env=2x2
mechanism=regretnet seed=0``; a comma lists alternatives), by parent (``parent=<run id>``: the
jobs of a multirun or the points of a reproduce run) and by any MLflow search filter
(``filter=``). Each run shows its env family's headline metrics (tag ``headline_metrics``, logged by
``train`` and ``evaluate``: NSW / efficiency / exploitability for allocation, revenue / regret
for auctions...; ``val_``-prefixed for ``train``, the final validation), always its IR
violation, and regret with the attacker budget that produced it (``restarts x steps @
profiles``). Nothing is written; a missing sqlite store is reported, not created.
"""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from auctionlab.conf import CONF_DIR, GROUPS
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
COLUMNS = ["started", "status", "task", "env", "mechanism", "seed", "headline", "ir_violation"]
COLUMNS += ["budget", "name", "run_dir"]
#: ``key=value`` filters that are not Hydra choices: ``key -> the run's MLflow param``.
PARAM_FILTERS = {"seed": "seed"}


def choice_keys() -> list[str]:
    """What ``auctionlab runs <key>=<value>`` filters on: the config groups, then ``seed``.

    Not ``tracking``: ``tracking=<option>`` chooses the store ``runs`` itself reads.
    """
    return [g for g in GROUPS if g not in _own_keys()] + list(PARAM_FILTERS)


def _own_keys() -> set[str]:
    """Top-level keys of ``runs`` itself (``limit``, ``filter``...): never a choice filter."""
    from omegaconf import OmegaConf

    own = set(OmegaConf.load(CONF_DIR / "runs.yaml").keys())
    return own | {"tracking", "hydra", "defaults"}


def _hydra_string(text: str) -> str:
    """``text`` as a quoted Hydra string (its commas, quotes and ``=`` kept as text)."""
    # Hydra unescapes a backslash only before a quote or at the end of the string.
    body = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + body.replace("'", "\\'") + "'"


def rewrite_args(args: list[str]) -> list[str]:
    """Command-line sugar of ``runs``: choice filters, and ``filter=`` taken as typed.

    ``env=2x2`` (a key that is not an option of ``runs``) becomes ``+choices.env='2x2'``, checked
    in :func:`prepare`. ``filter=tags.task = 'train'`` is quoted for Hydra, which would
    otherwise read its ``=``, quotes and commas as override syntax; a value already quoted
    (``filter="..."``) is left alone.
    """
    own, out = _own_keys(), []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith("-"):
            out.append(arg)
        elif key == "filter" and value and value[0] not in "'\"":
            out.append(f"filter={_hydra_string(value)}")
        elif key.isidentifier() and key not in own:
            out.append(f"+choices.{key}={_hydra_string(value)}")
        else:
            out.append(arg)
    return out


def choice_filters(choices: dict[str, str]) -> list[list[str]]:
    """MLflow filter clauses for ``key=value`` choices, one list per combination of values.

    ``env=1x2,2x2`` means either (MLflow's search has no ``IN`` for tags): two searches.

    Raises:
        ConfigError: a key that is neither a config group nor ``seed``, or a bad value.

    """
    alternatives = []
    for key, value in choices.items():
        if key not in choice_keys():
            raise ConfigError(
                f"{key}={value}: not an option of runs nor a choice to filter by; filter by "
                f"one of: {', '.join(choice_keys())} (or filter=<MLflow filter>)"
            )
        values = list(dict.fromkeys(v.strip() for v in str(value).split(",") if v.strip()))
        if not values or any("'" in v or "`" in v for v in values):
            raise ConfigError(f"{key}={value}: give a choice name, or names separated by commas")
        field = f"params.{PARAM_FILTERS[key]}" if key in PARAM_FILTERS else f"tags.`choice.{key}`"
        alternatives.append([f"{field} = '{v}'" for v in values])
    return [list(combination) for combination in itertools.product(*alternatives)]


def prepare(cfg: DictConfig) -> tuple[str, list[str]]:
    """Check the options; returns the store URI and the search filters (their runs merged)."""
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
    picked = {str(k): str(v) for k, v in (cfg.get("choices") or {}).items()}
    filters = [" and ".join([*parts, *extra]) for extra in choice_filters(picked)]
    return resolve_uri(cfg.tracking.get("uri"), create=False), filters


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


def _shown_dir(path: str) -> str:
    """A run directory relative to the working directory when it lies below it."""
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


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
        "seed": run.data.params.get("seed", ""),
        "headline": headline,
        # "!" marks a material violation (auctionlab.reporting.summary.IR_MATERIAL).
        "ir_violation": ""
        if math.isnan(violation)
        else f"{violation:.2e}" + ("!" if ir_material(metrics, prefix) else ""),
        "budget": budget,
        "name": tags.get("mlflow.runName", ""),
        "run_dir": _shown_dir(tags.get("run_dir", "")),
        "run_id": run.info.run_id,
    }


def run(cfg: DictConfig) -> list[dict[str, str]]:
    """Print the most recent runs (``limit``), newest first; returns the rows."""
    from mlflow import MlflowClient

    uri, filters = prepare(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"no MLflow store at {uri} (run a task first)")
        return []
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in with_retry(client.search_experiments)]
    if not experiments:
        print(f"no runs in {uri}")
        return []
    found = {}
    for one in filters:
        try:
            runs = with_retry(
                client.search_runs,
                experiments,
                filter_string=one,
                order_by=["attributes.start_time DESC"],
                max_results=int(cfg.limit),
            )
        except Exception as err:  # noqa: BLE001 - a bad filter gets one line
            first = str(err).strip().splitlines()
            raise ConfigError(f"filter={cfg.filter}: {first[0] if first else err}") from err
        found.update({r.info.run_id: r for r in runs})
    newest = sorted(found.values(), key=lambda r: r.info.start_time, reverse=True)
    runs = newest[: int(cfg.limit)]
    filter_string = " or ".join(f"({f})" if len(filters) > 1 else f for f in filters if f)
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
