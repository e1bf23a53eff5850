"""Residual blocks in the architecture spec (``{type: residual, layers: [...], shortcut: ...}``): parsing
and refusals, equivariance of the block and of each part on every backend and group, ``gcnnkit check``
reporting the parts, weight transfer native ↔ escnn, plain export; and the presets built with them
(All-CNN-C, ResNet44, P4CNNRotationPooling) with their published parameter counts."""

from __future__ import annotations

import pytest
import torch
from _helpers import randomize_parameters
from click.testing import CliRunner
from conftest import assert_user_error
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.cli import main
from gcnnkit.core.equivariance import check_network
from gcnnkit.core.errors import GcnnkitError, SpecError
from gcnnkit.core.layers import EquivariantLayer
from gcnnkit.core.registry import get_backend
from gcnnkit.core.residual import PlainResidual, ResidualBlock
from gcnnkit.models.network import build_model
from gcnnkit.models.presets import CIFAR_PUBLISHED_PARAMS_M, get_preset
from gcnnkit.models.spec import parse_layers
from gcnnkit.run.check import check_equivariance
from gcnnkit.run.config import Config
from gcnnkit.tools.compare import compare_networks
from gcnnkit.tools.export import export_model, save_export


def block(out: int, stride: int = 1, shortcut: str = "identity", **extra) -> dict:
    body = [{"type": "gconv", "out": out, "stride": stride}, "batchnorm", "relu", {"type": "gconv", "out": out}]
    return {"type": "residual", "layers": [*body, "batchnorm"], "shortcut": shortcut, **extra}


#: lift, an identity block, a strided projection block (with a nested block), a projection without norm
LAYERS = [
    {"type": "lift", "out": 3},
    "batchnorm",
    "relu",
    block(3),
    {
        "type": "residual",
        "shortcut": "projection",
        "layers": [{"type": "gconv", "out": 4, "stride": 2}, "batchnorm", "relu", block(4)],
    },
    block(5, shortcut="projection", shortcut_norm=False, act="none"),
    {"type": "group_pool", "mode": "mean"},
    {"type": "global_pool"},
    {"type": "linear"},
]


def _net(
    backend: str = "native", group: str = "C4", layers=None, size: int = 9, allow_non_equivariant=False, **options
):
    net = build_model(
        backend,
        group,
        layers=layers or LAYERS,
        in_channels=2,
        image_size=size,
        num_classes=3,
        backend_options=options or None,
        allow_non_equivariant=allow_non_equivariant,
    )
    randomize_parameters(net, seed=1)
    return net.eval()


# ------------------------------------------------------------------------------ the spec
def test_a_residual_spec_is_resolved_with_its_body():
    (spec,) = parse_layers([block(4)])
    assert spec.params["shortcut"] == "identity" and spec.params["act"] == "relu" and spec.params["shortcut_norm"]
    assert spec.params["layers"][0] == {
        "type": "gconv",
        "out": 4,
        "kernel": 3,
        "stride": 1,
        "padding": "same",
        "dilation": 1,
        "bias": True,
    }
    assert spec.params["layers"][2] == {"type": "act", "fn": "relu"}
    assert parse_layers([spec.to_dict()]) == [spec]  # the resolved form parses to itself


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "residual"}, "model.layers[0]: layer 'residual' needs parameter 'layers'"),
        ({"type": "residual", "layers": []}, "model.layers[0].layers: expected a non-empty list of layers"),
        ({"type": "residual", "layers": "relu"}, "model.layers[0].layers: expected list, got 'relu'"),
        ({"type": "residual", "layers": ["conv"]}, "model.layers[0].layers[0]: unknown layer type 'conv'"),
        (block(4, shortcut="1x1"), "model.layers[0].shortcut: '1x1' is not allowed; allowed: identity, projection"),
        (block(4, act="swish"), "model.layers[0].act: 'swish' is not allowed; allowed: none, relu"),
        (block(4, stride=0), "model.layers[0].layers[0]: out, kernel, stride and dilation must be >= 1"),
    ],
)
def test_bad_residual_specs_are_refused_in_one_line(entry, message):
    with pytest.raises(SpecError) as info:
        parse_layers([entry])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"type": "lift", "out": 3}, block(5)], "the body maps group[3] to group[5] (9×9 → 9×9), stride 1"),
        ([{"type": "lift", "out": 3}, block(3, stride=2)], "the body maps group[3] to group[3] (9×9 → 5×5), stride 2"),
        ([{"type": "residual", "layers": [{"type": "lift", "out": 3}]}], "the body maps image[2] to group[3]"),
    ],
)
def test_a_shortcut_that_does_not_fit_is_refused_in_one_line(layers, message):
    with pytest.raises(SpecError) as info:
        _net(layers=[*layers, "group_pool", "global_pool", "linear"])
    text = str(info.value)
    assert text.startswith("layer ") and message in text and "set shortcut: projection" in text
    assert "\n" not in text


