"""User-facing errors.

Every error a user can cause (bad config, unknown plugin, missing data …) is a
:class:`GcnnkitError`. Its message is one line that names the bad value and what is
allowed; the CLI prints it and exits with code 2, never with a traceback.
"""

from __future__ import annotations


class GcnnkitError(Exception):
    """Base class of every error caused by user input. The message is one line."""

    #: The CLI's exit code for this error (``docs/cli.md``).
    exit_code = 2


class ConfigError(GcnnkitError):
    """A configuration value is malformed, unknown or of the wrong type."""


class SpecError(ConfigError):
    """An architecture spec is invalid (unknown layer, wrong order, bad kernel …)."""


class PluginError(GcnnkitError):
    """A plugin is unknown, failed to load, is incompatible or collides with another."""


class UnsupportedGroupError(PluginError):
    """A backend cannot build layers for the requested group."""


class DataError(GcnnkitError):
    """A data set is unknown or its files are missing."""


class DivergenceError(GcnnkitError):
    """Training diverged: a loss or weight became NaN or infinite. The last finite checkpoint is kept.

    Not bad input as such (the same config may train with another learning rate), hence its own
    exit code.
    """

    exit_code = 3
