"""Nonlinearities, batch norm, pooling and restriction on steerable field types: what each computes,
that each is equivariant for random field types of every exact group (hypothesis, 1e-5 float32, 1e-10
float64), that networks with them (and a restriction) pass the per-layer check, and the one-line
refusals of layers that would break equivariance."""

from __future__ import annotations

import pytest
import torch
from _helpers import NATIVE_GROUPS, registered_group
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.core.equivariance import check_network, equivariance_errors
from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.registry import get_backend
from gcnnkit.core.steerable_layers import (
    GatedNonlinearity,
    InvariantPool,
    NormNonlinearity,
    SteerableBatchNorm,
    SteerableGlobalPool,
    restricted_type,
)
from gcnnkit.models.network import build_model

GROUPS = {name: registered_group(name) for name in NATIVE_GROUPS}
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@st.composite
def steerable_types(draw, group, max_fields=5):
    reps = group.all_representations()
    return FieldType(
        "steerable", reps=tuple(draw(st.sampled_from(reps)) for _ in range(draw(st.integers(1, max_fields))))
    )


@st.composite
def cases(draw):
    group = GROUPS[draw(st.sampled_from(NATIVE_GROUPS))]
    return group, draw(steerable_types(group)), draw(st.sampled_from([torch.float32, torch.float64]))


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


@settings(max_examples=20, deadline=None)
@given(case=cases(), fn=st.sampled_from(["relu", "sigmoid", "softplus"]))
def test_norm_nonlinearity_is_equivariant(case, fn):
    group, ft, dtype = case
    layer = _randomise(NormNonlinearity(group, ft, fn)).to(dtype)
    x = torch.randn(2, ft.size, 7, 7, dtype=dtype)
    assert equivariance_errors(layer, group, ft, ft, x).max_error <= TOL[dtype]


@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_batch_norm_is_equivariant_in_train_and_eval_mode(case):
    group, ft, dtype = case
    bn = _randomise(SteerableBatchNorm(group, ft)).to(dtype)
    x = torch.randn(4, ft.size, 7, 7, dtype=dtype) * 3 + 1
    bn.train()
    assert equivariance_errors(bn, group, ft, ft, x).max_error <= TOL[dtype]  # batch statistics
    bn.eval()
    assert equivariance_errors(bn, group, ft, ft, x).max_error <= TOL[dtype]  # running statistics
    reps = ft.field_reps(group)
    assert bn.weight.numel() == len(reps)  # a scale per field, a shift per permutation field only
    assert bn.bias.numel() == sum(r.is_permutation for r in reps)


@settings(max_examples=20, deadline=None)
@given(case=cases(), mode=st.sampled_from(["max", "mean"]))
def test_invariant_and_global_pooling_are_invariant(case, mode):
    group, ft, dtype = case
    x = torch.randn(2, ft.size, 7, 7, dtype=dtype)
    pool = InvariantPool(group, ft, mode)
    assert equivariance_errors(pool, group, ft, FieldType("image", ft.channels), x).max_error <= TOL[dtype]
    glob = SteerableGlobalPool(group, ft, "max" if mode == "max" else "avg")
    assert equivariance_errors(glob, group, ft, FieldType("vector", ft.channels), x).max_error <= TOL[dtype]


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_gated_nonlinearity_is_equivariant(data):
    group, gated, dtype = data.draw(cases())
    ft = FieldType("steerable", reps=(group.trivial(),) * gated.channels + gated.reps)
    layer = _randomise(GatedNonlinearity(group, ft)).to(dtype)
    x = torch.randn(2, ft.size, 7, 7, dtype=dtype)
    assert layer.out_type == FieldType.of(gated.reps)
    assert equivariance_errors(layer, group, ft, layer.out_type, x).max_error <= TOL[dtype]


