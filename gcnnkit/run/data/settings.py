"""What loading reads from a config's ``data`` section (:class:`gcnnkit.run.config.DataConfig`)."""

from __future__ import annotations

from typing import Protocol


class DataSettings(Protocol):
    """The ``data`` keys that loading reads (docs/configuration.md describes each)."""

    name: str
    root: str
    download: bool
    image_size: int | None
    train_size: int | None
    test_size: int | None
    normalise: bool
    resize: str
    val_split: float | None
    test_split: float
    channels: int | None
    in_memory: str
    memory_budget_gb: float
    num_workers: int
    skip_corrupt: bool
    path_column: str
    label_column: str
    split_column: str
