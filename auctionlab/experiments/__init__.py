"""Experiments: a sweep of train / evaluate / certify jobs aggregated into a table and a plot.

:mod:`~auctionlab.experiments.plan` expands and validates an experiment's config into a
:class:`~auctionlab.experiments.plan.Plan`; :mod:`~auctionlab.experiments.stages` runs its
jobs in-process (task functions given by the caller) and writes the table.
``auctionlab reproduce experiment=<name>`` is the way to run one.
"""

from auctionlab.experiments.plan import (
    STAGES,
    Plan,
    Point,
    build_plan,
    compose,
    expand_sweep,
    experiment_names,
    listing,
    stage_arguments,
)
from auctionlab.experiments.stages import run_experiment

__all__ = [
    "STAGES",
    "Plan",
    "Point",
    "build_plan",
    "compose",
    "expand_sweep",
    "experiment_names",
    "listing",
    "run_experiment",
    "stage_arguments",
]
