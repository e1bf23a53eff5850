"""The escnn backend plugin (gcnnkit-escnn): group mapping, layers cross-validated against the native
backend, the complete basis and its noise filter, robustness (pickle, deepcopy, state dicts,
checkpoints, autocast), C8, errors, and a short training run."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from functools import cache

import pytest
import torch

pytest.importorskip("escnn")

from gcnnkit.core.equivariance import check_network, equivariance_errors, relative_error  # noqa: E402
from gcnnkit.core.errors import SpecError, UnsupportedGroupError  # noqa: E402
from gcnnkit.core.fields import FieldType  # noqa: E402
from gcnnkit.core.group import GROUP_API_VERSION, Group, cyclic_group, dihedral_group  # noqa: E402
from gcnnkit.core.registry import get_backend, get_group  # noqa: E402
from gcnnkit.models.network import build_model, build_network  # noqa: E402
from gcnnkit.models.spec import parse_layers  # noqa: E402

pytestmark = pytest.mark.escnn

TOL = 1e-5
#: escnn's default basis, elements per field pair (measured): {(group, kind): {k: dim}}
ESCNN_DIMS = {
    ("C4", "lift"): {3: 6, 5: 11, 7: 18},
    ("C4", "gconv"): {3: 24, 5: 44, 7: 72},
    ("D4", "lift"): {3: 6, 5: 11, 7: 18},
    ("D4", "gconv"): {3: 48, 5: 88, 7: 144},
}


def escnn_backend(basis: str = "escnn"):
    return get_backend("escnn").with_options(basis=basis)


def native_dim(group: Group, kind: str, k: int) -> int:
    """Dimension of the native tied filter space per field pair."""
    return k * k if kind == "lift" else group.order * k * k


@cache
def conv_pair(group_name: str, kind: str, k: int, basis: str, fields: tuple[int, int] = (2, 3)):
    """(escnn layer, native layer, in_type, out_type) — built once per session; tests load weights."""
    group = get_group(group_name)
    in_type = FieldType("image" if kind == "lift" else "group", fields[0])
    torch.manual_seed(0)
    native, esc = get_backend("native"), escnn_backend(basis)
    make = "lifting_conv" if kind == "lift" else "group_conv"
    layer_e = getattr(esc, make)(group, in_type, fields[1], k, padding=k // 2).eval()
    layer_n = getattr(native, make)(group, in_type, fields[1], k, padding=k // 2).eval()
    return layer_e, layer_n, in_type, FieldType("group", fields[1])


# ----------------------------------------------------------------------------- groups
@pytest.mark.parametrize("name", ["C1", "C2", "C4", "D1", "D2", "D4"])
def test_escnn_action_equals_gcnnkit_action_after_the_channel_permutation(name):
    from gcnnkit_escnn._compat import enn
    from gcnnkit_escnn.spaces import escnn_group

    group = get_group(name)
    eg = escnn_group(group)
    ftype = enn.FieldType(eg.gspace, [eg.regular_repr] * 2)
    x = torch.randn(2, 2, group.order, 7, 7)
    index = eg.channel_index(2)

    def to_escnn(t):  # gcnnkit [B, C, |G|, H, W] -> escnn [B, C·|G|, H, W] in escnn's channel order
        flat = t.flatten(1, 2)
        return flat if index is None else flat[:, torch.argsort(index)]

    for g in range(group.order):
        ours = to_escnn(FieldType("group", 2).act(group, g, x))
        theirs = ftype(to_escnn(x)).transform(eg.elements[g]).tensor
        assert torch.equal(ours, theirs), (name, group.element_names[g])


def test_flip_axis_is_gcnnkits_mirror_and_dn_needs_no_permutation():
    from gcnnkit_escnn.spaces import escnn_group

    for n in (1, 2, 4, 8):
        eg = escnn_group(dihedral_group(n))
        assert eg.perm is None
        f = eg.elements[n]  # gcnnkit's f = r^0 f at index N
        assert torch.allclose(
            torch.tensor(eg.gspace.basespace_action(f), dtype=torch.float64),
            torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
        )
    assert escnn_group(cyclic_group(8)).perm is None


def _reordered_d4() -> Group:
    """D4 with its elements listed in another order and f = the horizontal mirror (y ↦ −y)."""
    d4 = dihedral_group(4)
    order = [0, 3, 1, 2, 6, 4, 7, 5]  # e, r3, r1, r2, r2f (= horizontal mirror), f, r3f, r1f
    return Group(
        "D4shuffled",
        [d4.element_names[i] for i in order],
        d4.matrices[order],
        api_version=GROUP_API_VERSION,
        escnn=d4.escnn,
    )


def test_a_group_in_another_order_gets_a_permutation_and_stays_exact():
    from gcnnkit_escnn.spaces import escnn_group

    group = _reordered_d4()
    eg = escnn_group(group)
    assert eg.perm is not None and sorted(eg.perm.tolist()) == list(range(8))
    esc, native = escnn_backend("complete"), get_backend("native")
    torch.manual_seed(0)
    for make, in_type in (("lifting_conv", FieldType("image", 1)), ("group_conv", FieldType("group", 2))):
        layer_e = getattr(esc, make)(group, in_type, 2, 3, padding=1).eval()
        layer_n = getattr(native, make)(group, in_type, 2, 3, padding=1).eval()
        x = torch.randn(in_type.shape(group, 2, 9, 9))
        assert equivariance_errors(layer_e, group, in_type, FieldType("group", 2), x).max_error <= TOL
        layer_n.load_state_dict(esc.export_weights(layer_e))
        with torch.no_grad():
            assert relative_error(layer_n(x), layer_e(x)) <= TOL
    pool = esc.group_pool(group, FieldType("group", 2))
    x = torch.randn(2, 2, 8, 5, 5)
    assert torch.equal(pool(x), x.amax(dim=2))


@pytest.mark.parametrize("name", ["C4", "D4", "C8", "D4shuffled"])
@pytest.mark.parametrize("basis", ["escnn", "complete"])
def test_layers_are_exactly_equivariant_in_float64(name, basis):
    """escnn samples its basis in float32, which left float64 layers equivariant to ~1e-7 only;
    the backend rebuilds every output channel from its coset's first one by exact permutations."""
    from gcnnkit_escnn._compat import enn
    from gcnnkit_escnn.layers import _block
    from gcnnkit_escnn.spaces import escnn_group

    group = _reordered_d4() if name == "D4shuffled" else get_group(name)
    exact = [g for g in range(group.order) if group.is_exact(g)]
    eg = escnn_group(group)
    for make, in_type in (("lifting_conv", FieldType("image", 2)), ("group_conv", FieldType("group", 2))):
        layer = getattr(escnn_backend(basis), make)(group, in_type, 2, 5, padding=2)
        # the basis moved by float32 round-off only (escnn's own R2Conv shares its unchanged sample)
        if basis == "escnn":
            reference = enn.R2Conv(eg.field_type(in_type.kind, 2), eg.field_type("group", 2), 5, padding=2)
            moved = (_block(layer.conv).sampled_basis - _block(reference).sampled_basis).abs().max()
            assert 0 < moved < 1e-6
        with torch.no_grad():
            layer.conv.weights.normal_()
        layer.double().eval()
        x = torch.randn(in_type.shape(group, 2, 9, 9), dtype=torch.float64)
        assert equivariance_errors(layer, group, in_type, FieldType("group", 2), x, exact).max_error < 1e-13


