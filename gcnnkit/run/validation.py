"""The validation set: carved off the training set (``data.val_split``) or the data set's own.

Model selection (``train.select``) and early stopping look only at this set, so the test set can
stay untouched until the end of a run (docs/training.md). The carved set is stratified — each
class keeps its share — and drawn with the run's ``seed`` from the training set that
``data.train_size`` left, so it never overlaps the images trained on. With ``data.normalise`` the
per-channel statistics are recomputed from the remaining training images only.
"""

from __future__ import annotations

import dataclasses

import torch

from gcnnkit.core.errors import DataError
from gcnnkit.run.data import Dataset, Split

#: Mixed into the run seed, so the validation draw is independent of the train_size subset.
_VAL_SEED_OFFSET = 7919


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """``(rest, val)``: ``val`` holds ``round(fraction · n_c)`` images of each class ``c`` (at least one
    where ``fraction > 0``, never all of a class), drawn with ``seed``; both keep the original order.

    Raises:
        DataError: a class too small to give an image to both sides, or nothing left to train on.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    gen = torch.Generator().manual_seed(seed + _VAL_SEED_OFFSET)
    labels = split.labels.cpu()
    val_parts = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < 2:
            raise DataError(
                f"data.val_split: class {c} has {len(members)} training image, too few to give one to the "
                f"validation set; use data.val_split: 0 or more training images"
            )
        k = min(len(members) - 1, max(1, round(fraction * len(members))))
        val_parts.append(members[torch.randperm(len(members), generator=gen)[:k]])
    val_idx = torch.cat(val_parts).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    rest_idx = torch.nonzero(keep).flatten()
    device = split.labels.device
    rest_idx, val_idx = rest_idx.to(device), val_idx.to(device)
    return (
        Split(split.images[rest_idx], split.labels[rest_idx]),
        Split(split.images[val_idx], split.labels[val_idx]),
    )


def with_validation(data: Dataset, fraction: float, seed: int, normalise: bool = True) -> tuple[Dataset, Split | None]:
    """The data set to train on and its validation split (``None`` when there is none).

    A data set that already holds a validation split (``data.val``: a source's own ``val/`` part, or
    carved by the loader from ``data.val_split``) keeps it; otherwise ``fraction > 0`` carves one off
    ``data.train`` (:func:`stratified_split`) and recomputes the normalisation statistics without it.
    """
    own = getattr(data, "val", None)
    if own is not None:
        return data, own
    if fraction == 0:
        return data, None
    train, val = stratified_split(data.train, fraction, seed)
    mean, std = data.mean, data.std
    if normalise:
        mean = train.images.mean(dim=(0, 2, 3))
        std = train.images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return dataclasses.replace(data, train=train, mean=mean, std=std), val
