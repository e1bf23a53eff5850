"""``data.name: folder`` — images in class folders, the layout torchvision's ``ImageFolder`` reads.

``data.root`` is either ``root/<class>/<image>`` (the test set is ``data.test_split`` of it, drawn
per class with a fixed seed) or ``root/train/<class>/<image>`` with ``root/test/<class>/…`` and
optionally ``root/val/<class>/…``. Class names are the folder names of the training part, sorted;
label ``k`` is the ``k``-th. Images may sit in sub-folders of a class folder. See
:mod:`gcnnkit.run.data.images` for formats, channels and sizes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gcnnkit.core.errors import DataError
from gcnnkit.run.data.files import file_splits, probe_first
from gcnnkit.run.data.images import IMAGE_SUFFIXES, check_readable, is_image_file, list_images
from gcnnkit.run.data.settings import DataSettings
from gcnnkit.run.data.splits import SourceSplits

SPLIT_FOLDERS = ("train", "val", "test")
_LAYOUT = "root/<class>/<image> or root/train/<class>/<image> with root/test/<class>/<image>"


def _class_folders(folder: Path) -> list[Path]:
    stray = [p for p in folder.iterdir() if p.is_file() and is_image_file(p)]
    if stray:
        raise DataError(
            f"data.root: {stray[0]} is not in a class folder; expected {_LAYOUT} (class names are folder names)"
        )
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _parts(root: Path) -> dict[str, Path]:
    """``{"train": folder}`` for the flat layout, else the ``train``/``val``/``test`` folders there are."""
    if not root.is_dir():
        raise DataError(f"data.root: {str(root)!r} is not a folder; data.name folder expects {_LAYOUT}")
    split_dirs = {name: root / name for name in SPLIT_FOLDERS if (root / name).is_dir()}
    if "train" not in split_dirs:
        return {"train": root}
    if "test" not in split_dirs:
        raise DataError(f"data.root: {root} has train/ but no test/ folder; add test/<class>/... or use {_LAYOUT}")
    return split_dirs


def _listing(folder: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """Image paths and labels of a split folder; the class names (from ``folder`` when not given)."""
    dirs = _class_folders(folder)
    if not dirs:
        raise DataError(f"data.root: no class folders in {folder}; expected {_LAYOUT}")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(
                f"data.root: class folder {folder / unknown[0]} is not a class of the training set; "
                f"allowed: {', '.join(classes)}"
            )
    paths, labels = [], []
    for d in dirs:
        found = list_images(d)
        if not found:
            raise DataError(
                f"data.root: class folder {d} has no images ({', '.join(IMAGE_SUFFIXES)}); add images or remove it"
            )
        paths += found
        labels += [classes.index(d.name)] * len(found)
    return paths, labels, classes


def folder_info(cfg: DataSettings) -> tuple[int, int, list[str]]:
    """``(channels, native image size, classes)`` from the folder names and the first image's header."""
    parts = _parts(check_readable(cfg.root))
    dirs = _class_folders(parts["train"])
    if not dirs:
        raise DataError(f"data.root: no class folders in {parts['train']}; expected {_LAYOUT}")
    first = next((p for d in dirs for p in list_images(d)[:1]), None)
    if first is None:
        raise DataError(f"data.root: no images under {parts['train']} ({', '.join(IMAGE_SUFFIXES)})")
    channels, size = probe_first(first, cfg)
    return channels, size, [d.name for d in dirs]


def load_folder(cfg: DataSettings, size: int) -> SourceSplits:
    """Every split of the folder as streamed splits (checked file by file, not decoded yet)."""
    root = check_readable(cfg.root)
    parts = _parts(root)
    paths, labels, classes = _listing(parts["train"], None)
    listed = {"train": (paths, labels)}
    for name in ("val", "test"):
        if name in parts:
            p, lab, _ = _listing(parts[name], classes)
            listed[name] = (p, lab)
    return file_splits(
        cfg,
        size,
        {k: (v[0], torch.tensor(v[1], dtype=torch.int64)) for k, v in listed.items()},
        classes,
        f"image folder {root}",
    )