def test_unsupported_groups_fail_with_one_line():
    esc = escnn_backend()
    no_escnn = Group("Z", ["e", "r1"], cyclic_group(2).matrices, api_version=GROUP_API_VERSION)
    wrong_n = Group(
        "W",
        cyclic_group(4).element_names,
        cyclic_group(4).matrices,
        api_version=GROUP_API_VERSION,
        escnn={"gspace": "rot2dOnR2", "N": 8},
    )
    bad_space = Group(
        "S", ["e"], cyclic_group(1).matrices, api_version=GROUP_API_VERSION, escnn={"gspace": "rot3dOnR3"}
    )
    hexagon = dihedral_group(6)
    mislabelled = Group(
        "H",
        hexagon.element_names,
        hexagon.matrices,
        api_version=GROUP_API_VERSION,
        escnn={"gspace": "flipRot2dOnR2", "N": 6, "axis": 0.3},
    )
    for group, words in (
        (no_escnn, "no escnn equivalent"),
        (wrong_n, "8 elements"),
        (bad_space, "rot3dOnR3"),
        (mislabelled, "acts like no element"),
    ):
        reason = esc.supports(group)
        assert reason is not None and words in reason and "\n" not in reason, reason
        with pytest.raises(UnsupportedGroupError, match=f"backend 'escnn' does not support group {group.name}") as info:
            build_network(parse_layers([{"type": "lift", "out": 2}, "group_pool", "global_pool"]), esc, group, 1, 10)
        assert "\n" not in str(info.value)
    assert esc.supports(get_group("D4")) is None and esc.supports(get_group("C1")) is None


