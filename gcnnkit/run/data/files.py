"""What the image-file sources (folder, csv) share: checking the files and building streamed splits."""

from __future__ import annotations

from pathlib import Path

import torch

from gcnnkit.run.data.images import FileStore, probe_image, scan_images
from gcnnkit.run.data.settings import DataSettings
from gcnnkit.run.data.splits import SourceSplits, StreamedSplit, carve

#: Seed of the test part carved from a source without its own test set (fixed: the same test set every run).
TEST_SPLIT_SEED = 0


def probe_first(path: Path, cfg: DataSettings) -> tuple[int, int]:
    """``(channels, size)``: ``data.channels`` or the first image's; ``data.image_size`` or its smaller side."""
    channels, w, h = probe_image(path)
    return cfg.channels or channels, cfg.image_size or min(w, h)


def file_splits(
    cfg: DataSettings,
    size: int,
    listed: dict[str, tuple[list[Path], torch.Tensor]],
    classes: list[str],
    source: str,
) -> SourceSplits:
    """Streamed splits of listed image files ``{split: (paths, labels [N])}``.

    Every file's header is read first (:func:`~gcnnkit.run.data.images.scan_images`: unreadable
    files, mixed channel counts, sizes), so a bad file stops the run before training, naming it.
    Without a ``test`` entry the test set is ``data.test_split`` of ``train``, per class, seed 0.
    """
    names = list(listed)
    every = [p for name in names for p in listed[name][0]]
    scan = scan_images(every, cfg.channels, size, cfg.resize, cfg.skip_corrupt)
    kept = torch.zeros(len(every), dtype=torch.bool)
    kept[scan.keep] = True
    splits, start = {}, 0
    for name in names:
        paths, labels = listed[name]
        mask = kept[start : start + len(paths)]
        start += len(paths)
        store = FileStore(
            [str(p) for p, k in zip(paths, mask.tolist(), strict=True) if k], scan.channels, size, cfg.resize
        )
        labels = labels[mask]
        splits[name] = StreamedSplit(store, labels, torch.arange(len(labels)), num_workers=cfg.num_workers)
    if "test" not in splits:
        train, test = carve(splits["train"].labels, cfg.test_split, TEST_SPLIT_SEED, "data.test_split")
        splits["test"] = splits["train"].take(test)
        splits["train"] = splits["train"].take(train)
    return SourceSplits(
        splits["train"], splits["test"], splits.get("val"), classes=classes, source=source, skipped=scan.skipped
    )
