"""One writer per run directory: an OS file lock on ``<run dir>/run.lock`` held for the whole of training.

Two ``gcnnkit train`` on the same ``--out``, or a ``--resume`` while the run still trains, would
interleave the metrics file and overwrite each other's checkpoints. :class:`RunLock` takes an
exclusive ``fcntl.flock`` on the lock file; a second writer is refused with one line naming the
directory and the pid holding it. The operating system drops the lock when the holder exits,
however it exits (kill -9 included), so a crashed run never leaves a stale lock. A run that ends
removes the file (a crashed one leaves it, unlocked and harmless); a writer that locked a file
removed meanwhile tries again on the new one. Where ``fcntl`` does not exist (Windows) the lock
is a no-op.
"""

from __future__ import annotations

import os
from pathlib import Path

from gcnnkit.core.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "run.lock"


class RunLock:
    """Context manager holding the lock of at most one run directory; :meth:`acquire` takes it."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.run_dir: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, run_dir: Path) -> None:
        """Lock ``run_dir`` (an existing folder) or raise a one-line :class:`ConfigError` naming the holder."""
        if self._fd is not None or fcntl is None:
            return
        path = run_dir / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"--out {run_dir}: cannot create its lock file {LOCK_FILE}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(
                    f"--out {run_dir}: another gcnnkit train (pid {holder}) is writing this run directory; "
                    f"wait for it to end or choose another --out"
                ) from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break  # the file is still the lock file, not one its last holder removed
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd, self.run_dir = fd, run_dir

    def release(self) -> None:
        """Remove the lock file and drop the lock (in this order, see :meth:`acquire`)."""
        if self._fd is not None and self.run_dir is not None:
            try:
                os.unlink(self.run_dir / LOCK_FILE)
            except OSError:  # already gone, or a read-only folder by now
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