def test_options_are_checked():
    assert escnn_backend().basis == "escnn" and escnn_backend("complete").basis == "complete"
    for options, words in (
        ({"basis": "full"}, "basis: 'full' is not allowed; allowed: escnn, complete"),
        ({"bases": "complete"}, "has no option 'bases'; allowed: basis"),
        ({"basis": 3}, "basis: 3 is not allowed"),
    ):
        with pytest.raises(SpecError, match="model.backend_options") as info:
            get_backend("escnn").with_options(**options)
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match="no option 'basis'"):
        build_model(
            "native",
            "C4",
            preset="gcnn-tiny",
            in_channels=1,
            image_size=9,
            num_classes=2,
            backend_options={"basis": "complete"},
        )


# ----------------------------------------------------------------------------- convolutions
CONV_CASES = [(g, kind, k) for g in ("C4", "D4") for kind in ("lift", "gconv") for k in (3, 5, 7)]


@pytest.mark.parametrize("basis", ["escnn", "complete"])
@pytest.mark.parametrize("group_name,kind,k", CONV_CASES)
def test_convolutions_cross_validate(group_name, kind, k, basis):
    layer_e, layer_n, in_type, out_type = conv_pair(group_name, kind, k, basis)
    group, esc = layer_e.group, escnn_backend(basis)
    torch.manual_seed(k)
    x = torch.randn(in_type.shape(group, 2, 11, 11))
    with torch.no_grad():
        layer_e.conv.bias.normal_()
    # equivariant at every element
    assert equivariance_errors(layer_e, group, in_type, out_type, x).max_error <= TOL
    # escnn -> native: exact
    layer_n.load_state_dict(esc.export_weights(layer_e))
    with torch.no_grad():
        assert relative_error(layer_n(x), layer_e(x)) <= TOL
        assert relative_error(layer_n.filter_bank(), layer_e.filter_bank()) <= TOL
        layer_n.weight.normal_()
        layer_n.bias.normal_()
    # native -> escnn: exact with the complete basis, a projection with escnn's
    residual = esc.import_weights(layer_e, layer_n.state_dict())
    with torch.no_grad():
        error = relative_error(layer_e(x), layer_n(x))
    dims = (layer_e.basis_dimension, native_dim(group, kind, k))
    if basis == "complete":
        assert residual <= 1e-6 and error <= TOL, (residual, error)
        assert dims[0] == dims[1]
    else:
        assert residual > 0.1 and error > 1e-2, (residual, error)
        assert dims[0] == ESCNN_DIMS[(group_name, kind)][k]


@pytest.mark.parametrize("basis", ["escnn", "complete"])
@pytest.mark.parametrize("group_name", ["C1", "C2", "D1", "D2", "C4", "D4"])
def test_every_native_group_with_stride_and_dilation(group_name, basis):
    group, esc, native = get_group(group_name), escnn_backend(basis), get_backend("native")
    in_type, out_type = FieldType("group", 2), FieldType("group", 2)
    torch.manual_seed(0)
    layer_e = esc.group_conv(group, in_type, 2, 3, stride=2, padding=2, dilation=2).eval()
    layer_n = native.group_conv(group, in_type, 2, 3, stride=2, padding=2, dilation=2).eval()
    x = torch.randn(in_type.shape(group, 2, 13, 13))
    assert equivariance_errors(layer_e, group, in_type, out_type, x).max_error <= TOL
    layer_n.load_state_dict(esc.export_weights(layer_e))
    with torch.no_grad():
        assert relative_error(layer_n(x), layer_e(x)) <= TOL
    if basis == "complete":
        assert layer_e.basis_dimension == native_dim(group, "gconv", 3)
        with torch.no_grad():
            layer_n.weight.normal_()
        assert esc.import_weights(layer_e, layer_n.state_dict()) <= 1e-6
        with torch.no_grad():
            assert relative_error(layer_e(x), layer_n(x)) <= TOL


