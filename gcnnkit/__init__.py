"""gcnnkit: group-equivariant CNNs (G-CNNs) with pluggable backends and groups.

The Python API behind the ``gcnnkit`` command line::

    import gcnnkit

    config = gcnnkit.load_config("configs/digits_c4.yaml", overrides=["train.epochs=2"])
    report = gcnnkit.check_equivariance(config)        # per-layer equivariance errors
    summary = gcnnkit.train(config)                     # run dir with metrics and checkpoint
    gcnnkit.evaluate_run(summary.run_dir)               # {"accuracy": {"upright": ..., ...}, ...}

    net = gcnnkit.build_model("native", "C4", preset="gcnn-small", in_channels=1, image_size=28, num_classes=10)

Importing gcnnkit loads torch but neither torchvision nor any backend; plugins load on first use.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from gcnnkit.core.errors import (
    ConfigError,
    DataError,
    DivergenceError,
    GcnnkitError,
    PluginError,
    SpecError,
    UnsupportedGroupError,
)
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group, cyclic_group, dihedral_group
from gcnnkit.core.registry import (
    backend_names,
    get_backend,
    get_group,
    group_names,
    plugin_report,
    register_backend,
    register_group,
)
from gcnnkit.models.network import EquivariantNet, build_model
from gcnnkit.models.presets import PRESETS, get_preset
from gcnnkit.run.check import EquivarianceReport, check_equivariance
from gcnnkit.run.config import Config, load_config
from gcnnkit.run.data import Dataset, DatasetInfo, dataset_info, load_dataset
from gcnnkit.run.evaluation import evaluate, evaluate_run
from gcnnkit.run.rundir import build_model_from_config
from gcnnkit.run.training import RunSummary, train

try:
    __version__ = version("gcnnkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    # configs and runs
    "Config",
    "load_config",
    "train",
    "RunSummary",
    "evaluate",
    "evaluate_run",
    "check_equivariance",
    "EquivarianceReport",
    # models
    "build_model",
    "build_model_from_config",
    "EquivariantNet",
    "PRESETS",
    "get_preset",
    # data
    "Dataset",
    "DatasetInfo",
    "dataset_info",
    "load_dataset",
    # groups and plugins
    "Group",
    "FieldType",
    "cyclic_group",
    "dihedral_group",
    "get_backend",
    "get_group",
    "backend_names",
    "group_names",
    "register_backend",
    "register_group",
    "plugin_report",
    # errors
    "GcnnkitError",
    "ConfigError",
    "SpecError",
    "PluginError",
    "UnsupportedGroupError",
    "DataError",
    "DivergenceError",
]
