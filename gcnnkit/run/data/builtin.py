"""Data sets held in memory, train-time augmentation and test-time protocols.

Every data set is loaded once into float tensors ``[N, C, H, W]`` in ``[0, 1]`` with int64
labels ``[N]``, so batches are plain index lookups (no ``DataLoader`` workers). Images stay in
``[0, 1]`` — rotations fill in zeros, which is the background — and are normalised per channel
with the training set's mean and std only after augmentation (:meth:`Dataset.normalise`), unless
``data.normalise`` is false (then mean 0 and std 1: the network sees ``[0, 1]`` pixels). Images of
another size than ``data.image_size`` are resized (``data.resize: bilinear``) or edge-padded
(``data.resize: pad``).

Data sets:

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

Test protocols (:data:`PROTOCOLS`): ``upright``; ``rotated`` (sample ``i`` turned by angle
``i`` of :func:`~gcnnkit.core.transforms.random_angles` ``(N, rotation_seed)`` — the same angles every
run); ``rot90``/``rot180``/``rot270`` (exact); ``flip`` (left–right).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from gcnnkit.core.errors import DataError
from gcnnkit.core.transforms import random_angles, rotate_images

__all__ = [
    "AUGMENTATIONS",
    "PROTOCOLS",
    "RESIZE_MODES",
    "DatasetInfo",
    "Split",
    "Dataset",
    "dataset_names",
    "canonical_name",
    "native_image_size",
    "dataset_info",
    "load_dataset",
    "augment_batch",
    "apply_protocol",
    "protocol_batches",
    "ROTMNIST_SEED",
    "reconstruct_rotmnist",
    "read_amat",
    "rotmnist_amat_files",
]

#: Train-time augmentations (``data.augment``), see :func:`augment_batch`.
AUGMENTATIONS = ("none", "rot90", "rotate", "flip")
#: Test-time protocols (``eval.protocols``), see :func:`apply_protocol`.
PROTOCOLS = ("upright", "rotated", "rot90", "rot180", "rot270", "flip")
#: How images of another size reach ``data.image_size`` (``data.resize``), see :func:`_resize`.
RESIZE_MODES = ("bilinear", "pad")

DIGITS_IMAGE_SIZE = 17
_DIGITS_PAD = 2
_DIGITS_SPLIT_SEED = 0  # fixed, so every run tests on the same 360 digits
_TEST_SUBSET_SEED = 0  # fixed, so test_size subsets match across run seeds


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


class DataSettings(Protocol):
    """What loading reads from a config's ``data`` section (:class:`gcnnkit.run.config.DataConfig`)."""

    name: str
    root: str
    download: bool
    image_size: int | None
    train_size: int | None
    test_size: int | None
    normalise: bool
    resize: str


@dataclass(frozen=True)
class DatasetInfo:
    """Shapes of a configured data set: images ``[in_channels, image_size, image_size]``."""

    name: str
    in_channels: int
    image_size: int
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


@dataclass
class Split:
    """``images`` ``[N, C, H, W]`` float in ``[0, 1]`` and ``labels`` ``[N]`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, n: int | None, seed: int, key: str) -> Split:
        """``n`` samples drawn without replacement (deterministic from ``seed``); all when ``n`` is None."""
        idx = subset_indices(len(self), n, seed, key)
        return self if idx is None else Split(self.images[idx], self.labels[idx])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


def subset_indices(length: int, n: int | None, seed: int, key: str) -> torch.Tensor | None:
    """Sorted indices of ``n`` of ``length`` samples drawn without replacement (deterministic from
    ``seed``); ``None`` for all of them (``n`` None or ``length``). ``key`` names ``n`` in the error
    when there are fewer than ``n``. What :meth:`Split.subset` keeps, known before the samples are."""
    if n is None or n == length:
        return None
    if n > length:
        raise DataError(f"{key}: {n} is more than the {length} images available; give at most {length}")
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:n].sort().values


@dataclass
class Dataset:
    """A loaded data set: train and test splits and the training set's per-channel statistics."""

    info: DatasetInfo
    train: Split
    test: Split
    mean: torch.Tensor  # [C]
    std: torch.Tensor  # [C]
    #: where the images came from, e.g. "torchvision MNIST" or "reconstructed from MNIST (seed 2007)"
    source: str = ""

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → ``(x − mean) / std`` per channel."""
        return normalise(x, self.mean, self.std)

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.info,
            self.train.to(device),
            self.test.to(device),
            self.mean.to(device),
            self.std.to(device),
            self.source,
        )


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``(x − mean[c]) / std[c]`` (``mean``, ``std``: ``[C]``)."""
    return (x - mean.view(1, -1, 1, 1).to(x)) / std.view(1, -1, 1, 1).to(x)


# ----------------------------------------------------------------------- names and shapes
def dataset_names() -> list[str]:
    """Every name ``data.name`` accepts (matching is case-insensitive)."""
    return ["digits", *TORCHVISION_SETS, ROTMNIST]


