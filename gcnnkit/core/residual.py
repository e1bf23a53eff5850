"""Residual blocks: ``act(body(x) + shortcut(x))`` on any backend and group.

The body is a list of layers built by a backend, each with its input and output field type; the
shortcut is the identity (when the body keeps the field type and the map size) or a *projection*:
a 1×1 lifting/group convolution without bias, strided like the body, optionally followed by batch
norm. Every part is equivariant and the sum of two equivariant maps of the same output type is
equivariant, so the block is; :meth:`ResidualBlock.branches` exposes the parts so that
:func:`gcnnkit.core.equivariance.check_network` can check them one by one.

Tensors: ``[B, C, H, W]`` (image) or ``[B, C, |G|, H, W]`` (group map) in, the body's output type out.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from gcnnkit.core.backend import ACTIVATIONS, Backend
from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantLayer

#: A typed layer: ``(name, module, in_type, out_type)``.
TypedLayer = tuple[str, nn.Module, FieldType, FieldType]


def build_projection(
    backend: Backend, group: Group, in_type: FieldType, out_type: FieldType, stride: int, norm: bool
) -> tuple[list[nn.Module], list[FieldType]]:
    """The projection shortcut from ``in_type`` to the group map ``out_type``: a 1×1 convolution
    (lifting for an image input, group otherwise), no bias, ``stride``, then batch norm if ``norm``.

    Returns the modules and the field type after each."""
    if out_type.kind != "group":
        raise SpecError(f"a projection shortcut maps to a group feature map, but the body ends with {out_type}")
    if in_type.kind == "vector":
        raise SpecError(f"a projection shortcut needs an image or group feature map input, got {in_type}")
    factory = backend.lifting_conv if in_type.kind == "image" else backend.group_conv
    modules: list[nn.Module] = [factory(group, in_type, out_type.channels, 1, stride, 0, 1, False)]
    types = [out_type]
    if norm:
        modules.append(backend.batch_norm(group, out_type))
        types.append(out_type)
    return modules, types


class ResidualBlock(EquivariantLayer):
    """``act(body(x) + shortcut(x))``; the shortcut is the identity when ``shortcut`` is empty.

    Attributes:
        body / shortcut: ``nn.ModuleList`` of the backend's layers.
        body_types / shortcut_types: ``(in_type, out_type)`` of each of their layers.
        activation: the module applied after the sum, or ``None``.
    """

    def __init__(
        self,
        group: Group,
        body: Sequence[nn.Module],
        body_types: Sequence[tuple[FieldType, FieldType]],
        shortcut: Sequence[nn.Module] = (),
        shortcut_types: Sequence[tuple[FieldType, FieldType]] = (),
        activation: nn.Module | None = None,
        body_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not body:
            raise SpecError("a residual block needs at least one layer in its body")
        self.group = group
        self.body = nn.ModuleList(body)
        self.shortcut = nn.ModuleList(shortcut)
        self.body_types = list(body_types)
        self.shortcut_types = list(shortcut_types)
        self.body_names = list(body_names or [f"{i}.{type(m).__name__}" for i, m in enumerate(body)])
        self.activation = activation

    @property
    def in_type(self) -> FieldType:
        return self.body_types[0][0]

    @property
    def out_type(self) -> FieldType:
        return self.body_types[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.body:
            y = layer(y)
        s = x
        for layer in self.shortcut:
            s = layer(s)
        y = y + s
        return self.activation(y) if self.activation is not None else y

    def branches(self) -> list[list[TypedLayer]]:
        """The body and, for a projection, the shortcut: each a list of typed layers fed from the
        block's input, in order."""
        body = [
            (f"body.{n}", m, t[0], t[1]) for n, m, t in zip(self.body_names, self.body, self.body_types, strict=True)
        ]
        out = [body]
        if len(self.shortcut):
            names = ["shortcut.conv", "shortcut.batchnorm"][: len(self.shortcut)]
            out.append([(n, m, t[0], t[1]) for n, m, t in zip(names, self.shortcut, self.shortcut_types, strict=True)])
        return out

    def leaf_layers(self) -> Iterator[nn.Module]:
        """Every layer of the body and shortcut, nested blocks expanded (the units weights transfer by)."""
        for layer in [*self.body, *self.shortcut]:
            if isinstance(layer, ResidualBlock):
                yield from layer.leaf_layers()
            else:
                yield layer

    def export_plain(self) -> nn.Module:
        """A :class:`PlainResidual` of the parts' plain exports, on the flattened layout."""

        def plain(layer: nn.Module) -> nn.Module:
            with torch.no_grad():
                return layer.export_plain() if isinstance(layer, EquivariantLayer) else copy.deepcopy(layer)

        act = plain(self.activation) if self.activation is not None else None
        return PlainResidual(
            nn.Sequential(*[plain(m) for m in self.body]), nn.Sequential(*[plain(m) for m in self.shortcut]), act
        )


def transfer_layer_weights(source_backend: Backend, src: nn.Module, target_backend: Backend, dst: nn.Module) -> float:
    """Copy one layer's weights through the transfer format (:mod:`gcnnkit.core.backend`): a residual
    block part by part (body and shortcut layers in order), anything else whole. Returns the worst
    relative residual of the projections (0 when exact)."""
    if isinstance(src, ResidualBlock) and isinstance(dst, ResidualBlock):
        pairs = list(zip(src.leaf_layers(), dst.leaf_layers(), strict=True))
        return max((target_backend.import_weights(d, source_backend.export_weights(s)) for s, d in pairs), default=0.0)
    return target_backend.import_weights(dst, source_backend.export_weights(src))


class PlainResidual(nn.Module):
    """``act(body(x) + shortcut(x))`` with plain torch parts on the flattened layout
    ``[B, C·|G|, H, W]`` (an empty ``shortcut`` is the identity): what :meth:`ResidualBlock.export_plain`
    returns."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential, activation: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x) + self.shortcut(x)
        return self.activation(y) if self.activation is not None else y


def residual_activation(backend: Backend, group: Group, out_type: FieldType, fn: str) -> nn.Module | None:
    """The activation after the sum (``"none"``: none)."""
    if fn == "none":
        return None
    if fn not in ACTIVATIONS:
        raise SpecError(f"act: {fn!r} is not allowed; allowed: none, {', '.join(ACTIVATIONS)}")
    return backend.activation(group, out_type, fn)
