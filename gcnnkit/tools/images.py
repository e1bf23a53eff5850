"""Image folders written to disk: the bundled digits as PNGs, and synthetic RGB tiles for benchmarks.

``gcnnkit make-folder OUT --from digits`` writes scikit-learn's 1,797 digits as grey PNGs in the
``OUT/<class>/<n>.png`` layout (``--size`` pixels, the digit resized as the built-in ``digits`` set
does, so a folder run and a built-in run see nearly the same images). ``--from tiles`` writes
``--count`` RGB tiles of ``--size``² pixels in two classes (stained-tissue-like textures: class 1
has more and larger dark nuclei), deterministic from ``--seed``, for the input-pipeline benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from gcnnkit.core.errors import GcnnkitError

SOURCES = ("digits", "tiles")


def write_digits_folder(out: str | Path, size: int = 17, layout: str = "flat") -> int:
    """The 1,797 digits as PNGs under ``out`` (``flat``: ``out/<d>/``; ``split``: ``out/train|test/<d>/``
    with the built-in set's fixed 80/20 split); returns the number written."""
    import torch
    from PIL import Image

    from gcnnkit.run.data.builtin import _load_digits

    train, test = _load_digits(size)
    parts = {"train": train, "test": test} if layout == "split" else {"": _join(train, test)}
    n = 0
    for part, split in parts.items():
        pixels = (split.images * 255.0).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
        for k, (img, label) in enumerate(zip(pixels, split.labels.tolist(), strict=True)):
            folder = Path(out) / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(folder / f"{k:05d}.png")
            n += 1
    return n


def _join(a, b):
    import torch

    from gcnnkit.run.data.splits import Split

    return Split(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]))


def tile(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One ``[size, size, 3]`` uint8 tile: pink stroma noise with purple nuclei (more and larger for class 1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.array([230, 180, 200], np.float32) + rng.normal(0, 12, (size, size, 3)).astype(np.float32)
    shade = np.zeros((size, size), np.float32)
    count = rng.integers(4, 10) if label == 0 else rng.integers(12, 24)
    radius = 3.0 if label == 0 else 4.5
    for cy, cx, r in zip(
        rng.uniform(0, size, count), rng.uniform(0, size, count), rng.uniform(0.6, 1.4, count) * radius, strict=True
    ):
        shade = np.maximum(shade, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    nucleus = np.array([90, 40, 130], np.float32)
    img = base * (1 - shade[..., None]) + nucleus * shade[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tiles(
    out: str | Path, count: int, size: int = 96, seed: int = 0, progress: Callable[[int], None] | None = None
) -> int:
    """``count`` RGB PNG tiles under ``out/<0|1>/`` (half each); returns the number written."""
    from PIL import Image

    if count < 2:
        raise GcnnkitError(f"--count: expected at least 2 tiles (one per class), got {count}")
    rng = np.random.default_rng(seed)
    for label in (0, 1):
        (Path(out) / str(label)).mkdir(parents=True, exist_ok=True)
    for k in range(count):
        label = k % 2
        Image.fromarray(tile(rng, label, size), mode="RGB").save(Path(out) / str(label) / f"{k:06d}.png")
        if progress is not None:
            progress(k + 1)
    return count
