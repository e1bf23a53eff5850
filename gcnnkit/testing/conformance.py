"""The backend conformance suite: every promise of the backend contract, checked on one backend.

A backend's test is one call (``docs/backend-plugins.md``)::

    from gcnnkit.testing import assert_backend_conforms

    def test_my_backend_conforms():
        assert_backend_conforms(MyBackend())

For every group the backend supports (default: those of :data:`DEFAULT_GROUPS` that are installed)
and every layer of :func:`layer_cases` (each factory of :class:`~gcnnkit.core.backend.Backend` in
small variations), the layer is built, given random parameters and batch-norm statistics (so that
default values cannot hide a bug), and checked by one function per promise:

==================  ===========================================================================
check               promise
==================  ===========================================================================
``output``          the output has the shape of the expected field type
``reference``       a layer without parameters computes what the contract defines (activation by
                    name, group/spatial/global/orbit pooling by mode, dropout in eval mode)
``conv``            convolutions are ``EquivariantConv``; ``filter_bank()`` ``[out·|G|, C_in(·|G|), k, k]``
                    and ``expanded_bias()`` ``[out·|G|]`` are what the layer computes, also after
                    its weights change in eval mode (a cached bank follows them)
``equivariance``    ``f(g·x) = g·f(x)`` for every exact element, in eval and train mode
``export``          ``export_plain()`` (or the plain module itself) computes the same on the
                    flattened layout ``[B, C·|G|, H, W]``, with copies of the weights
``state_dict``      the same keys, shapes and dtypes in train and eval mode, before and after a forward
``copies``          ``pickle`` and ``copy.deepcopy`` give an independent layer with identical state and outputs
``backward``        every trainable parameter and the input receive a finite gradient
``float64``         after ``.double()``: float64 output, equivariance and export to ``float64_tolerance``
``channels_last``   the flag changes no output, gradient or running statistic (float32 and float64)
``transfer``        ``import_weights(twin, export_weights(layer))`` makes ``twin`` compute what ``layer``
                    does when the residual is ~0 (the residual is reported); a convolution's
                    transfer-format weight is the identity slice of its filter bank (both judged
                    for exact groups only, reported for the others)
``dropout``         in train mode every entry is dropped (0) or scaled by ``1/(1-p)``
``errors``          an unknown activation or pooling mode is refused in one line naming it
==================  ===========================================================================

The layers also include three residual blocks (:class:`ResidualCase`: identity and projection
shortcuts, strided, from image and group maps) composed of the backend's own factories, so that
every check above also holds for :class:`~gcnnkit.core.residual.ResidualBlock` on this backend.

Only exact elements (pixel permutations) are judged; for a group such as C8 the interpolated
elements are not. ``float64_tolerance`` applies to groups whose every element is exact; the
others are judged at ``tolerance`` in float64 too (their interpolation weights may be float32).
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.backend import ACTIVATIONS, BACKEND_API_VERSION, Backend
from gcnnkit.core.equivariance import DEFAULT_TOLERANCE, equivariance_errors, relative_error
from gcnnkit.core.errors import PluginError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantConv, EquivariantLayer
from gcnnkit.core.residual import ResidualBlock, build_projection, transfer_layer_weights
from gcnnkit.core.transforms import transform_image

#: Groups checked by default, those that are installed: the exact ones and one interpolated one.
DEFAULT_GROUPS = ("C1", "C2", "C4", "D1", "D2", "D4", "C8")
#: Default tolerance on relative errors in float64, for groups whose every element is exact.
FLOAT64_TOLERANCE = 1e-12
#: A transfer whose projection residual is at most this must reproduce the layer's output.
EXACT_RESIDUAL = 1e-6
#: Failures listed in the AssertionError's message (all are in ``error.report.failures``).
MAX_LISTED = 25
BATCH = 2
_BAD = "no-such-mode"


# ------------------------------------------------------------------------------ the cases
@dataclass(frozen=True, eq=False)
class LayerCase:
    """One layer: ``getattr(backend, factory)(group, in_type, *args, **keywords)`` on a ``size``² input.

    ``args`` are passed positionally, as the network builder does; both are ``(name, value)`` pairs.
    """

    factory: str
    in_type: FieldType
    out_type: FieldType
    size: int
    out_size: int
    args: tuple[tuple[str, Any], ...] = ()
    keywords: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.args + self.keywords)
        return f"{self.factory}({self.in_type}{params})"

    def param(self, name: str) -> Any:
        return dict(self.args + self.keywords)[name]

    @property
    def is_conv(self) -> bool:
        return self.factory in ("lifting_conv", "group_conv")

    def build(self, backend: Backend, group: Group) -> nn.Module:
        factory = getattr(backend, self.factory)
        return factory(group, self.in_type, *(v for _, v in self.args), **dict(self.keywords))

    def input(self, group: Group, seed: int) -> torch.Tensor:
        """A standard-normal float32 input ``in_type.shape(group, 2, size, size)``."""
        shape = self.in_type.shape(group, BATCH, self.size, self.size)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    def out_shape(self, group: Group) -> tuple[int, ...]:
        return self.out_type.shape(group, BATCH, self.out_size, self.out_size)


#: (kernel, stride, padding, dilation, bias, input size) of the convolutions; every strided grid is
#: placed symmetrically on its input, ``(size + 2·padding − dilation·(kernel − 1) − 1) % stride == 0``.
_CONVS = ((3, 1, 1, 1, True, 7), (3, 2, 1, 1, False, 9), (3, 1, 2, 2, True, 7), (5, 1, 0, 1, True, 9))


@dataclass(frozen=True, eq=False)
class ResidualCase(LayerCase):
    """A residual block (:class:`~gcnnkit.core.residual.ResidualBlock`) composed of the backend's factories:
    body ``lift/gconv 3×3 (stride) → batch norm → ReLU → gconv 3×3``, a ``shortcut`` (``identity``,
    ``projection``: a 1×1 convolution, or ``projection+norm``: with batch norm), ReLU after the sum."""

    shortcut: str = "identity"
    stride: int = 1

    @property
    def label(self) -> str:
        return f"residual({self.in_type}, shortcut={self.shortcut!r}, stride={self.stride})"

    def build(self, backend: Backend, group: Group) -> nn.Module:
        mid = self.out_type
        first = backend.lifting_conv if self.in_type.kind == "image" else backend.group_conv
        body = [
            first(group, self.in_type, mid.channels, 3, self.stride, 1, 1, False),  # a bias before batch norm
            backend.batch_norm(group, mid),  # would get a zero gradient (noise), so none there
            backend.activation(group, mid, "relu"),
            backend.group_conv(group, mid, mid.channels, 3, 1, 1, 1, True),
        ]
        types = [(self.in_type, mid)] + [(mid, mid)] * 3
        shortcut: list[nn.Module] = []
        shortcut_types: list[tuple[FieldType, FieldType]] = []
        if self.shortcut != "identity":
            norm = self.shortcut == "projection+norm"
            shortcut, outs = build_projection(backend, group, self.in_type, mid, self.stride, norm)
            shortcut_types = list(zip([self.in_type, *outs[:-1]], outs, strict=True))
        return ResidualBlock(group, body, types, shortcut, shortcut_types, backend.activation(group, mid, "relu"))


def layer_cases() -> list[LayerCase]:
    """Every factory of the contract, with the variations a network uses (stride, padding,
    dilation, bias; image, group and vector inputs; every activation and pooling mode)."""
    image, group, vector = FieldType("image", 2), FieldType("group", 2), FieldType("vector", 4)
    cases = []
    for factory, in_type in (("lifting_conv", image), ("group_conv", group)):
        for k, s, p, d, bias, size in _CONVS:
            out = (size + 2 * p - d * (k - 1) - 1) // s + 1
            names = ("out_fields", "kernel_size", "stride", "padding", "dilation", "bias")
            args = tuple(zip(names, (3, k, s, p, d, bias), strict=True))
            cases.append(LayerCase(factory, in_type, FieldType("group", 3), size, out, args))
    for t in (FieldType("image", 3), FieldType("group", 3)):
        cases.append(LayerCase("batch_norm", t, t, 6, 6))
    for mode in ("max", "mean"):
        cases.append(LayerCase("group_pool", FieldType("group", 3), FieldType("image", 3), 5, 5, (("mode", mode),)))
    for t in (image, group, vector):
        cases += [LayerCase("activation", t, t, 5, 5, (("name", name),)) for name in ACTIVATIONS]
    for t in (FieldType("image", 8), FieldType("group", 8), FieldType("vector", 64)):  # enough entries to drop some
        cases.append(LayerCase("dropout", t, t, 5, 5, (("p", 0.25),)))
    for t, affine in ((image, True), (group, True), (group, False), (vector, True)):
        cases.append(LayerCase("layer_norm", t, t, 5, 5, (("affine", affine), ("eps", 1e-5))))
    for mode in ("max", "avg"):
        for t in (image, group):
            for k, s, p, size in ((2, 2, 0, 8), (3, 2, 1, 9)):
                out = (size + 2 * p - k) // s + 1
                args = (("mode", mode), ("kernel_size", k), ("stride", s), ("padding", p))
                cases.append(LayerCase("spatial_pool", t, t, size, out, args))
        for t in (image, group):
            cases.append(LayerCase("global_pool", t, FieldType("vector", 2), 5, 5, (("mode", mode),)))
    for mode in ("mean", "max"):
        for t in (image, group):
            out = FieldType("vector", 2 * 5 * 5)
            cases.append(LayerCase("orbit_pool", t, out, 5, 5, (("mode", mode),), (("size", 5),)))
    for bias in (True, False):
        cases.append(LayerCase("linear", vector, FieldType("vector", 5), 5, 5, (("out_features", 5), ("bias", bias))))
    three = FieldType("group", 3)
    cases += [
        ResidualCase("residual", three, three, 7, 7, shortcut="identity"),
        ResidualCase("residual", image, three, 9, 5, shortcut="projection+norm", stride=2),
        ResidualCase("residual", group, three, 9, 5, shortcut="projection", stride=2),
    ]
    return cases


# ------------------------------------------------------------------------------ helpers
def _fail(problem: str) -> None:
    raise AssertionError(problem)


def _flat(x: torch.Tensor, field_type: FieldType) -> torch.Tensor:
    """``[B, C, |G|, H, W] → [B, C·|G|, H, W]`` for group maps (the flattened layout); others unchanged."""
    return x.flatten(1, 2) if field_type.kind == "group" else x


def _exact_elements(group: Group) -> list[int]:
    return [g for g in range(group.order) if group.is_exact(g)]


@torch.no_grad()
def randomise(module: nn.Module, seed: int) -> None:
    """Random trainable parameters (vectors such as biases and scales offset by 0.5) and batch-norm
    running statistics, so that a bug hidden by default values (zero bias, unit scale, zero mean) shows."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.requires_grad and p.is_floating_point():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (0.5 if p.ndim == 1 else 0.0))
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


