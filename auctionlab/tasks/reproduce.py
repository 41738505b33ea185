"""``auctionlab reproduce``: run an experiment's sweep, then aggregate its table and plot.

The pipeline (plan, stages, teacher and resume stages, child MLflow runs, table and plot)
lives in :mod:`auctionlab.experiments`; this task composes it with the task functions that
run each job. See ``conf/experiment/*.yaml`` and ``auctionlab reproduce --list``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from auctionlab.experiments import (  # noqa: F401 (Point, stage_arguments: tests use them here)
    Plan,
    Point,
    build_plan,
    listing,
    run_experiment,
    stage_arguments,
)
from auctionlab.tasks.common import choices, run_dir

#: ``auctionlab reproduce --list`` (see ``auctionlab.cli``).
FLAGS = {"--list": listing}


def task_function(stage: str) -> Callable[[DictConfig], Any]:
    """The ``run(cfg)`` of the task a job runs (looked up at call time: tests patch modules)."""
    from auctionlab.tasks import TASKS

    return importlib.import_module(TASKS[stage][0]).run


def prepare(cfg: DictConfig) -> Plan:
    """Validate the experiment and every point cheaply; raises ``ConfigError`` on bad input."""
    from auctionlab.conf import GROUPS

    return build_plan(cfg, GROUPS)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the experiment's points, then write and log its table and plot."""
    return run_experiment(cfg, prepare(cfg), run_dir(), choices(), task_function)
