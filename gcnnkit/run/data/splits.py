"""Splits of a data set, held in memory or read from disk batch by batch, and the data set itself.

A split is either a :class:`Split` (images ``[N, C, H, W]`` float in ``[0, 1]`` in memory, batches
are index lookups) or a :class:`StreamedSplit` (an :class:`ImageStore` read through a
``DataLoader`` with workers, pinned memory and prefetching). Both have ``labels`` ``[N]`` int64 in
memory and :meth:`batches`, which yields the images of given indices in that order, the same
pixels either way; so training and evaluation run the same code on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from gcnnkit.core.errors import DataError


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


class ImageStore(Protocol):
    """Images on disk, read one at a time (what a source plugin or a file source provides).

    ``read(i)`` returns image ``i`` as ``[C, H, W]``, uint8 (0..255) or float in ``[0, 1]``, already
    at the data set's size; it may raise :class:`DataError` naming the file. ``name(i)`` names the
    image in messages (a path). Stores are handed to ``DataLoader`` workers, so they must pickle.
    """

    def __len__(self) -> int: ...

    def read(self, i: int) -> torch.Tensor: ...

    def name(self, i: int) -> str: ...


@dataclass
class Split:
    """``images`` ``[N, C, H, W]`` float in ``[0, 1]`` and ``labels`` ``[N]`` int64, in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def in_memory(self) -> bool:
        return True

    def subset(self, n: int | None, seed: int, key: str) -> Split:
        """``n`` samples drawn without replacement (deterministic from ``seed``); all when ``n`` is None."""
        idx = subset_indices(len(self), n, seed, key)
        return self if idx is None else Split(self.images[idx], self.labels[idx])

    def take(self, idx: torch.Tensor) -> Split:
        """The samples at ``idx`` ``[k]``, in that order."""
        return Split(self.images[idx], self.labels[idx])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """Images ``[b, C, H, W]`` of ``order[0:b]``, ``order[b:2b]``, … (on the images' device)."""
        for start in range(0, len(order), batch_size):
            yield self.images[order[start : start + batch_size].to(self.images.device)]