def test_what_the_layers_compute():
    d4 = GROUPS["D4"]
    ft = FieldType("steerable", reps=(d4.irrep(1, 1), d4.regular(), d4.trivial()))
    x = torch.randn(3, ft.size, 4, 4, dtype=torch.float64)
    # norm-ReLU: the norm becomes relu(|f| - exp(log_bias)); the direction is kept
    norm = NormNonlinearity(d4, ft).double()
    with torch.no_grad():
        norm.log_bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    y = norm(x)
    for (a, b), bias in zip(((0, 2), (2, 10), (10, 11)), (1.0, torch.e, 1 / torch.e), strict=True):
        n = x[:, a:b].norm(dim=1)
        torch.testing.assert_close(y[:, a:b].norm(dim=1), torch.relu(n - bias))
    # gated: gated field times sigmoid(gate - bias)
    gft = FieldType("steerable", reps=(d4.trivial(), d4.trivial(), d4.irrep(1, 1), d4.regular()))
    gx = torch.randn(3, gft.size, 4, 4, dtype=torch.float64)
    gated = GatedNonlinearity(d4, gft).double()
    torch.testing.assert_close(gated(gx)[:, :2], gx[:, 2:4] * torch.sigmoid(gx[:, :1]))
    torch.testing.assert_close(gated(gx)[:, 2:], gx[:, 4:] * torch.sigmoid(gx[:, 1:2]))
    # batch norm: permutation fields centred and scaled per field; irrep fields scaled by their norm
    bn = SteerableBatchNorm(d4, ft, eps=0.0).double().train()
    z = bn(x * 5 + 2)
    assert abs(z[:, 2:10].mean().item()) < 1e-12 and abs(z[:, 2:10].var(unbiased=False).item() - 1) < 1e-9
    assert abs(z[:, 0:2].pow(2).mean().item() - 1) < 1e-9 and z[:, 0:2].mean().abs().item() > 1e-3  # not centred
    # invariant pooling: max over the regular field's channels, norm of the irrep field
    pool = InvariantPool(d4, ft, "max")(x)
    torch.testing.assert_close(pool[:, 0], x[:, 0:2].norm(dim=1))
    torch.testing.assert_close(pool[:, 1], x[:, 2:10].amax(dim=1))
    torch.testing.assert_close(pool[:, 2], x[:, 10])


RESTRICTIONS = [("D4", "C4", (None, 4)), ("D4", "D1", (0, 1)), ("C4", "C2", 2), ("D4", "D2", (0, 2))]


@pytest.mark.parametrize(("group", "subgroup", "sid"), RESTRICTIONS)
def test_restriction_networks_are_equivariant_to_the_subgroup(group, subgroup, sid):
    g = registered_group(group)  # the registry's object now: a test that refreshed the registry made a new one
    first = {"regular": 2, "irrep(1,1)" if group[0] == "D" else "irrep(1)": 1, "trivial": 1}
    layers = [
        {"type": "lift", "out": first, "kernel": 3},
        "batchnorm",
        "norm_act",
        {"type": "gconv", "out": 2, "kernel": 3},
        "relu",
        {"type": "restrict", "subgroup": subgroup},
        {"type": "gconv", "out": {"regular": 2, "irrep(1,1)" if subgroup == "D2" else "irrep(1)": 1}, "kernel": 3},
        "norm_act",
        "group_pool",
        "global_pool",
        "linear",
    ]
    net = build_model("native", group, layers=layers, in_channels=1, image_size=9, num_classes=3).double()
    sub, inclusion = g.subgroup(sid)
    assert net.layer_groups[6] is sub and sub.name == subgroup
    assert net.out_types[5] == restricted_type(g, FieldType("group", 2), sid)
    assert net.element_maps[6] == tuple(inclusion.index(e) if e in inclusion else None for e in range(g.order))
    results = check_network(net, (1, 9, 9))
    assert [len(r.errors) for r in results] == [g.order] * 5 + [sub.order] * 7
    assert max(r.max_error for r in results) <= 1e-10