@pytest.mark.parametrize("group_name,kind,k", CONV_CASES)
def test_complete_basis_has_full_rank(group_name, kind, k):
    from gcnnkit_escnn.layers import _block

    layer_e = conv_pair(group_name, kind, k, "complete")[0]
    basis = _block(layer_e.conv).sampled_basis
    rank = torch.linalg.matrix_rank(basis.reshape(basis.shape[0], -1).double(), rtol=1e-5)
    assert rank == basis.shape[0] == native_dim(layer_e.group, kind, k)


def test_weight_layout_of_escnn_coefficients_is_pairs_by_basis():
    """The transfer assumes escnn's weights are [C_out, C_in, dim] and the basis [dim, out, in, k²]."""
    from gcnnkit_escnn.layers import _block

    layer_e = conv_pair("D4", "gconv", 3, "escnn")[0]
    basis = _block(layer_e.conv).sampled_basis
    w = layer_e.conv.weights.detach().reshape(layer_e.out_fields, layer_e.in_channels, -1)
    expected = torch.einsum("ocb,bpqs->opcqs", w, basis).reshape(*layer_e.conv.expand_parameters()[0].shape)
    assert relative_error(layer_e.conv.expand_parameters()[0].detach(), expected) <= TOL


def test_noise_filter_keeps_a_large_cutoff_equivariant():
    """A frequency cut-off of 8 on a 3×3 kernel adds elements that sample to float noise; escnn would
    normalise them to unit norm (≈47 % error at 90°). The filter drops them and the rank is full."""
    from gcnnkit_escnn.basis import complete_basis
    from gcnnkit_escnn.layers import _R2Conv
    from gcnnkit_escnn.spaces import escnn_group

    group = get_group("C4")
    eg = escnn_group(group)
    in_type, out_type = eg.field_type("group", 1), eg.field_type("group", 1)

    class Wrapped(torch.nn.Module):
        def __init__(self, choice):
            super().__init__()
            self.conv = _R2Conv(in_type, out_type, 3, padding=1, recompute=True, **choice.conv_kwargs())

        def forward(self, x):
            return self.conv(in_type(x.flatten(1, 2))).tensor.unflatten(1, (1, 4))

    x = torch.randn(2, 1, 4, 11, 11)
    t = FieldType("group", 1)
    unfiltered = complete_basis(eg.gspace, eg.regular_repr, eg.regular_repr, 3, max_frequency=8, noise_filter=False)
    filtered = complete_basis(eg.gspace, eg.regular_repr, eg.regular_repr, 3, max_frequency=8)
    assert unfiltered.noise > 0 and filtered.noise == unfiltered.noise and filtered.dimension == 36
    torch.manual_seed(0)
    noisy, clean = Wrapped(unfiltered), Wrapped(filtered)
    assert equivariance_errors(noisy, group, t, t, x).max_error > 1e-2
    assert equivariance_errors(clean, group, t, t, x).max_error <= TOL
    basis = clean.conv.basisexpansion
    assert basis.dimension() == 36


