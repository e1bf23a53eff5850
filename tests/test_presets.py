"""Presets of published networks: they build on every backend and group, with the published parameter
counts, and are equivariant at the size of their data; the layer types they need (layernorm,
orbit_pool, even kernels covering the map, ``out: classes`` convolutions)."""

from __future__ import annotations

import pytest
import torch
from _helpers import randomize_parameters, registered_group

from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.registry import get_backend
from gcnnkit.models.network import build_model, build_network
from gcnnkit.models.presets import PRESETS, get_preset
from gcnnkit.models.spec import parse_layers
from gcnnkit.run.check import check_equivariance
from gcnnkit.run.config import Config

PUBLISHED = ("gcnn-uva", "cnn-uva", "gcnn-posit", "cnn-posit", "z2cnn", "p4cnn", "c4cnn-gdl", "cnn-gdl")
PUBLISHED += ("eqcnn", "simplecnn")

#: Parameter counts on the published group at the published input size (1 channel, 10 classes).
#: gcnn-uva/cnn-uva/simplecnn: as published; the others: what the published layers give (see docs/results.md).
EXPECTED_PARAMS = {
    "gcnn-uva": 102_970,
    "cnn-uva": 103_690,
    "gcnn-posit": 102_970,
    "cnn-posit": 103_690,
    "z2cnn": 21_750,
    "p4cnn": 24_680,
    "c4cnn-gdl": 1_220_010,
    "cnn-gdl": 102_698,
    "simplecnn": 13_978,
    "eqcnn": 13_842,
}


def _build(name: str, backend: str = "native", group: str | None = None, **kwargs):
    preset = get_preset(name)
    return build_model(
        backend,
        group or preset.group,
        preset=name,
        in_channels=1,
        image_size=preset.image_size,
        num_classes=10,
        **kwargs,
    )


def _forward(net, size: int, batch: int = 2) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(torch.randn(batch, 1, size, size))


def test_every_published_preset_is_registered_with_its_source():
    for name in PUBLISHED:
        preset = PRESETS[name]
        assert preset.group in ("C1", "C4") and preset.image_size in (28, 33)
        assert preset.reference and preset.description


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_builds_on_native_with_the_expected_parameter_count(name):
    net = _build(name)
    assert net.num_parameters() == EXPECTED_PARAMS[name]
    published = get_preset(name).published_params
    if published is not None:
        assert net.num_parameters() == published
    assert _forward(net, get_preset(name).image_size).shape == (2, 10)


def test_published_parameter_counts_are_the_sources_numbers():
    assert get_preset("gcnn-uva").published_params == 102_970
    assert get_preset("cnn-uva").published_params == 103_690
    assert get_preset("simplecnn").published_params == 13_978


def test_the_posit_networks_are_the_uva_networks():
    for posit, uva in (("gcnn-posit", "gcnn-uva"), ("cnn-posit", "cnn-uva")):
        assert get_preset(posit).layers(28, 1) == get_preset(uva).layers(28, 1)


@pytest.mark.parametrize(
    ("name", "group"),
    [("gcnn-uva", "D4"), ("p4cnn", "C8"), ("eqcnn", "C16"), ("c4cnn-gdl", "D16"), ("z2cnn", "D4"), ("simplecnn", "C8")],
)
def test_presets_build_beyond_their_group(name, group):
    net = _build(name, group=group)
    assert net.group.name == group
    assert _forward(net, get_preset(name).image_size).shape == (2, 10)


def test_params_width_keeps_the_budget_on_other_groups():
    base = _build("gcnn-uva").num_parameters()
    for group in ("D4", "C8", "C16"):
        assert abs(_build("gcnn-uva", group=group).num_parameters() - base) / base < 0.1


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_is_equivariant_at_its_data_size(name):
    preset = get_preset(name)
    data = {"name": "rotmnist" if preset.image_size == 33 else "MNIST", "image_size": preset.image_size}
    config = Config.from_dict({"model": {"group": preset.group, "preset": name}, "data": data})
    report = check_equivariance(config, elements="exact", batch=1)
    assert report.passed, report.to_dict()
    assert report.num_parameters == EXPECTED_PARAMS[name]


def test_p4cnn_on_d4_is_equivariant_including_the_even_top_kernel():
    config = Config.from_dict({"model": {"group": "D4", "preset": "p4cnn"}, "data": {"name": "rotmnist"}})
    report = check_equivariance(config, elements="exact", batch=1)
    assert report.passed and report.max_error < 1e-5
    top = [r for r in report.results if r.name.endswith("gconv")][-1]
    assert top.max_exact_error < 1e-5


# --------------------------------------------------------------------------- escnn backend
@pytest.fixture(scope="module")
def escnn_backend():
    pytest.importorskip("escnn")
    return "escnn"


@pytest.mark.escnn
@pytest.mark.parametrize("name", ["gcnn-uva", "cnn-uva", "simplecnn", "p4cnn", "z2cnn", "eqcnn"])
def test_preset_builds_on_escnn_with_the_native_count_on_the_complete_basis(escnn_backend, name):
    net = _build(name, escnn_backend, backend_options={"basis": "complete"})
    assert net.num_parameters() == EXPECTED_PARAMS[name]
    assert _forward(net, 28).shape == (2, 10)