def test_a_restricted_network_is_not_equivariant_to_the_whole_group():
    """A net restricted to C4 and checked by hand under the D4 mirror: it breaks (the check only asks C4)."""
    layers = [{"type": "lift", "out": 2}, {"type": "restrict", "subgroup": "C4"}, {"type": "gconv", "out": 2}]
    layers += ["group_pool", "global_pool"]
    net = build_model("native", "D4", layers=layers, in_channels=1, image_size=7, num_classes=2).double().eval()
    x = torch.randn(2, 1, 7, 7, dtype=torch.float64)
    assert (net(torch.flip(x, dims=(-1,))) - net(x)).abs().max() > 1e-3
    assert (net(torch.rot90(x, 1, dims=(-2, -1))) - net(x)).abs().max() < 1e-10


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            [{"type": "lift", "out": {"irrep(1,1)": 2}}, "relu"],
            r"layer 1 \(act\): relu acts per channel, which breaks the equivariance of irrep_1,1 fields in "
            r"steerable\[irrep_1,1×2\]; use norm_act or gated",
        ),
        (
            [{"type": "lift", "out": {"irrep(1,1)": 1}}, {"type": "pool", "mode": "max"}],
            r"layer 1 \(pool\): max pooling acts per channel.*use mode: avg",
        ),
        (
            [{"type": "lift", "out": {"irrep(1,1)": 1}}, "layernorm"],
            r"layer 1 \(layernorm\): layernorm normalises across fields",
        ),
        (
            [{"type": "lift", "out": {"irrep(1,1)": 2, "trivial": 1}}, "gated"],
            r"layer 1 \(gated\): a gated nonlinearity needs an even number of fields",
        ),
        ([{"type": "lift", "out": {"irrep(1,1)": 1, "trivial": 1}}, "gated"], r"the first half invariant 1-d gates"),
        (
            [{"type": "lift", "out": 2}, {"type": "restrict", "subgroup": "C3"}],
            r"layer 1 \(restrict\).subgroup: D4 has no subgroup 'C3'; allowed: C1 \(\(None, 1\)\), D1 \(\(0, 1\)\)",
        ),
        (
            [{"type": "lift", "out": {"irrep(1,1)": 1}}, {"type": "orbit_pool"}],
            r"layer 1 \(orbit_pool\): orbit_pool takes image or group maps",
        ),
        ([{"type": "lift", "out": {"irrep(3)": 1}}], r"layer 0 \(lift\).out: group D4 has no irrep\(3,\)"),
    ],
)
def test_layers_that_would_break_equivariance_are_refused_in_one_line(layers, message):
    with pytest.raises(SpecError, match=message) as info:
        build_model("native", "D4", layers=[*layers, "global_pool"], in_channels=1, image_size=8, num_classes=2)
    assert "\n" not in str(info.value)


def test_norm_act_spec_rejects_squash_with_a_bias():
    from gcnnkit.models.spec import parse_layers

    with pytest.raises(SpecError, match="norm_act fn 'squash' takes no bias; set bias: false"):
        parse_layers([{"type": "norm_act", "fn": "squash"}])
    (spec,) = parse_layers([{"type": "norm_act", "fn": "squash", "bias": False}])
    assert spec.params == {"fn": "squash", "bias": False}


def test_restrict_accepts_escnn_subgroup_ids():
    layers = [{"type": "lift", "out": 2}, {"type": "restrict", "subgroup": [None, 2]}, "global_pool"]
    net = build_model("native", "D4", layers=layers, in_channels=1, image_size=5, num_classes=2)
    assert net.layer_groups[1].name == "C2"
    backend = get_backend("native")
    assert backend.restrict(GROUPS["C4"], FieldType("group", 1), 2).subgroup.name == "C2"


def test_a_steerable_network_exports_to_plain_torch():
    from gcnnkit.tools.export import export_model

    layers = [
        {"type": "lift", "out": {"regular": 2, "irrep(1,1)": 2, "trivial": 2}, "kernel": 3},
        "batchnorm",
        "norm_act",
        {"type": "gconv", "out": {"trivial": 2, "regular": 2}, "kernel": 3},
        "gated",  # an all-regular output: [B, C, |G|, H, W] in the network, flattened in the export
        {"type": "restrict", "subgroup": "C4"},
        {"type": "gconv", "out": {"irrep(1)": 2}, "kernel": 3},
        "group_pool",
        "global_pool",
        "linear",
    ]
    net = build_model("native", "D4", layers=layers, in_channels=1, image_size=8, num_classes=3)
    net.train()(torch.randn(4, 1, 8, 8))
    plain = export_model(net.eval(), image_size=8)
    assert plain.gcnnkit_export.rel_error <= 1e-6
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-6)