# ----------------------------------------------------------------------------- other layers
@pytest.mark.parametrize("group_name", ["C4", "D4"])
def test_other_layers_cross_validate(group_name):
    from gcnnkit_escnn._compat import enn

    from gcnnkit.tools.compare import randomise_statistics

    group = get_group(group_name)
    esc, native = escnn_backend(), get_backend("native")
    cases = []  # (name, in_type, out_type, factory, image size)
    for kind in ("image", "group"):
        t = FieldType(kind, 3)
        cases.append(("batchnorm", t, t, lambda b, t=t: b.batch_norm(group, t), 9))
        for fn in ("relu", "elu", "leaky_relu", "tanh", "sigmoid", "silu", "gelu"):
            cases.append((fn, t, t, lambda b, t=t, fn=fn: b.activation(group, t, fn), 9))
        # windows placed symmetrically on the grid: 2/2/0 on even sizes, 3/2/1 on odd ones
        for mode, k, s, p, size in (("max", 2, 2, 0, 8), ("max", 3, 2, 1, 9), ("avg", 2, 2, 0, 8), ("avg", 3, 2, 1, 9)):
            make = lambda b, t=t, m=mode, k=k, s=s, p=p: b.spatial_pool(group, t, m, k, s, p)  # noqa: E731
            cases.append((f"pool {mode} {k}/{s}/{p}", t, t, make, size))
        cases.append(("dropout", t, t, lambda b, t=t: b.dropout(group, t, 0.3), 9))
    for mode in ("max", "mean"):
        t = FieldType("group", 3)
        cases.append(
            (f"group_pool {mode}", t, FieldType("image", 3), lambda b, t=t, m=mode: b.group_pool(group, t, m), 9)
        )
    for name, t_in, t_out, make, size in cases:
        layer_e, layer_n = make(esc).eval(), make(native).eval()
        randomise_statistics(layer_e, 0)
        layer_n.load_state_dict(esc.export_weights(layer_e))
        x = torch.randn(t_in.shape(group, 4, size, size))
        with torch.no_grad():
            assert relative_error(layer_e(x), layer_n(x)) <= TOL, name
        assert equivariance_errors(layer_e, group, t_in, t_out, x).max_error <= TOL, name
        if name == "batchnorm":  # batch statistics, and the running ones they update
            layer_e.train(), layer_n.train()
            with torch.no_grad():
                assert relative_error(layer_e(x), layer_n(x)) <= TOL
            assert relative_error(layer_e.batch_norm.running_var, layer_n.running_var) <= TOL
            layer_e.eval()
            with torch.no_grad():  # the shortcut equals escnn's own InnerBatchNorm.forward
                ref = layer_e.bn(enn.GeometricTensor(x.flatten(1, 2) if x.ndim == 5 else x, layer_e.bn.in_type))
                assert torch.equal(ref.tensor.view(x.shape), layer_e(x))


