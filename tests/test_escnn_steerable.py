"""The escnn backend's steerable layers (gcnnkit_escnn.steerable) between any field types, checked
against escnn's own action (``GeometricTensor.transform``) at every element of C4 and D4; the escnn
mapping of representations; the per-field parameter order; SO(2)/O(2) gspaces."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("escnn")

from gcnnkit_escnn._compat import enn  # noqa: E402
from gcnnkit_escnn.representations import RepresentationError, escnn_field_type  # noqa: E402
from gcnnkit_escnn.spaces import escnn_group  # noqa: E402
from gcnnkit_escnn.steerable import (  # noqa: E402
    EscnnFieldBatchNorm,
    EscnnFieldConv,
    EscnnGated,
    EscnnInvariantPool,
    EscnnNormAct,
    EscnnRestriction,
)

from gcnnkit.core.registry import get_group  # noqa: E402

pytestmark = pytest.mark.escnn

TOL = 1e-5
T = ("trivial", ())
REG = ("regular", ())
D4_MIX = (REG, ("quotient", ((None, 2),)), ("irrep", (1, 1)), ("irrep", (1, 0)), T)
C4_MIX = (REG, ("quotient", (2,)), ("irrep", (1,)), ("irrep", (2,)), T)


def escnn_error(layer, in_reps, out_reps, x) -> float:
    """max over the group's elements of |f(g·x) − g·f(x)| / max|f(x)|, g acting as escnn acts."""
    eg = escnn_group(layer.group)
    in_type, out_type = escnn_field_type(eg.gspace, in_reps), escnn_field_type(eg.gspace, out_reps)
    with torch.no_grad():
        y = layer(x)
        worst = 0.0
        for element in eg.elements:
            xg = enn.GeometricTensor(x, in_type).transform(element).tensor
            yg = enn.GeometricTensor(y.flatten(1, 2) if y.ndim == 5 else y, out_type).transform(element).tensor
            out = layer(xg)
            worst = max(worst, float((out.flatten(1, 2) if out.ndim == 5 else out).sub(yg).abs().max() / y.abs().max()))
    return worst


@pytest.mark.parametrize("basis", ["escnn", "complete"])
@pytest.mark.parametrize(("group_name", "mix"), [("C4", C4_MIX), ("D4", D4_MIX)])
def test_conv_between_any_field_types_is_equivariant(group_name, mix, basis):
    group = get_group(group_name)
    torch.manual_seed(0)
    lift = EscnnFieldConv(group, (T,), mix, 5, padding=2, basis=basis).eval()
    x = torch.randn(2, 1, 9, 9)
    assert escnn_error(lift, (T,), mix, x) < TOL
    conv = EscnnFieldConv(group, mix, mix, 3, padding=1, basis=basis).eval()
    assert escnn_error(conv, mix, mix, lift(x)) < TOL


def test_complete_basis_has_the_character_formula_dimension():
    """Per pair of fields, the complete basis spans 1/|G| Σ_g χ_out(g) χ_in(g) χ_pix(g) kernels (the native
    space); the whole layer's coefficient count is the sum over pairs."""
    group = get_group("D4")
    eg = escnn_group(group)
    k = 3
    grid = torch.arange(k * k, dtype=torch.float64).reshape(k, k)
    from gcnnkit.core.transforms import transform_image

    chi_pix = torch.tensor([float((transform_image(grid, group, g) == grid).sum()) for g in range(group.order)])

    def chi(rep):
        from gcnnkit_escnn.representations import escnn_representation

        r = escnn_representation(eg.gspace, rep)
        return torch.tensor([float(torch.tensor(r(e)).trace()) for e in eg.elements], dtype=torch.float64)

    expected = 0
    for a in D4_MIX:
        for b in D4_MIX:
            expected += round(float((chi(a) * chi(b) * chi_pix).sum()) / group.order)
    conv = EscnnFieldConv(group, D4_MIX, D4_MIX, k, padding=1, basis="complete")
    assert conv.basis_dimension == expected


def test_norm_gated_batchnorm_pool_are_equivariant():
    group = get_group("D4")
    torch.manual_seed(1)
    x = EscnnFieldConv(group, (T,), D4_MIX, 5, padding=2).eval()(torch.randn(3, 1, 9, 9))
    norm = EscnnNormAct(group, D4_MIX).eval()
    assert escnn_error(norm, D4_MIX, D4_MIX, x) < TOL
    gated_in = (T, T, ("irrep", (1, 1)), REG)
    g_in = EscnnFieldConv(group, D4_MIX, gated_in, 3, padding=1).eval()(x)
    gated = EscnnGated(group, gated_in, [True, True, False, False]).eval()
    assert escnn_error(gated, gated_in, gated_in[2:], g_in) < TOL
    bn = EscnnFieldBatchNorm(group, D4_MIX)
    bn.train()(x)
    assert escnn_error(bn.eval(), D4_MIX, D4_MIX, x) < TOL
    pool = EscnnInvariantPool(group, D4_MIX).eval()
    y = pool(x)
    assert y.shape == (3, len(D4_MIX), 9, 9)
    assert escnn_error(pool, D4_MIX, (T,) * len(D4_MIX), x) < TOL


