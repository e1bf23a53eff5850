"""``metrics.jsonl``, as crash-safe as the checkpoint.

The checkpoint carries the run's metrics history (one record per completed epoch, under
``"metrics"``); after every checkpoint, ``metrics.jsonl`` is rewritten from that history
atomically (temporary file, fsync, ``os.replace``), never appended to. So the file holds exactly
the epochs of a checkpoint: a crash leaves it either as it was or one epoch behind the
checkpoint, never with a half line, and ``--resume`` rewrites it from the checkpoint, giving
epochs 1..N exactly once whatever happened to the file (a truncated or garbled line, a missing
line, lines of epochs the checkpoint does not hold). A fresh run starts the file empty.

Every line is strict JSON: a non-finite number is written as the string ``"nan"``, ``"inf"`` or
``"-inf"``, never as a bare ``NaN``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gcnnkit.run.rundir import METRICS_FILE, write_text_atomic


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``"nan"``, ``"inf"`` or ``"-inf"`` (nested)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def metrics_line(record: dict[str, Any]) -> str:
    """One line of ``metrics.jsonl`` (strict JSON, newline-terminated)."""
    return json.dumps(finite_json(record), allow_nan=False) + "\n"


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace ``run_dir/metrics.jsonl`` atomically with one line per record of ``history``."""
    write_text_atomic(run_dir / METRICS_FILE, "".join(metrics_line(r) for r in history))


def salvage_metrics(run_dir: Path, before_epoch: int) -> list[dict[str, Any]]:
    """The readable records of epochs ``< before_epoch`` in ``metrics.jsonl``, one per epoch, in order.

    For checkpoints written before the history moved into the checkpoint: lines that do not
    parse (a line cut by a crash) are skipped, and a later line for an epoch wins.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, int) and 1 <= epoch < before_epoch:
            by_epoch[epoch] = record
    return [by_epoch[e] for e in sorted(by_epoch)]
