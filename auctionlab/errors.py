"""Errors that the CLI turns into one-line messages, and the stop signals that raise them."""

import signal
import threading

#: The signals that stop a task as Ctrl-C does: SIGTERM is what ``timeout``, Slurm
#: pre-emption and ``docker stop`` send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ConfigError(ValueError):
    """A configuration value or combination that cannot work; the message names the option.

    Raised before any work starts; the CLI exits with status 2.
    """


class RunError(RuntimeError):
    """A started run that cannot produce a trustworthy result.

    The message says why and what was kept (e.g. the last good checkpoint). The task's MLflow
    run is marked FAILED with the reason; the CLI prints one line and exits with status 1.
    """


class NonFiniteError(RunError):
    """NaN or inf in a loss, utility, multiplier, parameter or solver output."""


class InterruptedRunError(RunError):
    """A signal stopped the run cleanly (Ctrl-C or SIGTERM; MLflow status KILLED).

    The CLI exits with status 128 + the signal's number, as a shell reports a process the
    signal ended: 130 for Ctrl-C (SIGINT), 143 for SIGTERM.

    Args:
        message: what was interrupted and what was kept.
        signum: the signal that stopped it.

    """

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


class Interrupted(KeyboardInterrupt):
    """A stop signal raised at once, wherever the task is (what Ctrl-C raises, plus which).

    Everything that handles Ctrl-C (``KeyboardInterrupt``) handles it: the MLflow run is
    marked KILLED and the CLI exits with status 128 + ``signum``.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def raise_interrupt(signum: int, frame: object) -> None:
    """Signal handler: stop now, as Ctrl-C does, naming the signal (:class:`Interrupted`).

    Raises:
        Interrupted: always.

    """
    raise Interrupted(signum)


def catch_stop_signals() -> None:
    """Make SIGTERM (and Ctrl-C) raise :class:`Interrupted` in the main thread.

    A signal the process ignores stays ignored (``nohup``, background jobs of a
    non-interactive shell), and a handler someone else installed is kept. Outside the main
    thread (where Python cannot set handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signum, raise_interrupt)


class OutputError(RunError):
    """A file of the run could not be written (disk full, read-only file system, no access).

    The message names the path and the system's reason; a half-written temp file is removed.
    """
