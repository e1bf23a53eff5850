"""Build an architecture spec into an ``nn.Module`` with a backend.

:func:`build_network` walks the validated spec, tracks the :class:`~gcnnkit.core.fields.FieldType`
between layers (image → group → … → vector) and asks the backend for each layer. The result,
:class:`EquivariantNet`, remembers every layer's input and output type so its equivariance
can be checked layer by layer (:mod:`gcnnkit.core.equivariance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gcnnkit.core.backend import Backend
from gcnnkit.core.errors import PluginError, SpecError
from gcnnkit.core.fields import FieldType, field_type_from_spec
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantConv, EquivariantLayer
from gcnnkit.core.residual import ResidualBlock, build_projection, residual_activation
from gcnnkit.core.steerable_layers import gated_output_type, restricted_type
from gcnnkit.models.grid import conv_output_size, grid_problem, resolve_padding
from gcnnkit.models.spec import MAX_WIDTH_MULTIPLIER, LayerSpec, parse_layers

#: How ``out`` of ``lift``/``gconv`` layers is read.
#: ``fields``: the number of fields (each ``|G|`` channels).
#: ``params``: CNN channels; the G-CNN gets ``round(out / sqrt(|G|))`` fields, which keeps the
#: parameter count of group convolutions (``out_fields · in_fields · |G| · k²``) equal to that
#: of the CNN (``out · in · k²``) — so the same spec on ``C1`` is a like-for-like CNN baseline.
WIDTH_MODES = ("fields", "params")


class EquivariantNet(nn.Module):
    """A sequence of layers on plain tensors, each with a known input and output field type.

    Attributes:
        group: the group the network is equivariant to.
        backend_name: name of the backend that built the layers.
        specs: the resolved layer specs.
        in_types / out_types: field type before / after each layer.
        channels_last: whether convolutions run in ``torch.channels_last`` (NHWC) memory format
            (:meth:`set_channels_last`).
    """

    channels_last: bool = False

    def __init__(
        self,
        group: Group,
        backend_name: str,
        specs: Sequence[LayerSpec],
        layers: Sequence[nn.Module],
        in_types: Sequence[FieldType],
        out_types: Sequence[FieldType],
        layer_groups: Sequence[Group] | None = None,
        element_maps: Sequence[Sequence[int | None]] | None = None,
    ) -> None:
        super().__init__()
        self.group = group
        self.backend_name = backend_name
        self.specs = list(specs)
        self.layers = nn.ModuleList(layers)
        self.in_types = list(in_types)
        self.out_types = list(out_types)
        identity = tuple(range(group.order))
        self.layer_groups = list(layer_groups) if layer_groups is not None else [group] * len(self.layers)
        self.element_maps = (
            [tuple(m) for m in element_maps] if element_maps is not None else [identity] * len(self.layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images → ``[B, classes]`` logits (or the last layer's type)."""
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            x = layer(x)
        return x

    def set_channels_last(self, enabled: bool = True) -> EquivariantNet:
        """Run every convolution in ``torch.channels_last`` (NHWC) memory format, or back in NCHW.

        Layers of the contract (:class:`~gcnnkit.core.layers.EquivariantLayer`) get their
        ``channels_last`` flag; convolutions that honour it make their ``conv2d`` input and filter
        bank NHWC, so their ``[B, C·|G|, H, W]``
        outputs — and the ``[B, C, |G|, H, W]`` views of them — stay NHWC through the pointwise
        layers; plain ``nn.Conv2d`` layers get NHWC weights. Values are unchanged (up to float
        rounding of another summation order); only the layout, hence the kernels, change. NHWC is
        the layout of tensor-core convolutions on CUDA, mostly under bf16/fp16 autocast.
        """
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, EquivariantLayer):
                module.channels_last = enabled
            elif isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
        self.channels_last = enabled
        return self

    @property
    def in_type(self) -> FieldType:
        return self.in_types[0]

    @property
    def out_type(self) -> FieldType:
        return self.out_types[-1]

    def layer_names(self) -> list[str]:
        """``"<index>.<type>"`` for each layer, e.g. ``"0.lift"``."""
        return [f"{i}.{spec.type}" for i, spec in enumerate(self.specs)]

    def typed_layers(self) -> Iterator[tuple[str, nn.Module, FieldType, FieldType]]:
        """Yield ``(name, module, in_type, out_type)`` for every layer."""
        yield from zip(self.layer_names(), self.layers, self.in_types, self.out_types, strict=True)

    def symmetry(self, index: int) -> tuple[Group, tuple[int | None, ...]]:
        """The group acting on the output of layer ``index`` (``-1``: on the input) and, for each element
        of :attr:`group`, its index there (``None``: not in it, after a restriction)."""
        if index < 0:
            return self.group, tuple(range(self.group.order))
        return self.layer_groups[index], self.element_maps[index]

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def field_count(out: int, group: Group, widths: str, multiplier: float = 1.0) -> int:
    """Number of fields for a ``lift``/``gconv`` ``out`` under the width mode (see :data:`WIDTH_MODES`),
    times ``multiplier`` (``model.width_multiplier``), rounded, at least 1."""
    fields = out if widths == "fields" else out / math.sqrt(group.order)
    return max(1, round(fields * multiplier))


