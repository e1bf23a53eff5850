"""Resource limits a user can raise: read from environment variables, checked before work starts.

gcnnkit refuses, in one line, a job whose estimate exceeds a limit instead of running out of
memory or time halfway (see :mod:`gcnnkit.run.resources` for the estimates):

* ``GCNNKIT_MAX_MEMORY_GB``: memory a model may need (parameters, filter banks, optimiser state,
  activations of one batch); default half the physical memory.
* ``GCNNKIT_MAX_GROUP_ORDER``: largest ``N`` of a group family member (``C{N}``, ``D{N}``); default 4096.
* ``GCNNKIT_MAX_CHECK_SECONDS``: estimated time of ``gcnnkit check``; default 600.

A limit is a positive number; ``inf`` switches it off.
"""

from __future__ import annotations

import math
import os

from gcnnkit.core.errors import ConfigError

MEMORY_ENV = "GCNNKIT_MAX_MEMORY_GB"
GROUP_ORDER_ENV = "GCNNKIT_MAX_GROUP_ORDER"
CHECK_SECONDS_ENV = "GCNNKIT_MAX_CHECK_SECONDS"

DEFAULT_GROUP_ORDER = 4096
DEFAULT_CHECK_SECONDS = 600.0
#: the default memory limit, as a fraction of the physical memory
DEFAULT_MEMORY_FRACTION = 0.5


def _read(env: str, default: float) -> float:
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ConfigError(f"{env}={text!r}: expected a positive number (or inf for no limit)")
    return value


def physical_memory_gb() -> float:
    """Physical memory of this machine in GB (1e9 bytes); 16 when it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


def max_memory_gb() -> float:
    """``GCNNKIT_MAX_MEMORY_GB``, default :data:`DEFAULT_MEMORY_FRACTION` of the physical memory."""
    return _read(MEMORY_ENV, round(DEFAULT_MEMORY_FRACTION * physical_memory_gb(), 1))


def max_group_order() -> float:
    """``GCNNKIT_MAX_GROUP_ORDER``, default :data:`DEFAULT_GROUP_ORDER`."""
    return _read(GROUP_ORDER_ENV, DEFAULT_GROUP_ORDER)


def max_check_seconds() -> float:
    """``GCNNKIT_MAX_CHECK_SECONDS``, default :data:`DEFAULT_CHECK_SECONDS`."""
    return _read(CHECK_SECONDS_ENV, DEFAULT_CHECK_SECONDS)


def check_group_order(name: str, n: int) -> None:
    """Refuse to build member ``name`` of a group family (``C{N}``, ``D{N}``) when its ``N`` exceeds
    ``GCNNKIT_MAX_GROUP_ORDER`` (its Cayley table alone has ``|G|²`` entries), in one line naming the
    limit and how to raise it."""
    limit = max_group_order()
    if n > limit:
        raise ConfigError(
            f"group {name!r}: N = {n} is more than the limit of {limit:g} (memory and time of every layer "
            f"grow with the group's order, its Cayley table with its square); set {GROUP_ORDER_ENV}={n} "
            f"to build it anyway"
        )
