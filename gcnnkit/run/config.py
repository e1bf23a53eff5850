"""Run configuration: the YAML schema, its defaults and its validation.

A config file has seven top-level keys, every one optional::

    required_plugins: []         # e.g. ["gcnnkit-rotations>=0.1"]
    seed: 0
    device: auto                 # auto | cpu | cuda | cuda:N
    model: {backend: native, group: C4, preset: gcnn-small}
    data: {name: digits}
    train: {epochs: 10, lr: 0.001}
    eval: {protocols: [upright, rotated, rot90]}

:func:`load_config` reads a file, applies ``--set key.path=value`` overrides and validates
everything into a :class:`Config`. Every mistake is a :class:`~gcnnkit.core.errors.ConfigError` with a
one-line message naming the dotted key, the bad value and what is allowed, e.g.
``train.epochs: expected int, got 'ten'``. :meth:`Config.to_dict` is the fully resolved
config (every default filled in) that a run stores next to its results.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import operator
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gcnnkit.core.errors import ConfigError
from gcnnkit.models.presets import get_preset
from gcnnkit.models.spec import MAX_WIDTH_MULTIPLIER, parse_layers
from gcnnkit.run.data import (
    AUGMENTATIONS,
    IN_MEMORY_CHOICES,
    PROTOCOLS,
    RESIZE_MODES,
    canonical_name,
    native_image_size,
)
from gcnnkit.run.precision import PRECISIONS

OPTIMIZERS = ("adam", "adamw", "sgd")
#: ``train.select``: which epoch's weights are the run's model (``best.pt``), see :mod:`gcnnkit.run.selection`
SELECT_METRICS = ("last", "val_acc", "val_loss")
#: ``train.early_stopping.metric``
STOPPING_METRICS = ("val_acc", "val_loss")
SCHEDULES = ("none", "cosine", "step", "onecycle")
WIDTHS = ("params", "fields")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
#: largest seed: torch, numpy and Python all accept it
MAX_SEED = 2**32 - 1
#: a config file larger than this is refused before it is read (configs are a few KB)
MAX_CONFIG_BYTES = 1_000_000
#: YAML nodes a config may expand to once its aliases are resolved (an alias bomb expands to billions)
MAX_YAML_NODES = 100_000


def option(
    default: Any,
    kind: str,
    *,
    choices: Sequence[str] | None = None,
    nullable: bool = False,
    allow_empty: bool = False,
    **bounds: float,
):
    """A config field: ``kind`` is int, float, bool, str, str_list, list or mapping.

    ``bounds`` may hold ``ge``, ``gt``, ``le``, ``lt`` (inclusive / exclusive limits); lists must
    be non-empty unless ``allow_empty``.
    """
    meta = {"kind": kind, "choices": tuple(choices) if choices else None, "nullable": nullable}
    meta.update(allow_empty=allow_empty, bounds=bounds)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """Which network to build (see :func:`gcnnkit.models.network.build_model`)."""

    backend: str = option("native", "str")
    group: str = option("C4", "str")
    preset: str | None = option("gcnn-small", "str", nullable=True)
    layers: list | None = option(None, "list", nullable=True)
    widths: str | None = option(None, "str", choices=WIDTHS, nullable=True)
    #: multiplies every field count of lift/gconv: the same architecture, narrower or wider
    width_multiplier: float = option(1.0, "float", gt=0, le=MAX_WIDTH_MULTIPLIER)
    backend_options: dict = option({}, "mapping")
    #: build even when a stride or pool samples the pixel grid off its centre (gcnnkit.models.grid)
    allow_non_equivariant: bool = option(False, "bool")


@dataclass
class DataConfig:
    """Which data set to train and test on (see :mod:`gcnnkit.run.data`)."""

    name: str = option("digits", "str")
    root: str = option("data", "str")
    download: bool = option(False, "bool")
    image_size: int | None = option(None, "int", nullable=True, ge=8)
    train_size: int | None = option(None, "int", nullable=True, ge=1)
    test_size: int | None = option(None, "int", nullable=True, ge=1)
    augment: str = option("none", "str", choices=AUGMENTATIONS)
    #: ``augment: rotate`` only: angles uniform in [−d, d] degrees instead of [0°, 360°)
    augment_degrees: float | None = option(None, "float", nullable=True, gt=0, le=180)
    #: false: no per-channel standardisation (the network sees [0, 1] pixels)
    normalise: bool = option(True, "bool")
    resize: str = option("bilinear", "str", choices=RESIZE_MODES)
    #: strength of random brightness/contrast/saturation on RGB images (0: none), see augment.colour_jitter
    colour_jitter: float = option(0.0, "float", ge=0, le=1)
    #: fraction of the training set held out for validation (``Dataset.val``); 0: the source's own or none
    val_split: float = option(0.0, "float", ge=0, lt=1)
    #: folder/csv without their own test part: this fraction of the images, per class, is the test set
    test_split: float = option(0.2, "float", gt=0, lt=1)
    #: 1 or 3: convert every image to grey or RGB on load; null: the images' own (all must agree)
    channels: int | None = option(None, "int", nullable=True, ge=1, le=3)
    #: auto: in memory when the decoded set fits memory_budget_gb, else streamed from disk
    in_memory: str = option("auto", "auto_bool", choices=IN_MEMORY_CHOICES)
    memory_budget_gb: float = option(1.0, "float", gt=0)
    #: DataLoader worker processes when streaming (0: read in the training process)
    num_workers: int = option(2, "int", ge=0)
    #: true: leave out unreadable image files, listed in the run directory's skipped_files.txt
    skip_corrupt: bool = option(False, "bool")
    #: data.name csv: the manifest's columns
    path_column: str = option("path", "str")
    label_column: str = option("label", "str")
    split_column: str = option("split", "str")


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation metric has not improved for ``patience`` epochs (null: never stop)."""

    patience: int | None = option(None, "int", nullable=True, ge=1)
    #: null: ``train.select``'s metric when that is a validation metric, else ``val_loss``
    metric: str | None = option(None, "str", choices=STOPPING_METRICS, nullable=True)
    #: an epoch improves on the best only by more than this
    min_delta: float = option(0.0, "float", ge=0)


