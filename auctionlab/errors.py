"""Errors that the CLI turns into one-line messages."""


class ConfigError(ValueError):
    """A configuration value or combination that cannot work; the message names the option."""
