"""Output paths a user names (``--out``): refused in one line before any work when they cannot be written.

:func:`check_output_path` catches what would otherwise fail after training started or write
somewhere unexpected: an empty path (which would be the current directory), an over-long name,
a dangling symlink, a file where a folder is expected (or the reverse), a read-only file system,
a folder without write permission, and the kernel's virtual file systems (``/proc``, ``/sys``,
``/dev``). Nothing is created.
"""

from __future__ import annotations

import os
from pathlib import Path

from gcnnkit.core.errors import ConfigError

#: kernel file systems, never a place for results
VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    for parent in (path, *path.parents):
        if os.path.lexists(parent):
            return parent
    return Path(path.anchor or ".")


def check_output_path(text: str, option: str = "--out", *, folder: bool = True) -> Path:
    """The path ``text`` (a folder when ``folder``, else a file), or a one-line :class:`ConfigError`.

    Checks (without creating anything) that the path, or the nearest of its parents that exists,
    can hold what will be written there.
    """
    label = f"{option} {text!r}" if len(text) <= 60 else f"{option} {text[:40]!r}... ({len(text)} characters)"
    if not text or not text.strip():
        what = "a folder" if folder else "a file name"
        raise ConfigError(f"{option} '': expected {what}, got an empty path")
    if "\0" in text:
        raise ConfigError(f"{label}: a path cannot contain a NUL byte")
    path = Path(text).expanduser()
    absolute = Path(os.path.abspath(path))
    if any(str(absolute) == root or str(absolute).startswith(root + "/") for root in VIRTUAL_ROOTS):
        raise ConfigError(f"{label}: is on a kernel file system ({', '.join(VIRTUAL_ROOTS)}); choose a folder on disk")
    if len(os.fsencode(str(absolute))) >= 4096:
        raise ConfigError(f"{label}: the path is longer than the 4096 bytes the system allows")
    anchor = _existing_ancestor(absolute)
    limit = _name_max(anchor if anchor.is_dir() else anchor.parent)
    for part in absolute.parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(
                f"{label}: the name {part[:20]!r}... is {len(os.fsencode(part))} bytes, more than {limit}"
            )
    if absolute.is_symlink() and not absolute.exists():
        raise ConfigError(f"{label}: is a symlink to {os.readlink(absolute)!r}, which does not exist")
    if absolute.exists():
        if folder and not absolute.is_dir():
            raise ConfigError(f"{label}: exists and is not a folder")
        if not folder and absolute.is_dir():
            raise ConfigError(f"{label}: is a folder; give a file name")
    if anchor != absolute and not anchor.is_dir():
        raise ConfigError(f"{label}: {str(anchor)!r} is a file, so nothing can be created under it")
    target = anchor if anchor.is_dir() else anchor.parent
    try:
        read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise ConfigError(f"{label}: {str(target)!r} is on a read-only file system")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{label}: no permission to write in {str(target)!r}")
    return path
