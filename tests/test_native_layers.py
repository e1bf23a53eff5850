"""The native backend: equivariance of every layer for every element of every group (property
based), the exact filter banks against naive constructions, tied weights, the eval-mode cache,
gradients, and C1 = plain CNN."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _helpers import (
    NATIVE_GROUPS,
    randomize_parameters,
    ref_group_map_action,
    ref_image_action,
    registered_group,
    rel_err,
)
from gcnnkit_native.backend import NativeBackend
from gcnnkit_native.filters import disc_mask
from gcnnkit_native.layers import FieldBatchNorm, GroupConv, LiftingConv
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gcnnkit.core.backend import BACKEND_API_VERSION
from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import cyclic_group
from gcnnkit.core.layers import ACTIVATIONS, GlobalPool, GroupPool, SpatialPool
from gcnnkit.core.registry import get_backend
from gcnnkit.core.transforms import transform_image

TOL = 1e-5
#: Largest relative equivariance error per dtype: exact groups act by pixel permutations, so only the
#: order of the sums changes and the error is rounding, ~1e-7 in float32 and ~1e-16 in float64.
TOLERANCE = {torch.float32: TOL, torch.float64: 1e-12}
#: hypothesis budget per group (every test below runs once per group, so ~10 × 6 examples each)
PROPERTY = settings(max_examples=10, deadline=None)


def backend():
    return get_backend("native")


def act(field: FieldType, group, g: int, x: torch.Tensor) -> torch.Tensor:
    """Reference action (python loop over the group axis; independent of gcnnkit.core.transforms)."""
    if field.kind == "vector":
        return x
    if field.kind == "image":
        return ref_image_action(x, group, g)
    return ref_group_map_action(x, group, g)


def max_equivariance_error(module, group, t_in, t_out, x) -> tuple[float, str]:
    y = module(x)
    worst, where = 0.0, "e"
    for g in range(group.order):
        err = rel_err(module(act(t_in, group, g, x)), act(t_out, group, g, y))
        if err > worst:
            worst, where = err, group.element_names[g]
    return worst, where


def out_size(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def symmetric(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) % stride == 0


@st.composite
def conv_cases(draw):
    """Group, kernel (1, 3, 5, 7), dilation, padding, stride and a size that places a stride-2
    sampling grid symmetrically: (H + 2p − d(k−1) − 1) % s == 0."""
    kernel = draw(st.sampled_from([1, 3, 5, 7]))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.integers(0, dilation * (kernel - 1) // 2 + 1))
    stride = draw(st.sampled_from([1, 2]))
    size = draw(st.integers(4, 15))
    size = max(size, dilation * (kernel - 1) + 1 - 2 * padding)  # at least one output pixel
    if not symmetric(size, kernel, stride, padding, dilation):
        size += 1
    return {
        "kernel": kernel,
        "dilation": dilation,
        "padding": padding,
        "stride": stride,
        "size": size,
        "batch": draw(st.integers(1, 3)),
        "c_in": draw(st.integers(1, 3)),
        "c_out": draw(st.integers(1, 3)),
        "bias": draw(st.booleans()),
        "train": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


# --------------------------------------------------------------------------- convolutions
@pytest.mark.parametrize("name", NATIVE_GROUPS)
@PROPERTY
@given(case=conv_cases())
def test_lifting_conv_equivariance(name, case):
    group = registered_group(name)
    t_in, t_out = FieldType("image", case["c_in"]), FieldType("group", case["c_out"])
    layer = backend().lifting_conv(
        group, t_in, case["c_out"], case["kernel"], case["stride"], case["padding"], case["dilation"], case["bias"]
    )
    randomize_parameters(layer, case["seed"])
    layer.train(case["train"])
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["batch"], case["c_in"], case["size"], case["size"], generator=gen)
    with torch.set_grad_enabled(case["train"]):
        y = layer(x)
        s = out_size(case["size"], case["kernel"], case["stride"], case["padding"], case["dilation"])
        assert y.shape == (case["batch"], case["c_out"], group.order, s, s)
        err, where = max_equivariance_error(layer, group, t_in, t_out, x)
    assert err <= TOL, (case, where, err)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@PROPERTY
@given(case=conv_cases())
def test_group_conv_equivariance(name, case):
    group = registered_group(name)
    t_in, t_out = FieldType("group", case["c_in"]), FieldType("group", case["c_out"])
    layer = backend().group_conv(
        group, t_in, case["c_out"], case["kernel"], case["stride"], case["padding"], case["dilation"], case["bias"]
    )
    randomize_parameters(layer, case["seed"])
    layer.train(case["train"])
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["batch"], case["c_in"], group.order, case["size"], case["size"], generator=gen)
    with torch.set_grad_enabled(case["train"]):
        y = layer(x)
        s = out_size(case["size"], case["kernel"], case["stride"], case["padding"], case["dilation"])
        assert y.shape == (case["batch"], case["c_out"], group.order, s, s)
        err, where = max_equivariance_error(layer, group, t_in, t_out, x)
    assert err <= TOL, (case, where, err)


@pytest.mark.parametrize("name", [n for n in NATIVE_GROUPS if n != "C1"])
@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [(10, 3, 2, 1, 1), (8, 3, 2, 0, 1), (12, 5, 2, 1, 1), (12, 3, 2, 2, 2), (10, 1, 2, 0, 1)],
)
def test_asymmetric_stride_breaks_conv_equivariance(name, size, kernel, stride, padding, dilation):
    """When (H + 2p − d(k−1) − 1) % stride != 0 the documented condition is violated and
    equivariance really breaks (so the condition, and the property tests above, mean something)."""
    assert not symmetric(size, kernel, stride, padding, dilation)
    group = registered_group(name)
    torch.manual_seed(0)
    lift = backend().lifting_conv(group, FieldType("image", 2), 3, kernel, stride, padding, dilation)
    gconv = backend().group_conv(group, FieldType("group", 2), 3, kernel, stride, padding, dilation)
    with torch.no_grad():
        x = torch.randn(2, 2, size, size)
        err, _ = max_equivariance_error(lift.eval(), group, FieldType("image", 2), FieldType("group", 3), x)
        assert err > 1e-2
        x = torch.randn(2, 2, group.order, size, size)
        err, _ = max_equivariance_error(gconv.eval(), group, FieldType("group", 2), FieldType("group", 3), x)
        assert err > 1e-2
        # one more pixel makes the grid symmetric again
        x = torch.randn(2, 2, size + 1, size + 1)
        err, _ = max_equivariance_error(lift, group, FieldType("image", 2), FieldType("group", 3), x)
        assert err <= TOL


# --------------------------------------------------------------------------- other layers
@st.composite
def map_cases(draw):
    return {
        "kind": draw(st.sampled_from(["image", "group"])),
        "size": draw(st.integers(1, 12)),
        "batch": draw(st.integers(1, 3)),
        "channels": draw(st.integers(1, 4)),
        "seed": draw(st.integers(0, 2**16)),
    }


def _input(case, group, size=None, batch=None):
    size = case["size"] if size is None else size
    batch = case["batch"] if batch is None else batch
    field = FieldType(case["kind"], case["channels"])
    gen = torch.Generator().manual_seed(case["seed"])
    return field, torch.randn(field.shape(group, batch, size, size), generator=gen)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@PROPERTY
@given(case=map_cases(), mode=st.sampled_from(["max", "mean"]))
def test_group_pool_invariance(name, case, mode):
    group = registered_group(name)
    t_in, x = _input({**case, "kind": "group"}, group)
    layer = backend().group_pool(group, t_in, mode)
    y = layer(x)
    expected = x.amax(dim=2) if mode == "max" else x.mean(dim=2)
    assert torch.allclose(y, expected)
    err, where = max_equivariance_error(layer, group, t_in, FieldType("image", case["channels"]), x)
    assert err <= TOL, (case, mode, where, err)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@PROPERTY
@given(case=map_cases(), train=st.booleans())
def test_batch_norm_equivariance(name, case, train):
    group = registered_group(name)
    t_in, x = _input(case, group, batch=max(case["batch"], 2))
    layer = backend().batch_norm(group, t_in)
    assert isinstance(layer, FieldBatchNorm if case["kind"] == "group" else nn.BatchNorm2d)
    randomize_parameters(layer, case["seed"])
    layer.train(train)
    with torch.no_grad():
        err, where = max_equivariance_error(layer, group, t_in, t_in, x)
    assert err <= TOL, (case, train, where, err)


@st.composite
def pool_cases(draw):
    case = draw(map_cases())
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel // 2))
    size = max(case["size"], kernel - 2 * padding)
    while not symmetric(size, kernel, stride, padding):
        size += 1
    return {
        **case,
        "size": size,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "mode": draw(st.sampled_from(["max", "avg"])),
    }


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@PROPERTY
@given(case=pool_cases())
def test_spatial_pool_equivariance(name, case):
    group = registered_group(name)
    t_in, x = _input(case, group)
    layer = backend().spatial_pool(group, t_in, case["mode"], case["kernel"], case["stride"], case["padding"])
    y = layer(x)
    s = out_size(case["size"], case["kernel"], case["stride"], case["padding"])
    assert y.shape == (*x.shape[:-2], s, s)
    # per channel (and per group slice): the same as pooling each [H, W] plane on its own
    flat = x.reshape(-1, 1, *x.shape[-2:])
    if case["mode"] == "max":
        ref = F.max_pool2d(flat, case["kernel"], case["stride"], case["padding"])
    else:
        ref = F.avg_pool2d(flat, case["kernel"], case["stride"], case["padding"], count_include_pad=False)
    assert torch.allclose(y, ref.reshape(y.shape))
    err, where = max_equivariance_error(layer, group, t_in, t_in, x)
    assert err <= TOL, (case, where, err)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(("size", "kernel", "padding"), [(9, 2, 0), (8, 3, 1), (10, 3, 0)])
def test_asymmetric_pooling_breaks_equivariance(mode, size, kernel, padding):
    assert not symmetric(size, kernel, 2, padding)
    group = registered_group("D4")
    t_in = FieldType("group", 2)
    layer = backend().spatial_pool(group, t_in, mode, kernel, 2, padding)
    x = torch.randn(2, 2, group.order, size, size, generator=torch.Generator().manual_seed(0))
    err, _ = max_equivariance_error(layer, group, t_in, t_in, x)
    assert err > 1e-2


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@PROPERTY
@given(case=map_cases(), fn=st.sampled_from(sorted(ACTIVATIONS)))
def test_activation_equivariance(name, case, fn):
    group = registered_group(name)
    t_in, x = _input(case, group)
    layer = backend().activation(group, t_in, fn)
    assert torch.equal(layer(x), ACTIVATIONS[fn]()(x))
    err, where = max_equivariance_error(layer, group, t_in, t_in, x)
    assert err <= TOL, (case, fn, where, err)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@PROPERTY
@given(case=map_cases(), mode=st.sampled_from(["max", "avg"]))
def test_global_pool_invariance(name, case, mode):
    group = registered_group(name)
    t_in, x = _input(case, group)
    layer = backend().global_pool(group, t_in, mode)
    y = layer(x)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    assert torch.allclose(y, flat.amax(-1) if mode == "max" else flat.mean(-1))
    t_out = FieldType("vector", case["channels"])
    err, where = max_equivariance_error(layer, group, t_in, t_out, x)
    assert err <= TOL, (case, mode, where, err)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_dropout_eval_and_linear_are_invariant(name):
    group = registered_group(name)
    drop = backend().dropout(group, FieldType("group", 3), 0.5).eval()
    x = torch.randn(2, 3, group.order, 5, 5)
    assert max_equivariance_error(drop, group, FieldType("group", 3), FieldType("group", 3), x)[0] == 0.0
    lin = backend().linear(group, FieldType("vector", 3), 4)
    assert lin(torch.randn(2, 3)).shape == (2, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_every_layer_is_equivariant_to_the_precision_of_its_dtype(name, dtype):
    """Each layer kind, small and strided, in float32 and float64: in float64 to ~machine precision,
    which a filter or an action off by a rounding-sized amount would not reach."""
    group, b = registered_group(name), backend()
    img, gmap = FieldType("image", 2), FieldType("group", 3)
    cases = [  # (layer, in type, out type, train mode); size 9 places every stride-2 window symmetrically
        (b.lifting_conv(group, img, 3, 5, stride=2, padding=2), img, gmap, False),
        (b.group_conv(group, gmap, 3, 3, padding=2, dilation=2), gmap, gmap, False),
        (b.batch_norm(group, gmap), gmap, gmap, True),
        (b.batch_norm(group, gmap), gmap, gmap, False),
        (b.layer_norm(group, gmap), gmap, gmap, False),
        (b.activation(group, gmap, "gelu"), gmap, gmap, False),
        (b.spatial_pool(group, gmap, "avg", 3, 2, 1), gmap, gmap, False),
        (b.spatial_pool(group, img, "max", 3, 2, 1), img, img, False),
        (b.group_pool(group, gmap, "mean"), gmap, FieldType("image", 3), False),
        (b.global_pool(group, gmap, "avg"), gmap, FieldType("vector", 3), False),
        (b.orbit_pool(group, gmap, "mean", size=9), gmap, FieldType("vector", 3 * 81), False),
    ]
    gen = torch.Generator().manual_seed(0)
    for layer, t_in, t_out, train in cases:
        randomize_parameters(layer)
        layer.to(dtype).train(train)
        x = torch.randn(t_in.shape(group, 2, 9, 9), generator=gen).to(dtype)
        with torch.no_grad():
            err, where = max_equivariance_error(layer, group, t_in, t_out, x)
        assert err <= TOLERANCE[dtype], (type(layer).__name__, train, where, err)


# --------------------------------------------------------------------------- filter banks
def naive_lifting_bank(weight: torch.Tensor, group) -> torch.Tensor:
    """bank[o·|G| + h] = T_h ψ_o, by transforming each filter with gcnnkit.core.transforms."""
    o = weight.shape[0]
    return torch.stack(
        [torch.stack([transform_image(weight[i], group, h) for h in range(group.order)]) for i in range(o)]
    ).reshape(o * group.order, *weight.shape[1:])


def naive_group_bank(weight: torch.Tensor, group) -> torch.Tensor:
    """bank[o·|G| + h, c·|G| + g] = T_h ψ[o, c, h⁻¹g], with explicit loops."""
    o, c, n, k, _ = weight.shape
    rows = []
    for oi in range(o):
        for h in range(n):
            cols = []
            for ci in range(c):
                for g in range(n):
                    cols.append(transform_image(weight[oi, ci, group.product(group.inverse(h), g)], group, h))
            rows.append(torch.stack(cols))
    return torch.stack(rows)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_lifting_bank_equals_naive_construction(name, kernel):
    group = registered_group(name)
    layer = LiftingConv(group, 2, 3, kernel)
    bank = layer.filter_bank()
    assert bank.shape == (3 * group.order, 2, kernel, kernel)
    assert torch.equal(bank, naive_lifting_bank(layer.weight, group))


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_group_conv_bank_equals_naive_construction(name, kernel):
    group = registered_group(name)
    layer = GroupConv(group, 2, 3, kernel)
    bank = layer.filter_bank()
    assert bank.shape == (3 * group.order, 2 * group.order, kernel, kernel)
    assert torch.equal(bank, naive_group_bank(layer.weight, group))


def test_interpolated_bank_for_a_non_exact_group():
    """C8: exact elements are exact rotations of the disc-masked filter, the others are
    apply_matrix of it (same bilinear interpolation), and exact elements stay equivariant."""
    c8 = cyclic_group(8)
    torch.manual_seed(0)
    lift = LiftingConv(c8, 2, 3, 5, padding=2)
    masked = lift.weight * disc_mask(5)
    bank = lift.filter_bank().reshape(3, 8, 2, 5, 5)
    for h in range(8):
        expected = transform_image(masked, c8, h)
        assert torch.allclose(bank[:, h], expected, atol=1e-5), h
    gconv = GroupConv(c8, 2, 3, 5, padding=2)
    gbank = gconv.filter_bank().reshape(3, 8, 2, 8, 5, 5)
    w = gconv.weight * disc_mask(5)
    for h in (2, 4, 6):  # exact rotations by 90°: pure index permutation of the masked weights
        for g in range(8):
            assert torch.equal(gbank[:, h, :, g], transform_image(w[:, :, c8.product(c8.inverse(h), g)], c8, h))
    with torch.no_grad():
        x = torch.randn(2, 2, 15, 15)
        y = lift.eval()(x)
        for g in (2, 4, 6):
            assert rel_err(lift(transform_image(x, c8, g)), ref_group_map_action_c8(y, c8, g)) <= TOL


def ref_group_map_action_c8(y, group, g):
    source = [group.product(group.inverse(g), h) for h in range(group.order)]
    return transform_image(y[:, :, source], group, g)


# --------------------------------------------------------------------------- tied weights / cache
@pytest.mark.parametrize("name", ["C4", "D4"])
def test_weights_are_stored_tied(name):
    group = registered_group(name)
    lift, gconv = LiftingConv(group, 2, 3, 5), GroupConv(group, 3, 4, 3, bias=False)
    for layer, shapes in (
        (lift, {"weight": (3, 2, 5, 5), "bias": (3,)}),
        (gconv, {"weight": (4, 3, group.order, 3, 3)}),
    ):
        train_sd = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
        assert train_sd == shapes
        layer.eval()
        with torch.no_grad():
            layer(torch.randn(1, *((2, 9, 9) if layer is lift else (3, group.order, 9, 9))))
        assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == shapes
        assert sum(p.numel() for p in layer.parameters()) == sum(torch.Size(s).numel() for s in shapes.values())


@pytest.mark.parametrize("name", ["C4", "D4"])
def test_state_dict_round_trips_between_train_and_eval(name):
    group = registered_group(name)
    a = GroupConv(group, 2, 3, 3, padding=1)
    randomize_parameters(a)
    b = GroupConv(group, 2, 3, 3, padding=1).eval()
    x = torch.randn(2, 2, group.order, 7, 7)
    with torch.no_grad():
        b(x)  # fill b's cache with its own (different) weights
        b.load_state_dict(a.state_dict())
        assert torch.equal(b(x), a.eval()(x))


def _reference_forward(layer, x):
    w = layer.weight.detach()
    group = layer.group
    if isinstance(layer, LiftingConv):
        bank, inp = naive_lifting_bank(w, group), x
    else:
        bank, inp = naive_group_bank(w, group), x.reshape(x.shape[0], -1, *x.shape[-2:])
    bias = None if layer.bias is None else layer.bias.detach().repeat_interleave(group.order)
    y = F.conv2d(inp, bank, bias, layer.stride, layer.padding, layer.dilation)
    return y.reshape(y.shape[0], layer.out_fields, group.order, *y.shape[-2:])


@pytest.mark.parametrize("cls", [LiftingConv, GroupConv])
def test_eval_cache_follows_optimizer_steps(cls):
    group = registered_group("D4")
    layer = cls(group, 2, 3, 3, padding=1).eval()
    x = torch.randn(2, 2, 9, 9) if cls is LiftingConv else torch.randn(2, 2, group.order, 9, 9)
    with torch.no_grad():
        y1 = layer(x)
        bank = layer.filter_bank()
        assert layer.filter_bank() is bank  # cached in eval mode without grad
        assert torch.equal(layer(x), y1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        layer(x).square().mean().backward()  # eval mode with grad enabled: uncached, differentiable
        opt.step()
        with torch.no_grad():
            y2 = layer(x)
            assert not torch.allclose(y2, y1)
            assert torch.allclose(y2, _reference_forward(layer, x), atol=1e-5)
            y1 = y2
    with torch.no_grad():  # direct in-place edits and dtype changes invalidate too
        layer.weight.mul_(-1)
        assert torch.allclose(layer(x), _reference_forward(layer, x), atol=1e-5)
        layer.double()
        assert layer(x.double()).dtype == torch.float64


@pytest.mark.parametrize("how", ["data", "assign"])
def test_eval_cache_never_serves_a_replaced_weight(how):
    """Replacing the weight tensor (``.data =``, ``load_state_dict(assign=True)``) twice between two
    eval forwards can hand the new tensor the old one's address and version 0; the cache must
    still notice."""
    group = registered_group("C4")
    layer = LiftingConv(group, 2, 3, 3, padding=1).eval()
    x = torch.randn(2, 2, 7, 7)
    for _ in range(40):
        with torch.no_grad():
            layer(x)
        for _ in range(2):
            if how == "data":
                layer.weight.data = torch.randn_like(layer.weight)
            else:
                layer.load_state_dict({"weight": torch.randn(layer.weight.shape), "bias": torch.randn(3)}, assign=True)
        with torch.no_grad():
            assert torch.allclose(layer(x), _reference_forward(layer, x), atol=1e-5)


def test_cache_is_dropped_when_switching_to_train_and_copies_are_independent():
    group = registered_group("C4")
    layer = GroupConv(group, 2, 2, 3).eval()
    with torch.no_grad():
        layer(torch.randn(1, 2, 4, 5, 5))
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        clone.weight.add_(1.0)
    x = torch.randn(1, 2, 4, 5, 5)
    with torch.no_grad():
        assert torch.allclose(clone(x), _reference_forward(clone, x), atol=1e-5)
        assert torch.allclose(layer(x), _reference_forward(layer, x), atol=1e-5)
    layer.train()
    assert layer._cache is None


@pytest.mark.parametrize("cls", [LiftingConv, GroupConv])
def test_a_cached_c1_bank_does_not_block_deepcopy_after_the_weights_change(cls):
    """On C1 the bank is a view of the weight; cached without grad and then changed in place
    (load_state_dict, an optimizer step), it used to make ``copy.deepcopy`` raise."""
    layer = cls(registered_group("C1"), 2, 3, 3, padding=1).eval()
    x = torch.randn(1, 2, 5, 5) if cls is LiftingConv else torch.randn(1, 2, 1, 5, 5)
    with torch.no_grad():
        layer(x)
    layer.load_state_dict({k: v + 1 for k, v in layer.state_dict().items()})
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        assert torch.equal(clone(x), layer(x))
        assert torch.allclose(layer(x), _reference_forward(layer, x), atol=1e-5)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@pytest.mark.parametrize("cls", [LiftingConv, GroupConv])
def test_gradients_flow_to_the_tied_weights(name, cls):
    """The gradient w.r.t. the tied weight equals that of the naive, differentiable construction."""
    group = registered_group(name)
    torch.manual_seed(0)
    layer = cls(group, 2, 3, 3, stride=1, padding=1)
    randomize_parameters(layer)
    x = torch.randn(2, 2, 7, 7) if cls is LiftingConv else torch.randn(2, 2, group.order, 7, 7)
    target = torch.randn(2, 3, group.order, 7, 7)
    ((layer(x) - target) ** 2).sum().backward()

    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    if cls is LiftingConv:
        bank, inp = naive_lifting_bank(w, group), x
    else:
        bank, inp = naive_group_bank(w, group), x.reshape(2, -1, 7, 7)
    y = F.conv2d(inp, bank, b.repeat_interleave(group.order), padding=1).reshape(2, 3, group.order, 7, 7)
    ((y - target) ** 2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert torch.allclose(layer.weight.grad, w.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(layer.bias.grad, b.grad, rtol=1e-4, atol=1e-4)


def test_gradients_flow_after_a_cached_eval_forward():
    layer = LiftingConv(registered_group("C4"), 1, 2, 3).eval()
    x = torch.randn(1, 1, 6, 6)
    with torch.no_grad():
        layer(x)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- C1 = plain CNN
@pytest.mark.parametrize(("stride", "padding", "dilation", "kernel"), [(1, 1, 1, 3), (2, 0, 1, 4), (1, 2, 2, 3)])
def test_c1_layers_are_plain_convolutions(stride, padding, dilation, kernel):
    c1 = registered_group("C1")
    lift = LiftingConv(c1, 3, 4, kernel, stride, padding, dilation)
    gconv = GroupConv(c1, 4, 5, kernel, stride, padding, dilation)
    randomize_parameters(lift, 1)
    randomize_parameters(gconv, 2)
    conv1 = nn.Conv2d(3, 4, kernel, stride, padding, dilation)
    conv2 = nn.Conv2d(4, 5, kernel, stride, padding, dilation)
    with torch.no_grad():
        conv1.weight.copy_(lift.weight)
        conv1.bias.copy_(lift.bias)
        conv2.weight.copy_(gconv.weight[:, :, 0])
        conv2.bias.copy_(gconv.bias)
        x = torch.randn(2, 3, 13, 13)
        g_out = gconv(torch.relu(lift(x)))
        plain = conv2(torch.relu(conv1(x)))
    assert g_out.shape == (plain.shape[0], plain.shape[1], 1, *plain.shape[-2:])
    assert torch.allclose(g_out[:, :, 0], plain, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- batch norm / pooling semantics
def test_field_batch_norm_shares_statistics_over_the_group_axis():
    group = registered_group("D4")
    bn = FieldBatchNorm(3, group.order)
    randomize_parameters(bn)
    x = torch.randn(4, 3, group.order, 5, 5) * 3 + 1
    y = bn.train()(x)
    mean = x.mean(dim=(0, 2, 3, 4), keepdim=True)
    var = x.var(dim=(0, 2, 3, 4), unbiased=False, keepdim=True)
    w, b = bn.weight.view(1, 3, 1, 1, 1), bn.bias.view(1, 3, 1, 1, 1)
    assert torch.allclose(y, (x - mean) / torch.sqrt(var + bn.eps) * w + b, atol=1e-5)
    assert {k: tuple(v.shape) for k, v in bn.state_dict().items() if v.ndim} == {
        "weight": (3,),
        "bias": (3,),
        "running_mean": (3,),
        "running_var": (3,),
    }
    bn.eval()
    ev = bn(x)
    rm, rv = bn.running_mean.view(1, 3, 1, 1, 1), bn.running_var.view(1, 3, 1, 1, 1)
    assert torch.allclose(ev, (x - rm) / torch.sqrt(rv + bn.eps) * w + b, atol=1e-5)


def test_group_pool_layer_modes():
    x = torch.randn(2, 3, 4, 5, 5)
    assert torch.equal(GroupPool(x.shape[2], "max")(x), x.amax(dim=2))
    assert torch.allclose(GroupPool(x.shape[2], "mean")(x), x.mean(dim=2))


# --------------------------------------------------------------------------- backend surface
def test_backend_refuses_bad_modes_and_options():
    group = registered_group("C4")
    be = backend()
    assert isinstance(be, NativeBackend) and be.name == "native" and be.api_version == BACKEND_API_VERSION
    with pytest.raises(SpecError, match="unknown group pooling mode 'avg'; allowed: max, mean"):
        be.group_pool(group, FieldType("group", 1), "avg")
    with pytest.raises(SpecError, match="unknown activation 'swish'; allowed: relu"):
        be.activation(group, FieldType("group", 1), "swish")
    with pytest.raises(SpecError, match="unknown spatial pooling mode 'mean'"):
        SpatialPool("mean")
    with pytest.raises(SpecError, match="unknown global pooling mode 'sum'"):
        GlobalPool("sum")
    with pytest.raises(SpecError, match="backend 'native' has no option 'fast'"):
        be.with_options(fast=True)
    assert be.with_options() is be
    for name in NATIVE_GROUPS:
        be.require(registered_group(name))  # every native group is supported
        assert be.supports(registered_group(name)) is None


def test_field_batch_norm_in_nhwc_keeps_float64_precision():
    """The NHWC training path computed in float32 even for float64 inputs (differences ~1e-7)."""
    from gcnnkit_native.layers import FieldBatchNorm

    torch.manual_seed(0)
    ref = FieldBatchNorm(3, 4).double()
    nhwc = copy.deepcopy(ref)
    nhwc.channels_last = True
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x = x.unflatten(1, (3, 4)).requires_grad_()
    expected, got = ref(x), nhwc(x)
    assert got.dtype == torch.float64
    grad = torch.randn_like(expected)
    for a, b in zip(
        torch.autograd.grad(got, (x, nhwc.weight, nhwc.bias), grad),
        torch.autograd.grad(expected, (x, ref.weight, ref.bias), grad),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nhwc.running_var, ref.running_var, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_field_batch_norm_in_nhwc_is_batchnorm3d_and_keeps_the_layout(momentum, track, affine):
    from gcnnkit_native.layers import FieldBatchNorm

    torch.manual_seed(0)
    ref = FieldBatchNorm(6, 4, momentum=momentum, track_running_stats=track, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1.0, 1.0)
    nhwc = copy.deepcopy(ref)
    nhwc.channels_last = True
    for _ in range(3):
        x = (torch.randn(4, 6 * 4, 5, 5) * 3 + 1).contiguous(memory_format=torch.channels_last).unflatten(1, (6, 4))
        x.requires_grad_()
        expected, got = ref(x), nhwc(x)
        assert got.flatten(1, 2).is_contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(expected)
        got_grads = torch.autograd.grad(got, (x, nhwc.weight, nhwc.bias) if affine else (x,), grad)
        expected_grads = torch.autograd.grad(expected, (x, ref.weight, ref.bias) if affine else (x,), grad)
        for a, b in zip(got_grads, expected_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for name, buffer in ref.named_buffers():
        torch.testing.assert_close(getattr(nhwc, name), buffer, rtol=1e-5, atol=1e-6)
    ref.eval(), nhwc.eval()
    torch.testing.assert_close(nhwc(x), ref(x), rtol=1e-5, atol=1e-5)