@dataclass
class TrainConfig:
    """Optimisation (see :func:`gcnnkit.run.training.train`)."""

    epochs: int = option(10, "int", ge=1)
    batch_size: int = option(64, "int", ge=1)
    optimizer: str = option("adam", "str", choices=OPTIMIZERS)
    lr: float = option(0.001, "float", gt=0)
    weight_decay: float = option(0.0, "float", ge=0)
    momentum: float = option(0.9, "float", ge=0, lt=1)
    schedule: str = option("cosine", "str", choices=SCHEDULES)
    step_size: int = option(10, "int", ge=1)
    gamma: float = option(0.1, "float", gt=0)
    label_smoothing: float = option(0.0, "float", ge=0, lt=1)
    mixed_precision: str = option("none", "str", choices=PRECISIONS)
    channels_last: bool = option(False, "bool")
    #: clip the gradients' global L2 norm to this before each step (null: no clipping)
    grad_clip: float | None = option(None, "float", nullable=True, gt=0)
    #: split each step's batch into this many micro-batches, gradients summed (saves memory)
    accumulate: int = option(1, "int", ge=1)
    #: decay of an exponential moving average of the weights, which is evaluated and saved (null: off)
    ema: float | None = option(None, "float", nullable=True, gt=0, lt=1)
    select: str = option("last", "str", choices=SELECT_METRICS)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    #: also log every metric to TensorBoard (run_dir/tensorboard; needs the tensorboard package)
    tensorboard: bool = option(False, "bool")


@dataclass
class EvalConfig:
    """Test-time protocols (see :mod:`gcnnkit.run.evaluation`)."""

    protocols: list = option(["upright", "rotated", "rot90"], "str_list", choices=PROTOCOLS)
    rotation_seed: int = option(1234, "int", ge=0, le=MAX_SEED)
    batch_size: int = option(256, "int", ge=1)
    #: test after every epoch (metrics.jsonl gets test_<protocol>); null: only when there is no
    #: validation set (today's per-epoch test curves), else the test set is touched only at the end
    test_each_epoch: bool | None = option(None, "bool", nullable=True)


