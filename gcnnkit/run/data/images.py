"""Image files: which ones count, how they are checked and decoded (Pillow).

PNG, JPEG and TIFF are read; grey images (Pillow modes ``1``, ``L``, ``LA``, 16-bit ``I;16``/``I``)
have one channel, colour ones (``RGB``, ``RGBA``, ``P``, ``CMYK``, ``YCbCr``) three (alpha is
dropped). 16-bit values are scaled to 8 bits. Every image is brought to ``image_size ×
image_size``: ``data.resize: bilinear`` shrinks it (Pillow's bilinear filter, antialiased; a
non-square image is stretched) and never enlarges it: a smaller image is refused, naming it;
``pad`` repeats a smaller image's border pixels around it as for the built-in sets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gcnnkit.core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_GREY = {"1": "L", "L": "L", "LA": "L", "I;16": "I16", "I;16B": "I16", "I;16L": "I16", "I": "I16"}
_COLOUR = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def _channels_of(mode: str, path: Path) -> int:
    if mode in _GREY:
        return 1
    if mode in _COLOUR:
        return 3
    raise DataError(f"{path}: Pillow mode {mode!r} is not supported; allowed: 8- or 16-bit grey, RGB(A), palette")


def probe_image(path: Path) -> tuple[int, int, int]:
    """``(channels, width, height)`` from the file's header; :class:`DataError` if it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return _channels_of(img.mode, path), img.width, img.height
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: not a readable image ({reason}); allowed: PNG, JPEG, TIFF") from None


def decode_image(path: Path, channels: int, size: int, resize: str = "bilinear") -> torch.Tensor:
    """The image at ``path`` as uint8 ``[channels, size, size]``; :class:`DataError` naming the file if
    it cannot be decoded (truncated, corrupt) or is smaller than ``size``."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if _GREY.get(img.mode) == "I16":
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
            img = img.convert("L" if channels == 1 else "RGB")
            if resize == "bilinear" and (img.width < size or img.height < size):
                raise DataError(
                    f"{path}: {img.width}×{img.height} is smaller than data.image_size {size}; images are never "
                    f"enlarged: give data.image_size <= {min(img.width, img.height)} or larger images"
                )
            if (img.width, img.height) != (size, size) and resize == "bilinear":
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for truncated or corrupt files
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot decode the image ({reason}); allowed: PNG, JPEG, TIFF") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    h, w = arr.shape[:2]
    if h > size or w > size:
        raise DataError(
            f"{path}: {w}×{h} is larger than data.image_size {size}; resize: pad only pads, give "
            f"data.image_size >= {max(w, h)} or data.resize: bilinear"
        )
    if (h, w) != (size, size):  # resize: pad — border pixels repeated, (size - n) // 2 before
        top, left = (size - h) // 2, (size - w) // 2
        arr = np.pad(arr, ((top, size - h - top), (left, size - w - left), (0, 0)), mode="edge")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


@dataclass
class FileStore:
    """Image files read on demand: ``read(i)`` is :func:`decode_image` of ``paths[i]`` (an :class:`ImageStore`)."""

    paths: Sequence[str]
    channels: int
    size: int
    resize: str = "bilinear"

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> torch.Tensor:
        return decode_image(Path(self.paths[i]), self.channels, self.size, self.resize)

    def name(self, i: int) -> str:
        return str(self.paths[i])


@dataclass
class ScanResult:
    """What :func:`scan_images` found: the readable files, their channel count, the skipped ones."""

    paths: list[Path]
    keep: list[int]  # positions in the scanned list
    channels: int
    skipped: list[str]


def scan_images(paths: Sequence[Path], channels: int | None, size: int, resize: str, skip_corrupt: bool) -> ScanResult:
    """Read every file's header: unreadable files, mixed channel counts and images smaller than
    ``size`` (or, with ``resize: pad``, larger) are one-line :class:`DataError` naming the file, or —
    unreadable ones with ``skip_corrupt`` — left out and listed in ``skipped``."""
    keep, skipped, first = [], [], None
    found = channels
    for k, path in enumerate(paths):
        try:
            c, w, h = probe_image(path)
        except DataError as exc:
            if not skip_corrupt:
                raise DataError(f"{exc} (or set data.skip_corrupt: true to skip corrupt files)") from None
            skipped.append(str(path))
            continue
        if channels is None:
            if found is None:
                found, first = c, path
            elif c != found:
                kinds = {1: "grey (1 channel)", 3: "colour (3 channels)"}
                raise DataError(
                    f"{path} is {kinds[c]} but {first} is {kinds[found]}; all images must have the same channel "
                    f"count, or set data.channels: 1 or 3 to convert them on load"
                )
        if resize == "bilinear" and (w < size or h < size):
            raise DataError(
                f"{path}: {w}×{h} is smaller than data.image_size {size}; images are never enlarged: "
                f"give data.image_size <= {min(w, h)} or larger images"
            )
        if resize == "pad" and (w > size or h > size):
            raise DataError(
                f"{path}: {w}×{h} is larger than data.image_size {size}; resize: pad only pads, give "
                f"data.image_size >= {max(w, h)} or data.resize: bilinear"
            )
        keep.append(k)
    if not keep:
        raise DataError(f"none of the {len(paths)} image files could be read (all corrupt)")
    return ScanResult([paths[k] for k in keep], keep, found or 1, skipped)


def check_readable(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path`; :class:`DataError` when it does not exist."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.exists():
        raise DataError(f"data.root: {os.fspath(path)!r} does not exist")
    return p
