"""Native steerable convolutions between any field types of the exact groups: the kernel basis has the
dimension of the character formula and satisfies the constraint; every layer is equivariant (hypothesis
over random field types); permutation pairs use one gather; interpolated groups refuse in one line."""

from __future__ import annotations

import pytest
import torch
from _helpers import NATIVE_GROUPS, registered_group
from gcnnkit_native.steerable import SteerableConv, expected_dimension, kernel_basis, orbit_index
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.core.equivariance import equivariance_errors
from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.registry import get_backend
from gcnnkit.core.transforms import transform_image

GROUPS = {name: registered_group(name) for name in NATIVE_GROUPS}


@st.composite
def field_types(draw, group, max_fields=4):
    """A random ordered field type of ``group``: ``image``, ``group`` or ``steerable`` of any representations."""
    reps = group.all_representations()
    kind = draw(st.sampled_from(["steerable", "steerable", "image", "group"]))
    n = draw(st.integers(1, max_fields))
    if kind != "steerable":
        return FieldType(kind, n)
    return FieldType("steerable", reps=tuple(draw(st.sampled_from(reps)) for _ in range(n)))


def _pair_constraint_error(basis, rep_out, rep_in):
    """max over g of |ρ_out(g) K(g⁻¹·) ρ_in(g)ᵀ − K| for every basis kernel (computed with transform_image)."""
    group, worst = rep_out.group, 0.0
    for g in range(group.order):
        moved = torch.einsum(
            "ab,nbcxy,dc->nadxy", rep_out.matrices[g], transform_image(basis, group, g), rep_in.matrices[g]
        )
        worst = max(worst, (moved - basis).abs().max().item())
    return worst


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_kernel_basis_dimension_is_the_character_formula_and_the_kernels_are_equivariant(data):
    group = GROUPS[data.draw(st.sampled_from(NATIVE_GROUPS))]
    reps = group.all_representations()
    rep_out, rep_in = data.draw(st.sampled_from(reps)), data.draw(st.sampled_from(reps))
    k = data.draw(st.sampled_from([1, 3, 4, 5]))
    basis = kernel_basis(rep_out, rep_in, k)
    expected = expected_dimension(rep_out, rep_in, k)
    assert basis.shape == (expected, rep_out.size, rep_in.size, k, k)
    flat = basis.reshape(expected, rep_out.size * rep_in.size * k * k)
    assert torch.allclose(flat @ flat.T, torch.eye(expected, dtype=torch.float64), atol=1e-10)  # orthonormal
    if expected:
        assert _pair_constraint_error(basis, rep_out, rep_in) < 1e-10
    if rep_out.is_permutation and rep_in.is_permutation:  # one tied weight per orbit: the same count
        index, n = orbit_index(rep_out, rep_in, k)
        assert n == expected and index.shape == (rep_out.size * rep_in.size * k * k,)
        kernel = torch.randn(n, dtype=torch.float64)[index].reshape(1, rep_out.size, rep_in.size, k, k)
        assert _pair_constraint_error(kernel, rep_out, rep_in) == 0.0


def _layer_case(data):
    group = GROUPS[data.draw(st.sampled_from(NATIVE_GROUPS))]
    t_in = data.draw(field_types(group))
    t_out = data.draw(field_types(group).filter(lambda t: t.kind != "image"))
    if t_in.kind != "steerable" and t_out.kind != "steerable":
        t_out = FieldType("steerable", reps=(group.irreps()[-1], group.trivial()))
    k = data.draw(st.sampled_from([1, 3, 5]))
    return group, t_in, t_out, k