def test_a_projection_needs_a_body_that_keeps_the_grid():
    body = [{"type": "gconv", "out": 4, "padding": 0}]  # 9×9 → 7×7: no 1×1 projection gives that
    layers = [{"type": "lift", "out": 3}, {"type": "residual", "layers": body, "shortcut": "projection"}]
    with pytest.raises(SpecError, match=r"maps a 9×9 map to 7×7, but a 1×1 projection of stride 1 gives 9×9"):
        _net(layers=[*layers, "group_pool", "global_pool", "linear"])
    to_image = [{"type": "lift", "out": 3}, {"type": "residual", "layers": ["group_pool"], "shortcut": "projection"}]
    with pytest.raises(SpecError, match="maps an image or group feature map to a group feature map"):
        _net(layers=[*to_image, "global_pool", "linear"])


def test_a_bad_block_is_a_usage_error_in_the_cli(tiny_config):
    layers = "[{type: lift, out: 3}, {type: residual, layers: [{type: gconv, out: 5}]}, "
    layers += "group_pool, global_pool, linear]"
    result = CliRunner().invoke(main, ["check", str(tiny_config), "--set", f"model.layers={layers}"])
    assert_user_error(result, "the identity shortcut does not fit; set shortcut: projection")


# ------------------------------------------------------------------------------ equivariance
BACKENDS = ["native", pytest.param("escnn", marks=pytest.mark.escnn)]


@pytest.mark.parametrize(
    ("backend", "group"),
    [("native", "C1"), ("native", "C4"), ("native", "D4"), ("native", "C8")]
    + [pytest.param("escnn", g, marks=pytest.mark.escnn) for g in ("C4", "D4")],
)
def test_blocks_and_each_of_their_parts_are_equivariant(backend, group):
    if backend == "escnn":
        pytest.importorskip("escnn")
    net = _net(backend, group)
    exact = [g for g in range(net.group.order) if net.group.is_exact(g)]
    results = check_network(net, (2, 9, 9), batch=1, elements=exact, inner=True)
    names = [r.name for r in results]
    assert "3.residual" in names and "3.residual/body.0.gconv" in names and "3.residual/body.4.batchnorm" in names
    assert "4.residual/shortcut.conv" in names and "4.residual/shortcut.batchnorm" in names
    assert "4.residual/body.3.residual/body.0.gconv" in names  # a nested block's parts
    assert "5.residual/shortcut.conv" in names and "5.residual/shortcut.batchnorm" not in names
    worst = max(results, key=lambda r: r.max_error)
    assert worst.max_error < 1e-5, (worst.name, worst.errors)
    assert len(check_network(net, (2, 9, 9), batch=1, elements=exact[-1:])) == len(net.layers) + 1  # parts: on request