def test_per_field_parameters_are_in_field_order():
    """escnn groups fields by size inside; the layers list their parameters field by field."""
    group = get_group("D4")
    reps = (("irrep", (1, 1)), T, REG, ("irrep", (1, 1)))
    norm = EscnnNormAct(group, reps)
    bias = torch.tensor([0.5, 1.0, 2.0, 3.0])
    norm.set_field_bias(bias)
    assert torch.allclose(norm.field_bias(), bias)
    x = torch.zeros(1, 2 + 1 + 8 + 2, 1, 1)
    x[0, 11:13, 0, 0] = torch.tensor([3.0, 4.0])  # last field, norm 5 → 5 − 3 = 2
    x[0, 0:2, 0, 0] = torch.tensor([0.3, 0.4])  # first field, norm 0.5 → 0
    y = norm(x)
    assert torch.allclose(y[0, 11:13, 0, 0], torch.tensor([1.2, 1.6]), atol=1e-6)
    assert torch.equal(y[0, 0:2], torch.zeros(2, 1, 1))
    gated_reps = (T, T, ("irrep", (1, 1)), T)  # gate 0 → the 2-dim field, gate 1 → the trivial one
    gated = EscnnGated(group, gated_reps, [True, True, False, False])
    gated.set_field_bias(torch.tensor([0.0, 100.0]))
    x = torch.ones(1, 5, 1, 1)
    y = gated(x)
    assert torch.allclose(y[0, :2, 0, 0], torch.full((2,), torch.sigmoid(torch.tensor(1.0)).item()))
    assert float(y[0, 2].detach().abs().max()) < 1e-30


def test_restriction_reads_fields_on_the_subgroup():
    group = get_group("D4")
    layer = EscnnRestriction(group, D4_MIX, (None, 4))
    x = torch.randn(2, 8 + 4 + 2 + 1 + 1, 5, 5)
    assert torch.equal(layer(x), x)
    assert layer.sub_gspace.fibergroup.order() == 4


def test_unknown_representation_is_one_line():
    with pytest.raises(RepresentationError, match="irrep"):
        escnn_field_type(escnn_group(get_group("C4")).gspace, [("irrep", (7, 7))])


@pytest.mark.parametrize("name", ["SO2", "O2", "SO2_6"])
def test_continuous_groups_have_escnn_gspaces(name):
    group = get_group(name)
    eg = escnn_group(group)
    assert eg.gspace.fibergroup.continuous and len(eg.elements) == group.order
    assert group.escnn["maximum_frequency"] == group.max_frequency
    action = eg.gspace.basespace_action
    for h, element in enumerate(eg.elements):
        assert torch.allclose(torch.tensor(action(element), dtype=torch.float64).reshape(2, 2), group.matrix(h))
    with pytest.raises(RepresentationError, match="no regular representation"):
        escnn_field_type(eg.gspace, [REG])


# ----------------------------------------------------------------------------- with the core's representations
@pytest.mark.parametrize("name", ["C4", "D4", "C8", "SO2", "O2"])
def test_every_representation_maps_to_escnn_with_the_same_matrices(name):
    from gcnnkit_escnn.representations import check_matrices

    group = get_group(name)
    eg = escnn_group(group)
    for rep in group.all_representations():
        assert check_matrices(eg.gspace, rep, rep.matrices, eg.elements) < 1e-9, rep.name


def test_restricted_representations_map_to_the_subgroup_gspace():
    from gcnnkit_escnn.representations import check_matrices

    group = get_group("D4")
    for sub_id in [(None, 4), (0, 1), (None, 2)]:
        for rep in group.all_representations():
            restricted = rep.restrict(sub_id)
            eg = escnn_group(restricted.group)
            assert check_matrices(eg.gspace, restricted, restricted.matrices, eg.elements) < 1e-9


def test_steerable_network_on_escnn_is_equivariant_layer_by_layer():
    from gcnnkit.core.equivariance import check_network
    from gcnnkit.models.network import build_model

    layers = [
        {"type": "lift", "out": {"regular": 2, "quotient(None,2)": 1, "irrep(1,1)": 2, "trivial": 1}, "kernel": 5},
        "batchnorm",
        {"type": "gconv", "out": {"trivial": 2, "irrep(1,1)": 1, "regular": 1}, "kernel": 3},
        {"type": "gconv", "out": {"trivial": 4}, "kernel": 3},
        {"type": "global_pool"},
        {"type": "linear"},
    ]
    for options in ({"basis": "complete"},):
        torch.manual_seed(0)
        net = build_model(
            "escnn", "D4", in_channels=1, image_size=11, num_classes=3, layers=layers, backend_options=options
        )
        results = check_network(net, (1, 11, 11), batch=2)
        assert max(r.max_error for r in results) < TOL, [(r.name, r.max_error) for r in results]


