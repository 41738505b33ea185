"""Errors that the CLI turns into one-line messages."""


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
    """The user interrupted the run (Ctrl-C) and it stopped cleanly (MLflow status KILLED)."""


class OutputError(RunError):
    """A file of the run could not be written (disk full, read-only file system, no access).

    The message names the path and the system's reason; a half-written temp file is removed.
    """