@settings(max_examples=6, deadline=None)
@given(
    group=st.sampled_from(["C4", "D4"]),
    size=st.sampled_from([5, 7, 9]),
    fields=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.sampled_from([1, 2]),
    kernel=st.sampled_from([1, 3, 5]),
    act=st.sampled_from(["none", "relu", "silu"]),
    norm=st.booleans(),
)
def test_any_fitting_block_is_equivariant_on_an_odd_map(group, size, fields, stride, kernel, act, norm):
    """Random widths, strides, kernels and activations: with the shortcut the shapes call for
    (identity when the body keeps them), the block and all its parts stay equivariant."""
    fin, fout = fields
    body = [{"type": "gconv", "out": fout, "kernel": kernel, "stride": stride}, "batchnorm", "relu"]
    body.append({"type": "gconv", "out": fout, "kernel": kernel})
    shortcut = "identity" if (fin, stride) == (fout, 1) else "projection"
    residual = {"type": "residual", "layers": body, "shortcut": shortcut, "shortcut_norm": norm, "act": act}
    net = _net(
        group=group, size=size, layers=[{"type": "lift", "out": fin}, residual, "group_pool", "global_pool", "linear"]
    )
    results = check_network(net, (2, size, size), batch=1, inner=True)
    worst = max(results, key=lambda r: r.max_error)
    assert worst.max_error < 1e-5, (worst.name, worst.errors)


def test_gcnnkit_check_reports_the_parts_of_each_block():
    layers = [{"type": "lift", "out": 3}, block(4, stride=2, shortcut="projection"), "group_pool", "global_pool"]
    config = Config.from_dict({"model": {"group": "D4", "layers": [*layers, "linear"]}, "data": {"name": "digits"}})
    report = check_equivariance(config, elements="exact", batch=1)
    names = [r.name for r in report.results]
    assert names[:8] == [
        "0.lift",
        "1.residual",
        "1.residual/body.0.gconv",
        "1.residual/body.1.batchnorm",
        "1.residual/body.2.act",
        "1.residual/body.3.gconv",
        "1.residual/body.4.batchnorm",
        "1.residual/shortcut.conv",
    ]
    assert report.passed and report.max_error < 1e-5


def test_a_strided_block_is_exactly_equivariant_on_an_odd_map_only():
    """Why the CIFAR-10 configs pad 32×32 images to 33×33: a stride-2 3×3 grid is centred on an odd map."""
    layers = [{"type": "lift", "out": 3}, block(4, stride=2, shortcut="projection"), "group_pool", "global_pool"]
    for size, equivariant in ((8, False), (9, True)):
        net = _net(layers=[*layers, "linear"], size=size, allow_non_equivariant=True)
        error = max(r.max_error for r in check_network(net, (2, size, size)))
        assert (error < 1e-5) == equivariant, (size, error)
    with pytest.raises(SpecError, match=r"^layer 1 \(residual\) body layer 0 \(gconv\).*allow_non_equivariant: true$"):
        _net(layers=[*layers, "linear"], size=8)  # refused at build time unless allowed


# ------------------------------------------------------------------------------ transfer, export
@pytest.mark.escnn
def test_compare_transfers_blocks_both_ways():
    pytest.importorskip("escnn")
    group = "D4"
    nets = {"native": _net("native", group), "escnn": _net("escnn", group, basis="complete")}
    backends = {"native": get_backend("native"), "escnn": get_backend("escnn").with_options(basis="complete")}
    report = compare_networks(nets, backends, (2, 9, 9), batch=1, repeats=1, timing_batch=1)
    assert report.passed, report.failures
    blocks = [layer for layer in report.layers if layer.name.endswith("residual")]
    assert len(blocks) == 3
    for layer in [*blocks, report.end_to_end]:
        assert max(layer.transfer.values()) < 1e-5, layer.to_dict()
        assert max(layer.residual.values()) < 1e-6, layer.to_dict()


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_export_to_plain_torch(backend):
    if backend == "escnn":
        pytest.importorskip("escnn")
    net = _net(backend, "D4")
    plain = export_model(net, image_size=9)
    assert plain.gcnnkit_export.rel_error < 1e-5
    assert sum(isinstance(m, PlainResidual) for m in plain.modules()) == 4  # nested one included
    assert not any(isinstance(m, EquivariantLayer) for m in plain.modules())