def scaled_counts(out: Mapping[str, int], multiplier: float) -> dict[str, int]:
    """A steerable ``out`` mapping with every field count times ``multiplier`` (rounded, at least 1).

    The layout of a gated nonlinearity's input survives: when the first entry is ``trivial`` with as
    many fields as all the others together (one gate per gated field), it stays their scaled sum.
    """
    if multiplier == 1.0:
        return dict(out)
    scaled = {
        name: max(1, round(count * multiplier)) if isinstance(count, int) else count for name, count in out.items()
    }
    names = list(out)
    rest = [out[name] for name in names[1:]]
    if (
        names[0] == "trivial"
        and len(names) > 1
        and all(isinstance(c, int) for c in rest)
        and out["trivial"] == sum(rest)
    ):
        scaled["trivial"] = sum(scaled[name] for name in names[1:])
    return scaled


@dataclass
class _Builder:
    """What building a network tracks from layer to layer: the field type and the map's side."""

    backend: Backend
    group: Group
    num_classes: int
    widths: str
    current: FieldType
    size: int | None  # side of the square feature map, when the input size is known
    element_map: tuple[int | None, ...] = ()  # each input-group element's index in ``group`` (restriction)
    width_multiplier: float = 1.0  # model.width_multiplier: scales every field count


#: A layer builder: ``(state, spec, where) → (module, output field type)``; it may update ``state.size``.
LayerBuilder = Callable[[_Builder, LayerSpec, str], tuple[nn.Module, FieldType]]


def _needs_map(b: _Builder, where: str) -> None:
    if b.current.kind == "vector":
        raise SpecError(f"{where}: needs an image or group feature map but gets {b.current}; put it before global_pool")


