"""``data.name: arrays`` — images and labels in NumPy (``.npz``, ``.npy``) or HDF5 files, memory-mapped.

``data.root`` is one of:

* a ``.npz`` file (``numpy.savez``) holding ``train_images``, ``train_labels``, ``test_images``,
  ``test_labels`` and optionally ``val_images``, ``val_labels`` and ``classes`` (names);
* a folder holding those as ``<name>.npy`` files;
* an ``.h5``/``.hdf5`` file with datasets of those names (needs ``h5py``: ``pip install h5py``).

Images are ``[N, H, W]`` (grey), ``[N, H, W, C]`` or ``[N, C, H, W]`` with ``C`` 1 or 3, uint8
(0..255) or float in ``[0, 1]``; labels integers ``0..K-1``. Nothing is read whole: ``.npy`` and
uncompressed ``.npz`` members are memory-mapped (a compressed ``.npz``, ``numpy.savez_compressed``,
is refused: it cannot be mapped), HDF5 datasets are read image by image. Images of another size
are resized (bilinear, antialiased) or padded as ``data.resize`` says.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gcnnkit.core.errors import DataError
from gcnnkit.run.data.images import check_readable
from gcnnkit.run.data.settings import DataSettings
from gcnnkit.run.data.splits import SourceSplits, StreamedSplit

SPLITS = ("train", "val", "test")
_HDF5 = (".h5", ".hdf5")


def _npz_member(path: Path, key: str) -> np.ndarray | None:
    """Member ``key`` of an uncompressed ``.npz`` as a read-only memory map (``None`` if absent)."""
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(key + ".npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            raise DataError(
                f"data.root: {path} is compressed (numpy.savez_compressed) and cannot be memory-mapped; "
                f"save it with numpy.savez or as .npy files"
            )
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format._read_array_header(f, version)
            offset = f.tell()
    if dtype.hasobject:
        raise DataError(f"data.root: {path}: {key} holds Python objects; store numbers (or strings for classes)")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def _open(path: Path, key: str) -> Any:
    """Array ``key`` of the arrays source at ``path`` (lazily read), or ``None`` when it is not there."""
    if path.is_dir():
        file = path / f"{key}.npy"
        return np.load(file, mmap_mode="r", allow_pickle=False) if file.is_file() else None
    if path.suffix.lower() == ".npz":
        return _npz_member(path, key)
    if path.suffix.lower() in _HDF5:
        try:
            import h5py
        except ImportError:
            raise DataError(f"data.root: {path} is HDF5, which needs h5py: pip install h5py") from None
        f = h5py.File(path, "r")
        return f[key] if key in f else None
    raise DataError(f"data.root: {path} is not a .npz, .h5/.hdf5 file or a folder of .npy files")


def _layout(shape: tuple[int, ...], where: str) -> tuple[str, int, int, int]:
    """``("nhw" | "nhwc" | "nchw", C, H, W)`` of an image array shape."""
    if len(shape) == 3:
        return "nhw", 1, shape[1], shape[2]
    if len(shape) == 4 and shape[3] in (1, 3):
        return "nhwc", shape[3], shape[1], shape[2]
    if len(shape) == 4 and shape[1] in (1, 3):
        return "nchw", shape[1], shape[2], shape[3]
    raise DataError(
        f"{where}: images of shape {list(shape)}; allowed: [N, H, W], [N, H, W, C], [N, C, H, W] with C 1 or 3"
    )


@dataclass
class ArrayStore:
    """Image ``i`` of array ``key`` in ``path``, read on demand (an :class:`ImageStore`); opened lazily in
    each process (memory maps and HDF5 handles are not shared with ``DataLoader`` workers)."""

    path: str
    key: str
    size: int
    resize: str
    _array: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def _arr(self) -> Any:
        if self._array is None:
            self._array = _open(Path(self.path), self.key)
        return self._array

    def __len__(self) -> int:
        return int(self._arr().shape[0])

    def read(self, i: int) -> torch.Tensor:
        arr = self._arr()
        layout, _, _, _ = _layout(tuple(arr.shape), self.name(i))
        x = torch.from_numpy(np.array(arr[i]))
        x = x.unsqueeze(0) if layout == "nhw" else x.permute(2, 0, 1) if layout == "nhwc" else x
        if x.dtype != torch.uint8:
            x = x.float()
        h, w = x.shape[-2:]
        if (h, w) == (self.size, self.size):
            return x.contiguous()
        if self.resize == "pad":
            if h > self.size or w > self.size:
                raise DataError(f"{self.name(i)}: {w}×{h} is larger than data.image_size {self.size} (resize: pad)")
            top, left = (self.size - h) // 2, (self.size - w) // 2
            pad = (left, self.size - w - left, top, self.size - h - top)
            return F.pad(x.float()[None], pad, mode="replicate")[0].to(x.dtype)
        y = F.interpolate(
            x.float()[None] / (255.0 if x.dtype == torch.uint8 else 1.0),
            size=(self.size, self.size),
            mode="bilinear",
            antialias=True,
        )
        return y[0].clamp(0.0, 1.0)

    def name(self, i: int) -> str:
        return f"{self.path}[{self.key}][{i}]"


def _labels(path: Path, split: str, n: int) -> torch.Tensor:
    arr = _open(path, f"{split}_labels")
    if arr is None:
        raise DataError(f"data.root: {path} has {split}_images but no {split}_labels")
    labels = np.asarray(arr[()]).reshape(-1)
    if labels.shape[0] != n:
        raise DataError(f"data.root: {path}: {split}_labels has {labels.shape[0]} entries, {split}_images {n}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise DataError(f"data.root: {path}: {split}_labels must be integers 0..K-1, got {labels.dtype} {labels[:5]}")
    return torch.from_numpy(labels.astype(np.int64))


def _shape(path: Path, split: str) -> tuple[str, int, int, int] | None:
    arr = _open(path, f"{split}_images")
    return None if arr is None else _layout(tuple(arr.shape), f"data.root: {path}: {split}_images")


def arrays_info(cfg: DataSettings) -> tuple[int, int, list[str]]:
    """``(channels, native image size, classes)`` from the arrays' shapes and labels."""
    path = check_readable(cfg.root)
    shapes = {s: _shape(path, s) for s in SPLITS}
    for split in ("train", "test"):
        if shapes[split] is None:
            raise DataError(
                f"data.root: {path} has no {split}_images; expected {', '.join(a + '_images' for a in SPLITS)}"
            )
    channels = {s: v[1] for s, v in shapes.items() if v is not None}
    if len(set(channels.values())) > 1:
        raise DataError(f"data.root: {path}: the splits' images have different channel counts {channels}")
    _, c, h, w = shapes["train"]
    if cfg.channels and cfg.channels != c:
        raise DataError(f"data.channels: {cfg.channels}, but the arrays in {path} have {c} channel(s)")
    classes_arr = _open(path, "classes")
    n = int(_open(path, "train_images").shape[0])
    k = int(_labels(path, "train", n).max()) + 1
    classes = [str(c) for c in np.asarray(classes_arr[()]).reshape(-1)] if classes_arr is not None else None
    if classes is not None and len(classes) < k:
        raise DataError(f"data.root: {path}: classes names {len(classes)} classes, the labels go up to {k - 1}")
    return c, cfg.image_size or min(h, w), classes or [str(i) for i in range(k)]


def load_arrays(cfg: DataSettings, size: int) -> SourceSplits:
    path = check_readable(cfg.root)
    _, _, classes = arrays_info(cfg)
    splits = {}
    for split in SPLITS:
        images = _open(path, f"{split}_images")
        if images is None:
            continue
        labels = _labels(path, split, int(images.shape[0]))
        if int(labels.max()) >= len(classes):
            raise DataError(
                f"data.root: {path}: {split}_labels has label {int(labels.max())}; allowed: 0..{len(classes) - 1}"
            )
        store = ArrayStore(str(path), f"{split}_images", size, cfg.resize)
        splits[split] = StreamedSplit(store, labels, torch.arange(len(labels)), num_workers=cfg.num_workers)
    return SourceSplits(splits["train"], splits["test"], splits.get("val"), classes=classes, source=f"arrays {path}")
