"""Build an architecture spec into an ``nn.Module`` with a backend.

:func:`build_network` walks the validated spec, tracks the :class:`~gcnnkit.core.fields.FieldType`
between layers (image → group → … → vector) and asks the backend for each layer. The result,
:class:`EquivariantNet`, remembers every layer's input and output type so its equivariance
can be checked layer by layer (:mod:`gcnnkit.core.equivariance`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from gcnnkit.core.backend import Backend
from gcnnkit.core.errors import PluginError, SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantConv, EquivariantLayer
from gcnnkit.models.spec import LayerSpec

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
    ) -> None:
        super().__init__()
        self.group = group
        self.backend_name = backend_name
        self.specs = list(specs)
        self.layers = nn.ModuleList(layers)
        self.in_types = list(in_types)
        self.out_types = list(out_types)

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

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def resolve_padding(padding: int | str, kernel: int, dilation: int) -> int:
    """``"same"`` → ``dilation·(kernel-1)/2`` (odd kernels); an int is returned unchanged."""
    if padding == "same":
        return dilation * (kernel - 1) // 2
    return int(padding)


def _spatial_size(specs: Sequence[LayerSpec], image_size: int) -> int:
    """Side of the square feature map after ``specs`` (convolutions and spatial pooling) on an ``image_size``² input."""
    size = image_size
    for spec in specs:
        p = spec.params
        if spec.type in ("lift", "gconv"):
            pad = resolve_padding(p["padding"], p["kernel"], p["dilation"])
            size = (size + 2 * pad - p["dilation"] * (p["kernel"] - 1) - 1) // p["stride"] + 1
        elif spec.type == "pool":
            stride = p["stride"] or p["kernel"]
            size = (size + 2 * p["padding"] - p["kernel"]) // stride + 1
    if size < 1:
        raise SpecError(f"the layers shrink the {image_size}×{image_size} input to nothing before orbit_pool")
    return size


def field_count(out: int, group: Group, widths: str) -> int:
    """Number of fields for a ``lift``/``gconv`` ``out`` under the width mode (see :data:`WIDTH_MODES`)."""
    if widths == "fields":
        return out
    return max(1, round(out / math.sqrt(group.order)))


def build_network(
    specs: Sequence[LayerSpec],
    backend: Backend,
    group: Group,
    in_channels: int,
    num_classes: int,
    widths: str = "fields",
    image_size: int | None = None,
) -> EquivariantNet:
    """Build validated layer specs on ``backend`` for ``group``.

    Args:
        specs: output of :func:`gcnnkit.models.spec.parse_layers`.
        backend: the backend that builds each layer.
        group: the symmetry group.
        in_channels: image channels ``C`` of the ``[B, C, H, W]`` input.
        num_classes: value of ``linear`` layers with ``out: classes``.
        widths: ``fields`` or ``params`` (see :data:`WIDTH_MODES`).
        image_size: side of the square input; needed only by ``orbit_pool``, whose output size
            (channels × height × width) depends on it.

    Raises:
        SpecError: layers in an impossible order or with a kernel that breaks equivariance.
        UnsupportedGroupError: the backend cannot build this group.
    """
    if widths not in WIDTH_MODES:
        raise SpecError(f"model.widths: {widths!r} is not allowed; allowed: {', '.join(WIDTH_MODES)}")
    backend.require(group)
    current = FieldType("image", in_channels)
    layers, in_types, out_types = [], [], []
    for i, spec in enumerate(specs):
        where = f"layer {i} ({spec.type})"
        p = spec.params
        if spec.type in ("lift", "gconv"):
            expected = "image" if spec.type == "lift" else "group"
            if current.kind != expected:
                if spec.type == "lift":
                    hint = "a network lifts once, from the input image; use 'gconv' after it"
                else:
                    hint = "start with 'lift' and keep every 'gconv' before 'group_pool'"
                raise SpecError(f"{where}: expects a {expected} input but gets {current}; {hint}")
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
            fields = num_classes if p["out"] == "classes" else field_count(p["out"], group, widths)
            factory = backend.lifting_conv if spec.type == "lift" else backend.group_conv
            layer = factory(group, current, fields, p["kernel"], p["stride"], padding, p["dilation"], p["bias"])
            if not isinstance(layer, EquivariantConv):
                raise PluginError(
                    f"backend {backend.name!r}: {factory.__name__} returned a {type(layer).__name__}, not an "
                    f"EquivariantConv (gcnnkit.core.layers); the backend was written for another layer contract"
                )
            out = FieldType("group", fields)
        elif spec.type in ("batchnorm", "layernorm", "act", "dropout", "pool"):
            if current.kind == "vector" and spec.type in ("batchnorm", "pool"):
                raise SpecError(
                    f"{where}: needs an image or group feature map but gets {current}; put it before global_pool"
                )
            if spec.type == "batchnorm":
                layer = backend.batch_norm(group, current)
            elif spec.type == "layernorm":
                layer = backend.layer_norm(group, current, p["affine"], float(p["eps"]))
            elif spec.type == "act":
                layer = backend.activation(group, current, p["fn"])
            elif spec.type == "dropout":
                layer = backend.dropout(group, current, p["p"])
            else:
                layer = backend.spatial_pool(group, current, p["mode"], p["kernel"], p["stride"], p["padding"])
            out = current
        elif spec.type == "group_pool":
            if current.kind != "group":
                raise SpecError(
                    f"{where}: needs a group feature map but gets {current}; put it after a 'lift' or 'gconv'"
                )
            layer = backend.group_pool(group, current, p["mode"])
            out = FieldType("image", current.channels)
        elif spec.type == "global_pool":
            if current.kind == "vector":
                raise SpecError(f"{where}: the input is already pooled ({current})")
            layer = backend.global_pool(group, current, p["mode"])
            out = FieldType("vector", current.channels)
        elif spec.type == "orbit_pool":
            if current.kind == "vector":
                raise SpecError(f"{where}: the input is already pooled ({current})")
            if image_size is None:
                raise SpecError(f"{where}: orbit_pool needs the input image size to know its output size")
            side = _spatial_size(specs[:i], image_size)
            layer = backend.orbit_pool(group, current, p["mode"], size=side)
            out = FieldType("vector", current.channels * side * side)
        elif spec.type == "linear":
            if current.kind != "vector":
                raise SpecError(f"{where}: needs pooled features but gets {current}; put 'global_pool' before it")
            features = num_classes if p["out"] == "classes" else p["out"]
            layer = backend.linear(group, current, features, p["bias"])
            out = FieldType("vector", features)
        else:  # parse_layers only produces the types above
            raise SpecError(f"{where}: unknown layer type {spec.type!r}")
        layers.append(layer)
        in_types.append(current)
        out_types.append(out)
        current = out
    if current.kind != "vector":
        raise SpecError(
            f"the network ends with {current}, not with pooled features; end it with 'global_pool' (and 'linear')"
        )
    return EquivariantNet(group, backend.name, specs, layers, in_types, out_types)


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
) -> EquivariantNet:
    """Build a network by names: the documented entry point for notebooks and the CLI.

    Exactly one of ``preset`` (a name in :data:`gcnnkit.models.presets.PRESETS`) or ``layers`` (a spec
    list, see :mod:`gcnnkit.models.spec`) is given. ``widths`` defaults to the preset's mode, or
    ``fields`` for explicit layers.

    Example::

        net = build_model("native", "C4", preset="gcnn-small", in_channels=1, image_size=28, num_classes=10)
        logits = net(torch.randn(8, 1, 28, 28))  # [8, 10], invariant to rot90
    """
    from gcnnkit.core.registry import get_backend, get_group
    from gcnnkit.models.presets import get_preset
    from gcnnkit.models.spec import parse_layers

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
    return build_network(specs, backend_obj, get_group(group), in_channels, num_classes, widths, image_size)
