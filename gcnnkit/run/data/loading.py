"""Which data set a config names, its shapes, and loading it into a :class:`Dataset`.

:func:`load_dataset` asks the source (built-in, ``folder``, ``csv``, ``arrays`` or a
``gcnnkit.datasets`` plugin) for its splits, then does the same for all of them: the
``train_size``/``test_size`` subsets, the validation split, the in-memory switch
(:func:`~gcnnkit.run.data.streaming.choose_in_memory`) and the normalisation statistics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gcnnkit.core.errors import DataError, PluginError
from gcnnkit.run.data import builtin
from gcnnkit.run.data.arrays import arrays_info, load_arrays
from gcnnkit.run.data.folder import folder_info, load_folder
from gcnnkit.run.data.manifest import load_manifest, manifest_info
from gcnnkit.run.data.plugins import dataset_plugin_names, get_dataset_source
from gcnnkit.run.data.settings import DataSettings
from gcnnkit.run.data.splits import BUILTIN_REASON, Dataset, DatasetInfo, SourceSplits, Split, carve, channel_stats
from gcnnkit.run.data.streaming import choose_in_memory

#: Sources that read the user's own files (``data.root`` says where).
FILE_SOURCES = ("folder", "csv", "arrays")
#: Mixed into the run seed for the ``data.val_split`` draw, so it is independent of the train_size subset.
VAL_SEED_OFFSET = 7919
#: Normalisation statistics of a streamed-capable source come from at most this many training images.
STATS_SAMPLE = 4096
#: What a run directory holds about its data (:meth:`Dataset.describe`) and the files skipped.
DATA_FILE = "data.json"
SKIPPED_FILE = "skipped_files.txt"

_INFO = {"folder": folder_info, "csv": manifest_info, "arrays": arrays_info}
_LOAD = {"folder": load_folder, "csv": load_manifest, "arrays": load_arrays}


def dataset_names() -> list[str]:
    """Every name ``data.name`` accepts (matching is case-insensitive): built-ins, file sources, plugins."""
    return [*builtin.BUILTIN_NAMES, *FILE_SOURCES, *_plugin_names()]


def _plugin_names() -> list[str]:
    try:
        return dataset_plugin_names()
    except PluginError:
        return []


def canonical_name(name: str) -> str:
    """``"mnist"`` → ``"MNIST"``; :class:`DataError` listing the supported names otherwise."""
    for known in dataset_names():
        if known.lower() == name.lower():
            return known
    raise DataError(f"data.name: {name!r} is not a supported data set; allowed: {', '.join(dataset_names())}")


def native_image_size(name: str) -> int | None:
    """Default ``image_size`` of a built-in set; ``None`` for file and plugin sources (their images say)."""
    name = canonical_name(name)
    return builtin.native_image_size(name) if name in builtin.BUILTIN_NAMES else None


def _source_info(cfg: DataSettings, name: str) -> tuple[int, int, list[str]]:
    if name in _INFO:
        return _INFO[name](cfg)
    plugin = get_dataset_source(name)
    return int(plugin.channels), int(cfg.image_size or plugin.image_size), list(plugin.classes)


def dataset_info(cfg: DataSettings) -> DatasetInfo:
    """Input channels, image size and class count of ``cfg`` without loading any data (file sources
    list their folders or manifest and read one image header)."""
    name = canonical_name(cfg.name)
    if name in builtin.BUILTIN_NAMES:
        return builtin.builtin_info(name, cfg.image_size)
    channels, size, classes = _source_info(cfg, name)
    return DatasetInfo(name, channels, size, len(classes))


def load_dataset(cfg: DataSettings, seed: int = 0) -> Dataset:
    """Load ``cfg``'s data set (on the CPU): in memory, or streamed from disk (see :class:`Dataset`).

    Args:
        cfg: the ``data`` section of a config.
        seed: the run seed; it picks the ``train_size`` subset (the ``test_size`` subset, the
            test parts carved by ``test_split`` are fixed, so they are comparable across runs);
            with ``seed + 7919`` it draws the ``val_split`` part, stratified, from the training
            images ``train_size`` left.

    Raises:
        DataError: unknown name, missing or bad files (one line naming the file), a failed download.
    """
    info = dataset_info(cfg)
    if info.name in builtin.BUILTIN_NAMES:
        parts = builtin.load_builtin(cfg, info, seed)
    elif info.name in _LOAD:
        parts = _LOAD[info.name](cfg, info.image_size)
    else:
        parts = _load_plugin(cfg, info)
    train, test, val = parts.train, parts.test, parts.val
    if not parts.subset:
        train = train.subset(cfg.train_size, seed, "data.train_size")
        test = test.subset(cfg.test_size, builtin.TEST_SUBSET_SEED, "data.test_size")
    if cfg.val_split:
        if val is not None:
            raise DataError(
                f"data.val_split: {cfg.val_split} carves a validation set, but {parts.source} has its own "
                f"({len(val)} images); set data.val_split: 0"
            )
        keep, carved = carve(train.labels, cfg.val_split, seed + VAL_SEED_OFFSET, "data.val_split")
        train, val = train.take(keep), train.take(carved)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"data: {parts.source} leaves {len(train)} training and {len(test)} test images; need both")
    splits = [s for s in (train, val, test) if s is not None]
    if all(s.in_memory for s in splits):
        reason = BUILTIN_REASON if info.name in builtin.BUILTIN_NAMES else "in memory (the source's)"
    else:
        decoded = sum(len(s) for s in splits) * info.in_channels * info.image_size**2 * 4
        in_memory, reason = choose_in_memory(cfg.in_memory, decoded, cfg.memory_budget_gb)
        if in_memory:
            train, test = train.materialise(), test.materialise()
            val = None if val is None else val.materialise()
    mean, std = _statistics(cfg, info, train, parts)
    return Dataset(info, train, test, mean, std, parts.source, val, parts.classes, reason, parts.skipped)


def _statistics(cfg: DataSettings, info: DatasetInfo, train, parts: SourceSplits) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``[C]``: of the whole training set for built-in sets (as always), of a
    bounded sample (:data:`STATS_SAMPLE` images) for every other source; 0 and 1 with ``normalise: false``."""
    if not cfg.normalise:  # the network sees the [0, 1] pixels as they are
        return torch.zeros(info.in_channels), torch.ones(info.in_channels)
    if info.name in builtin.BUILTIN_NAMES and isinstance(train, Split):
        return train.images.mean(dim=(0, 2, 3)), train.images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return channel_stats(train, STATS_SAMPLE)


def _load_plugin(cfg: DataSettings, info: DatasetInfo) -> SourceSplits:
    plugin = get_dataset_source(info.name)
    try:
        parts = plugin.load(cfg)
    except DataError:
        raise
    except Exception as exc:  # a broken plugin: one line naming it
        raise PluginError(
            f"dataset plugin {info.name!r} failed to load its data: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(parts, SourceSplits):
        raise PluginError(f"dataset plugin {info.name!r}: load() must return SourceSplits, got {type(parts).__name__}")
    return parts


def save_data_description(data: Dataset, run_dir: str | Path) -> None:
    """Write :data:`DATA_FILE` (shapes, class names, statistics, the in-memory choice) and, when
    ``data.skip_corrupt`` left files out, :data:`SKIPPED_FILE` (one path a line) into ``run_dir``."""
    run_dir = Path(run_dir)
    _write_atomic(run_dir / DATA_FILE, json.dumps(data.describe(), indent=2) + "\n")
    if data.skipped:
        _write_atomic(run_dir / SKIPPED_FILE, "".join(f"{p}\n" for p in data.skipped))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