def _conv(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    p, group = spec.params, b.group
    expected = "image" if spec.type == "lift" else "group"
    if b.current.kind != expected and not (spec.type == "gconv" and b.current.kind == "steerable"):
        if spec.type == "lift":
            hint = "a network lifts once, from the input image; use 'gconv' after it"
        else:
            hint = "start with 'lift' and keep every 'gconv' before 'group_pool'"
        raise SpecError(f"{where}: expects a {expected} input but gets {b.current}; {hint}")
    if group.order > 1 and p["kernel"] % 2 == 0 and not (p["padding"] == 0 and p["stride"] == 1):
        raise SpecError(
            f"{where}: kernel {p['kernel']} is even, so its rotations/reflections are not centred on "
            f"a pixel and {group.name}-equivariance breaks unless the output grid is centred on the "
            f"input grid; allowed: odd kernels (1, 3, 5, 7, ...), an even kernel with padding 0 and "
            f"stride 1, or group C1"
        )
    padding = resolve_padding(p["padding"], p["kernel"], p["dilation"])
    if p["padding"] == "same" and p["kernel"] % 2 == 0:
        raise SpecError(f"{where}: padding 'same' needs an odd kernel, got {p['kernel']}; give an int")
    out_type = _conv_out_type(b, p["out"], where)
    if out_type.kind == "steerable" or b.current.kind == "steerable":
        factory = b.backend.steerable_conv
        with _located(where):
            layer = factory(group, b.current, out_type, p["kernel"], p["stride"], padding, p["dilation"], p["bias"])
    else:
        factory = b.backend.lifting_conv if spec.type == "lift" else b.backend.group_conv
        layer = factory(
            group, b.current, out_type.channels, p["kernel"], p["stride"], padding, p["dilation"], p["bias"]
        )
    if not isinstance(layer, EquivariantConv):
        raise PluginError(
            f"backend {b.backend.name!r}: {factory.__name__} returned a {type(layer).__name__}, not an "
            f"EquivariantConv (gcnnkit.core.layers); the backend was written for another layer contract"
        )
    if b.size is not None:
        b.size = conv_output_size(b.size, p["kernel"], p["stride"], padding, p["dilation"])
    return layer, out_type


def _conv_out_type(b: _Builder, out: int | str | dict, where: str) -> FieldType:
    """``out`` of a conv: ``classes`` or an int (regular fields, scaled by the width mode) → a ``group``
    type, as always; a mapping ``{representation: count}`` (fields, whatever the width mode) → the
    type of those fields in that order (all regular: a ``group`` type again)."""
    if isinstance(out, dict):
        return field_type_from_spec(b.group, scaled_counts(out, b.width_multiplier), where)
    if out == "classes":
        return FieldType("group", b.num_classes)
    return FieldType("group", field_count(out, b.group, b.widths, b.width_multiplier))


def _batchnorm(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    _needs_map(b, where)
    with _located(where):
        return b.backend.batch_norm(b.group, b.current), b.current


def _layernorm(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    p = spec.params
    with _located(where):
        return b.backend.layer_norm(b.group, b.current, p["affine"], float(p["eps"])), b.current


def _activation(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    with _located(where):
        return b.backend.activation(b.group, b.current, spec.params["fn"]), b.current


class _located:
    """Prefix a :class:`SpecError` raised by a backend factory with the layer it was building."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, SpecError) and not str(exc).startswith(self.where):
            raise SpecError(f"{self.where}: {exc}") from None
        return False


def _norm_act(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    _needs_map(b, where)
    with _located(where):
        return b.backend.norm_nonlinearity(b.group, b.current, spec.params["fn"], spec.params["bias"]), b.current


def _gated(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    _needs_map(b, where)
    out = gated_output_type(b.group, b.current, where)
    with _located(where):
        return b.backend.gated_nonlinearity(b.group, b.current), out


def _restrict(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    _needs_map(b, where)
    sid = _subgroup_id(b.group, spec.params["subgroup"], where)
    with _located(where):
        layer = b.backend.restrict(b.group, b.current, sid)
    out = restricted_type(b.group, b.current, sid)
    sub, inclusion = b.group.subgroup(sid)
    where_in = {parent: i for i, parent in enumerate(inclusion)}
    b.element_map = tuple(None if g is None else where_in.get(g) for g in b.element_map)
    b.group = sub
    return layer, out


def _subgroup_id(group: Group, value, where: str):
    """``subgroup:`` of ``restrict``: a subgroup's name (``C4``, ``D1``), its id (``4``, ``[null, 4]``), or
    ``rotations`` (the rotations ``C_N`` of ``D_N``)."""
    subgroups = group.subgroups()
    names = {group.subgroup(sid)[0].name: sid for sid in subgroups}
    if value == "rotations":  # D_N -> C_N, whatever N: lets a preset restrict on every dihedral group
        cyclic = [name for name in names if name[:1] == "C" and name[1:].isdigit()]
        largest = max(cyclic, key=lambda name: int(name[1:]), default=None)
        if largest is None or group.subgroup(names[largest])[0].order == group.order:
            raise SpecError(
                f"{where}.subgroup: 'rotations' needs a group with reflections (D_N), "
                f"but {group.name} has no reflections to drop"
            )
        return names[largest]
    if isinstance(value, str) and value in names:
        return names[value]
    sid = tuple(value) if isinstance(value, list) else value
    if sid in subgroups:
        return sid
    allowed = ", ".join(f"{name} ({sid!r})" for name, sid in names.items()) or "none"
    allowed += ", rotations" if group.name.startswith("D") else ""
    raise SpecError(f"{where}.subgroup: {group.name} has no subgroup {value!r}; allowed: {allowed}")


def _dropout(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    return b.backend.dropout(b.group, b.current, spec.params["p"]), b.current


def _pool(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    _needs_map(b, where)
    p = spec.params
    if b.size is not None:
        b.size = conv_output_size(b.size, p["kernel"], p["stride"] or p["kernel"], p["padding"])
    with _located(where):
        layer = b.backend.spatial_pool(b.group, b.current, p["mode"], p["kernel"], p["stride"], p["padding"])
    return layer, b.current


def _group_pool(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    if b.current.kind not in ("group", "steerable"):
        raise SpecError(f"{where}: needs a group feature map but gets {b.current}; put it after a 'lift' or 'gconv'")
    with _located(where):
        layer = b.backend.group_pool(b.group, b.current, spec.params["mode"])
    return layer, FieldType("image", b.current.channels)


def _global_pool(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    if b.current.kind == "vector":
        raise SpecError(f"{where}: the input is already pooled ({b.current})")
    with _located(where):
        layer = b.backend.global_pool(b.group, b.current, spec.params["mode"])
    return layer, FieldType("vector", b.current.channels)


def _orbit_pool(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    if b.current.kind == "vector":
        raise SpecError(f"{where}: the input is already pooled ({b.current})")
    if b.size is None:
        raise SpecError(f"{where}: orbit_pool needs the input image size to know its output size")
    if b.size < 1:
        raise SpecError(f"{where}: the layers before it shrink the input to nothing")
    with _located(where):
        layer = b.backend.orbit_pool(b.group, b.current, spec.params["mode"], size=b.size)
    return layer, FieldType("vector", b.current.channels * b.size * b.size)


def _linear(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    p = spec.params
    if b.current.kind != "vector":
        raise SpecError(f"{where}: needs pooled features but gets {b.current}; put 'global_pool' before it")
    features = b.num_classes if p["out"] == "classes" else p["out"]
    return b.backend.linear(b.group, b.current, features, p["bias"]), FieldType("vector", features)


def _stride(specs: Sequence[LayerSpec]) -> int:
    """Total stride of a layer list (convolutions, pools, nested residual bodies)."""
    total = 1
    for spec in specs:
        p = spec.params
        if spec.type in ("lift", "gconv"):
            total *= p["stride"]
        elif spec.type == "pool":
            total *= p["stride"] or p["kernel"]
        elif spec.type == "residual":
            total *= _stride(parse_layers(p["layers"]))
    return total


def _residual(b: _Builder, spec: LayerSpec, where: str) -> tuple[nn.Module, FieldType]:
    """``act(body(x) + shortcut(x))`` (:class:`~gcnnkit.core.residual.ResidualBlock`)."""
    _needs_map(b, where)
    p = spec.params
    body_specs = parse_layers(p["layers"], f"{where}.layers")
    x_type, x_size = b.current, b.size
    group_before = b.group
    body, in_types, out_types, _, _ = _build_layers(b, body_specs, f"{where} body layer ")
    if b.group is not group_before:
        raise SpecError(
            f"{where}: a restriction inside a residual block is not allowed; put 'restrict' before or after the block"
        )
    out_type, out_size = b.current, b.size
    b.current = x_type  # the caller records the block's input type
    stride = _stride(body_specs)
    sizes = f" ({x_size}×{x_size} → {out_size}×{out_size})" if x_size is not None else ""
    shortcut, shortcut_types = [], []
    if p["shortcut"] == "identity":
        if out_type != x_type or stride != 1 or (x_size is not None and out_size != x_size):
            raise SpecError(
                f"{where}: the body maps {x_type} to {out_type}{sizes}, stride {stride}, so the identity shortcut "
                f"does not fit; set shortcut: projection (a 1×1 convolution, strided like the body, + batch norm)"
            )
    else:
        if out_type.kind != "group" or x_type.kind == "vector":
            raise SpecError(
                f"{where}: a projection shortcut maps an image or group feature map to a group feature map, "
                f"but the body maps {x_type} to {out_type}"
            )
        projected = conv_output_size(x_size, 1, stride, 0) if x_size is not None else None
        if projected is not None and projected != out_size:
            raise SpecError(
                f"{where}: the body maps a {x_size}×{x_size} map to {out_size}×{out_size}, but a 1×1 projection of "
                f"stride {stride} gives {projected}×{projected}; use 'same' padding in the body's convolutions"
            )
        modules, types = build_projection(b.backend, b.group, x_type, out_type, stride, p["shortcut_norm"])
        shortcut = modules
        shortcut_types = list(zip([x_type, *types[:-1]], types, strict=True))
    names = [f"{i}.{s.type}" for i, s in enumerate(body_specs)]
    block = ResidualBlock(
        b.group,
        body,
        list(zip(in_types, out_types, strict=True)),
        shortcut,
        shortcut_types,
        residual_activation(b.backend, b.group, out_type, p["act"]),
        names,
    )
    return block, out_type


#: How each layer type of :mod:`gcnnkit.models.spec` is built (a new layer type adds one entry).
LAYER_BUILDERS: dict[str, LayerBuilder] = {
    "lift": _conv,
    "gconv": _conv,
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "act": _activation,
    "dropout": _dropout,
    "pool": _pool,
    "group_pool": _group_pool,
    "global_pool": _global_pool,
    "orbit_pool": _orbit_pool,
    "linear": _linear,
    "norm_act": _norm_act,
    "gated": _gated,
    "restrict": _restrict,
    "residual": _residual,
}


def _build_layers(
    b: _Builder, specs: Sequence[LayerSpec], prefix: str = "layer "
) -> tuple[list[nn.Module], list[FieldType], list[FieldType], list[Group], list[tuple[int | None, ...]]]:
    """Build ``specs`` in order from ``b.current``: the modules, each one's input and output type, and the
    group acting on each one's output with the element map into it (both change only at a restriction)."""
    layers, in_types, out_types, groups, maps = [], [], [], [], []
    for i, spec in enumerate(specs):
        builder = LAYER_BUILDERS.get(spec.type)
        if builder is None:  # parse_layers only produces the types above
            raise SpecError(f"{prefix}{i} ({spec.type}): unknown layer type {spec.type!r}")
        layer, out = builder(b, spec, f"{prefix}{i} ({spec.type})")
        layers.append(layer)
        in_types.append(b.current)
        out_types.append(out)
        groups.append(b.group)
        maps.append(b.element_map)
        b.current = out
    return layers, in_types, out_types, groups, maps


def build_network(
    specs: Sequence[LayerSpec],
    backend: Backend,
    group: Group,
    in_channels: int,
    num_classes: int,
    widths: str = "fields",
    image_size: int | None = None,
    allow_non_equivariant: bool = False,
    width_multiplier: float = 1.0,
) -> EquivariantNet:
    """Build validated layer specs on ``backend`` for ``group``, one :data:`LAYER_BUILDERS` entry per layer.

    Args:
        specs: output of :func:`gcnnkit.models.spec.parse_layers`.
        backend: the backend that builds each layer.
        group: the symmetry group.
        in_channels: image channels ``C`` of the ``[B, C, H, W]`` input.
        num_classes: value of ``linear`` layers with ``out: classes``.
        widths: ``fields`` or ``params`` (see :data:`WIDTH_MODES`).
        image_size: side of the square input; needed by ``orbit_pool``, whose output size
            (channels × height × width) depends on it, and to check that every stride and pool
            keeps the pixel grid symmetric (:mod:`gcnnkit.models.grid`).
        allow_non_equivariant: build even when a stride or pool samples the grid off its centre.
        width_multiplier: multiplies every field count of ``lift``/``gconv`` (rounded, at least 1;
            ``out: classes`` stays one field per class): the same architecture, narrower or wider.

    Raises:
        SpecError: layers in an impossible order, or with a kernel, stride or pool that breaks equivariance.
        UnsupportedGroupError: the backend cannot build this group.
    """
    if widths not in WIDTH_MODES:
        raise SpecError(f"model.widths: {widths!r} is not allowed; allowed: {', '.join(WIDTH_MODES)}")
    if not (isinstance(width_multiplier, (int, float)) and 0 < width_multiplier <= MAX_WIDTH_MULTIPLIER):
        raise SpecError(
            f"model.width_multiplier: must be a number in (0, {MAX_WIDTH_MULTIPLIER:g}], got {width_multiplier!r}"
        )
    backend.require(group)
    if image_size is not None and not allow_non_equivariant:
        problem = grid_problem(specs, image_size, group.name, group.order)
        if problem is not None:
            raise SpecError(problem)
    b = _Builder(
        backend,
        group,
        num_classes,
        widths,
        FieldType("image", in_channels),
        image_size,
        width_multiplier=width_multiplier,
    )
    b.element_map = tuple(range(group.order))
    layers, in_types, out_types, groups, maps = _build_layers(b, specs)
    if b.current.kind != "vector":
        raise SpecError(
            f"the network ends with {b.current}, not with pooled features; end it with 'global_pool' (and 'linear')"
        )
    return EquivariantNet(group, backend.name, specs, layers, in_types, out_types, groups, maps)


def build_model(
    backend: str,
    group: str,
    *,
    in_channels: int,
    image_size: int,
    num_classes: int,
    preset: str | None = None,
    layers: Sequence | None = None,
    widths: str | None = None,
    backend_options: dict | None = None,
    allow_non_equivariant: bool = False,
    width_multiplier: float = 1.0,
) -> EquivariantNet:
    """Build a network by names: the documented entry point for notebooks and the CLI.

    Exactly one of ``preset`` (a name in :data:`gcnnkit.models.presets.PRESETS`) or ``layers`` (a spec
    list, see :mod:`gcnnkit.models.spec`) is given. ``widths`` defaults to the preset's mode, or
    ``fields`` for explicit layers. A stride or pool that samples the ``image_size`` grid off its
    centre is refused unless ``allow_non_equivariant`` (see :mod:`gcnnkit.models.grid`).
    ``width_multiplier`` scales every field count (see :func:`build_network`).

    Example::

        net = build_model("native", "C4", preset="gcnn-small", in_channels=1, image_size=28, num_classes=10)
        logits = net(torch.randn(8, 1, 28, 28))  # [8, 10], invariant to rot90
    """
    from gcnnkit.core.registry import get_backend, get_group
    from gcnnkit.models.presets import get_preset

    if (preset is None) == (layers is None):
        raise SpecError("model: give exactly one of 'preset' or 'layers'")
    if preset is not None:
        p = get_preset(preset)
        specs = parse_layers(p.layers(image_size, in_channels), where=f"preset {preset}")
        widths = widths or p.widths
    else:
        specs = parse_layers(layers)
        widths = widths or "fields"
    backend_obj = get_backend(backend).with_options(**(backend_options or {}))
    return build_network(
        specs,
        backend_obj,
        get_group(group),
        in_channels,
        num_classes,
        widths,
        image_size,
        allow_non_equivariant,
        width_multiplier,
    )
