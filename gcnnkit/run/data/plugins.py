"""Data sets from other distributions: the ``gcnnkit.datasets`` entry-point group.

A plugin declares ``NAME = "module:object"`` under ``[project.entry-points."gcnnkit.datasets"]``;
``data.name: NAME`` then loads it. The object (or a class, instantiated without arguments) is a
:class:`DatasetSource`. It is versioned, listed by ``gcnnkit plugins`` and isolated when broken
exactly like group and backend plugins (:mod:`gcnnkit.core.registry`); docs/data.md has a
complete plugin.
"""

from __future__ import annotations

from typing import Protocol

from gcnnkit.core.registry import DATASET_API_VERSION, dataset_plugin_names, get_dataset_source
from gcnnkit.run.data.settings import DataSettings
from gcnnkit.run.data.splits import SourceSplits

__all__ = ["DATASET_API_VERSION", "DatasetSource", "dataset_plugin_names", "get_dataset_source"]


class DatasetSource(Protocol):
    """What a ``gcnnkit.datasets`` entry point provides.

    ``api_version``: the literal version the plugin is written for (now 1). ``classes``: class
    names, label ``k`` is ``classes[k]``. ``channels`` (1 or 3) and ``image_size`` (the native
    size, used when ``data.image_size`` is not set). ``load(settings)`` returns the splits:
    ``Split`` (in memory) or ``StreamedSplit`` (an ``ImageStore`` read on demand) for train and
    test, optionally val. gcnnkit then applies ``train_size``/``test_size``, ``val_split``,
    the in-memory switch and the normalisation statistics, as for every source.
    """

    api_version: int
    classes: list[str]
    channels: int
    image_size: int

    def load(self, settings: DataSettings) -> SourceSplits: ...