@dataclass
class Config:
    """A validated run configuration. Build it with :func:`load_config` or :meth:`from_dict`."""

    seed: int = option(0, "int", ge=0, le=MAX_SEED)
    device: str = option("auto", "str")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: plugin distributions the config needs, e.g. ``["gcnnkit-rotations>=0.1"]`` (PEP 508);
    #: checked with :func:`gcnnkit.core.registry.require_plugins` when the model is built
    required_plugins: list = option([], "str_list", allow_empty=True)
    #: the file the config was read from (not part of :meth:`to_dict`)
    source: Path | None = field(default=None, compare=False, repr=False, metadata={"internal": True})

    @property
    def name(self) -> str:
        """The config file's stem (``digits_c4``), or ``"run"`` for a config built in Python."""
        return self.source.stem if self.source is not None else "run"

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config as plain YAML/JSON-able values."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("internal")}
        return copy.deepcopy({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in out.items()})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, source: str | Path | None = None) -> Config:
        """Validate a raw mapping (e.g. parsed YAML) and fill in every default.

        Raises:
            ConfigError: an unknown key or a bad value (:class:`SpecError` for a bad layer list).
            DataError: an unknown ``data.name``.
        """
        raw = {} if raw is None else raw
        model = raw.get("model") if isinstance(raw, Mapping) else None
        if isinstance(model, Mapping) and model.get("layers") is not None and "preset" not in model:
            raw = {**raw, "model": {**model, "preset": None}}  # a layer list replaces the default preset
        config = _build(cls, raw, "")
        config.source = Path(source) if source is not None else None
        _resolve(config)
        return config