@torch.no_grad()
def _perturb(module: nn.Module, seed: int, which: str = "parameters") -> None:
    """Add noise in place to the floating-point ``parameters`` of ``module``, its ``state`` (the
    state dict's tensors) or ``all`` its tensors (non-persistent buffers too)."""
    gen = torch.Generator().manual_seed(seed)
    if which == "parameters":
        tensors = list(module.parameters())
    elif which == "state":
        tensors = list(module.state_dict(keep_vars=True).values())
    else:
        tensors = list(module.parameters()) + list(module.buffers())
    for t in tensors:
        if t.is_floating_point():
            t.add_(torch.randn(t.shape, generator=gen).to(t.dtype))


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> str | None:
    """Why two state dicts differ, or ``None``."""
    if set(a) != set(b):
        return f"keys {sorted(set(a) ^ set(b))} are in one but not the other"
    for key in a:
        if a[key].shape != b[key].shape or a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key]):
            return f"{key!r} differs"
    return None


def _signature(module: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def _signature_change(before: dict, after: dict) -> str:
    added = [f"{k!r} {list(after[k][0])}" for k in after if k not in before]
    removed = [repr(k) for k in before if k not in after]
    changed = [
        f"{k!r} {list(before[k][0])} {before[k][1]} → {list(after[k][0])} {after[k][1]}"
        for k in before
        if k in after and before[k] != after[k]
    ]
    parts = [f"adds {', '.join(added)}"] * bool(added) + [f"drops {', '.join(removed)}"] * bool(removed)
    return "; ".join(parts + [f"changes {', '.join(changed)}"] * bool(changed))


def _channels_last(x: torch.Tensor, field_type: FieldType) -> torch.Tensor:
    """``x`` with its flattened layout in ``torch.channels_last`` memory format, as an NHWC network feeds it."""
    if field_type.kind == "vector":
        return x.clone()
    flat = _flat(x, field_type).contiguous(memory_format=torch.channels_last)
    return flat.unflatten(1, x.shape[1:3]) if field_type.kind == "group" else flat


# ------------------------------------------------------------------------------ the checks
@torch.no_grad()
def check_output(layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor) -> dict[str, float]:
    """The eval-mode output is a finite tensor of ``x``'s dtype with the expected field type's shape."""
    if not isinstance(layer, nn.Module):
        _fail(f"the factory returned a {type(layer).__name__}, not an nn.Module")
    y = layer.eval()(x)
    if not isinstance(y, torch.Tensor):
        _fail(f"the layer returned a {type(y).__name__}, not a tensor")
    expected = case.out_shape(group)
    if tuple(y.shape) != expected:
        side = f"{case.out_size}×{case.out_size}"
        _fail(f"output shape {list(y.shape)}, expected {list(expected)} ({case.out_type} on a {side} map)")
    if y.dtype != x.dtype:
        _fail(f"output dtype {y.dtype} for a {x.dtype} input")
    if not torch.isfinite(y).all():
        _fail("the output has NaN or inf entries")
    return {}


def _reference(case: LayerCase, group: Group) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
    """What the contract defines a parameter-free layer to compute (eval mode), or ``None``."""
    p = dict(case.args + case.keywords)
    if case.factory == "activation":
        return f"torch.nn.{ACTIVATIONS[p['name']].__name__}", ACTIVATIONS[p["name"]]()
    if case.factory == "dropout":
        return "the identity in eval mode", lambda x: x
    if case.factory == "group_pool":
        return f"{p['mode']} over the group axis", lambda x: x.amax(2) if p["mode"] == "max" else x.mean(2)
    if case.factory == "global_pool":
        return (
            f"{p['mode']} over all but batch and channel",
            lambda x: x.flatten(2).amax(2) if p["mode"] == "max" else x.flatten(2).mean(2),
        )
    if case.factory == "spatial_pool":
        k, s, pad = p["kernel_size"], p["stride"], p["padding"]

        def pool(x: torch.Tensor) -> torch.Tensor:
            flat = _flat(x, case.in_type)
            if p["mode"] == "max":
                out = F.max_pool2d(flat, k, s, pad)
            else:
                out = F.avg_pool2d(flat, k, s, pad, count_include_pad=False)
            return out.unflatten(1, x.shape[1:3]) if case.in_type.kind == "group" else out

        padding = "zero padding not counted" if p["mode"] == "avg" else "padding never the max"
        return f"{p['mode']} pooling per channel, {padding}", pool
    if case.factory == "orbit_pool":

        def orbit(x: torch.Tensor) -> torch.Tensor:
            if case.in_type.kind == "group":
                x = x.amax(2) if p["mode"] == "max" else x.mean(2)
            images = torch.stack([transform_image(x, group, g) for g in range(group.order)])
            return (images.amax(0) if p["mode"] == "max" else images.mean(0)).flatten(1)

        return f"{p['mode']} over the group axis and over g·x for every element g, flattened", orbit
    return None


@torch.no_grad()
def check_reference(layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor, tolerance: float) -> dict:
    """A layer without parameters computes what the contract defines it to (e.g. average pooling
    does not count zero padding), so that backends are interchangeable layer by layer."""
    reference = _reference(case, group)
    if reference is None:
        return {}
    what, function = reference
    error = relative_error(layer.eval()(x), function(x))
    if error > tolerance:
        _fail(f"differs from what the contract defines ({what}): relative error {error:.2g}")
    return {}


@torch.no_grad()
def check_conv(layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor, tolerance: float) -> dict[str, float]:
    """An ``EquivariantConv`` with the factory's hyper-parameters whose ``filter_bank()`` and
    ``expanded_bias()`` have the documented shapes and are what it computes, also after its
    weights change in eval mode (a cached bank must follow them)."""
    if not isinstance(layer, EquivariantConv):
        _fail(f"returns a {type(layer).__name__}, not an EquivariantConv (gcnnkit.core.layers)")
    if layer.group != group:
        _fail(f"its group is {getattr(layer.group, 'name', layer.group)!r}, not {group.name}")
    for name in ("kernel_size", "stride", "padding", "dilation"):
        if getattr(layer, name, None) != case.param(name):
            _fail(f"its {name} is {getattr(layer, name, None)!r}, not {case.param(name)!r}")
    n, out, k = group.order, case.param("out_fields"), case.param("kernel_size")
    c_in = case.in_type.channels * (n if case.in_type.kind == "group" else 1)
    layer.eval()
    bank, bias = layer.filter_bank(), layer.expanded_bias()
    if tuple(bank.shape) != (out * n, c_in, k, k):
        _fail(
            f"filter_bank() has shape {list(bank.shape)}, expected [out_fields·|G|, C_in(·|G|), k, k] = "
            f"{[out * n, c_in, k, k]}"
        )
    if case.param("bias") != (bias is not None):
        _fail(f"expanded_bias() is {'None' if bias is None else 'a tensor'} for bias={case.param('bias')}")
    if bias is not None:
        if tuple(bias.shape) != (out * n,):
            _fail(f"expanded_bias() has shape {list(bias.shape)}, expected [out_fields·|G|] = [{out * n}]")
        per_field = bias.reshape(out, n)
        if not torch.equal(per_field, per_field[:, :1].expand(out, n)):
            _fail("expanded_bias() is not constant over each field's |G| channels")

    def conv2d_error() -> float:
        y = _flat(layer(x), case.out_type)
        stride, padding, dilation = layer.stride, layer.padding, layer.dilation
        with torch.enable_grad():  # a bank computed without any cache
            layer.train()
            bank, bias = layer.filter_bank().detach(), layer.expanded_bias()
            layer.eval()
        bias = None if bias is None else bias.detach()
        return relative_error(y, F.conv2d(_flat(x, case.in_type), bank, bias, stride, padding, dilation))

    error = conv2d_error()
    if error > tolerance:
        _fail(f"the layer differs from conv2d with its filter_bank() and expanded_bias(): relative error {error:.2g}")
    _perturb(layer, seed=1)  # in place, in eval mode without grad: where a cached bank lives
    error = conv2d_error()
    if error > tolerance:
        _fail(
            f"after its weights change in eval mode the layer differs from conv2d with its new filter_bank(): "
            f"relative error {error:.2g} (a stale cached bank?)"
        )
    return {}


@torch.no_grad()
def check_equivariance(
    layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor, tolerance: float
) -> dict[str, float]:
    """``f(g·x) = g·f(x)`` for every exact element, in eval mode and (but dropout) in train mode."""
    dtype = str(x.dtype).removeprefix("torch.")
    worst = 0.0
    for mode in ("eval", "train"):
        if mode == "train" and case.factory == "dropout":
            continue
        layer.train(mode == "train")
        result = equivariance_errors(layer, group, case.in_type, case.out_type, x, _exact_elements(group))
        layer.eval()
        if result.max_error > tolerance:
            _fail(
                f"not equivariant in {dtype}, {mode} mode: relative error {result.max_error:.2g} at element "
                f"{result.worst_element} exceeds {tolerance:g}"
            )
        worst = max(worst, result.max_error)
    return {f"equivariance_{dtype}": worst}


@torch.no_grad()
def check_export(
    layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor, tolerance: float
) -> dict[str, float]:
    """``export_plain()`` computes the layer's eval-mode output on the flattened layout from plain
    torch modules holding copies of the weights; a plain torch module does so itself."""
    dtype = str(x.dtype).removeprefix("torch.")
    layer.eval()
    xf, yf = _flat(x, case.in_type), _flat(layer(x), case.out_type)
    if not isinstance(layer, EquivariantLayer):
        plain = f"is a plain {type(layer).__name__}, but"
        try:
            error = relative_error(layer(xf), yf)
        except Exception as exc:
            _fail(f"{plain} fails on the flattened layout [B, C·|G|, H, W]: {type(exc).__name__}: {exc}")
        if error > tolerance:
            _fail(f"{plain} computes something else on the flattened layout: relative error {error:.2g}")
        return {f"export_{dtype}": error}
    plain = layer.export_plain()
    if not isinstance(plain, nn.Module):
        _fail(f"export_plain() returned a {type(plain).__name__}, not an nn.Module")
    inner = sorted({type(m).__name__ for m in plain.modules() if isinstance(m, EquivariantLayer)})
    if inner:
        _fail(f"export_plain() contains layers of the contract ({', '.join(inner)}), not plain torch modules")
    plain.to(dtype=x.dtype).eval()
    out = plain(xf)
    if out.shape != yf.shape:
        _fail(f"export_plain() gives shape {list(out.shape)} on the flattened layout, expected {list(yf.shape)}")
    error = relative_error(out, yf)
    if error > tolerance:
        _fail(
            f"export_plain() differs from the layer (eval mode) on the flattened layout in {dtype}: "
            f"relative error {error:.2g} exceeds {tolerance:g}"
        )
    saved = _state(layer)
    _perturb(layer, seed=2, which="state")
    shared = not torch.equal(plain(xf), out)
    layer.load_state_dict(saved)
    if shared:
        _fail("export_plain() shares tensors with the layer (changing the layer changes the export); return copies")
    return {f"export_{dtype}": error}


def check_state_dict(layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor) -> dict[str, float]:
    """The ``state_dict`` keeps its keys, shapes and dtypes across train/eval mode and forwards."""
    layer.train()
    reference = _signature(layer)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("after a forward in train mode", lambda: layer(x)),
        ("in eval mode", layer.eval),
        ("after a forward in eval mode", lambda: layer(x)),
        ("back in train mode", layer.train),
    ]
    for label, step in steps:
        with torch.set_grad_enabled(layer.training):
            step()
        after = _signature(layer)
        if after != reference:
            _fail(f"the state_dict changes {label}: it {_signature_change(reference, after)}")
    layer.eval()
    return {}


