"""Exact MIP regret certificates per (profile, bidder), in parallel over worker processes.

Each instance maximises bidder ``i``'s utility over its report space with the others truthful
([curry2020certifying] eq. 1). The network is encoded once per worker and bidder
(``auctionlab.solvers``); per instance only bounds, big-M coefficients and the objective
change. The parent computes the IBP bounds for all instances at once (torch) and the truthful
and PGD utilities; every certified misreport is re-evaluated by the torch forward pass.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from auctionlab.solvers.backends import SolveResult, make_backend
from auctionlab.solvers.mip_encoding import InstanceBounds, NetworkSpec, instance_bounds

_WORKER: dict = {}


@dataclass
class SolverSettings:
    """How each instance is solved.

    Attributes:
        backend: ``highs`` | ``pyomo`` | ``scip``.
        bounds: ``ibp`` | ``lp`` (LP tightening of the IBP bounds).
        time_limit: seconds per instance; a solve that hits it is ``unknown``.
        mip_gap: relative gap at which the solver may stop as optimal.
        threads: solver threads per worker.

    """

    backend: str = "highs"
    bounds: str = "ibp"
    time_limit: float = 60.0
    mip_gap: float = 1e-6
    threads: int = 1


def _init_worker(spec: NetworkSpec, settings: SolverSettings) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["spec"], _WORKER["settings"] = spec, settings
    _WORKER["backend"] = make_backend(
        settings.backend, spec, settings.time_limit, settings.mip_gap, settings.threads
    )


def _solve_one(task: tuple) -> tuple[int, SolveResult, int]:
    """Solve one instance in a worker: ``(index, profile, bidder, bounds, start)``."""
    index, profile, bidder, bounds, start = task
    spec, settings = _WORKER["spec"], _WORKER["settings"]
    if settings.bounds == "lp":
        bounds = instance_bounds(spec, profile[None], np.array([bidder]), tighten="lp")[0]
    result = _WORKER["backend"].solve(profile, bidder, bounds, start_report=start)
    return index, result, bounds.unstable()


def solve_instances(
    spec: NetworkSpec,
    profiles: np.ndarray,
    bidders: np.ndarray,
    settings: SolverSettings,
    starts: np.ndarray | None = None,
    workers: int = 1,
    progress: bool = False,
) -> tuple[list[SolveResult], list[int]]:
    """Certify every ``(profiles[k], bidders[k])``.

    Args:
        spec: the network.
        profiles: ``[N, n, m]`` true values.
        bidders: ``[N]`` deviating bidder per instance.
        settings: solver settings.
        starts: optional ``[N, m]`` reports given to the solver as a first incumbent.
        workers: processes (``1``: in this process; ``0``: one per core).
        progress: show a progress bar.

    Returns:
        One ``SolveResult`` per instance (same order) and the number of unstable trunk ReLUs
        (binaries) of each.

    """
    from tqdm.auto import tqdm

    bounds: list[InstanceBounds] = instance_bounds(spec, profiles, bidders, tighten="ibp")
    tasks = [
        (k, profiles[k], int(bidders[k]), bounds[k], None if starts is None else starts[k])
        for k in range(len(bidders))
    ]
    results: list[SolveResult | None] = [None] * len(tasks)
    unstable = [0] * len(tasks)
    workers = workers or (os.cpu_count() or 1)
    bar = tqdm(total=len(tasks), desc="certify (MIP)", unit="inst", disable=not progress)
    if workers <= 1:
        _init_worker(spec, settings)
        try:
            for task in tasks:
                k, result, count = _solve_one(task)
                results[k], unstable[k] = result, count
                bar.update(1)
        finally:
            _WORKER.clear()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(spec, settings),
        ) as pool:
            futures = [pool.submit(_solve_one, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    k, result, count = future.result()
                    results[k], unstable[k] = result, count
                    bar.update(1)
            except BaseException:
                # Ctrl-C, SIGTERM or a failed solve: leaving the block would otherwise wait
                # for every queued solve. Drop them and stop the solves under way (the
                # workers only compute; the executor keeps its processes in _processes).
                pool.shutdown(wait=False, cancel_futures=True)
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
                raise
    bar.close()
    return results, unstable  # type: ignore[return-value]


def utility_at(mechanism, values, bidders, reports):
    """Bidder ``bidders[k]``'s true utility when it alone reports ``reports[k]`` (torch float64).

    Args:
        mechanism: the mechanism (eval mode).
        values: ``[N, n, m]`` float64 tensor of true values.
        bidders: ``[N]`` long tensor.
        reports: ``[N, m]`` float64 tensor.

    Returns:
        ``(utility [N], allocation [N, m], payment [N])`` of the deviating bidder.

    """
    import torch

    N = values.shape[0]
    rows = torch.arange(N)
    profile = values.clone()
    profile[rows, bidders] = reports
    with torch.no_grad():
        outcome = mechanism(profile)
    allocation = outcome.allocation[rows, bidders]
    payment = outcome.payment[rows, bidders]
    utility = (allocation * values[rows, bidders]).sum(-1) - payment
    return utility, allocation, payment


def finite(x: float) -> bool:
    """``x`` is a finite float."""
    return x is not None and math.isfinite(x)
