"""``auctionlab tune``: search a train config's hyperparameters with Optuna.

The study (space, resumable storage, launched trials, report) lives in
:mod:`auctionlab.experiments.tune`; this task gives it the trial job (a ``train``, then an
optional ``evaluate`` of it) and the objective. See ``conf/tune.yaml``.
"""

from __future__ import annotations

import functools
from typing import Any

from omegaconf import DictConfig

from auctionlab.errors import InterruptedRunError, RunError
from auctionlab.experiments.plan import quote
from auctionlab.experiments.stages import run_stage
from auctionlab.experiments.tune import (
    EVALUATE_DIR,
    TunePlan,
    build_tune_plan,
    job_settings,
    run_tune,
)
from auctionlab.tasks.common import (
    choices,
    describe_objective,
    log,
    objective_value,
    one_line_write_errors,
    run_dir,
)
from auctionlab.tasks.reproduce import task_function


def rewrite_args(args: list[str]) -> list[str]:
    """``tune.space.<key>=interval(1e-4,1e-2)`` typed unquoted is passed on as its text.

    On a command line Hydra reads sweep syntax as a sweep (which only ``-m`` runs); under
    ``tune.space`` it is the search space's text, so it is quoted for Hydra
    (``tune.space.trainer.lr='interval(1e-4,1e-2)'``). Other arguments are left as they are.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for arg in args:
        key, eq, text = arg.partition("=")
        if eq and key.lstrip("+").startswith("tune.space.") and not key.startswith("~"):
            try:
                sweep = parser.parse_override(arg).is_sweep_override()
            except Exception:  # noqa: BLE001 - not parsable as it is: the space's own check says why
                sweep = True
            if sweep:
                arg = f"{key}={quote(text)}"
        out.append(arg)
    return out


def trial(cfg: DictConfig, evaluate: list[str] | None = None) -> dict[str, float]:
    """One trial: a ``train`` job, then (``evaluate`` given) ``evaluate run=<its dir>``.

    Runs as a Hydra job of the launcher (in this process or a worker); the evaluate job runs
    in-process in ``<train run>/evaluate/``.

    Args:
        cfg: the trial's composed train config.
        evaluate: the evaluate job's overrides (``None``: no evaluate job).

    Returns:
        The train job's metrics.

    Raises:
        InterruptedRunError: a signal stopped it (the study stops).
        RunError: anything else that failed, in one line (the trial is FAIL).

    """
    import logging

    logging.getLogger("auctionlab").setLevel(logging.INFO)
    try:
        metrics = task_function("train")(cfg)
        if evaluate is not None:
            out = run_dir()
            overrides = [*evaluate, f"run={quote(str(out))}"]
            error = run_stage("evaluate", overrides, out / EVALUATE_DIR, task_function)
            if error is not None:
                raise error
    except InterruptedRunError:
        raise
    except Exception as err:
        log.exception("trial failed")
        # one picklable line: a worker process sends it back to the tune run
        raise RunError(f"{type(err).__name__}: {' '.join(str(err).split())}") from None
    return metrics


def make_trial(evaluate: list[str] | None) -> Any:
    """The task function of every trial job (picklable, for launchers with worker processes)."""
    return functools.partial(trial, evaluate=evaluate)


def prepare(cfg: DictConfig) -> TunePlan:
    """Validate the search and compose a few trials; raises ``ConfigError`` on bad input."""
    overrides, hydra, launcher = job_settings()
    return build_tune_plan(cfg, choices(), overrides, hydra, launcher)


@one_line_write_errors
def run(cfg: DictConfig) -> dict[str, float]:
    """Run the study until ``tune.trials`` trials are complete; write and log its report.

    Returns:
        Counts of trials and, in single mode, ``objective``: the best trial's value (what the
        console script returns to Hydra).

    """
    return run_tune(
        cfg,
        prepare(cfg),
        run_dir(),
        choices(),
        make_trial,
        objective_value,
        describe_objective,
    )