def check_copies(layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor) -> dict[str, float]:
    """``pickle`` and ``copy.deepcopy`` (in eval mode after a forward, where caches live; deepcopy in
    train mode too): the same class and mode, identical state and eval-mode output, and no tensor
    shared with the original."""
    makers = {"pickle": lambda m: pickle.loads(pickle.dumps(m)), "copy.deepcopy": copy.deepcopy}
    with torch.no_grad():
        reference = layer.eval()(x)
    for how, training in (("pickle", False), ("copy.deepcopy", False), ("copy.deepcopy", True)):
        mode = "train" if training else "eval"
        twin = makers[how](layer.train(training))
        layer.eval()
        if type(twin) is not type(layer):
            _fail(f"{how} in {mode} mode gives a {type(twin).__name__}, not a {type(layer).__name__}")
        if twin.training != training:
            _fail(f"{how} in {mode} mode gives a layer in {'train' if twin.training else 'eval'} mode")
        problem = _same_state(layer.state_dict(), twin.state_dict())
        if problem:
            _fail(f"{how} in {mode} mode changes the state_dict: {problem}")
        with torch.no_grad():
            out = twin.eval()(x)
            if not torch.equal(out, reference):
                _fail(f"{how} in {mode} mode changes the output: relative error {relative_error(out, reference):.2g}")
            _perturb(twin, seed=3, which="all")
            if not torch.equal(layer(x), reference):
                _fail(f"the layer made by {how} shares tensors with the original (changing it changes the original)")
    return {}


