"""What every command shares: one-line user errors (exit 2), ``--set`` options, JSON output."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import click

from gcnnkit.core.errors import GcnnkitError

#: Set ``GCNNKIT_DEBUG=1`` to see the traceback behind a user error.
DEBUG_ENV = "GCNNKIT_DEBUG"


class UserError(click.ClickException):
    """A :class:`~gcnnkit.core.errors.GcnnkitError` on its way out: ``error: <message>``, exit 2
    (or the error's own ``exit_code``: 3 for a diverged run)."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        # under torchrun every process fails with the same error: only rank 0 prints it
        if os.environ.get("RANK", "0") == "0":
            click.echo(f"error: {' '.join(self.format_message().splitlines())}", err=True, file=file)


class CommandGroup(click.Group):
    """A click group whose commands live in modules loaded on first use.

    ``commands`` maps a command name to the module that defines it as ``command``; adding a
    command is one line in :data:`gcnnkit.cli.COMMANDS`. Every :class:`GcnnkitError` raised by
    a command becomes ``error: <message>`` on stderr and exit code 2 (3 for a diverged run), without
    a traceback; Ctrl-C exits with 130, SIGTERM with 143 and SIGHUP with 129 (128 + the signal).
    """

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands and name not in self.commands:
            import importlib

            self.add_command(importlib.import_module(self.lazy_commands[name]).command, name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GcnnkitError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            raise UserError(str(exc), exc.exit_code) from None
        except OSError as exc:  # the file system refused: a full disk, a read-only mount, a vanished folder
            if os.environ.get(DEBUG_ENV) or isinstance(exc, BrokenPipeError):
                raise
            raise UserError(os_error_message(exc)) from None
        except MemoryError:
            if os.environ.get(DEBUG_ENV):
                raise
            raise UserError(
                "out of memory; shrink the model, data.image_size or the batch size "
                "(gcnnkit estimates memory before building: see GCNNKIT_MAX_MEMORY_GB in docs/reliability.md)"
            ) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP during train (gcnnkit.run.signals)
            signal_name = getattr(exc, "signal_name", None)
            click.echo(f"interrupted by {signal_name}" if signal_name else "interrupted", err=True)
            ctx.exit(getattr(exc, "exit_code", 130))


def os_error_message(exc: OSError) -> str:
    """``<path>: <reason>`` for an error of the file system (one line)."""
    where = exc.filename if exc.filename is not None else "file system"
    reason = exc.strerror or " ".join(str(exc).split())
    return f"{where}: {reason}"


def require_tolerance(value: float, option: str = "--tolerance") -> float:
    """A tolerance must be a finite number >= 0 (``nan`` would pass everything, ``-1`` nothing)."""
    if not (math.isfinite(value) and value >= 0):
        raise GcnnkitError(f"{option} {value!r}: expected a finite number >= 0, e.g. 1e-5")
    return value


def set_option(func):
    """``--set key.path=value`` (repeatable) config overrides."""
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set train.epochs=2 --set model.group=D4 (value parsed as YAML).",
    )(func)


def to_json(obj: Any) -> str:
    """JSON text, with infinities and NaNs written as the strings "inf", "-inf", "nan" (strict JSON)."""
    return json.dumps(_finite(obj), indent=2)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
