"""User-facing errors.

Every error a user can cause (bad config, unknown plugin, missing data …) is a
:class:`GcnnkitError`. Its message is one line that names the bad value and what is
allowed; the CLI prints it and exits with code 2, never with a traceback.
"""

from __future__ import annotations


class GcnnkitError(Exception):
    """Base class of every error caused by user input. The message is one line."""


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