@pytest.mark.escnn
def test_p4cnn_on_escnn_is_invariant_to_quarter_turns(escnn_backend):
    torch.manual_seed(0)
    net = _build("p4cnn", escnn_backend).eval()
    randomize_parameters(net)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        y = net(x)
        for k in (1, 2, 3):
            assert torch.allclose(net(torch.rot90(x, k, dims=(-2, -1))), y, atol=1e-4, rtol=1e-4)


@pytest.mark.escnn
def test_c4cnn_gdl_builds_on_escnn_c8(escnn_backend):
    net = _build("c4cnn-gdl", escnn_backend, group="C8")
    assert _forward(net, 33, batch=1).shape == (1, 10)


# ------------------------------------------------------------------------------- layers
def _net(layers, group="C4", image_size=None, num_classes=10):
    return build_network(
        parse_layers(layers), get_backend("native"), registered_group(group), 1, num_classes, "fields", image_size
    )


@pytest.mark.parametrize("group", ["C4", "D4"])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_is_equivariant_and_normalises_each_sample(group, affine):
    g = registered_group(group)
    net = _net([{"type": "lift", "out": 3}, {"type": "layernorm", "affine": affine}, "group_pool", "global_pool"])
    norm = net.layers[1]
    assert (sum(p.numel() for p in norm.parameters()) == 6) is affine  # one scale and shift per field
    if affine:
        randomize_parameters(norm)
    x = torch.randn(2, 3, g.order, 9, 9) * 5 + 2
    y = norm(x)
    if not affine:
        assert torch.allclose(y.mean(dim=(1, 2, 3, 4)), torch.zeros(2), atol=1e-5)
        assert torch.allclose(y.var(dim=(1, 2, 3, 4), unbiased=False), torch.ones(2), atol=1e-3)
    t = FieldType("group", 3)
    for e in range(g.order):
        assert torch.allclose(norm(t.act(g, e, x)), t.act(g, e, y), atol=1e-5)


def test_layernorm_on_images_and_vectors():
    net = _net([{"type": "lift", "out": 2}, "group_pool", "layernorm", "global_pool", "layernorm", "linear"])
    assert net(torch.randn(2, 1, 7, 7)).shape == (2, 10)
    with pytest.raises(SpecError, match="eps: must be a finite number > 0"):
        parse_layers([{"type": "layernorm", "eps": 0}])


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_orbit_pool_is_invariant_and_keeps_the_spatial_layout(group):
    g = registered_group(group)
    net = _net(
        [{"type": "lift", "out": 2, "kernel": 3}, {"type": "orbit_pool"}, {"type": "linear", "out": 4}],
        group=group,
        image_size=5,
        num_classes=4,
    )
    pool = net.layers[1]
    assert net.out_types[1] == FieldType("vector", 2 * 5 * 5)
    x = torch.randn(3, 2, g.order, 5, 5)
    t = FieldType("group", 2)
    for mode in ("mean", "max"):
        pool.mode = mode
        y = pool(x)
        assert y.shape == (3, 50)
        for e in range(g.order):
            assert torch.allclose(pool(t.act(g, e, x)), y, atol=1e-6)


def test_orbit_pool_on_c1_is_a_flatten_and_needs_the_image_size():
    net = _net([{"type": "lift", "out": 2}, {"type": "orbit_pool"}, "linear"], group="C1", image_size=6)
    x = torch.randn(2, 2, 1, 6, 6)
    assert torch.equal(net.layers[1](x), x.flatten(1))
    with pytest.raises(SpecError, match="orbit_pool needs the input image size"):
        _net([{"type": "lift", "out": 2}, {"type": "orbit_pool"}, "linear"], group="C1")


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_even_kernel_without_padding_is_exactly_equivariant_on_any_map(group):
    g = registered_group(group)
    net = _net([{"type": "lift", "out": 2, "kernel": 4, "padding": 0}, "group_pool", "global_pool"], group=group)
    lift = net.layers[0]
    randomize_parameters(lift)
    x = torch.randn(2, 1, 10, 10)
    y = lift(x)
    assert y.shape[-2:] == (7, 7)  # an odd output grid centred on the even input grid
    for e in range(g.order):
        expected = FieldType("group", 2).act(g, e, y)
        assert torch.allclose(lift(FieldType("image", 1).act(g, e, x)), expected, atol=1e-5)


def test_even_kernel_with_padding_or_stride_is_still_refused():
    for extra in ({"padding": 1}, {"padding": 0, "stride": 2}):
        with pytest.raises(SpecError, match="kernel 4 is even.*an even kernel with padding 0 and stride 1"):
            _net([{"type": "lift", "out": 2, "kernel": 4, **extra}, "group_pool", "global_pool"])


def test_conv_out_classes_is_one_field_per_class_in_every_width_mode():
    layers = [{"type": "lift", "out": "classes", "kernel": 3}, "group_pool", "global_pool"]
    for widths in ("fields", "params"):
        net = build_network(parse_layers(layers), get_backend("native"), registered_group("C4"), 1, 7, widths)
        assert net.out_type == FieldType("vector", 7)
    with pytest.raises(SpecError, match="out: 'logits' is not allowed"):
        parse_layers([{"type": "gconv", "out": "logits"}])