def test_steerable_conv_weights_transfer_exactly_between_native_and_escnn():
    """Both backends export a steerable convolution as its whole filter and bias; with escnn's complete basis
    both span the same kernels, so the transfer is exact both ways, with equal parameter counts."""
    from gcnnkit.core.fields import FieldType, field_type_from_spec
    from gcnnkit.core.registry import get_backend

    group = get_group("D4")
    native, escnn = get_backend("native"), get_backend("escnn").with_options(basis="complete")
    mixed = field_type_from_spec(group, {"regular": 1, "quotient(None,2)": 1, "irrep(1,1)": 2, "trivial": 1}, "in")
    out = field_type_from_spec(group, {"trivial": 2, "irrep(1,1)": 1, "regular": 1, "irrep(0,2)": 1}, "out")
    for in_type, k in ((FieldType("image", 1), 5), (mixed, 3)):
        for source, target in ((native, escnn), (escnn, native)):
            torch.manual_seed(0)
            a = source.steerable_conv(group, in_type, out, k, padding=k // 2).eval()
            b = target.steerable_conv(group, in_type, out, k, padding=k // 2).eval()
            with torch.no_grad():
                for name, p in a.named_parameters():
                    if "bias" in name:
                        p.normal_()
            assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
            assert target.import_weights(b, source.export_weights(a)) < 1e-6
            x = torch.randn(2, in_type.size if in_type.kind == "steerable" else 1, 9, 9)
            with torch.no_grad():
                assert float((a(x) - b(x)).abs().max() / a(x).abs().max()) < TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("basis", ["escnn", "complete"])
@pytest.mark.parametrize("name", ["C4", pytest.param("D4", marks=pytest.mark.slow)])
def test_escnn_backend_passes_the_steerable_conformance(name, basis, dtype):
    """Every steerable factory on a field type of every representation (gcnnkit.testing.steerable), ≤ 1e-5
    in float32 and ≤ 1e-10 in float64 (the sampled bases are projected onto the equivariant kernels)."""
    from gcnnkit.core.registry import get_backend
    from gcnnkit.testing.steerable import assert_steerable_conforms

    errors = assert_steerable_conforms(get_backend("escnn").with_options(basis=basis), get_group(name), dtype)
    assert {"norm_nonlinearity", "gated_nonlinearity"} <= {k.split(" ")[0] for k in errors}


def test_escnn_steerable_layers_export_to_the_core_layers():
    from gcnnkit.core.fields import field_type_from_spec
    from gcnnkit.core.registry import get_backend

    group = get_group("D4")
    backend = get_backend("escnn")
    ftype = field_type_from_spec(group, {"trivial": 2, "regular": 1, "irrep(1,1)": 1}, "x")
    x = torch.randn(2, ftype.size, 5, 5)
    bn = backend.batch_norm(group, ftype)
    bn.train()(x * 2 + 1)
    gated_in = field_type_from_spec(group, {"trivial": 2, "regular": 1, "irrep(1,1)": 1}, "x")
    for layer in (
        backend.norm_nonlinearity(group, ftype),
        bn,
        backend.gated_nonlinearity(group, gated_in),
        backend.group_pool(group, ftype, "max"),
    ):
        layer.eval()
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if "bias" in name:
                    p.copy_(torch.rand_like(p) + 0.1)
            expected = layer(x)
            assert torch.allclose(layer.export_plain()(x).reshape(expected.shape), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["SO2", "O2_2"])
def test_continuous_group_network_is_equivariant_at_the_exact_samples(name):
    """SO(2)/O(2) on escnn: every layer equivariant at the multiples of 90° (and the mirrors of O2); the
    interpolated angles are measured on smooth images and stay small end to end."""
    from gcnnkit.core.equivariance import check_network
    from gcnnkit.models.network import build_model

    group = get_group(name)
    irrep = "irrep(1)" if name == "SO2" else "irrep(1,1)"
    layers = [
        {"type": "lift", "out": {"trivial": 2, irrep: 2}, "kernel": 5},
        "batchnorm",
        {"type": "norm_act"},
        {"type": "gconv", "out": {"trivial": 2, irrep: 2}, "kernel": 3},
        {"type": "group_pool"},
        {"type": "global_pool"},
        {"type": "linear"},
    ]
    torch.manual_seed(0)
    net = build_model("escnn", name, in_channels=1, image_size=15, num_classes=3, layers=layers)
    exact = [g for g in range(group.order) if group.is_exact(g)]
    assert len(exact) == (4 if name == "SO2" else 8)
    results = check_network(net, (1, 15, 15), batch=2, elements=exact)
    assert max(r.max_error for r in results) < TOL
    others = [g for g in range(group.order) if not group.is_exact(g)]
    smooth = check_network(net, (1, 15, 15), batch=2, elements=others, smooth=True)
    assert smooth[-1].max_error < 0.2