def test_blocks_save_as_torchscript_and_the_state_format_refuses_them(tmp_path):
    plain = export_model(_net(), image_size=9)
    path = tmp_path / "model.ts"
    save_export(plain, path, "torchscript", (2, 9, 9))
    x = torch.randn(2, 2, 9, 9)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(x), plain(x), atol=1e-6)
    with pytest.raises(GcnnkitError, match="PlainResidual has no architecture description; save as torchscript"):
        save_export(plain, tmp_path / "model.pt", "state", (2, 9, 9))


def test_channels_last_reaches_the_layers_inside_blocks():
    net = _net().set_channels_last(True)
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlock)]
    assert blocks and all(m.channels_last for b in blocks for m in b.modules() if isinstance(m, EquivariantLayer))
    x = torch.randn(2, 2, 9, 9)
    with torch.no_grad():
        expected = _net()(x)
        assert torch.allclose(net(x), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ presets
#: Parameter counts we build (3 input channels, 10 classes), and the published ones (Cohen & Welling
#: 2016, CIFAR-10 table, in millions rounded to 0.01M).
CIFAR_PARAMS = {
    "allcnnc-z2": 1_372_254,
    "allcnnc-p4": 1_371_006,
    "allcnnc-p4m": 1_219_678,
    "resnet44-z2": 2_639_242,
    "resnet44-p4m": 2_619_660,
}


@pytest.mark.parametrize("name", sorted(CIFAR_PARAMS))
def test_cifar_presets_have_the_published_parameter_counts(name):
    preset = get_preset(name)
    net = build_model("native", preset.group, preset=name, in_channels=3, image_size=33, num_classes=10)
    assert net.num_parameters() == CIFAR_PARAMS[name]
    assert abs(net.num_parameters() / 1e6 - CIFAR_PUBLISHED_PARAMS_M[name]) < 0.005  # the published rounding
    assert f"{CIFAR_PARAMS[name]:,} parameters here" in preset.description
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 33, 33)).shape == (1, 10)


def test_resnet44_has_44_layers_with_weights():
    for name in ("resnet44-z2", "resnet44-p4m"):
        specs = parse_layers(get_preset(name).layers(33, 3))
        blocks = [s for s in specs if s.type == "residual"]
        convs = sum(1 for b in blocks for layer in b.params["layers"] if layer["type"] == "gconv")
        assert len(blocks) == 21 and convs == 42 and specs[0].type == "lift" and specs[-1].type == "linear"
        assert [b.params["shortcut"] for b in blocks].count("projection") == 2


def test_p4cnn_rotation_pooling_pools_over_rotations_after_every_layer():
    preset = get_preset("p4cnn-rotpool")
    specs = parse_layers(preset.layers(28, 1))
    lifts = [i for i, s in enumerate(specs) if s.type == "lift"]
    assert len(lifts) == 7 and all(s.type != "gconv" for s in specs)
    assert all(specs[i + 3].type == "group_pool" for i in lifts[:-1]) and specs[lifts[-1] + 1].type == "group_pool"
    config = Config.from_dict({"model": {"group": "C4", "preset": "p4cnn-rotpool"}, "data": {"name": "rotmnist"}})
    report = check_equivariance(config, elements="exact", batch=1)
    assert report.passed and report.num_parameters == 21_750  # the Z2CNN's 20-channel layers: the same count


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CIFAR_PARAMS))
def test_cifar_presets_are_exactly_equivariant_at_33(name):
    group = get_preset(name).group
    data = {"name": "CIFAR10", "image_size": 33, "resize": "pad"}
    report = check_equivariance(Config.from_dict({"model": {"group": group, "preset": name}, "data": data}), batch=1)
    assert report.passed and report.max_error < 1e-5, report.worst.name


def test_restriction_inside_a_block_is_refused_in_one_line():
    layers = [
        {"type": "lift", "out": 2},
        {"type": "residual", "layers": [{"type": "restrict", "subgroup": "C4"}, {"type": "gconv", "out": 2}]},
        "group_pool",
        "global_pool",
        "linear",
    ]
    with pytest.raises(SpecError, match=r"^layer 1 \(residual\): a restriction inside a residual block is not allowed"):
        build_model("native", "D4", layers=layers, in_channels=1, image_size=9, num_classes=3)