def canonical_name(name: str) -> str:
    """``"mnist"`` → ``"MNIST"``; :class:`DataError` listing the supported names otherwise."""
    for known in dataset_names():
        if known.lower() == name.lower():
            return known
    raise DataError(f"data.name: {name!r} is not a supported data set; allowed: {', '.join(dataset_names())}")


def native_image_size(name: str) -> int:
    """Default ``image_size`` of a data set: 17 for digits, 28 for rotmnist, the stored size for torchvision sets."""
    name = canonical_name(name)
    if name == ROTMNIST:
        return 28
    return DIGITS_IMAGE_SIZE if name == "digits" else TORCHVISION_SETS[name].size


def dataset_info(cfg: DataSettings) -> DatasetInfo:
    """Input channels, image size and class count of ``cfg`` without loading any data."""
    name = canonical_name(cfg.name)
    size = cfg.image_size or native_image_size(name)
    if name in ("digits", ROTMNIST):
        return DatasetInfo(name, 1, size, 10)
    meta = TORCHVISION_SETS[name]
    return DatasetInfo(name, meta.channels, size, meta.classes)


# ---------------------------------------------------------------------------- loading
def load_dataset(cfg: DataSettings, seed: int = 0) -> Dataset:
    """Load ``cfg``'s data set into memory (CPU).

    Args:
        cfg: the ``data`` section of a config.
        seed: the run seed; it picks the ``train_size`` subset (the ``test_size`` subset and
            the digits split are fixed, so test sets are comparable across runs).

    Raises:
        DataError: unknown name, files missing with ``download: false``, a failed download.
    """
    info = dataset_info(cfg)
    if info.name == "digits":
        train, test = _load_digits(info.image_size)
        source = "scikit-learn digits"
    elif info.name == ROTMNIST:
        train, test, source = _load_rotmnist(cfg, seed)
    else:
        train, test = (_load_torchvision(info, cfg, is_train) for is_train in (True, False))
        source = f"torchvision {info.name}"
    train = _resize(train.subset(cfg.train_size, seed, "data.train_size"), info.image_size, cfg.resize)
    test = _resize(test.subset(cfg.test_size, _TEST_SUBSET_SEED, "data.test_size"), info.image_size, cfg.resize)
    if cfg.normalise:
        mean = train.images.mean(dim=(0, 2, 3))
        std = train.images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    else:  # the network sees the [0, 1] pixels as they are
        mean, std = torch.zeros(info.in_channels), torch.ones(info.in_channels)
    return Dataset(info, train, test, mean, std, source)


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
        subset_indices(ROTMNIST_TEST, cfg.test_size, _TEST_SUBSET_SEED, "data.test_size"),
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


# -------------------------------------------------------------------------- transforms
def augment_batch(
    x: torch.Tensor, mode: str, generator: torch.Generator, max_degrees: float | None = None
) -> torch.Tensor:
    """Random train-time transform of each image of ``x`` ``[B, C, H, W]``.

    ``none``: unchanged; ``rot90``: a random multiple of 90°; ``rotate``: a random angle in
    [0°, 360°) (bilinear, zeros outside), or uniform in [−``max_degrees``, ``max_degrees``] when
    that is given (``data.augment_degrees``); ``flip``: a random left–right flip, then a random
    multiple of 90° (a random element of D4). Randomness comes only from ``generator`` (CPU).
    """
    if mode == "none":
        return x
    b = x.shape[0]
    if mode == "rotate":
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        return rotate_images(x, u * 360.0 if max_degrees is None else (2.0 * u - 1.0) * max_degrees)
    if mode not in ("rot90", "flip"):
        raise ValueError(f"unknown augmentation {mode!r}; allowed: {', '.join(AUGMENTATIONS)}")
    quarter_turns = torch.randint(0, 4, (b,), generator=generator)
    if mode == "flip":
        flips = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    return rotate_images(x, quarter_turns.double() * 90.0)


def apply_protocol(x: torch.Tensor, protocol: str, angles: torch.Tensor | None = None) -> torch.Tensor:
    """Transform test images ``[B, C, H, W]`` by a protocol; ``rotated`` needs ``angles`` ``[B]`` (degrees)."""
    if protocol == "upright":
        return x
    if protocol == "flip":
        return x.flip(-1)
    if protocol in ("rot90", "rot180", "rot270"):
        return torch.rot90(x, int(protocol[3:]) // 90, dims=(-2, -1))
    if protocol == "rotated":
        if angles is None:
            raise ValueError("the 'rotated' protocol needs one angle per image")
        return rotate_images(x, angles)
    raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")


def protocol_batches(
    split: Split, protocol: str, rotation_seed: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(images [b, C, H, W], labels [b])`` of ``split`` under ``protocol``, in order.

    Under ``rotated``, sample ``i`` is turned by ``random_angles(len(split), rotation_seed)[i]``
    whatever the batch size, so every run and every batching sees the same test set.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    angles = random_angles(len(split), rotation_seed) if protocol == "rotated" else None
    for start in range(0, len(split), batch_size):
        stop = start + batch_size
        x = split.images[start:stop]
        yield apply_protocol(x, protocol, None if angles is None else angles[start:stop]), split.labels[start:stop]
