"""The config schema: defaults, shipped configs, one-line errors, YAML errors and --set overrides."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import CONFIGS, TINY_CONFIG
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.core.errors import ConfigError, DataError, GcnnkitError, SpecError
from gcnnkit.run.config import Config, apply_overrides, config_differences, load_config, parse_override
from gcnnkit.run.data import PROTOCOLS

DEFAULTS = {
    "seed": 0,
    "device": "auto",
    "model": {
        "backend": "native",
        "group": "C4",
        "preset": "gcnn-small",
        "layers": None,
        "widths": "params",
        "width_multiplier": 1.0,
        "backend_options": {},
        "allow_non_equivariant": False,
    },
    "data": {
        "name": "digits",
        "root": "data",
        "download": False,
        "image_size": 17,
        "train_size": None,
        "test_size": None,
        "augment": "none",
        "augment_degrees": None,
        "normalise": True,
        "resize": "bilinear",
        "colour_jitter": 0.0,
        "val_split": 0.0,
        "test_split": 0.2,
        "channels": None,
        "in_memory": "auto",
        "memory_budget_gb": 1.0,
        "num_workers": 2,
        "skip_corrupt": False,
        "path_column": "path",
        "label_column": "label",
        "split_column": "split",
    },
    "train": {
        "epochs": 10,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 0.001,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "schedule": "cosine",
        "step_size": 10,
        "gamma": 0.1,
        "label_smoothing": 0.0,
        "mixed_precision": "none",
        "channels_last": False,
        "grad_clip": None,
        "accumulate": 1,
        "ema": None,
        "select": "last",
        "early_stopping": {"patience": None, "metric": None, "min_delta": 0.0},
        "tensorboard": False,
    },
    "eval": {
        "protocols": ["upright", "rotated", "rot90"],
        "rotation_seed": 1234,
        "batch_size": 256,
        "test_each_epoch": None,
    },
    "required_plugins": [],
}

TINY_LAYERS = [
    {"type": "lift", "out": 4, "kernel": 3},
    "relu",
    {"type": "group_pool"},
    {"type": "global_pool"},
    {"type": "linear"},
]


def test_defaults_are_the_documented_schema():
    assert Config.from_dict({}).to_dict() == DEFAULTS
    assert Config.from_dict(None).to_dict() == DEFAULTS


def test_empty_file_means_all_defaults(write_config):
    assert load_config(write_config("")).to_dict() == DEFAULTS


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_round_trip(path):
    config = load_config(path)
    assert config.name == path.stem
    again = Config.from_dict(yaml.safe_load(config.to_yaml()))
    assert again.to_dict() == config.to_dict()


def test_shipped_configs_are_the_documented_jobs():
    c4, cnn = load_config(CONFIGS / "digits_c4.yaml"), load_config(CONFIGS / "digits_cnn.yaml")
    assert (c4.model.group, c4.model.preset, c4.data.name) == ("C4", "gcnn-small", "digits")
    assert [d[0] for d in config_differences(c4.to_dict(), cnn.to_dict())] == ["model.group"]
    assert cnn.model.group == "C1"
    assert load_config(CONFIGS / "digits_d4.yaml").model.group == "D4"
    for name, group in (("mnist_c4", "C4"), ("mnist_cnn", "C1")):
        config = load_config(CONFIGS / f"{name}.yaml")
        assert (config.model.group, config.data.name, config.data.root, config.data.download) == (
            group,
            "MNIST",
            "../shared/data",
            False,
        )


def test_resolution_fills_dependent_defaults():
    config = Config.from_dict({"data": {"name": "mnist"}, "model": {"layers": TINY_LAYERS}})
    assert config.data.name == "MNIST"  # canonical spelling
    assert config.data.image_size == 28  # MNIST's native size
    assert config.model.preset is None  # a layer list replaces the default preset
    assert config.model.widths == "fields"
    assert config.model.layers[1] == {"type": "act", "fn": "relu"}  # resolved spec
    assert Config.from_dict({"model": {"preset": "gcnn-tiny"}}).model.widths == "params"


def test_required_plugins_accept_one_string_or_a_list():
    assert Config.from_dict({"required_plugins": "gcnnkit-native>=0.1"}).required_plugins == ["gcnnkit-native>=0.1"]
    assert Config.from_dict({"required_plugins": ["a", "b>=1"]}).to_dict()["required_plugins"] == ["a", "b>=1"]


def test_yaml_style_floats_are_numbers(write_config):
    path = write_config("train:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    assert load_config(path).train.lr == pytest.approx(1e-3)
    assert load_config(path).train.weight_decay == pytest.approx(5e-4)


# ------------------------------------------------------------------------------- errors
BAD = [
    ({"train": {"epochs": "ten"}}, ["train.epochs: expected int, got 'ten'"]),
    ({"train": {"epochs": True}}, ["train.epochs: expected int, got True"]),
    ({"train": {"epochs": 2.5}}, ["train.epochs: expected int, got 2.5"]),
    ({"train": {"epochs": 0}}, ["train.epochs: must be >= 1, got 0"]),
    ({"train": {"epochs": None}}, ["train.epochs: expected int, got null"]),
    ({"train": {"lr": "fast"}}, ["train.lr: expected number, got 'fast'"]),
    ({"train": {"lr": 0}}, ["train.lr: must be > 0, got 0.0"]),
    ({"train": {"lr": float("nan")}}, ["train.lr: expected a finite number"]),
    ({"train": {"momentum": 1.0}}, ["train.momentum: must be >= 0 and < 1, got 1.0"]),
    ({"train": {"label_smoothing": -0.1}}, ["train.label_smoothing: must be >= 0 and < 1"]),
    ({"train": {"optimizer": "rmsprop"}}, ["train.optimizer: 'rmsprop' is not allowed; allowed: adam, adamw, sgd"]),
    (
        {"train": {"schedule": "linear"}},
        ["train.schedule: 'linear' is not allowed; allowed: none, cosine, step, onecycle"],
    ),
    ({"train": {"mixed_precision": "fp8"}}, ["train.mixed_precision: 'fp8' is not allowed; allowed: none, bf16, fp16"]),
    ({"train": {"epoch": 3}}, ["unknown key 'train.epoch'", "did you mean 'epochs'", "allowed: epochs, batch_size,"]),
    ({"train": 5}, ["train: expected a mapping with keys epochs, batch_size,", "got 5"]),
    ({"modle": {}}, ["unknown key 'modle'", "allowed: seed, device, model, data, train, eval"]),
    ({"seed": -1}, ["seed: must be >= 0 and <= 4294967295, got -1"]),
    ({"seed": 2**70}, ["seed: must be >= 0 and <= 4294967295, got 1180591620717411303424"]),
    ({"seed": "0"}, ["seed: expected int, got '0'"]),
    ({"device": "gpu"}, ["device: 'gpu' is not allowed; allowed: auto, cpu, cuda, cuda:N"]),
    ({"model": "C4"}, ["model: expected a mapping with keys backend, group, preset,", "got 'C4'"]),
    ({"model": {"group": 4}}, ["model.group: expected a non-empty string, got 4"]),
    ({"model": {"preset": "gcnn-huge"}}, ["model.preset: unknown preset 'gcnn-huge'; available: ", "gcnn-small"]),
    ({"model": {"preset": "gcnn-tiny", "layers": TINY_LAYERS}}, ["model: give exactly one of 'preset' or 'layers'"]),
    ({"model": {"preset": None}}, ["model: give one of 'preset'", "or 'layers'"]),
    ({"model": {"layers": []}}, ["model.layers: expected a non-empty list"]),
    ({"model": {"layers": ["lift"]}}, ["model.layers[0]: layer 'lift' needs parameter 'out'"]),
    (
        {"model": {"layers": [{"type": "conv", "out": 3}]}},
        ["model.layers[0]: unknown layer type 'conv'; allowed: lift"],
    ),
    ({"model": {"widths": "channels"}}, ["model.widths: 'channels' is not allowed; allowed: params, fields"]),
    ({"model": {"backend_options": [1]}}, ["model.backend_options: expected a mapping, got [1]"]),
    ({"data": {"name": "imagenet"}}, ["data.name: 'imagenet' is not a supported data set; allowed: digits, MNIST,"]),
    ({"data": {"augment": "spin"}}, ["data.augment: 'spin' is not allowed; allowed: none, rot90, rotate, flip"]),
    ({"data": {"augment_degrees": 0}}, ["data.augment_degrees: must be > 0 and <= 180, got 0.0"]),
    ({"data": {"augment_degrees": 270}}, ["data.augment_degrees: must be > 0 and <= 180, got 270.0"]),
    ({"data": {"resize": "crop"}}, ["data.resize: 'crop' is not allowed; allowed: bilinear, pad"]),
    ({"data": {"normalise": "yes"}}, ["data.normalise: expected true or false, got 'yes'"]),
    ({"data": {"image_size": 4}}, ["data.image_size: must be >= 8, got 4"]),
    ({"data": {"download": "yes"}}, ["data.download: expected true or false, got 'yes'"]),
    ({"data": {"train_size": 0}}, ["data.train_size: must be >= 1, got 0"]),
    ({"data": {"root": ""}}, ["data.root: expected a non-empty string, got ''"]),
    (
        {"eval": {"protocols": ["upright", "sideways"]}},
        ["eval.protocols: 'sideways' is not allowed; allowed: upright,"],
    ),
    ({"eval": {"protocols": []}}, ["eval.protocols: expected a non-empty list, got []"]),
    ({"eval": {"protocols": ["flip", "flip"]}}, ["eval.protocols: ['flip', 'flip'] lists an entry twice"]),
    ({"eval": {"protocols": [90]}}, ["eval.protocols: expected a list of strings, got 90"]),
    ({"eval": {"batch_size": -3}}, ["eval.batch_size: must be >= 1, got -3"]),
    (
        {"required_plugins": {"gcnnkit-rotations": 1}},
        ["required_plugins: expected a list, got {'gcnnkit-rotations': 1}"],
    ),
    ({"required_plugins": [3]}, ["required_plugins: expected a list of strings, got 3 in [3]"]),
]


@pytest.mark.parametrize(("raw", "expected"), BAD, ids=[str(raw)[:60] for raw, _ in BAD])
def test_bad_values_give_one_line_naming_key_value_and_allowed(raw, expected):
    with pytest.raises(GcnnkitError) as info:
        Config.from_dict(raw)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_error_classes():
    with pytest.raises(ConfigError):
        Config.from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(SpecError):  # a SpecError is a ConfigError
        Config.from_dict({"model": {"layers": ["lift"]}})
    with pytest.raises(DataError):
        Config.from_dict({"data": {"name": "imagenet"}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  epochs: 3\n   lr: 0.1\n", "invalid YAML at line 3: mapping values are not allowed here"),
        ("model: [C4\n", "invalid YAML at line 2:"),
        ("train:\n  epochs: 3\n  epochs: 4\n", "invalid YAML at line 3: duplicate key 'epochs'"),
        ("- seed: 1\n", "expected a mapping of seed, device, model, data, train, eval, required_plugins, got a list"),
        ("just text\n", "expected a mapping of seed, device"),
    ],
)
def test_malformed_files(write_config, text, expected):
    path = write_config(text, name="x.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------- overrides
def test_overrides_apply_before_validation(tiny_config):
    config = load_config(
        tiny_config,
        ["train.epochs=5", "model.group=D4", "eval.protocols=[upright, flip]", "data.image_size=21", "train.lr=1e-2"],
    )
    assert config.train.epochs == 5
    assert config.model.group == "D4"
    assert config.eval.protocols == ["upright", "flip"]
    assert config.data.image_size == 21
    assert config.train.lr == pytest.approx(0.01)
    assert load_config(tiny_config, ["eval.protocols=rot90"]).eval.protocols == ["rot90"]


def test_override_values_are_validated(tiny_config):
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected int, got 'abc'$"):
        load_config(tiny_config, ["train.epochs=abc"])


def test_overriding_layers_replaces_the_preset_and_back(tiny_config):
    layers = yaml.safe_dump(TINY_LAYERS, default_flow_style=True).strip()
    config = load_config(tiny_config, [f"model.layers={layers}"])
    assert config.model.preset is None and config.model.layers[0]["type"] == "lift"
    back = apply_overrides(config.to_dict(), ["model.preset=gcnn-small"])
    assert Config.from_dict(back).model.layers is None


def test_free_form_backend_options_accept_nested_keys(tiny_config):
    assert load_config(tiny_config, ["model.backend_options.fast=true"]).model.backend_options == {"fast": True}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trian.epochs=2", "--set trian.epochs=2: unknown key 'trian'; allowed in the config: seed, device, model,"),
        ("train.epoch=2", "--set train.epoch=2: unknown key 'train.epoch'; allowed in train: epochs, batch_size"),
        ("seed.value=1", "--set seed.value=1: 'seed' is a value, not a section"),
        ("train.epochs", "--set 'train.epochs': expected KEY=VALUE, e.g. train.epochs=2"),
        ("=3", "--set '=3': expected KEY=VALUE"),
        ("train..epochs=3", "is not a dotted key like train.epochs"),
        ("train.lr=[0.1", "--set train.lr: invalid YAML"),
    ],
)
def test_bad_overrides(tiny_config, override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def _leaf_keys(cls=Config, prefix=""):
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            yield from _leaf_keys(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


LEAF_KEYS = sorted(_leaf_keys())


def _get(mapping, dotted):
    for part in dotted.split("."):
        mapping = mapping[part]
    return mapping


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(LEAF_KEYS))
def test_overriding_any_key_with_its_resolved_value_changes_nothing(key):
    base = Config.from_dict(TINY_CONFIG).to_dict()
    value = yaml.safe_dump(_get(base, key), default_flow_style=True).strip().removesuffix("...").strip()
    assert Config.from_dict(apply_overrides(base, [f"{key}={value}"])).to_dict() == base


@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.lists(st.integers(), max_size=4),
        st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=12),
    )
)
def test_override_values_parse_as_yaml(value):
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    assert parse_override(f"model.backend_options.x={text}") == (["model", "backend_options", "x"], value)


@settings(max_examples=40, deadline=None)
@given(epochs=st.integers(min_value=-5, max_value=10**6), protocols=st.lists(st.sampled_from(PROTOCOLS), unique=True))
def test_epochs_and_protocol_overrides(epochs, protocols):
    raw = apply_overrides(TINY_CONFIG, [f"train.epochs={epochs}", f"eval.protocols=[{', '.join(protocols)}]"])
    if epochs < 1 or not protocols:
        with pytest.raises(ConfigError, match=r"^(train\.epochs|eval\.protocols): "):
            Config.from_dict(raw)
    else:
        config = Config.from_dict(raw)
        assert (config.train.epochs, config.eval.protocols) == (epochs, protocols)


def test_overrides_do_not_modify_their_input():
    raw = {"train": {"epochs": 1}}
    apply_overrides(raw, ["train.epochs=3", "model.group=D4"])
    assert raw == {"train": {"epochs": 1}}


def test_config_differences_names_dotted_keys():
    a = Config.from_dict(TINY_CONFIG).to_dict()
    b = Config.from_dict(apply_overrides(TINY_CONFIG, ["train.lr=0.5", "model.group=D4"])).to_dict()
    assert config_differences(a, b) == [("model.group", "C4", "D4"), ("train.lr", 0.01, 0.5)]
    assert config_differences(a, a) == []