# --------------------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of keeping the last one silently."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Number of nodes ``node`` stands for once every alias is expanded (shared nodes counted each time)."""
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a recursive alias counts once instead of forever
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    return memo[key]


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text; errors become ``<where>: invalid YAML at line N: <problem>``.

    A document that expands to more than :data:`MAX_YAML_NODES` nodes through aliases (a "billion
    laughs" bomb) or nests deeper than Python can recurse is refused before it is built.
    """
    try:
        loader = _UniqueKeyLoader(text)  # a SafeLoader subclass: no arbitrary objects
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            size = _expanded_size(node, {})
            if size > MAX_YAML_NODES:
                raise ConfigError(
                    f"{where}: the YAML expands to {size:,} values through its aliases (&anchor/*alias), "
                    f"more than the {MAX_YAML_NODES:,} a config may have"
                )
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply (a config is a few levels deep)") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "malformed"
        raise ConfigError(f"{where}: invalid YAML{line}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(exc).split())}") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``key.path=value`` overrides, validate.

    Args:
        path: the YAML file.
        overrides: e.g. ``["train.epochs=2", "model.group=D4"]``; each value is parsed as YAML.

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a bad value or override.
    """
    path = Path(path)
    text = read_config_text(path)
    raw = parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of {_allowed(Config)}, got {_describe(raw)}")
    raw = apply_overrides(raw, overrides)
    return Config.from_dict(raw, source=path)


def read_config_text(path: Path) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_CONFIG_BYTES`, UTF-8.

    A FIFO, a device (``/dev/zero``) or a folder is refused before it is opened, so reading never
    hangs or fills the memory.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        )
        raise ConfigError(f"{path}: is {kind}, not a regular file; give a YAML config file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {st.st_size:,} bytes is too large for a config (at most {MAX_CONFIG_BYTES:,})")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: too large for a config (at most {MAX_CONFIG_BYTES:,} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); give a YAML config file") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` → ``(["train", "lr"], 0.01)``; the value is parsed as a YAML scalar/list."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=2")
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted key like train.epochs")
    return path, parse_yaml(value, f"--set {key}") if value.strip() else None


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` applied (see :func:`parse_override`).

    Setting ``model.layers`` clears ``model.preset`` (and vice versa) unless both are set, so
    ``--set model.preset=gcnn-tiny`` switches a layer-list config to the preset.
    """
    out = copy.deepcopy(dict(raw))
    touched = set()
    for text in overrides:
        path, value = parse_override(text)
        _check_override_path(path, text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
        touched.add(".".join(path))
    model = out.get("model")
    if isinstance(model, dict):
        for key, other in (("layers", "preset"), ("preset", "layers")):
            if f"model.{key}" in touched and f"model.{other}" not in touched and model.get(key) is not None:
                model[other] = None
    return out


def _check_override_path(path: list[str], text: str) -> None:
    cls: Any = Config
    for depth, part in enumerate(path):
        fields = _fields(cls)
        if part not in fields:
            where = ".".join(path[:depth]) or "the config"
            raise ConfigError(
                f"--set {text}: unknown key {'.'.join(path[: depth + 1])!r}; allowed in {where}: {_allowed(cls)}"
            )
        f = fields[part]
        sub = _section_type(f)
        if sub is not None:
            cls = sub
            if depth == len(path) - 1:
                return
            continue
        if f.metadata.get("kind") == "mapping":  # free-form, e.g. model.backend_options.foo
            return
        if depth != len(path) - 1:
            raise ConfigError(f"--set {text}: {'.'.join(path[: depth + 1])!r} is a value, not a section")


# ------------------------------------------------------------------------ validation
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _section_type(f: dataclasses.Field) -> type | None:
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def _allowed(cls: type) -> str:
    return ", ".join(_fields(cls))


def _describe(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", type(None): "null"}
    return names.get(type(value), repr(value))


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {_allowed(cls)}, got {_describe(raw)}")
    fields = _fields(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {prefix + str(key)!r}{hint}; allowed: {_allowed(cls)}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        sub = _section_type(f)
        key = prefix + name
        values[name] = _build(sub, raw[name], key + ".") if sub else _check_value(key, raw[name], f.metadata)
    return cls(**values)


_KIND_NAMES = {
    "int": "int",
    "float": "number",
    "bool": "true or false",
    "str": "string",
    "list": "a list",
    "str_list": "a list of strings",
    "mapping": "a mapping",
    "auto_bool": "auto, true or false",
}


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> Any:
    """Type-check and range-check one leaf value; returns it normalised (e.g. int → float)."""
    kind = meta["kind"]
    if value is None:
        if meta["nullable"]:
            return None
        raise ConfigError(f"{key}: expected {_KIND_NAMES[kind]}, got null")
    expected = f"expected {_KIND_NAMES[kind]}{' or null' if meta['nullable'] else ''}, got {value!r}"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {expected}")
    elif kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: {expected}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: {expected}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: {expected}")
    elif kind == "auto_bool":  # YAML reads `true` as a bool: keep the three choices as strings
        value = str(value).lower() if isinstance(value, bool) else value
        if value not in ("auto", "true", "false"):
            raise ConfigError(f"{key}: {expected}")
    elif kind == "str":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    elif kind in ("list", "str_list"):
        if kind == "str_list" and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not (value or meta["allow_empty"]):
            raise ConfigError(f"{key}: expected a {'' if meta['allow_empty'] else 'non-empty '}list, got {value!r}")
        if kind == "str_list":
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                raise ConfigError(f"{key}: expected a list of strings, got {bad[0]!r} in {value!r}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{key}: {value!r} lists an entry twice")
    elif kind == "mapping":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value = dict(value)
    choices = meta["choices"]
    if choices:
        for item in value if isinstance(value, list) else [value]:
            if item not in choices:
                raise ConfigError(f"{key}: {item!r} is not allowed; allowed: {', '.join(choices)}")
    _check_bounds(key, value, meta["bounds"])
    return value


_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def _check_bounds(key: str, value: Any, bounds: Mapping[str, float]) -> None:
    if not all(_BOUNDS[name][1](value, limit) for name, limit in bounds.items()):
        limits = " and ".join(f"{_BOUNDS[name][0]} {limit}" for name, limit in bounds.items())
        raise ConfigError(f"{key}: must be {limits}, got {value!r}")


def _resolve(config: Config) -> None:
    """Cross-field checks, and defaults that depend on other keys (widths, image size, names)."""
    if not _DEVICE.fullmatch(config.device):
        raise ConfigError(f"device: {config.device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N")
    model = config.model
    if model.preset is not None and model.layers is not None:
        raise ConfigError("model: give exactly one of 'preset' or 'layers', not both (set the other to null)")
    if model.preset is None and model.layers is None:
        raise ConfigError("model: give one of 'preset' (a preset name) or 'layers' (a layer list)")
    if model.preset is not None:
        model.widths = model.widths or get_preset(model.preset).widths
    else:
        model.layers = [spec.to_dict() for spec in parse_layers(model.layers, where="model.layers")]
        model.widths = model.widths or "fields"
    train = config.train
    if train.accumulate > train.batch_size:
        raise ConfigError(
            f"train.accumulate: {train.accumulate} micro-batches need train.batch_size >= {train.accumulate}, "
            f"got {train.batch_size}"
        )
    data = config.data
    data.name = canonical_name(data.name)
    data.image_size = data.image_size or native_image_size(data.name)  # None: the images' size, found at load
    if data.channels == 2:
        raise ConfigError("data.channels: 2 is not allowed; allowed: 1 (grey), 3 (RGB) or null (the images' own)")


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two ``to_dict()`` results: ``[(key, a, b), ...]``."""
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping) and key != "backend_options":
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append((prefix + key, va, vb))
    return out