#: Largest relative equivariance error at exact elements per dtype, for (convolutions, other layers).
#: escnn samples its filter bases in float32; the convolutions symmetrise the sampled basis under the
#: exact elements, so they too are exact up to float64 rounding.
TOLERANCE = {torch.float32: (TOL, TOL), torch.float64: (1e-12, 1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("group_name", ["C4", "D4", "C8"])
def test_every_layer_is_equivariant_to_the_precision_of_its_dtype(group_name, dtype):
    group, esc = get_group(group_name), escnn_backend()
    exact = [g for g in range(group.order) if group.is_exact(g)]
    img, gmap = FieldType("image", 2), FieldType("group", 3)
    torch.manual_seed(0)
    convs = [
        (esc.lifting_conv(group, img, 3, 5, stride=2, padding=2), img, gmap, False),
        (esc.group_conv(group, gmap, 3, 3, padding=1), gmap, gmap, False),
    ]
    others = [  # (layer, in type, out type, train mode); size 9 places the stride-2 windows symmetrically
        (esc.batch_norm(group, gmap), gmap, gmap, True),
        (esc.batch_norm(group, img), img, img, False),
        (esc.activation(group, gmap, "gelu"), gmap, gmap, False),
        (esc.activation(group, img, "relu"), img, img, False),
        (esc.spatial_pool(group, gmap, "max", 3, 2, 1), gmap, gmap, False),
        (esc.group_pool(group, gmap, "max"), gmap, FieldType("image", 3), False),
    ]
    from gcnnkit.tools.compare import randomise_statistics

    gen = torch.Generator().manual_seed(0)
    for tolerance, cases in zip(TOLERANCE[dtype], (convs, others), strict=True):
        for layer, t_in, t_out, train in cases:
            randomise_statistics(layer, 0)
            layer.to(dtype).train(train)
            x = torch.randn(t_in.shape(group, 2, 9, 9), generator=gen).to(dtype)
            error = equivariance_errors(layer, group, t_in, t_out, x, exact).max_error
            assert error <= tolerance, (type(layer).__name__, train, error)


def test_layers_are_escnn_modules():
    from gcnnkit_escnn._compat import enn

    net = build_model("escnn", "C4", preset="gcnn-tiny", in_channels=1, image_size=9, num_classes=3)
    kinds = {type(m).__name__ for m in net.modules() if isinstance(m, enn.EquivariantModule)}
    assert {"_R2Conv", "InnerBatchNorm", "ReLU", "PointwiseMaxPool2D"} <= kinds


# ----------------------------------------------------------------------------- robustness
@pytest.fixture(scope="module")
def d4_net():
    torch.manual_seed(0)
    layers = [
        {"type": "lift", "out": 3, "kernel": 5},
        "batchnorm",
        "relu",
        {"type": "gconv", "out": 4},
        "batchnorm",
        "relu",
        {"type": "pool", "kernel": 2},
        {"type": "group_pool"},
        "global_pool",
        {"type": "dropout", "p": 0.1},
        {"type": "linear", "out": "classes"},
    ]
    return build_model(
        "escnn", "D4", layers=layers, in_channels=1, image_size=12, num_classes=5, backend_options={"basis": "complete"}
    )


def _keys(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_state_dict_is_the_same_in_train_and_eval_mode(d4_net):
    net = copy.deepcopy(d4_net)
    train_keys = _keys(net.train())
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        net.eval()(x)
    assert _keys(net) == train_keys
    net.train()(x)
    assert _keys(net) == train_keys
    assert not any(k.endswith((".filter", ".expanded_bias")) for k in train_keys)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pickle_and_deepcopy_round_trip(d4_net, mode):
    net = copy.deepcopy(d4_net).train(mode == "train")
    x = torch.randn(3, 1, 12, 12)
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert clone.training == net.training
        assert all(a.training == b.training for a, b in zip(clone.modules(), net.modules(), strict=True))
        assert _keys(clone) == _keys(net)
        for (k, a), b in zip(clone.state_dict().items(), net.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
        clone.eval(), net.eval()
        with torch.no_grad():
            assert torch.equal(clone(x), net(x))
        # independent copies: changing one does not change the other
        with torch.no_grad():
            clone.layers[0].conv.weights.add_(1.0)
            assert not torch.equal(clone(x), net(x))
        net.train(mode == "train")


def test_checkpoint_loads_with_weights_only(d4_net, tmp_path):
    net = copy.deepcopy(d4_net).eval()
    path = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    torch.manual_seed(1)
    fresh = copy.deepcopy(d4_net)
    with torch.no_grad():
        for p in fresh.parameters():
            p.normal_()
    fresh.load_state_dict(state["model"])
    fresh.eval()
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


def test_eval_cache_is_reused_and_invalidated(d4_net):
    net = copy.deepcopy(d4_net).eval()
    conv = net.layers[3]
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        y0 = net(x)
        bank = conv.filter_bank()
        assert conv.filter_bank() is bank  # cached
        conv.conv.weights.mul_(2.0)  # an in-place change (optimizer step, load_state_dict)
        assert conv.filter_bank() is not bank
        assert relative_error(conv.filter_bank(), 2 * bank) <= TOL
        assert not torch.equal(net(x), y0)
    net.train()
    assert conv._expanded()[0].requires_grad and conv._cache is None


def test_autocast_bf16_on_cpu(d4_net):
    net = copy.deepcopy(d4_net).train()
    x = torch.randn(4, 1, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        loss = out.float().logsumexp(dim=1).mean()
    loss.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x)
    with torch.no_grad():
        assert relative_error(low.float(), net(x)) < 0.05


def test_gcnn_small_networks_match_native_parameter_count_with_the_complete_basis():
    for group in ("C4", "D4"):
        counts = {
            backend: build_model(
                backend, group, preset="gcnn-small", in_channels=1, image_size=17, num_classes=10, backend_options=opts
            ).num_parameters()
            for backend, opts in (("native", {}), ("escnn", {"basis": "complete"}))
        }
        assert counts["native"] == counts["escnn"], counts


# ----------------------------------------------------------------------------- C8
def test_c8_builds_and_is_exact_at_multiples_of_90_degrees():
    group = cyclic_group(8)
    torch.manual_seed(0)
    layers = [
        {"type": "lift", "out": 3, "kernel": 5},
        "batchnorm",
        "relu",
        {"type": "gconv", "out": 3},
        {"type": "group_pool"},
        "global_pool",
        {"type": "linear", "out": "classes"},
    ]
    net = build_network(parse_layers(layers), escnn_backend(), group, 1, 4)
    exact = [g for g in range(8) if group.is_exact(g)]
    assert [group.element_names[g] for g in exact] == ["e", "r2", "r4", "r6"]
    results = check_network(net, (1, 15, 15), batch=2, elements=exact)
    assert max(r.max_error for r in results) <= TOL
    # 45°: only approximately equivariant (interpolation), measured on smooth images as `gcnnkit check` does
    smooth = check_network(net, (1, 15, 15), batch=2, elements=[1, 3, 5, 7], smooth=True)
    assert 1e-4 < smooth[-1].max_error < 0.5, [r.max_error for r in smooth]


# ----------------------------------------------------------------------------- installation
def test_missing_escnn_is_a_one_line_import_error_and_other_plugins_keep_working():
    code = (
        "import sys; sys.modules['escnn'] = None\n"
        "try:\n"
        "    import gcnnkit_escnn\n"
        "except ImportError as exc:\n"
        "    print('IMPORT:' + str(exc))\n"
        "from gcnnkit.core.registry import plugin_report, get_backend\n"
        "print('NATIVE:' + get_backend('native').name)\n"
        "print('REPORT:' + [i.error for i in plugin_report() if i.name == 'escnn'][0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    assert lines["IMPORT"] == (
        "the escnn backend needs escnn, which is not installed; install it with: pip install --no-deps escnn==1.0.11"
    )
    assert lines["NATIVE"] == "native"
    assert "pip install --no-deps escnn==1.0.11" in lines["REPORT"]


def test_a_leftover_escnn_folder_is_reported_as_escnn_missing(tmp_path):
    """``pip uninstall escnn`` leaves ``escnn/group/_cache`` (written by escnn, unknown to pip): a folder
    without ``__init__.py``, which Python imports as a namespace package. The plugin must then ask
    for escnn itself, not for escnn's dependencies."""
    leftover = tmp_path / "site"
    (leftover / "escnn" / "group" / "_cache").mkdir(parents=True)
    (leftover / "escnn" / "group" / "_cache" / "cg.pkl").write_bytes(b"")
    code = (
        "import importlib.machinery, sys\n"
        "class Leftover:  # escnn resolves to the leftover folder only\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == 'escnn': return importlib.machinery.PathFinder.find_spec(name, [{str(leftover)!r}])\n"
        "sys.meta_path.insert(0, Leftover())\n"
        "try:\n"
        "    import gcnnkit_escnn\n"
        "except ImportError as exc:\n"
        "    print('IMPORT:' + str(exc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    message = out.stdout.split("IMPORT:", 1)[1].strip()
    assert message.startswith("the escnn backend needs escnn, which is not installed (only the folder ")
    assert str(leftover / "escnn") in message
    assert message.endswith("install it with: pip install --no-deps escnn==1.0.11")
    assert "dependencies" not in message and "\n" not in message


def test_pyproject_does_not_depend_on_escnn():
    from pathlib import Path

    import tomllib

    meta = tomllib.loads((Path(__file__).parents[1] / "plugins/gcnnkit-escnn/pyproject.toml").read_text())
    deps = [d.split("<")[0].split(">")[0].split("=")[0].strip().lower() for d in meta["project"]["dependencies"]]
    assert "escnn" not in deps and "py3nj" not in deps
    assert {"lie_learn", "pymanopt", "autograd", "joblib", "numpy", "scipy", "gcnnkit"} <= set(deps)
    assert meta["project"]["entry-points"]["gcnnkit.backends"] == {"escnn": "gcnnkit_escnn.backend:EscnnBackend"}


# ----------------------------------------------------------------------------- training
def test_short_training_run_on_escnn(tmp_path):
    """``gcnnkit train`` on the escnn backend, then ``--resume`` (loads the checkpoint, weights_only)."""
    import json

    import yaml
    from click.testing import CliRunner

    from gcnnkit.cli import main
    from gcnnkit.run import rundir
    from gcnnkit.run.config import load_config

    config = tmp_path / "tiny_escnn.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "device": "cpu",
                "model": {
                    "backend": "escnn",
                    "group": "C4",
                    "preset": "gcnn-tiny",
                    "backend_options": {"basis": "complete"},
                },
                "data": {"name": "digits", "train_size": 96, "test_size": 48, "image_size": 13},
                "train": {"epochs": 1, "batch_size": 32, "lr": 0.01},
                "eval": {"protocols": ["upright", "rot90"], "batch_size": 48},
            }
        )
    )
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / rundir.SUMMARY_FILE).read_text())
    assert summary["backend"] == "escnn" and summary["epochs"] == 1
    assert summary["accuracy"]["rot90"] == summary["accuracy"]["upright"]  # invariant to rot90 by construction
    state = rundir.load_checkpoint(run / rundir.CHECKPOINT_FILE)  # torch.load(weights_only=True)
    model = rundir.build_model_from_config(load_config(config))
    model.load_state_dict(state["model"])
    result = CliRunner().invoke(main, ["train", str(config), "--out", str(run), "--resume", "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / rundir.SUMMARY_FILE).read_text())["epochs"] == 2


@pytest.mark.parametrize(
    "group_name,preset,options",
    [
        ("C4", "gcnn-uva", None),
        ("D4", "c4cnn-gdl", {"basis": "complete"}),
        ("D4", "p4cnn", None),
        ("C1", "cnn-uva", None),
    ],
)
def test_fast_he_init_equals_escnns_and_draws_the_same_weights(group_name, preset, options):
    """gcnnkit_escnn.init computes escnn's generalised He init per block; the numbers are escnn's."""
    from gcnnkit_escnn._compat import enn
    from gcnnkit_escnn.init import generalized_he_init, he_init_std

    net = build_model(
        "escnn", group_name, in_channels=1, image_size=33, num_classes=10, preset=preset, backend_options=options
    )
    convs = [m for m in net.modules() if isinstance(m, enn.R2Conv)]
    assert convs
    for conv in convs:
        basis = conv.basisexpansion
        assert torch.equal(he_init_std(basis), enn.init._generalized_he_init_variances(basis))
        ours, theirs = torch.empty(basis.dimension()), torch.empty(basis.dimension())
        torch.manual_seed(3)
        generalized_he_init(ours, basis)
        torch.manual_seed(3)
        enn.init.generalized_he_init(theirs, basis)
        assert torch.equal(ours, theirs)


def test_fast_he_init_falls_back_to_escnn_for_other_basis_managers(monkeypatch):
    from gcnnkit_escnn import init as fast

    class Other:
        def dimension(self):
            return 3

    calls = []
    monkeypatch.setattr(fast.escnn_init, "_generalized_he_init_variances", lambda b: calls.append(b) or torch.ones(3))
    assert torch.equal(fast.he_init_std(Other()), torch.ones(3))
    assert len(calls) == 1


@pytest.mark.parametrize("group_name", ["C4", "D4", "C8"])
def test_builds_and_runs_under_float64_default_dtype(group_name):
    """escnn assumes float32 while it builds its bases; the backend builds in float32 and casts, so a
    model made under ``torch.set_default_dtype(torch.float64)`` is float64 and trains and checks there."""
    from gcnnkit.models.network import build_model

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        net = build_model("escnn", group_name, preset="gcnn-tiny", in_channels=1, image_size=17, num_classes=10)
        assert torch.get_default_dtype() == torch.float64  # restored after each layer is built
        assert {p.dtype for p in net.parameters()} == {torch.float64}
        net.train()(torch.randn(4, 1, 17, 17)).square().sum().backward()
        exact = [g for g in range(net.group.order) if net.group.is_exact(g)]
        results = check_network(net, (1, 17, 17), elements=exact)
        assert results[-1].max_error < 1e-12  # float64 round-off, not float32's 1e-7
    finally:
        torch.set_default_dtype(before)