@settings(max_examples=25, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_steerable_conv_is_equivariant_for_random_field_types(data, dtype):
    group, t_in, t_out, k = _layer_case(data)
    conv = SteerableConv(group, t_in, t_out, k, padding=k // 2, bias=data.draw(st.booleans())).to(dtype).eval()
    with torch.no_grad():  # a bias on every field that fixes a vector, so it is checked too
        for name, p in conv.named_parameters():
            if name.startswith("bias_"):
                p.normal_()
    x = torch.randn(t_in.shape(group, 2, 9, 9), dtype=dtype)
    y = conv(x)
    assert y.shape == t_out.shape(group, 2, 9, 9)
    assert conv.filter_bank().shape == (
        t_out.shape(group, 1, 1, 1)[1] * (group.order if t_out.kind == "group" else 1),
        t_in.shape(group, 1, 1, 1)[1] * (group.order if t_in.kind == "group" else 1),
        k,
        k,
    )
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert equivariance_errors(conv, group, t_in, t_out, x).max_error <= tol


def test_bias_lives_only_on_fields_that_fix_a_vector():
    d4 = GROUPS["D4"]
    t_out = FieldType("steerable", reps=(d4.irrep(1, 1), d4.trivial(), d4.quotient((None, 2)), d4.irrep(1, 0)))
    conv = SteerableConv(d4, FieldType("image", 1), t_out, 3, padding=1)
    with torch.no_grad():
        for name, p in conv.named_parameters():
            if name.startswith("bias_"):
                p.fill_(1.0)
    bias = conv.expanded_bias()
    # irrep(1,1): 2 zeros; trivial: 1; quotient (4 channels, one orbit): 1 1 1 1; irrep(1,0): 0
    assert bias.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_the_basis_is_canonical():
    """The same representations give the same basis, bit for bit, whatever was built before (what a
    stored weight means must not depend on the machine or the order layers were built in)."""
    d4 = GROUPS["D4"]
    kernel_basis.cache_clear()
    a = kernel_basis(d4.irrep(1, 1), d4.regular(), 5).clone()
    kernel_basis.cache_clear()
    kernel_basis(d4.irrep(1, 2), d4.irrep(1, 1), 3)
    assert torch.equal(kernel_basis(d4.irrep(1, 1), d4.regular(), 5), a)


@pytest.mark.parametrize("name", ["C8", "D8", "C16"])
def test_interpolated_groups_refuse_non_regular_fields_naming_escnn(name):
    group = registered_group(name)
    t_out = FieldType("steerable", reps=(group.irrep(1),) if name[0] == "C" else (group.irrep(1, 1),))
    with pytest.raises(
        SpecError, match=rf"group {name} is interpolated on the native backend.*needs model.backend=escnn"
    ):
        get_backend("native").steerable_conv(group, FieldType("image", 1), t_out, 5)


def test_a_network_with_steerable_fields_builds_and_is_equivariant_on_native():
    from gcnnkit.core.equivariance import check_network
    from gcnnkit.models.network import build_model

    layers = [
        {"type": "lift", "out": {"regular": 2, "irrep(1,1)": 2, "quotient(None,2)": 1, "trivial": 1}, "kernel": 5},
        {"type": "gconv", "out": {"irrep(1,1)": 1, "trivial": 2}, "kernel": 3},
        {"type": "gconv", "out": 3, "kernel": 3},
        "group_pool",
        "global_pool",
        "linear",
    ]
    net = build_model("native", "D4", layers=layers, in_channels=1, image_size=11, num_classes=4).double()
    assert [str(t) for t in net.out_types[:3]] == [
        "steerable[regular×2, irrep_1,1×2, quotient[(None, 2)], trivial]",
        "steerable[irrep_1,1, trivial×2]",
        "group[3]",
    ]
    for result in check_network(net, (1, 11, 11)):
        assert result.max_error <= 1e-10, result.name


def test_continuous_groups_are_refused_by_the_native_backend_in_one_line():
    from gcnnkit.core.errors import UnsupportedGroupError
    from gcnnkit.core.group import Group, cyclic_group
    from gcnnkit.models.network import build_network
    from gcnnkit.models.spec import parse_layers

    class Sampled(Group):  # what a continuous-group plugin (SO(2) on its samples) looks like to a backend
        continuous = True

    c8 = cyclic_group(8)
    so2 = Sampled("SO2", c8.element_names, c8.matrices, api_version=1, representations=c8.representations)
    specs = parse_layers([{"type": "lift", "out": {"irrep(1)": 2}}, "group_pool", "global_pool"])
    with pytest.raises(UnsupportedGroupError) as info:
        build_network(specs, get_backend("native"), so2, 1, 2)
    assert str(info.value) == (
        "backend 'native' does not support group SO2: it is continuous, and the native backend builds filter "
        "banks for finite groups only; use model.backend=escnn"
    )


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_backend_passes_the_steerable_conformance_helper(name, dtype):
    from gcnnkit.testing.steerable import assert_steerable_conforms

    errors = assert_steerable_conforms(get_backend("native"), GROUPS[name], dtype)
    assert "steerable_conv all→all" in errors and "gated_nonlinearity" in errors
    assert sum(key.startswith("restrict") for key in errors) == len(GROUPS[name].subgroups())


def test_the_steerable_conformance_helper_catches_a_broken_layer():
    from gcnnkit.core.backend import Backend
    from gcnnkit.testing.steerable import assert_steerable_conforms

    native = get_backend("native")

    class PointwiseNorm(type(native)):  # a "norm" nonlinearity that is really a pointwise ReLU
        def norm_nonlinearity(self, group, in_type, fn="relu", bias=True):
            return torch.nn.ReLU()

    assert issubclass(PointwiseNorm, Backend)
    with pytest.raises(AssertionError, match=r"backend 'native' on D4 \(torch.float64\): .* in norm_nonlinearity: "):
        assert_steerable_conforms(PointwiseNorm(), GROUPS["D4"])


@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_regular_fields_span_the_same_kernels_as_the_regular_group_conv(name):
    """A regular group conv's bank, read on the orbits, is a SteerableConv's bank between regular fields: the
    same space and the same channel order."""
    from gcnnkit_native.layers import GroupConv, LiftingConv

    group = GROUPS[name]
    regular = FieldType("steerable", reps=(group.regular(),) * 2)
    for ref, t_in in (
        (GroupConv(group, 3, 2, 3, padding=1), FieldType("steerable", reps=(group.regular(),) * 3)),
        (LiftingConv(group, 3, 2, 3, padding=1), FieldType("image", 3)),
    ):
        steer = SteerableConv(group, t_in, regular, 3, padding=1, bias=False)
        bank = ref.filter_bank().detach()
        with torch.no_grad():
            for u, v, how in steer._pairs:
                assert how == "orbit"
                w = getattr(steer, f"weight_{u}_{v}")
                flat, gather = bank.reshape(-1), getattr(steer, f"gather_{u}_{v}")
                # every entry of the reference bank is constant on the orbits of the steerable layer
                values = torch.zeros(w.numel()).scatter_reduce(0, gather, flat, "amax", include_self=False)
                lows = torch.zeros(w.numel()).scatter_reduce(0, gather, flat, "amin", include_self=False)
                assert torch.equal(values, lows)
                w.copy_(values.reshape(w.shape))
        assert torch.equal(steer.filter_bank(), bank)