def check_backward(layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor) -> dict[str, float]:
    """In train mode every trainable parameter and the input receive a finite gradient."""
    layer.train()
    layer.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=y.dtype)
    (y * weights).sum().backward()
    missing = [name for name, p in layer.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        _fail(f"parameters {missing} get no gradient")
    bad = [name for name, p in layer.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad or xg.grad is None or not torch.isfinite(xg.grad).all():
        _fail(f"non-finite or missing gradient of {bad or 'the input'}")
    layer.zero_grad(set_to_none=True)
    layer.eval()
    return {}


def check_float64(
    layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor, tolerance: float
) -> dict[str, float]:
    """After ``.double()`` every floating-point tensor is float64, the output is float64, and
    equivariance, export and channels_last hold to ``tolerance``."""
    twin = copy.deepcopy(layer).double().eval()
    narrow = [k for k, v in twin.state_dict().items() if v.is_floating_point() and v.dtype != torch.float64]
    if narrow:
        _fail(f"after .double() {narrow} are not float64")
    x = x.double()
    with torch.no_grad():
        y = twin(x)
    if y.dtype != torch.float64:
        _fail(f"after .double() the output is {y.dtype}, not float64")
    results = check_equivariance(twin, case, group, x, tolerance)
    results.update(check_export(twin, case, group, x, tolerance))
    results.update(check_channels_last(twin, case, group, x, tolerance))
    return results


def check_channels_last(
    layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor, tolerance: float
) -> dict[str, float]:
    """Setting ``channels_last`` (on an NHWC input, as :meth:`EquivariantNet.set_channels_last` does)
    changes no output, and in train mode no input or parameter gradient and no running statistic."""
    if not any(isinstance(m, EquivariantLayer) for m in layer.modules()):
        return {}
    dtype = str(x.dtype).removeprefix("torch.")
    worst = 0.0
    for training in (False, True):
        if training and case.factory == "dropout":
            continue
        mode = "train" if training else "eval"
        plain, nhwc = copy.deepcopy(layer).train(training), copy.deepcopy(layer).train(training)
        for m in nhwc.modules():
            if isinstance(m, EquivariantLayer):
                m.channels_last = True
        xa = x.clone().requires_grad_(training)
        xb = _channels_last(x, case.in_type).detach().requires_grad_(training)
        with torch.set_grad_enabled(training):
            ya, yb = plain(xa), nhwc(xb)
        errors = {"output": relative_error(yb, ya)}
        if training:
            weights = torch.randn(ya.shape, generator=torch.Generator().manual_seed(5), dtype=ya.dtype)
            (ya * weights).sum().backward()
            (yb * weights).sum().backward()
            errors["input gradient"] = relative_error(xb.grad, xa.grad)
            grads = dict(plain.named_parameters())
            for name, p in nhwc.named_parameters():
                if p.grad is not None and grads[name].grad is not None:
                    errors[f"gradient of {name}"] = relative_error(p.grad, grads[name].grad)
            buffers = dict(plain.named_buffers())
            for name, b in nhwc.named_buffers():
                if b.is_floating_point() and name in buffers:
                    errors[name] = relative_error(b, buffers[name])
        what, error = max(errors.items(), key=lambda item: item[1])
        if error > tolerance:
            _fail(
                f"channels_last changes the {what} in {dtype}, {mode} mode: relative error {error:.2g} "
                f"exceeds {tolerance:g}"
            )
        worst = max(worst, error)
    return {f"channels_last_{dtype}": worst}


def check_transfer(
    backend: Backend, layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor, tolerance: float, seed: int
) -> dict[str, float]:
    """``export_weights`` gives detached tensors in the transfer format; ``import_weights`` into a
    second layer of the same factory returns a residual ≥ 0, leaves the source alone and, when the
    residual is ≤ :data:`EXACT_RESIDUAL` and the group exact, makes the second layer compute what the
    first does. For a group with interpolated elements the transfer format (the tied filter, i.e. the
    bank's identity slice) need not determine the bank, so the output difference is only reported."""
    layer.eval()
    if isinstance(layer, ResidualBlock):
        return _check_block_transfer(backend, layer, case, group, x, tolerance, seed)
    state = backend.export_weights(layer)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        _fail(f"export_weights returned a {type(state).__name__}, not a mapping of names to tensors")
    if any(v.requires_grad for v in state.values()):
        _fail("export_weights returned tensors that require grad; return detached copies")
    if case.is_conv:
        _check_conv_transfer_format(layer, case, group, state, tolerance)
    if case.factory == "batch_norm":
        c = case.in_type.channels
        for key in ("weight", "bias", "running_mean", "running_var"):
            if key not in state or tuple(state[key].shape) != (c,):
                _fail(f"export_weights has no {key!r} of shape [C] = [{c}] (the transfer format of batch norm)")
    twin = case.build(backend, group)
    randomise(twin, seed + 1)
    twin.eval()
    source = _state(layer)
    residual = backend.import_weights(twin, state)
    if not isinstance(residual, (int, float)) or not residual >= 0 or math.isinf(residual):
        _fail(f"import_weights returned {residual!r}, not a relative residual ≥ 0")
    if _same_state(source, layer.state_dict()) is not None:
        _fail("import_weights into another layer changed the source layer: the layers share tensors")
    results = {"transfer_residual": float(residual)}
    with torch.no_grad():
        error = relative_error(twin(x), layer(x))
    if not group.exact:  # the identity slice need not determine an interpolated bank: reported only
        results["transfer_error_interpolated"] = error
    elif residual <= EXACT_RESIDUAL:
        if error > tolerance:
            _fail(
                f"import_weights(twin, export_weights(layer)) has residual {residual:.2g} but the twin computes "
                f"something else: relative error {error:.2g}"
            )
        results["transfer_error"] = error
    return results


@torch.no_grad()
def _check_block_transfer(
    backend: Backend, layer: ResidualBlock, case: LayerCase, group: Group, x: torch.Tensor, tolerance: float, seed: int
) -> dict[str, float]:
    """A residual block transfers part by part (:func:`gcnnkit.core.residual.transfer_layer_weights`,
    what ``gcnnkit compare`` does): a second block then computes what the first does."""
    twin = case.build(backend, group)
    randomise(twin, seed + 1)
    twin.eval()
    residual = transfer_layer_weights(backend, layer, backend, twin)
    results = {"transfer_residual": float(residual)}
    error = relative_error(twin(x), layer(x))
    if not group.exact:
        results["transfer_error_interpolated"] = error
    elif residual <= EXACT_RESIDUAL:
        if error > tolerance:
            _fail(f"a residual block transferred part by part computes something else: relative error {error:.2g}")
        results["transfer_error"] = error
    return results


def _check_conv_transfer_format(
    layer: EquivariantConv, case: LayerCase, group: Group, state: Mapping[str, torch.Tensor], tolerance: float
) -> None:
    """``weight`` ``[C_out, C_in, k, k]`` (lifting) or ``[C_out, C_in, |G|, k, k]`` (group) and ``bias``
    ``[C_out]``; for exact groups the weight is the bank's identity slice (output channel ``o·|G|``)."""
    n, out, k, c = group.order, case.param("out_fields"), case.param("kernel_size"), case.in_type.channels
    shape = (out, c, k, k) if case.in_type.kind == "image" else (out, c, n, k, k)
    if "weight" not in state or tuple(state["weight"].shape) != shape:
        got = list(state["weight"].shape) if "weight" in state else "none"
        _fail(f"export_weights gives weight {got}, expected {list(shape)} (the transfer format)")
    if case.param("bias") != ("bias" in state and state["bias"] is not None):
        _fail(f"export_weights {'has no' if case.param('bias') else 'has a'} 'bias' for bias={case.param('bias')}")
    if "bias" in state and tuple(state["bias"].shape) != (out,):
        _fail(f"export_weights gives bias {list(state['bias'].shape)}, expected [{out}]")
    if not group.exact:
        return
    with torch.no_grad():
        identity = layer.filter_bank().reshape(out, n, c * (n if case.in_type.kind == "group" else 1), k, k)[:, 0]
        error = relative_error(state["weight"].to(identity.dtype), identity.reshape(shape))
        if error > tolerance:
            _fail(
                f"the transfer-format weight is not the identity slice of filter_bank() (output channels o·|G|): "
                f"relative error {error:.2g}"
            )
        if "bias" in state:
            error = relative_error(state["bias"].to(identity.dtype), layer.expanded_bias().reshape(out, n)[:, 0])
            if error > tolerance:
                _fail(f"the transfer-format bias is not the bias of each field: relative error {error:.2g}")


def check_dropout(layer: nn.Module, case: LayerCase, group: Group, x: torch.Tensor) -> dict[str, float]:
    """In train mode every entry is dropped (0) or kept and scaled by ``1/(1-p)``, and both happen."""
    if case.factory != "dropout":
        return {}
    p = case.param("p")
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        y = layer.train()(x)
    layer.eval()
    kept = (y - x / (1 - p)).abs() <= 1e-5 * x.abs().max()
    dropped = y == 0
    if not (kept | dropped).all():
        _fail(f"in train mode some entries are neither 0 nor x/(1-p) with p={p}")
    if not dropped.any() or not kept.any():
        _fail(f"in train mode with p={p} {'no entry is dropped' if not dropped.any() else 'every entry is dropped'}")
    return {}


def check_refusals(backend: Backend, group: Group) -> None:
    """An unknown activation or pooling mode is refused with one line naming it and what is allowed."""
    t = FieldType("group", 2)
    calls = [
        ("activation", (_BAD,), {}, "relu"),
        ("group_pool", (_BAD,), {}, "max"),
        ("spatial_pool", (_BAD, 2, None, 0), {}, "max"),
        ("global_pool", (_BAD,), {}, "avg"),
        ("orbit_pool", (_BAD,), {"size": 5}, "mean"),
    ]
    for factory, args, keywords, allowed in calls:
        label = f"{factory}({t}, {_BAD!r})"
        try:
            getattr(backend, factory)(group, t, *args, **keywords)
        except Exception as exc:
            message = str(exc).strip()
            if _BAD not in message or allowed not in message or "\n" in message:
                _fail(
                    f"{label} is refused with {message!r}; the message must be one line naming {_BAD!r} "
                    f"and what is allowed ({allowed!r}, ...)"
                )
        else:
            _fail(f"{label} is accepted; refuse it in one line naming the value and what is allowed")


def check_backend(backend: Any) -> None:
    """A :class:`Backend` with a name, the current ``api_version``, and ``with_options`` that refuses
    an unknown option in one line naming it."""
    if not isinstance(backend, Backend):
        _fail(f"{type(backend).__name__} is not a gcnnkit.core.backend.Backend")
    if not isinstance(backend.name, str) or not backend.name:
        _fail(f"its name is {backend.name!r}; set the class attribute name to the entry point's name")
    if backend.api_version != BACKEND_API_VERSION:
        _fail(
            f"its api_version is {backend.api_version!r}; this gcnnkit has BACKEND_API_VERSION = {BACKEND_API_VERSION}"
        )
    if not isinstance(backend.with_options(), Backend):
        _fail("with_options() without options does not return a Backend")
    try:
        backend.with_options(no_such_option=1)
    except Exception as exc:
        if "no_such_option" not in str(exc) or "\n" in str(exc).strip():
            _fail(
                f"with_options(no_such_option=1) is refused with {str(exc)!r}; the message must be one line "
                f"naming the option"
            )
    else:
        _fail("with_options(no_such_option=1) is accepted; refuse unknown options in one line naming them")


# ------------------------------------------------------------------------------ the suite
@dataclass
class LayerResult:
    """One layer of one group: what was measured (relative errors, residuals), or why it failed."""

    group: str
    layer: str
    measurements: dict[str, float] = field(default_factory=dict)
    failure: str | None = None


@dataclass
class ConformanceReport:
    """What :func:`assert_backend_conforms` checked and measured.

    Attributes:
        backend: the backend's name.
        groups: the groups checked; ``skipped``: the others, with the reason.
        results: one :class:`LayerResult` per group and layer case.
        failures: one line per failed check (empty when the backend conforms).
    """

    backend: str
    groups: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    results: list[LayerResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def worst(self, measurement: str) -> float | None:
        """The largest value of ``measurement`` (e.g. ``"equivariance_float64"``) over all layers."""
        values = [r.measurements[measurement] for r in self.results if measurement in r.measurements]
        return max(values) if values else None

    def summary(self) -> str:
        names = sorted({key for r in self.results for key in r.measurements})
        worst = ", ".join(f"{name} {self.worst(name):.2g}" for name in names)
        skipped = "".join(f"; skipped {g}: {why}" for g, why in self.skipped.items())
        verdict = "conforms" if not self.failures else f"fails {len(self.failures)} check(s)"
        return f"backend {self.backend!r} {verdict} on {', '.join(self.groups)}; worst: {worst}{skipped}"


class ConformanceError(AssertionError):
    """The backend breaks the contract; ``report`` holds every failure and measurement."""

    def __init__(self, message: str, report: ConformanceReport) -> None:
        super().__init__(message)
        self.report = report


def _run(check: str, function: Callable[..., dict[str, float] | None], *args: Any) -> dict[str, float]:
    """Run one check; any exception becomes an AssertionError naming the check."""
    try:
        return function(*args) or {}
    except AssertionError as exc:
        raise AssertionError(f"{check}: {exc}") from exc
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise AssertionError(f"{check}: raised {type(exc).__name__}: {detail}") from exc


def check_layer(
    backend: Backend, group: Group, case: LayerCase, tolerance: float, float64_tolerance: float, seed: int
) -> LayerResult:
    """Every check on one layer, in order; the first failure ends the layer's checks (later ones
    build on the earlier promises)."""
    result = LayerResult(group.name, case.label)
    x = case.input(group, seed)
    tolerance64 = float64_tolerance if group.exact else tolerance
    try:
        layer = _run("build", case.build, backend, group)
        with torch.no_grad():
            _run("build", randomise, layer, seed)
        steps: list[tuple[str, Callable, tuple]] = [
            ("output", check_output, (layer, case, group, x)),
            ("reference", check_reference, (layer, case, group, x, tolerance)),
            ("conv", check_conv, (layer, case, group, x, tolerance)) if case.is_conv else None,
            ("equivariance", check_equivariance, (layer, case, group, x, tolerance)),
            ("export", check_export, (layer, case, group, x, tolerance)),
            ("state_dict", check_state_dict, (layer, case, group, x)),
            ("copies", check_copies, (layer, case, group, x)),
            ("backward", check_backward, (layer, case, group, x)),
            ("channels_last", check_channels_last, (layer, case, group, x, tolerance)),
            ("float64", check_float64, (layer, case, group, x, tolerance64)),
            ("transfer", check_transfer, (backend, layer, case, group, x, tolerance, seed)),
            ("dropout", check_dropout, (layer, case, group, x)),
        ]
        for step in steps:
            if step is not None:
                name, function, args = step
                result.measurements.update(_run(name, function, *args))
    except AssertionError as exc:
        result.failure = str(exc)
    return result


def _resolve_groups(groups: Iterable[Group | str] | None, report: ConformanceReport) -> list[Group]:
    from gcnnkit.core.registry import get_group

    if groups is None:
        resolved = []
        for name in DEFAULT_GROUPS:
            try:
                resolved.append(get_group(name))
            except PluginError as exc:
                report.skipped[name] = "not installed" if str(exc).startswith("unknown group") else str(exc)
        return resolved
    if isinstance(groups, (str, Group)):
        groups = [groups]
    return [g if isinstance(g, Group) else get_group(g) for g in groups]


def assert_backend_conforms(
    backend: Backend | str,
    groups: Iterable[Group | str] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    float64_tolerance: float = FLOAT64_TOLERANCE,
    seed: int = 0,
) -> ConformanceReport:
    """Check every promise of the backend contract on ``backend`` (see the module docstring).

    Args:
        backend: a :class:`~gcnnkit.core.backend.Backend`, or the name of an installed one.
        groups: groups or group names; default: those of :data:`DEFAULT_GROUPS` that are installed.
            Groups the backend does not support (:meth:`Backend.supports`) are skipped and reported.
        tolerance: largest relative error in float32 (equivariance, export, channels_last, transfer).
        float64_tolerance: largest relative error in float64, for groups whose elements are all exact.
        seed: seed of the random parameters, statistics and inputs.

    It runs on the CPU, with one thread (restored afterwards): its tensors are tiny.

    Returns:
        the :class:`ConformanceReport` (measurements per group and layer) when everything holds.

    Raises:
        ConformanceError: an ``AssertionError`` listing each failed check with the backend, group,
            layer factory and arguments, and what failed; ``.report`` has all of them.
    """
    if isinstance(backend, str):
        from gcnnkit.core.registry import get_backend

        backend = get_backend(backend)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they save (and contend on a busy machine)
    try:
        return _check_backend_conforms(backend, groups, tolerance, float64_tolerance, seed)
    finally:
        torch.set_num_threads(threads)


def _check_backend_conforms(
    backend: Backend, groups: Iterable[Group | str] | None, tolerance: float, float64_tolerance: float, seed: int
) -> ConformanceReport:
    report = ConformanceReport(str(getattr(backend, "name", type(backend).__name__)))
    try:
        check_backend(backend)
    except AssertionError as exc:
        report.failures.append(f"the backend itself: {exc}")
        raise ConformanceError(_message(report), report) from None
    for group in _resolve_groups(groups, report):
        reason = backend.supports(group)
        if reason is not None:
            report.skipped[group.name] = reason
            continue
        report.groups.append(group.name)
        try:
            check_refusals(backend, group)
        except AssertionError as exc:
            report.failures.append(f"group {group.name}, errors: {exc}")
        for case in layer_cases():
            result = check_layer(backend, group, case, tolerance, float64_tolerance, seed)
            report.results.append(result)
            if result.failure is not None:
                report.failures.append(f"group {group.name}, {case.label}: {result.failure}")
    if not report.groups:
        skipped = "; ".join(f"{g}: {why}" for g, why in report.skipped.items()) or "no groups given"
        report.failures.append(f"it supports none of the groups checked ({skipped})")
    if report.failures:
        raise ConformanceError(_message(report), report)
    return report


def _message(report: ConformanceReport) -> str:
    lines = report.failures[:MAX_LISTED]
    more = len(report.failures) - len(lines)
    tail = [f"... and {more} more (ConformanceError.report.failures lists them all)"] if more > 0 else []
    header = (
        f"backend {report.backend!r} does not conform to the backend contract "
        f"(API version {BACKEND_API_VERSION}): {len(report.failures)} failure(s)"
    )
    return "\n  ".join([header, *lines, *tail])
