"""``data.name: csv`` — a manifest: one image a row, its path and its label.

``data.root`` is the CSV file (comma separated, a header row). ``data.path_column`` (default
``path``) holds image paths, relative to the manifest's folder or absolute; ``data.label_column``
(default ``label``) the class, any text (class names are the distinct labels, sorted — numerically
when all are integers). An optional ``data.split_column`` (default ``split``) says ``train``,
``val`` or ``test`` per row; without it the test set is ``data.test_split`` of the rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from gcnnkit.core.errors import DataError
from gcnnkit.run.data.files import file_splits, probe_first
from gcnnkit.run.data.images import check_readable
from gcnnkit.run.data.settings import DataSettings
from gcnnkit.run.data.splits import SourceSplits

SPLITS = ("train", "val", "test")


def _read(cfg: DataSettings) -> tuple[Path, list[dict[str, str]], bool]:
    path = check_readable(cfg.root)
    if not path.is_file():
        raise DataError(f"data.root: {str(path)!r} is not a file; data.name csv expects a CSV manifest")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"data.root: cannot read {path} as CSV: {exc}") from None
    for key, column in (("data.path_column", cfg.path_column), ("data.label_column", cfg.label_column)):
        if column not in columns:
            raise DataError(
                f"{key}: {column!r} is not a column of {path}; columns: {', '.join(columns) or 'none (empty file)'}"
            )
    if not rows:
        raise DataError(f"data.root: {path} lists no images (only a header row)")
    has_split = cfg.split_column in columns
    for i, row in enumerate(rows, start=2):
        if not (row.get(cfg.path_column) or "").strip():
            raise DataError(f"{path}, line {i}: empty {cfg.path_column!r}; every row needs an image path")
        if not (row.get(cfg.label_column) or "").strip():
            raise DataError(f"{path}, line {i}: empty {cfg.label_column!r}; every row needs a label")
        if has_split and row[cfg.split_column].strip() not in SPLITS:
            raise DataError(
                f"{path}, line {i}: {cfg.split_column} {row[cfg.split_column]!r} is not allowed; "
                f"allowed: {', '.join(SPLITS)}"
            )
    return path, rows, has_split


def _classes(labels: list[str]) -> list[str]:
    distinct = sorted(set(labels))
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return distinct


def manifest_info(cfg: DataSettings) -> tuple[int, int, list[str]]:
    """``(channels, native image size, classes)`` from the manifest and its first image's header."""
    path, rows, _ = _read(cfg)
    channels, size = probe_first(path.parent / rows[0][cfg.path_column].strip(), cfg)
    return channels, size, _classes([r[cfg.label_column].strip() for r in rows])


def load_manifest(cfg: DataSettings, size: int) -> SourceSplits:
    path, rows, has_split = _read(cfg)
    classes = _classes([r[cfg.label_column].strip() for r in rows])
    listed: dict[str, tuple[list[Path], list[int]]] = {}
    for row in rows:
        split = row[cfg.split_column].strip() if has_split else "train"
        paths, labels = listed.setdefault(split, ([], []))
        paths.append(path.parent / row[cfg.path_column].strip())
        labels.append(classes.index(row[cfg.label_column].strip()))
    if "train" not in listed:
        raise DataError(f"{path}: no row has {cfg.split_column} 'train'; the training set would be empty")
    if has_split and "test" not in listed:
        raise DataError(f"{path}: no row has {cfg.split_column} 'test'; mark some rows test, or drop the column")
    listed = {k: listed[k] for k in SPLITS if k in listed}
    return file_splits(
        cfg,
        size,
        {k: (p, torch.tensor(lab, dtype=torch.int64)) for k, (p, lab) in listed.items()},
        classes,
        f"manifest {path}",
    )
