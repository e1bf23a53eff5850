"""The built-in data sets, loaded whole into memory.

* ``digits`` — scikit-learn's 8×8 handwritten digits (values 0..16, no download), scaled to
  ``[0, 1]``, resized to ``image_size - 4`` (default 17, odd so rotations have a centre pixel)
  and zero-padded by 2 pixels so a digit can rotate without losing ink; a fixed stratified
  80/20 split (independent of the run seed, so test sets match across runs).
* torchvision classification sets by class name (case-insensitive): MNIST, FashionMNIST,
  KMNIST, QMNIST, USPS, CIFAR10, CIFAR100, SVHN, STL10. torchvision is imported only when one
  is loaded.
* ``rotmnist`` — rotated MNIST (MNIST-rot, Larochelle et al. 2007, the benchmark of Cohen &
  Welling 2016): 12,000 training and 50,000 test digits, each turned by a uniformly random
  angle. When ``data.root`` holds the original ``mnist_all_rotation_normalized_float_train_valid.amat``
  and ``mnist_all_rotation_normalized_float_test.amat`` (directly or in ``mnist_rotation_new/``),
  they are read; otherwise the set is reconstructed from MNIST under ``data.root`` with a fixed
  seed (:func:`reconstruct_rotmnist`: which images, which angles, which interpolation).

Images of another size than ``data.image_size`` are resized (``data.resize: bilinear``) or
edge-padded (``data.resize: pad``). Their normalisation statistics come from the whole training set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gcnnkit.core.errors import DataError
from gcnnkit.core.transforms import rotate_images
from gcnnkit.run.data.settings import DataSettings
from gcnnkit.run.data.splits import DatasetInfo, SourceSplits, Split, subset_indices

#: How images of another size reach ``data.image_size`` (``data.resize``), see :func:`_resize`.
RESIZE_MODES = ("bilinear", "pad")

DIGITS_IMAGE_SIZE = 17
_DIGITS_PAD = 2
_DIGITS_SPLIT_SEED = 0  # fixed, so every run tests on the same 360 digits
TEST_SUBSET_SEED = 0  # fixed, so test_size subsets match across run seeds


@dataclass(frozen=True)
class _TorchvisionSet:
    channels: int
    size: int
    classes: int
    split_arg: str  # "train": train=True/False; "split": split="train"/"test"
    folder: str  # what data.root must hold, for the "no data" message


TORCHVISION_SETS: dict[str, _TorchvisionSet] = {
    "MNIST": _TorchvisionSet(1, 28, 10, "train", "MNIST/raw"),
    "FashionMNIST": _TorchvisionSet(1, 28, 10, "train", "FashionMNIST/raw"),
    "KMNIST": _TorchvisionSet(1, 28, 10, "train", "KMNIST/raw"),
    "QMNIST": _TorchvisionSet(1, 28, 10, "train", "QMNIST/raw"),
    "USPS": _TorchvisionSet(1, 16, 10, "train", "usps.bz2 and usps.t.bz2"),
    "CIFAR10": _TorchvisionSet(3, 32, 10, "train", "cifar-10-batches-py"),
    "CIFAR100": _TorchvisionSet(3, 32, 100, "train", "cifar-100-python"),
    "SVHN": _TorchvisionSet(3, 32, 10, "split", "train_32x32.mat and test_32x32.mat"),
    "STL10": _TorchvisionSet(3, 96, 10, "split", "stl10_binary"),
}


ROTMNIST = "rotmnist"
#: Seed of the rotated-MNIST reconstruction (image choice and angles); fixed, independent of the run seed.
ROTMNIST_SEED = 2007
ROTMNIST_TRAIN, ROTMNIST_TEST = 12_000, 50_000
#: The original MNIST-rot files (https://sites.google.com/a/lisa.iro.umontreal.ca/public_static_twiki/variations-on-the-mnist-digits)
ROTMNIST_AMAT = {
    "train": "mnist_all_rotation_normalized_float_train_valid.amat",
    "test": "mnist_all_rotation_normalized_float_test.amat",
}


# ----------------------------------------------------------------------- names and shapes
BUILTIN_NAMES = ("digits", *TORCHVISION_SETS, ROTMNIST)


def native_image_size(name: str) -> int:
    """Default ``image_size`` of a built-in set: 17 for digits, 28 for rotmnist, else the stored size."""
    if name == ROTMNIST:
        return 28
    return DIGITS_IMAGE_SIZE if name == "digits" else TORCHVISION_SETS[name].size


def builtin_info(name: str, image_size: int | None) -> DatasetInfo:
    """Input channels, image size and class count of a built-in set without loading any data."""
    size = image_size or native_image_size(name)
    if name in ("digits", ROTMNIST):
        return DatasetInfo(name, 1, size, 10)
    meta = TORCHVISION_SETS[name]
    return DatasetInfo(name, meta.channels, size, meta.classes)


# ---------------------------------------------------------------------------- loading
def load_builtin(cfg: DataSettings, info: DatasetInfo, seed: int) -> SourceSplits:
    """A built-in set in memory (CPU), subsets taken and resized to ``info.image_size``.

    ``seed`` (the run seed) picks the ``train_size`` subset; the ``test_size`` subset and the
    digits split are fixed, so test sets are comparable across runs.
    """
    if info.name == "digits":
        train, test = _load_digits(info.image_size)
        source = "scikit-learn digits"
    elif info.name == ROTMNIST:
        train, test, source = _load_rotmnist(cfg, seed)
    else:
        train, test = (_load_torchvision(info, cfg, is_train) for is_train in (True, False))
        source = f"torchvision {info.name}"
    train = _resize(train.subset(cfg.train_size, seed, "data.train_size"), info.image_size, cfg.resize)
    test = _resize(test.subset(cfg.test_size, TEST_SUBSET_SEED, "data.test_size"), info.image_size, cfg.resize)
    return SourceSplits(train, test, classes=[str(k) for k in range(info.num_classes)], source=source, subset=True)


def _load_digits(image_size: int) -> tuple[Split, Split]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    inner = image_size - 2 * _DIGITS_PAD
    images = F.interpolate(images, size=(inner, inner), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    images = F.pad(images, (_DIGITS_PAD,) * 4)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.2, stratify=labels.numpy(), random_state=_DIGITS_SPLIT_SEED
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx])


def _load_torchvision(info: DatasetInfo, cfg: DataSettings, is_train: bool) -> Split:
    import torchvision.datasets

    meta = TORCHVISION_SETS[info.name]
    cls = getattr(torchvision.datasets, info.name)
    split = {"train": is_train} if meta.split_arg == "train" else {"split": "train" if is_train else "test"}
    try:
        ds = cls(root=os.path.expanduser(cfg.root), download=cfg.download, **split)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        if cfg.download:
            raise DataError(f"data.download: could not download {info.name} to {cfg.root!r}: {reason}") from None
        if "not found" in str(exc).lower() or isinstance(exc, FileNotFoundError):
            raise DataError(
                f"data.root: no {info.name} data under {cfg.root!r} (download: false); set data.download: true "
                f"or point data.root at a folder holding {meta.folder}"
            ) from None
        raise DataError(f"data.root: could not read {info.name} from {cfg.root!r}: {reason}") from None
    images, labels = _as_tensors(ds)
    if images.shape[1] != meta.channels:
        raise DataError(f"data.name: {info.name} images have {images.shape[1]} channels, expected {meta.channels}")
    return Split(images, labels)


# --------------------------------------------------------------------------- rotated MNIST
def rotmnist_amat_files(root: str | os.PathLike) -> dict[str, str] | None:
    """Paths of the original MNIST-rot ``.amat`` files under ``root`` (or ``root/mnist_rotation_new``),
    ``{"train": ..., "test": ...}``; ``None`` unless both are there."""
    root = os.path.expanduser(os.fspath(root))
    for folder in (root, os.path.join(root, "mnist_rotation_new")):
        paths = {split: os.path.join(folder, name) for split, name in ROTMNIST_AMAT.items()}
        if all(os.path.isfile(p) for p in paths.values()):
            return paths
    return None


def read_amat(path: str | os.PathLike, size: int = 28) -> Split:
    """Read an MNIST-variations ``.amat`` file: one image a line, ``size²`` floats in ``[0, 1]`` (row by
    row) and then the label, separated by whitespace. Returns ``[N, 1, size, size]`` float32 and int64
    labels; a malformed file is a one-line :class:`DataError`."""
    import numpy as np

    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.root: cannot read {os.fspath(path)!r} as an .amat table: {exc}") from None
    if table.shape[1] != size * size + 1:
        raise DataError(
            f"data.root: {os.fspath(path)!r} has {table.shape[1]} columns per line, expected {size * size + 1} "
            f"({size}×{size} pixels and a label)"
        )
    labels = table[:, -1]
    if not np.all(labels == np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"data.root: {os.fspath(path)!r}: the last column must hold the labels 0-9")
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, size, size)).float().clamp(0.0, 1.0)
    return Split(images, torch.from_numpy(labels).long())


def reconstruct_rotmnist(
    mnist_train: Split,
    mnist_test: Split,
    seed: int = ROTMNIST_SEED,
    sizes: tuple[int, int] = (ROTMNIST_TRAIN, ROTMNIST_TEST),
    keep: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> tuple[Split, Split]:
    """Rotated MNIST rebuilt from MNIST, the same on every machine.

    The 60,000 training and 10,000 test images of MNIST are put in one pool of 70,000 (training
    images first, each split in file order). A ``torch.Generator`` seeded with ``seed`` draws a
    permutation of the pool (``randperm``) and then one angle per image, uniform in [0°, 360°)
    (``rand``, float64). The first ``sizes[0]`` images of the permutation form the training set, the
    next ``sizes[1]`` the test set (disjoint). Each image is turned counter-clockwise about its
    centre by its angle with bilinear interpolation, zeros outside
    (:func:`gcnnkit.core.transforms.rotate_images`).

    ``keep`` (indices into the training and the test set, ``None`` for all) rebuilds only those
    images: the permutation and every angle are drawn as for the whole set, so each kept image is
    the one the whole set has at its index, and only the kept ones are rotated.

    Returns:
        ``(train, test)`` with images ``[N, 1, 28, 28]`` in ``[0, 1]`` (``N``: the kept ones).
    """
    pool_x = torch.cat([mnist_train.images, mnist_test.images])
    pool_y = torch.cat([mnist_train.labels, mnist_test.labels])
    n_train, n_test = sizes
    if n_train + n_test > len(pool_y):
        raise DataError(f"rotmnist: {n_train} + {n_test} images requested, MNIST has {len(pool_y)}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool_y), generator=gen)[: n_train + n_test]
    angles = torch.rand(n_train + n_test, generator=gen, dtype=torch.float64) * 360.0
    train_keep, test_keep = (torch.arange(n) if k is None else k for n, k in zip(sizes, keep, strict=True))
    picks = torch.cat([train_keep, n_train + test_keep])  # positions in the permutation
    images = torch.empty(len(picks), *pool_x.shape[1:])
    for start in range(0, len(picks), 5000):  # bounded memory
        idx = picks[start : start + 5000]
        images[start : start + len(idx)] = rotate_images(pool_x[order[idx]], angles[idx])
    images = images.clamp(0.0, 1.0)
    labels = pool_y[order[picks]]
    k = len(train_keep)
    return Split(images[:k], labels[:k]), Split(images[k:], labels[k:])


def _load_rotmnist(cfg: DataSettings, seed: int) -> tuple[Split, Split, str]:
    """The original files when ``data.root`` has them; else the reconstruction, of only the images that
    ``train_size``/``test_size`` keep (the subsets :func:`load_dataset` takes, drawn the same way)."""
    files = rotmnist_amat_files(cfg.root)
    if files is not None:
        return read_amat(files["train"]), read_amat(files["test"]), f"MNIST-rot .amat files in {cfg.root}"
    mnist = DatasetInfo("MNIST", 1, 28, 10)
    try:
        train, test = (_load_torchvision(mnist, cfg, is_train) for is_train in (True, False))
    except DataError as exc:
        raise DataError(
            f"{exc} (rotmnist is rebuilt from MNIST, or read from {ROTMNIST_AMAT['train']} and "
            f"{ROTMNIST_AMAT['test']} in data.root)"
        ) from None
    keep = (
        subset_indices(ROTMNIST_TRAIN, cfg.train_size, seed, "data.train_size"),
        subset_indices(ROTMNIST_TEST, cfg.test_size, TEST_SUBSET_SEED, "data.test_size"),
    )
    train, test = reconstruct_rotmnist(train, test, keep=keep)
    return train, test, f"reconstructed from MNIST (seed {ROTMNIST_SEED})"


def _resize(split: Split, size: int, mode: str = "bilinear") -> Split:
    """Bring the images to ``size × size`` when they have another size.

    ``bilinear``: an antialiased bilinear resize. ``pad``: the images keep their scale and are
    padded by repeating their border pixels (``numpy.pad(mode="edge")``), ``(size − n) // 2``
    pixels before (top, left) and the rest after, e.g. 2 and 3 from 28 to 33 as in the GDL C4CNN
    write-up; a size below the images' is an error.
    """
    h, w = split.images.shape[-2:]
    if (h, w) == (size, size):
        return split
    if mode == "pad":
        if size < h or size < w:
            raise DataError(
                f"data.resize: pad cannot shrink {h}×{w} images to image_size {size}; "
                f"give image_size >= {max(h, w)} or resize: bilinear"
            )
        top, left = (size - h) // 2, (size - w) // 2
        images = F.pad(split.images, (left, size - w - left, top, size - h - top), mode="replicate")
        return Split(images, split.labels)
    if mode != "bilinear":
        raise ValueError(f"unknown resize mode {mode!r}; allowed: {', '.join(RESIZE_MODES)}")
    images = F.interpolate(split.images, size=(size, size), mode="bilinear", antialias=True).clamp(0.0, 1.0)
    return Split(images, split.labels)


def _as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision data set's ``data`` and ``targets``/``labels`` as ``[N, C, H, W]`` float and ``[N]`` int64."""
    images = torch.as_tensor(ds.data)
    if images.ndim == 3:  # [N, H, W]
        images = images.unsqueeze(1)
    elif images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # [N, H, W, C]
        images = images.permute(0, 3, 1, 2)
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    labels = torch.as_tensor(ds.targets if hasattr(ds, "targets") else ds.labels, dtype=torch.int64)
    if labels.ndim == 2:  # QMNIST keeps extra columns; the class is the first
        labels = labels[:, 0]
    return images, labels
