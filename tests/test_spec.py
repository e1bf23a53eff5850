"""Architecture spec validation (``parse_layers``): defaults, shorthands and one-line errors."""

from __future__ import annotations

import pytest

from gcnnkit.core.errors import ConfigError, GcnnkitError, SpecError
from gcnnkit.models.presets import PRESETS
from gcnnkit.models.spec import LAYER_TYPES, LayerSpec, parse_layer, parse_layers

SPEC = [
    {"type": "lift", "out": 16, "kernel": 5},
    "batchnorm",
    "relu",
    {"type": "gconv", "out": 32},
    {"type": "pool", "mode": "avg", "kernel": 3, "stride": 2, "padding": 1},
    {"type": "act", "fn": "elu"},
    {"type": "dropout", "p": 0},
    {"type": "group_pool", "mode": "mean"},
    {"type": "global_pool"},
    {"type": "linear", "out": "classes"},
]


def test_parse_fills_every_default():
    specs = parse_layers(SPEC)
    assert [s.type for s in specs] == [
        "lift",
        "batchnorm",
        "act",
        "gconv",
        "pool",
        "act",
        "dropout",
        "group_pool",
        "global_pool",
        "linear",
    ]
    assert specs[0].params == {"out": 16, "kernel": 5, "stride": 1, "padding": "same", "dilation": 1, "bias": True}
    assert specs[1].params == {}
    assert specs[2].params == {"fn": "relu"}  # bare activation name is {type: act, fn: ...}
    assert specs[3].params["kernel"] == 3
    assert specs[4].params == {"mode": "avg", "kernel": 3, "stride": 2, "padding": 1}
    assert specs[5].params == {"fn": "elu"}
    assert specs[6].params == {"p": 0.0} and isinstance(specs[6].params["p"], float)  # int promoted
    assert specs[7].params == {"mode": "mean"}
    assert specs[8].params == {"mode": "avg"}
    assert specs[9].params == {"out": "classes", "bias": True}


def test_resolved_spec_round_trips():
    specs = parse_layers(SPEC)
    again = parse_layers([s.to_dict() for s in specs])
    assert again == specs
    assert specs[0].to_dict() == {"type": "lift", **specs[0].params}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("size", [17, 28])
def test_presets_are_valid_specs(preset, size):
    specs = parse_layers(PRESETS[preset].layers(size, 1))
    first = next(spec for spec in specs if spec.type != "dropout")  # All-CNN-C drops input pixels first
    assert first.type == "lift" and specs[-1].type in ("linear", "global_pool")


def test_parse_does_not_mutate_its_input():
    entry = {"type": "lift", "out": 4}
    parse_layer(entry, "x")
    assert entry == {"type": "lift", "out": 4}


# message fragments: (entry, *fragments that must all appear in the one-line message)
BAD_LAYERS = [
    ({"type": "conv", "out": 3}, "model.layers[0]", "unknown layer type 'conv'", "allowed: lift, gconv"),
    ("maxpool", "unknown layer type 'maxpool'", "relu"),
    ({"out": 3}, "unknown layer type None"),
    ({"type": "lift", "out": 3, "kernal": 3}, "unknown parameter 'kernal'", "layer 'lift'", "allowed: out, kernel"),
    ({"type": "batchnorm", "momentum": 0.1}, "unknown parameter 'momentum'", "allowed: none"),
    ({"type": "lift"}, "needs parameter 'out'"),
    ({"type": "lift", "out": 3, "kernel": "3"}, "model.layers[0].kernel", "expected int", "'3'"),
    ({"type": "lift", "out": 3.5}, ".out", "expected int", "3.5"),
    ({"type": "lift", "out": True}, ".out", "expected int", "True"),
    ({"type": "lift", "out": 3, "bias": 1}, ".bias", "expected bool", "1"),
    ({"type": "dropout", "p": "0.5"}, ".p", "expected number", "'0.5'"),
    ({"type": "dropout", "p": True}, ".p", "True"),
    ({"type": "pool", "stride": 1.5}, ".stride", "expected int or null", "1.5"),
    ({"type": "pool", "mode": "min"}, ".mode", "'min' is not allowed", "allowed: max, avg"),
    ({"type": "group_pool", "mode": "avg"}, ".mode", "'avg' is not allowed", "allowed: max, mean"),
    ({"type": "global_pool", "mode": "mean"}, "'mean' is not allowed", "allowed: max, avg"),
    ({"type": "act", "fn": "swish"}, ".fn", "'swish' is not allowed", "relu"),
    ({"type": "relu", "fn": "elu"}, "'relu' takes no 'fn'"),
    ({"type": "lift", "out": 3, "padding": "valid"}, ".padding", "'valid' is not allowed", "'same'"),
    ({"type": "lift", "out": 3, "padding": -1}, ".padding", "must be >= 0", "-1"),
    ({"type": "gconv", "out": 0}, "must be >= 1", "'out': 0"),
    ({"type": "gconv", "out": 4, "kernel": 0}, "must be >= 1", "'kernel': 0"),
    ({"type": "gconv", "out": 4, "stride": 0}, "must be >= 1", "'stride': 0"),
    ({"type": "gconv", "out": 4, "dilation": 0}, "must be >= 1", "'dilation': 0"),
    ({"type": "linear", "out": "logits"}, ".out", "'logits' is not allowed", "'classes'"),
    ({"type": "linear", "out": 0}, ".out", "0 is not allowed"),
    ({"type": "dropout", "p": 1.0}, ".p", "[0, 1)", "1.0"),
    ({"type": "dropout", "p": -0.1}, ".p", "-0.1"),
    ({"type": "pool", "kernel": 2, "padding": 2}, ".padding", "at most half the kernel", "got 2"),
    ({"type": "pool", "kernel": 0}, "pool kernel/stride must be >= 1"),
    ({"type": "pool", "stride": 0}, "pool kernel/stride must be >= 1"),
    (3, "expected a layer type or a mapping", "3"),
    (["lift"], "expected a layer type or a mapping"),
]


@pytest.mark.parametrize(("entry", "fragments"), [(b[0], b[1:]) for b in BAD_LAYERS])
def test_bad_layer_is_a_one_line_spec_error(entry, fragments):
    with pytest.raises(SpecError) as info:
        parse_layers([entry])
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, GcnnkitError)


def test_error_names_the_position_of_the_bad_layer():
    with pytest.raises(SpecError, match=r"^model\.layers\[2\]\.fn: 'swish'"):
        parse_layers(["batchnorm", "relu", {"type": "act", "fn": "swish"}])
    with pytest.raises(SpecError, match=r"^preset x\[0\]"):
        parse_layers([{"type": "nope"}], where="preset x")


@pytest.mark.parametrize("layers", [[], "lift", b"lift", None, {"type": "lift"}, 3])
def test_spec_must_be_a_non_empty_list(layers):
    with pytest.raises(SpecError, match="expected a non-empty list of layers"):
        parse_layers(layers)


def test_layer_types_lists_every_type_and_activation():
    for t in ("lift", "gconv", "batchnorm", "act", "dropout", "pool", "group_pool", "global_pool", "linear", "relu"):
        assert t in LAYER_TYPES
    assert LayerSpec("relu").params == {}
