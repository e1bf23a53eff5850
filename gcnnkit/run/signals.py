"""SIGINT, SIGTERM and SIGHUP during training: stop cleanly, keep the last checkpoint, say how to resume.

Schedulers, ``docker stop`` and closed terminals send SIGTERM or SIGHUP, which would otherwise end
Python without a word. While :func:`gcnnkit.run.training.train` runs, :class:`SignalGuard` turns all
three into :class:`Interrupted` (a ``KeyboardInterrupt``): the step in progress is abandoned, the
last completed epoch's checkpoint stays, the resume hint is printed, and the CLI exits with
128 + the signal number (130, 143, 129). A signal that arrives while a checkpoint and the metrics
file are written (:meth:`SignalGuard.deferred`) waits until both are on disk. Signals whose handler
is not the default one (SIG_IGN under ``nohup``, a caller's own handler) are left alone, and the
previous handlers come back when training ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: The signals handled, where the platform has them (Windows has no SIGHUP).
HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum
        #: None for SIGINT (plain Ctrl-C, reported as "interrupted"), else e.g. "SIGTERM"
        self.signal_name = None if signum == signal.SIGINT else signal.Signals(signum).name


def signal_suffix(exc: BaseException) -> str:
    """``" by SIGTERM"`` for an :class:`Interrupted` other than SIGINT, else ``""`` (for log lines)."""
    name = getattr(exc, "signal_name", None)
    return f" by {name}" if name else ""


class SignalGuard:
    """Context manager: SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted`, except inside :meth:`deferred`."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._pending: int | None = None

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers; signals then keep their behaviour
        for signum in HANDLED:
            previous = signal.getsignal(signum)
            if previous in (signal.SIG_DFL, signal.default_int_handler):
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._pending = self._pending or signum
            return
        raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals while the block runs (a checkpoint write); raise the first one after it."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)
