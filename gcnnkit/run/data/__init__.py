"""Data sets: where images come from, how they reach the model, and the batch transforms.

* Sources (one module each): the built-in sets (:mod:`~gcnnkit.run.data.builtin`: digits,
  torchvision sets, rotmnist), the user's own images (:mod:`~gcnnkit.run.data.folder`,
  :mod:`~gcnnkit.run.data.manifest` for ``csv``, :mod:`~gcnnkit.run.data.arrays`) and
  ``gcnnkit.datasets`` plugins (:mod:`~gcnnkit.run.data.plugins`).
* :mod:`~gcnnkit.run.data.loading`: :func:`load_dataset` turns a config's ``data`` section into a
  :class:`Dataset` with ``train``, ``test`` and ``val`` (``None`` without a validation split).
* :mod:`~gcnnkit.run.data.splits`: in-memory :class:`Split` and disk-backed :class:`StreamedSplit`,
  with the same :meth:`~Split.batches`; :mod:`~gcnnkit.run.data.streaming`: the ``DataLoader``
  behind streaming and the ``data.in_memory`` switch.
* :mod:`~gcnnkit.run.data.augment`: augmentations and test protocols on whole batches on the
  model's device (the same code for both paths).

Images are float in ``[0, 1]``, ``[N, C, H, W]``; rotations fill in zeros (the background). They are
normalised per channel with the training set's statistics only after augmentation
(:meth:`Dataset.normalise`), unless ``data.normalise`` is false.
"""

from gcnnkit.run.data.augment import (
    AUGMENTATIONS,
    PROTOCOLS,
    apply_protocol,
    augment_batch,
    colour_jitter,
    protocol_batches,
)
from gcnnkit.run.data.builtin import (
    RESIZE_MODES,
    ROTMNIST_AMAT,
    ROTMNIST_SEED,
    read_amat,
    reconstruct_rotmnist,
    rotmnist_amat_files,
)
from gcnnkit.run.data.loading import (
    DATA_FILE,
    FILE_SOURCES,
    SKIPPED_FILE,
    canonical_name,
    dataset_info,
    dataset_names,
    load_dataset,
    native_image_size,
    save_data_description,
)
from gcnnkit.run.data.settings import DataSettings
from gcnnkit.run.data.splits import (
    Dataset,
    DatasetInfo,
    ImageStore,
    SourceSplits,
    Split,
    StreamedSplit,
    normalise,
    subset_indices,
)
from gcnnkit.run.data.streaming import IN_MEMORY_CHOICES

__all__ = [
    "AUGMENTATIONS",
    "DATA_FILE",
    "FILE_SOURCES",
    "IN_MEMORY_CHOICES",
    "PROTOCOLS",
    "RESIZE_MODES",
    "ROTMNIST_AMAT",
    "ROTMNIST_SEED",
    "SKIPPED_FILE",
    "DataSettings",
    "Dataset",
    "DatasetInfo",
    "ImageStore",
    "SourceSplits",
    "Split",
    "StreamedSplit",
    "apply_protocol",
    "augment_batch",
    "canonical_name",
    "colour_jitter",
    "dataset_info",
    "dataset_names",
    "load_dataset",
    "native_image_size",
    "normalise",
    "protocol_batches",
    "read_amat",
    "reconstruct_rotmnist",
    "rotmnist_amat_files",
    "save_data_description",
    "subset_indices",
]