@dataclass
class StreamedSplit:
    """A split read from an :class:`ImageStore` batch by batch; only ``labels`` ``[N]`` are in memory.

    ``indices`` ``[N]`` map the split's samples to the store's (a subset, a validation part).
    :meth:`batches` reads through a ``DataLoader`` (``num_workers`` processes, pinned memory on
    CUDA, two batches prefetched per worker) and moves each batch to ``device``.
    """

    store: ImageStore
    labels: torch.Tensor
    indices: torch.Tensor | None = None  # None: every image of the store, in order
    num_workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.indices is None:
            self.indices = torch.arange(len(self.labels))
        if len(self.indices) != len(self.labels):
            raise DataError(
                f"a streamed split needs one label per image: {len(self.indices)} images, {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def in_memory(self) -> bool:
        return False

    def subset(self, n: int | None, seed: int, key: str) -> StreamedSplit:
        idx = subset_indices(len(self), n, seed, key)
        return self if idx is None else self.take(idx)

    def take(self, idx: torch.Tensor) -> StreamedSplit:
        idx = idx.cpu()
        return replace(self, labels=self.labels[idx.to(self.labels.device)], indices=self.indices[idx])

    def to(self, device: torch.device | str) -> StreamedSplit:
        return replace(self, labels=self.labels.to(device), device=torch.device(device))

    def name(self, i: int) -> str:
        """The file (or store entry) of sample ``i``."""
        return self.store.name(int(self.indices[i]))

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """Images ``[b, C, H, W]`` float in ``[0, 1]`` of ``order[0:b]``, ``order[b:2b]``, … on :attr:`device`."""
        from gcnnkit.run.data.streaming import stream_batches

        yield from stream_batches(self, order.cpu(), batch_size)

    def materialise(self, batch_size: int = 256) -> Split:
        """Every image read once (with the same workers) into a :class:`Split` on the CPU."""
        images = torch.cat(list(replace(self, device=torch.device("cpu")).batches(torch.arange(len(self)), batch_size)))
        return Split(images, self.labels.cpu())


AnySplit = Split | StreamedSplit
#: :attr:`Dataset.in_memory_reason` of the built-in sets.
BUILTIN_REASON = "in memory (a built-in data set)"


@dataclass
class SourceSplits:
    """What a source (built-in, file, or plugin) hands over: its splits and class names.

    ``val`` is the source's own validation split (``None``: ``data.val_split`` may carve one from
    ``train``). ``subset``: ``train_size``/``test_size`` are already applied. ``skipped``: corrupt
    files left out under ``data.skip_corrupt``.
    """

    train: AnySplit
    test: AnySplit
    val: AnySplit | None = None
    classes: list[str] = field(default_factory=list)
    source: str = ""
    subset: bool = False
    skipped: list[str] = field(default_factory=list)


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
    """A loaded data set: its splits and the training set's per-channel statistics.

    ``train`` and ``test`` always exist. ``val`` is the validation split, or ``None`` when there is
    none: the source's own (a ``val/`` folder, a manifest's ``split`` column, ``val_images`` arrays)
    or ``data.val_split`` of the training set, per class, drawn with the run seed (+ 7919); its
    images are not in ``train``, and the normalisation statistics come from ``train`` alone.
    ``classes`` names the classes by label (``classes[k]`` is label ``k``); ``in_memory_reason``
    says why the splits are in memory or streamed; ``skipped`` lists the corrupt files
    ``data.skip_corrupt`` left out.
    """

    info: DatasetInfo
    train: AnySplit
    test: AnySplit
    mean: torch.Tensor  # [C]
    std: torch.Tensor  # [C]
    #: where the images came from, e.g. "torchvision MNIST" or "reconstructed from MNIST (seed 2007)"
    source: str = ""
    val: AnySplit | None = None
    classes: list[str] = field(default_factory=list)
    in_memory_reason: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def in_memory(self) -> bool:
        return self.train.in_memory

    @property
    def builtin(self) -> bool:
        """A built-in set (always in memory): training prints no ``data:`` line for it."""
        return self.in_memory_reason.startswith(BUILTIN_REASON)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → ``(x − mean) / std`` per channel."""
        return normalise(x, self.mean, self.std)

    def to(self, device: torch.device | str) -> Dataset:
        return replace(
            self,
            train=self.train.to(device),
            test=self.test.to(device),
            val=None if self.val is None else self.val.to(device),
            mean=self.mean.to(device),
            std=self.std.to(device),
        )

    def describe(self) -> dict:
        """What a run stores about its data (``data.json``): shapes, classes, statistics, choices."""
        return {
            "name": self.info.name,
            "in_channels": self.info.in_channels,
            "image_size": self.info.image_size,
            "num_classes": self.info.num_classes,
            "classes": list(self.classes),
            "source": self.source,
            "sizes": {k: len(s) for k, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s},
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "in_memory": self.in_memory,
            "in_memory_reason": self.in_memory_reason,
            "skipped_files": len(self.skipped),
        }


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``(x − mean[c]) / std[c]`` (``mean``, ``std``: ``[C]``)."""
    return (x - mean.view(1, -1, 1, 1).to(x)) / std.view(1, -1, 1, 1).to(x)


def channel_stats(
    split: AnySplit, limit: int, seed: int = 0, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``[C]`` of at most ``limit`` training images (a fixed random sample
    when there are more), so the statistics cost a bounded read on any data set size."""
    n = len(split)
    idx = torch.arange(n) if n <= limit else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
    idx = idx.sort().values
    total = total_sq = None
    count = 0
    for x in split.batches(idx, batch_size):  # float64 sums, no float64 copy of the batch
        s, sq = x.sum(dim=(0, 2, 3), dtype=torch.float64), (x * x).sum(dim=(0, 2, 3), dtype=torch.float64)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0) * count / max(1, count - 1)
    return mean.float().cpu(), var.sqrt().float().clamp_min(1e-6).cpu()


def carve(labels: torch.Tensor, fraction: float, seed: int, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices ``[N]`` into ``(kept, carved)``, both sorted: ``carved`` holds
    ``round(fraction · n_c)`` samples of each class ``c`` (at least one, never all of a class),
    drawn with ``seed`` class by class. Stratified, so a small validation or test part still has
    every class. A class with fewer than two samples is a :class:`DataError` naming ``key``."""
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    carved = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < 2:
            raise DataError(
                f"{key}: class {c} has {len(members)} image, too few to give one to each side; "
                f"add images of that class or remove it"
            )
        k = min(len(members) - 1, max(1, round(fraction * len(members))))
        carved.append(members[torch.randperm(len(members), generator=gen)[:k]])
    out = torch.cat(carved).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[out] = False
    return torch.nonzero(mask).flatten(), out
