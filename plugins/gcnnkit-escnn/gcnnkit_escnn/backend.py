"""The escnn backend: gcnnkit's layer interface on escnn's steerable layers.

Options (``model.backend_options``): ``basis: escnn`` (default, escnn's band-limited basis) or
``basis: complete`` (spans the native backend's tied filter space; see :mod:`gcnnkit_escnn.basis`).

Convolutions, batch norm, pointwise nonlinearities, max pooling and dropout run escnn's modules
(:mod:`gcnnkit_escnn.layers`). Two layers are the core's defaults, because escnn has no module for
them with the same semantics: group pooling (escnn's ``GroupPooling`` is max-only, via ``torch.max``
with indices) and average pooling (escnn's ``PointwiseAvgPool2D`` counts zero padding). Its
weights live in escnn's steerable basis, so it converts them to and from the transfer format
(:meth:`EscnnBackend.export_weights` / :meth:`EscnnBackend.import_weights`, see
:mod:`gcnnkit_escnn.transfer`) for ``gcnnkit compare``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

from gcnnkit.core.backend import ACTIVATIONS, BACKEND_API_VERSION, Backend
from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantConv
from gcnnkit.core.steerable_layers import NORM_FUNCTIONS, gated_output_type
from gcnnkit_escnn import transfer
from gcnnkit_escnn.basis import BASES
from gcnnkit_escnn.layers import EscnnBatchNorm, EscnnConv, EscnnPointwise
from gcnnkit_escnn.spaces import EscnnGroupError, escnn_group
from gcnnkit_escnn.steerable import (
    EscnnFieldBatchNorm,
    EscnnFieldConv,
    EscnnGated,
    EscnnInvariantPool,
    EscnnNormAct,
    EscnnRestriction,
)

_OPTIONS = {"basis": BASES}

_Factory = TypeVar("_Factory", bound=Callable[..., nn.Module])


def _in_default_dtype(factory: _Factory) -> _Factory:
    """Build the escnn module in float32, then move it to the caller's default dtype.

    escnn computes its kernel bases assuming float32 is the default dtype (it compares float32
    tensors with ``torch.eye`` of the default dtype), so under ``torch.set_default_dtype(torch.float64)``
    building a layer fails with "Float did not match Double". The module is built in float32 and
    its parameters and buffers are then cast to the default dtype, as any torch layer would hold.
    """

    @functools.wraps(factory)
    def build(*args, **kwargs) -> nn.Module:
        dtype = torch.get_default_dtype()
        if dtype == torch.float32:
            return factory(*args, **kwargs)
        torch.set_default_dtype(torch.float32)
        try:
            module = factory(*args, **kwargs)
        finally:
            torch.set_default_dtype(dtype)
        return module.to(dtype=dtype)

    return build  # type: ignore[return-value]


class EscnnBackend(Backend):
    """Layers built from escnn modules, on plain tensors in gcnnkit's layout.

    Supports every group whose ``group.escnn`` names an escnn gspace (``rot2dOnR2`` for C_N,
    ``flipRot2dOnR2`` for D_N, ``trivialOnR2`` for C1) with the same elements.
    """

    name = "escnn"
    api_version = BACKEND_API_VERSION

    def __init__(self, basis: str = "escnn") -> None:
        if basis not in BASES:
            raise SpecError(f"model.backend_options.basis: {basis!r} is not allowed; allowed: {', '.join(BASES)}")
        self.basis = basis

    # ----------------------------------------------------------------- options
    def with_options(self, **options) -> EscnnBackend:
        for key, value in options.items():
            if key not in _OPTIONS:
                raise SpecError(
                    f"model.backend_options: backend 'escnn' has no option {key!r}; allowed: {', '.join(_OPTIONS)}"
                )
            if not isinstance(value, str) or value not in _OPTIONS[key]:
                raise SpecError(
                    f"model.backend_options.{key}: {value!r} is not allowed; allowed: {', '.join(_OPTIONS[key])}"
                )
        return EscnnBackend(**{"basis": self.basis, **options})

    # ------------------------------------------------------------------ groups
    def supports(self, group: Group) -> str | None:
        try:
            escnn_group(group)
        except EscnnGroupError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------ convolutions
    @_in_default_dtype
    def lifting_conv(
        self,
        group: Group,
        in_type: FieldType,
        out_fields: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> EquivariantConv:
        self.require(group)
        _refuse_continuous(group)
        return EscnnConv(
            group, "image", in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias, self.basis
        )

    @_in_default_dtype
    def group_conv(
        self,
        group: Group,
        in_type: FieldType,
        out_fields: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> EquivariantConv:
        self.require(group)
        _refuse_continuous(group)
        return EscnnConv(
            group, "group", in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias, self.basis
        )

    @_in_default_dtype
    def steerable_conv(
        self,
        group: Group,
        in_type: FieldType,
        out_type: FieldType,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> EquivariantConv:
        """escnn's ``R2Conv`` between any two field types (:class:`~gcnnkit_escnn.steerable.EscnnFieldConv`)."""
        self.require(group)
        return EscnnFieldConv(
            group,
            in_type.field_reps(group),
            out_type.field_reps(group),
            kernel_size,
            stride,
            padding,
            dilation,
            bias,
            self.basis,
            group_layout=out_type.kind == "group",
        )

    @_in_default_dtype
    def batch_norm(self, group: Group, in_type: FieldType) -> nn.Module:
        if in_type.kind == "steerable":
            return EscnnFieldBatchNorm(group, in_type.reps)
        return EscnnBatchNorm(group, in_type.kind, in_type.channels)

    def group_pool(self, group: Group, in_type: FieldType, mode: str = "max") -> nn.Module:
        """Steerable fields: one invariant channel per field (max/mean over a permutation field, the norm of
        any other; :class:`~gcnnkit_escnn.steerable.EscnnInvariantPool`). Group maps: the core's default."""
        if in_type.kind == "steerable":
            return EscnnInvariantPool(group, in_type.reps, mode)
        return super().group_pool(group, in_type, mode)

    # ------------------------------------------------------- steerable nonlinearities
    def norm_nonlinearity(self, group: Group, in_type: FieldType, fn: str = "relu", bias: bool = True) -> nn.Module:
        """escnn's ``NormNonLinearity`` (one learned bias per field) on any field type."""
        if fn not in NORM_FUNCTIONS:
            raise SpecError(f"norm nonlinearity: unknown function {fn!r}; allowed: {', '.join(NORM_FUNCTIONS)}")
        if fn == "squash" and bias:
            raise SpecError("norm nonlinearity: 'squash' takes no bias; set bias: false")
        return EscnnNormAct(group, in_type.field_reps(group), fn, bias)

    def gated_nonlinearity(self, group: Group, in_type: FieldType) -> nn.Module:
        """escnn's ``GatedNonLinearity1``: the first half of the fields are the trivial gates, gate ``i`` gates
        field ``n + i``; the gates are dropped (an all-regular output is a group map)."""
        out_type = gated_output_type(group, in_type, "gated")
        reps = in_type.field_reps(group)
        n = len(reps) // 2
        return EscnnGated(group, reps, [True] * n + [False] * n, group_layout=out_type.kind == "group")

    def restrict(self, group: Group, in_type: FieldType, subgroup_id) -> nn.Module:
        """escnn's ``RestrictionModule``: the same values, read as fields of the subgroup ``subgroup_id``."""
        group.subgroup(subgroup_id)  # one-line error for an unknown subgroup
        return EscnnRestriction(group, in_type.field_reps(group), subgroup_id)

    # ----------------------------------------------------------- pointwise layers
    @_in_default_dtype
    def activation(self, group: Group, in_type: FieldType, name: str = "relu") -> nn.Module:
        if name not in ACTIVATIONS:
            raise SpecError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
        if in_type.kind == "vector":
            return super().activation(group, in_type, name)
        if in_type.kind == "steerable":
            _require_permutation(in_type, f"a pointwise {name}")
            return super().activation(group, in_type, name)  # per channel: commutes with any permutation
        return EscnnPointwise(group, in_type.kind, in_type.channels, name)

    @_in_default_dtype
    def dropout(self, group: Group, in_type: FieldType, p: float = 0.5) -> nn.Module:
        if in_type.kind in ("vector", "steerable"):  # identity in eval mode
            return super().dropout(group, in_type, p)
        return EscnnPointwise(group, in_type.kind, in_type.channels, "dropout", p=p)

    @_in_default_dtype
    def spatial_pool(
        self,
        group: Group,
        in_type: FieldType,
        mode: str = "max",
        kernel_size: int = 2,
        stride: int | None = None,
        padding: int = 0,
    ) -> nn.Module:
        if mode != "max":  # escnn's average pooling counts zero padding; the core's does not
            return super().spatial_pool(group, in_type, mode, kernel_size, stride, padding)
        if in_type.kind == "steerable":
            _require_permutation(in_type, "max pooling")
            return super().spatial_pool(group, in_type, mode, kernel_size, stride, padding)
        return EscnnPointwise(
            group,
            in_type.kind,
            in_type.channels,
            "max_pool",
            kernel_size=kernel_size,
            stride=stride or kernel_size,
            padding=padding,
        )

    # --------------------------------------------------------- weight transfer
    def export_weights(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        """``layer``'s weights in the transfer format; exact for groups that permute pixels. See
        :mod:`gcnnkit_escnn.transfer`."""
        return transfer.export_weights(layer)

    def import_weights(self, layer: nn.Module, state: Mapping[str, torch.Tensor]) -> float:
        """Load transfer-format weights into ``layer``; returns the relative residual of the least-squares
        projection onto escnn's basis (~0 with ``basis: complete``)."""
        return transfer.import_weights(layer, state)

    def __repr__(self) -> str:
        return f"EscnnBackend(basis={self.basis!r})"


def _require_permutation(in_type: FieldType, what: str) -> None:
    """Refuse a per-channel operation on fields whose representation is not a permutation."""
    bad = sorted({r.name for r in in_type.reps if not r.is_permutation})
    if bad:
        raise SpecError(
            f"{what} acts per channel, which breaks equivariance on {', '.join(bad)} fields of {in_type}; "
            f"use a norm or gated nonlinearity / average pooling there, or permutation fields (trivial, regular, "
            f"quotient)"
        )


def _refuse_continuous(group: Group) -> None:
    if getattr(group, "continuous", False):
        raise SpecError(
            f"{group.name} is continuous and has no regular fields; give the convolution's out as representations, "
            f"e.g. out: {{irrep(1): 8, trivial: 4}}"
        )
