"""Run logs beside ``metrics.jsonl``: ``metrics.csv`` (the same rows) and TensorBoard (``train.tensorboard``).

``metrics.csv`` is rewritten atomically from the same history as ``metrics.jsonl`` after every
epoch (and on resume, from the checkpoint's history), so the two hold the same rows; its columns
are the records' keys in order of first appearance. TensorBoard event files go to
``RUN_DIR/tensorboard``: every numeric field of each record as a scalar, at step ``epoch``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from gcnnkit.core.errors import ConfigError
from gcnnkit.run.rundir import write_text_atomic

METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV text: a header of every key (first-appearance order), then one line per row."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_metrics_csv(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``run_dir/metrics.csv`` with ``rows`` (the records of ``metrics.jsonl``), atomically."""
    write_text_atomic(Path(run_dir) / METRICS_CSV, metrics_csv(rows))


def require_tensorboard() -> type:
    """``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        ConfigError: the tensorboard package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        raise ConfigError(
            "train.tensorboard: true needs the tensorboard package; install it with: pip install 'gcnnkit[tensorboard]'"
        ) from None
    return SummaryWriter


def tensorboard_writer(run_dir: Path, first_epoch: int = 1):
    """A ``SummaryWriter`` on ``run_dir/tensorboard``; events from ``first_epoch`` on are replaced
    (a resumed run drops what an interrupted one logged after its checkpoint)."""
    return require_tensorboard()(
        str(Path(run_dir) / TENSORBOARD_DIR), purge_step=first_epoch if first_epoch > 1 else None
    )


class RunLogs:
    """Everything written per epoch besides ``metrics.jsonl`` (rank 0 only)."""

    def __init__(self, run_dir: Path, tensorboard: bool, first_epoch: int = 1):
        self.run_dir = Path(run_dir)
        self.writer = tensorboard_writer(self.run_dir, first_epoch) if tensorboard else None

    def epoch(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """After ``metrics.jsonl`` was rewritten with ``history``, whose last record is ``record``."""
        write_metrics_csv(self.run_dir, history)
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
