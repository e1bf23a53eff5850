"""Building networks: order/kernel validation, width modes, presets and end-to-end invariance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import NATIVE_GROUPS, randomize_parameters, registered_group, rel_err
from torch import nn

from gcnnkit.core.errors import GcnnkitError, PluginError, SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.registry import get_backend
from gcnnkit.core.transforms import transform_image
from gcnnkit.models.network import EquivariantNet, build_model, build_network, field_count, resolve_padding
from gcnnkit.models.presets import PRESETS, get_preset
from gcnnkit.models.spec import parse_layers
from gcnnkit.testing import assert_network_equivariant

TAIL = [{"type": "group_pool"}, {"type": "global_pool"}, {"type": "linear", "out": "classes"}]


def _build(layers, group="C4", widths="fields", in_channels=1):
    return build_network(parse_layers(layers), get_backend("native"), registered_group(group), in_channels, 10, widths)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("group", ["C2", "C4", "D1", "D4"])
@pytest.mark.parametrize("kind", ["lift", "gconv"])
def test_even_kernel_on_a_nontrivial_group_is_refused(group, kind):
    layers = [{"type": "lift", "out": 2, "kernel": 4 if kind == "lift" else 3, "padding": 1}]
    if kind == "gconv":
        layers.append({"type": "gconv", "out": 2, "kernel": 4, "padding": 1})
    with pytest.raises(SpecError) as info:
        _build(layers + TAIL, group=group)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"layer {len(layers) - 1} ({kind})" in msg
    assert "kernel 4 is even" in msg and group in msg and "allowed: odd kernels" in msg


def test_even_kernel_is_fine_on_c1_but_not_with_same_padding():
    net = _build([{"type": "lift", "out": 2, "kernel": 4, "padding": 0}] + TAIL, group="C1")
    assert net(torch.randn(2, 1, 9, 9)).shape == (2, 10)
    with pytest.raises(SpecError, match="padding 'same' needs an odd kernel, got 4"):
        _build([{"type": "lift", "out": 2, "kernel": 4}] + TAIL, group="C1")


@pytest.mark.parametrize(
    ("layers", "fragments"),
    [
        ([{"type": "gconv", "out": 2}] + TAIL, ["layer 0 (gconv)", "expects a group input", "image[1]", "'lift'"]),
        (
            [{"type": "lift", "out": 2}, {"type": "lift", "out": 2}] + TAIL,
            ["layer 1 (lift)", "expects a image input", "group[2]", "lifts once"],
        ),
        (
            [{"type": "lift", "out": 2}, {"type": "group_pool"}, {"type": "gconv", "out": 2}, "global_pool"],
            ["layer 2 (gconv)", "image[2]"],
        ),
        (
            [{"type": "lift", "out": 2}, {"type": "linear", "out": 3}, "global_pool"],
            ["layer 1 (linear)", "needs pooled features", "group[2]", "global_pool"],
        ),
        ([{"type": "lift", "out": 2}, {"type": "group_pool"}], ["ends with image[2]", "not with pooled features"]),
        ([{"type": "lift", "out": 2}], ["ends with group[2]", "global_pool"]),
        ([{"type": "lift", "out": 2}, "global_pool", "batchnorm", "linear"], ["layer 2 (batchnorm)", "vector[2]"]),
        ([{"type": "lift", "out": 2}, "global_pool", "pool", "linear"], ["layer 2 (pool)", "vector[2]"]),
        ([{"type": "lift", "out": 2}, "global_pool", "global_pool"], ["layer 2 (global_pool)", "already pooled"]),
        (["group_pool", "global_pool"], ["layer 0 (group_pool)", "needs a group feature map", "image[1]"]),
    ],
)
def test_impossible_layer_orders_are_refused(layers, fragments):
    with pytest.raises(SpecError) as info:
        _build(layers)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_bad_widths_mode():
    with pytest.raises(SpecError, match=r"model\.widths: 'channels' is not allowed; allowed: fields, params"):
        _build([{"type": "lift", "out": 2}] + TAIL, widths="channels")
    with pytest.raises(SpecError, match="'channels'"):
        build_model("native", "C4", preset="gcnn-tiny", in_channels=1, image_size=9, num_classes=2, widths="channels")


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(SpecError) as info:
        build_model("native", "C4", preset="resnet50", in_channels=1, image_size=28, num_classes=10)
    msg = str(info.value)
    assert "'resnet50'" in msg and "gcnn-small" in msg and "gcnn-tiny" in msg and "\n" not in msg
    with pytest.raises(SpecError):
        get_preset("resnet50")


def test_build_model_needs_exactly_one_of_preset_and_layers():
    kw = dict(in_channels=1, image_size=9, num_classes=2)
    with pytest.raises(SpecError, match="exactly one of 'preset' or 'layers'"):
        build_model("native", "C4", **kw)
    with pytest.raises(SpecError, match="exactly one of 'preset' or 'layers'"):
        build_model("native", "C4", preset="gcnn-tiny", layers=[{"type": "lift", "out": 2}] + TAIL, **kw)


def test_build_model_unknown_plugins_and_bad_options():
    kw = dict(preset="gcnn-tiny", in_channels=1, image_size=9, num_classes=2)
    with pytest.raises(PluginError, match="unknown backend 'nope'"):
        build_model("nope", "C4", **kw)
    with pytest.raises(PluginError, match="unknown group 'Q4'"):
        build_model("native", "Q4", **kw)
    with pytest.raises(SpecError, match="backend 'native' has no option 'fast'"):
        build_model("native", "C4", backend_options={"fast": True}, **kw)
    with pytest.raises(GcnnkitError, match=r"layers\[0\]"):  # spec errors surface through build_model too
        build_model("native", "C4", layers=[{"type": "lift"}], in_channels=1, image_size=9, num_classes=2)


# --------------------------------------------------------------------------- structure
def test_network_records_types_and_names():
    net = _build(
        [{"type": "lift", "out": 3, "kernel": 3}, "batchnorm", "relu", {"type": "gconv", "out": 5}, {"type": "pool"}]
        + TAIL,
        in_channels=2,
    )
    assert isinstance(net, EquivariantNet)
    assert net.layer_names() == [
        "0.lift",
        "1.batchnorm",
        "2.act",
        "3.gconv",
        "4.pool",
        "5.group_pool",
        "6.global_pool",
        "7.linear",
    ]
    assert [str(t) for t in net.in_types] == [
        "image[2]",
        "group[3]",
        "group[3]",
        "group[3]",
        "group[5]",
        "group[5]",
        "image[5]",
        "vector[5]",
    ]
    assert [str(t) for t in net.out_types] == net_types_after(net)
    assert net.in_type == FieldType("image", 2) and net.out_type == FieldType("vector", 10)
    assert net.backend_name == "native" and net.group.name == "C4"
    assert net(torch.randn(3, 2, 8, 8)).shape == (3, 10)
    # every layer's output really has the recorded type
    x = torch.randn(2, 2, 8, 8)
    for _, layer, t_in, t_out in net.typed_layers():
        assert tuple(x.shape) == t_in.shape(net.group, 2, *x.shape[-2:])
        x = layer(x)
        assert tuple(x.shape) == t_out.shape(net.group, 2, *x.shape[-2:])


def net_types_after(net):
    return [str(t) for t in net.in_types[1:]] + [str(net.out_type)]


def test_same_padding_keeps_the_size():
    assert resolve_padding("same", 5, 1) == 2 and resolve_padding("same", 3, 3) == 3 and resolve_padding(4, 3, 1) == 4
    for kernel, dilation in [(1, 1), (3, 1), (5, 2), (7, 1)]:
        net = _build(
            [
                {"type": "lift", "out": 2, "kernel": kernel, "dilation": dilation},
                {"type": "gconv", "out": 2, "kernel": kernel, "dilation": dilation},
            ]
            + TAIL
        )
        x = torch.randn(1, 1, 15, 15)
        assert net.layers[1](net.layers[0](x)).shape[-2:] == (15, 15)


@pytest.mark.parametrize("name", ["C1", "C2", "C4", "D2", "D4"])
@pytest.mark.parametrize("out", [1, 3, 8, 24, 64])
def test_params_width_mode_gives_round_out_over_sqrt_order_fields(name, out):
    group = registered_group(name)
    expected = max(1, round(out / math.sqrt(group.order)))
    assert field_count(out, group, "params") == expected
    assert field_count(out, group, "fields") == out
    net = _build([{"type": "lift", "out": out}, {"type": "gconv", "out": out}] + TAIL, group=name, widths="params")
    assert net.layers[0].out_fields == expected and net.layers[1].out_fields == expected
    assert net.out_types[0] == FieldType("group", expected)


def test_params_mode_matches_parameter_counts_across_groups():
    counts = {}
    for name in ("C1", "C4", "D4"):
        net = build_model("native", name, preset="gcnn-small", in_channels=1, image_size=28, num_classes=10)
        counts[name] = net.num_parameters()
        assert counts[name] == sum(p.numel() for p in net.parameters())
    base = counts["C1"]
    for n in counts.values():
        assert abs(n - base) / base < 0.05, counts
    # and in fields mode they would not be: the same spec on D4 is far bigger
    big = build_model(
        "native", "D4", preset="gcnn-small", in_channels=1, image_size=28, num_classes=10, widths="fields"
    )
    assert big.num_parameters() > 4 * base


# --------------------------------------------------------------------------- invariance
#: Largest relative error per dtype: rounding only (exact elements permute pixels).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
#: Image sizes and dtypes of the invariance tests: both sizes in float32, the smaller in float64.
SIZE_DTYPE = [
    pytest.param(17, torch.float32, id="17"),
    pytest.param(28, torch.float32, id="28"),
    pytest.param(17, torch.float64, id="17-float64"),
]


def _exact_elements(group):
    return [g for g in range(group.order) if group.is_exact(g)]


@pytest.mark.parametrize("preset", ["gcnn-small", "gcnn-tiny"])
@pytest.mark.parametrize("name", NATIVE_GROUPS)
@pytest.mark.parametrize(("size", "dtype"), SIZE_DTYPE)
def test_classifier_is_invariant(preset, name, size, dtype):
    """logits(g·x) = logits(x) for every element, with random (non-default) weights and BN stats."""
    net = build_model("native", name, preset=preset, in_channels=2, image_size=size, num_classes=7).to(dtype)
    randomize_parameters(net, seed=size)
    net.eval()
    group = net.group
    x = torch.randn(3, 2, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (3, 7) and y.dtype == dtype and y.abs().max() > 1e-3
        for g in _exact_elements(group):
            err = rel_err(net(transform_image(x, group, g)), y)
            assert err <= TOLERANCE[dtype], (name, group.element_names[g], err)


@pytest.mark.parametrize("name", ["C4", "D4"])
def test_tiny_classifier_is_invariant_in_train_mode(name):
    """Batch statistics are invariant too, so train-mode batch norm keeps invariance (no dropout in tiny)."""
    net = build_model("native", name, preset="gcnn-tiny", in_channels=1, image_size=16, num_classes=5)
    randomize_parameters(net)
    net.train()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        y = net(x)
        for g in range(net.group.order):
            assert rel_err(net(transform_image(x, net.group, g)), y) <= 1e-5


@pytest.mark.parametrize(("size", "dtype"), SIZE_DTYPE)
def test_every_layer_of_the_presets_is_equivariant(size, dtype):
    net = build_model("native", "D4", preset="gcnn-small", in_channels=1, image_size=size, num_classes=10).to(dtype)
    randomize_parameters(net)
    results = assert_network_equivariant(net, (1, size, size), tolerance=TOLERANCE[dtype])
    assert len(results) == len(net.layers) + 1 and results[-1].name == "end-to-end"


def test_c4_model_is_not_reflection_invariant():
    """Sanity: the invariance tests above can fail. A C4 model does not see D4's mirror."""
    d4 = registered_group("D4")
    for preset in ("gcnn-small", "gcnn-tiny"):
        net = build_model("native", "C4", preset=preset, in_channels=1, image_size=17, num_classes=10)
        randomize_parameters(net)
        net.eval()
        x = torch.randn(4, 1, 17, 17, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = net(x)
            assert rel_err(net(transform_image(x, d4, "r1")), y) <= 1e-5  # rotations: fine
            assert rel_err(net(transform_image(x, d4, "f")), y) > 1e-2  # the mirror: not


def test_c1_model_is_not_rotation_invariant():
    net = build_model("native", "C1", preset="gcnn-tiny", in_channels=1, image_size=17, num_classes=10)
    randomize_parameters(net)
    net.eval()
    x = torch.randn(4, 1, 17, 17)
    with torch.no_grad():
        assert rel_err(net(torch.rot90(x, 1, dims=(-2, -1))), net(x)) > 1e-2


def test_c1_network_is_a_plain_cnn():
    """gcnn-tiny on C1 computes exactly what the equivalent plain torch CNN does with the same weights."""
    net = build_model("native", "C1", preset="gcnn-tiny", in_channels=3, image_size=12, num_classes=4)
    randomize_parameters(net)
    net.eval()
    lift, bn1, _, gconv, bn2, _, pool, _, _, linear = net.layers
    assert lift.weight.shape == (8, 3, 3, 3) and gconv.weight.shape == (8, 8, 1, 3, 3)

    def plain(x):
        h = F.conv2d(x, lift.weight, lift.bias, padding=1)
        h = F.relu(F.batch_norm(h, bn1.running_mean, bn1.running_var, bn1.weight, bn1.bias, eps=bn1.eps))
        h = F.conv2d(h, gconv.weight[:, :, 0], gconv.bias, padding=1)
        h = F.relu(F.batch_norm(h, bn2.running_mean, bn2.running_var, bn2.weight, bn2.bias, eps=bn2.eps))
        h = F.max_pool2d(h, 2)
        return F.linear(h.mean(dim=(-2, -1)), linear.weight, linear.bias)

    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(net(x), plain(x), atol=1e-5, rtol=1e-5)


def test_presets_documented():
    for preset in PRESETS.values():
        assert preset.description and preset.widths in ("fields", "params")
        assert get_preset(preset.name) is preset  # found by its name


def test_dropout_is_identity_in_eval():
    net = build_model("native", "C4", preset="gcnn-small", in_channels=1, image_size=16, num_classes=3)
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
    net.eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("backend", ["native", pytest.param("escnn", marks=pytest.mark.escnn)])
@pytest.mark.parametrize("group", ["C1", "C4", "D4"])
def test_channels_last_keeps_values_and_equivariance_and_runs_nhwc(backend, group):
    if backend == "escnn":
        pytest.importorskip("escnn")
    net = build_model(backend, group, preset="gcnn-small", in_channels=3, image_size=17, num_classes=10).eval()
    randomize_parameters(net)
    x = torch.randn(4, 3, 17, 17, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x)
        assert net.set_channels_last() is net and net.channels_last
        layouts = []
        hooks = [layer.register_forward_hook(lambda m, i, y: layouts.append(y)) for layer in net.layers[:3]]
        got = net(x)
        for hook in hooks:
            hook.remove()
    # the logits span orders of magnitude (random weights): other kernels round differently, ~1e-7 of the largest
    assert rel_err(got, expected) <= 1e-5
    # convolution, batch norm, activation: NHWC all along (in [B, C, |G|, H, W] the channel axes innermost)
    for y in layouts[: 3 if backend == "native" else 1]:
        y4 = y.flatten(1, 2) if y.ndim == 5 else y
        assert y4.is_contiguous(memory_format=torch.channels_last) and not y4.is_contiguous()
    assert_network_equivariant(net, (3, 17, 17))
    with torch.no_grad():  # eval: the cached bank is stored NHWC, not converted on every call
        conv = net.layers[3]
        bank = conv.filter_bank()
        assert bank.is_contiguous(memory_format=torch.channels_last) and conv.filter_bank() is bank
    net.set_channels_last(False)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)
    assert not net.channels_last
