"""The backend contract: every method and hook a backend plugin implements, with its tensor shapes.

A backend builds the layers of a network for a group. Every layer takes and returns plain
tensors in gcnnkit's layout (:mod:`gcnnkit.core.fields`)::

    image    [B, C, H, W]          C trivial fields (the input, or after group pooling)
    group    [B, C, |G|, H, W]     C regular fields, group axis in the group's element order
    vector   [B, C]                invariant features and logits

The *flattened layout* of a group map is ``[B, C·|G|, H, W]`` (channel ``c·|G| + g``); on it, every
layer of a G-CNN is an ordinary torch layer, which is what :meth:`EquivariantLayer.export_plain`
returns and what ``gcnnkit export`` writes.

What a backend implements (``docs/backend-plugins.md`` walks through an example):

=====================================  =========  ======================================================
method                                 required   returns
=====================================  =========  ======================================================
:meth:`Backend.lifting_conv`           yes        :class:`EquivariantConv` ``image → group``
:meth:`Backend.group_conv`             yes        :class:`EquivariantConv` ``group → group``
:meth:`Backend.steerable_conv`         no         :class:`EquivariantConv` between any field types
                                                  (default: refused; steerable types need it)
:meth:`Backend.batch_norm`,            no         any layer of the contract (defaults in
``group_pool``, ``activation``,                   :mod:`gcnnkit.core.layers`, and for steerable
``dropout``, ``layer_norm``,                      types :mod:`gcnnkit.core.steerable_layers`)
``spatial_pool``, ``global_pool``,
``orbit_pool``, ``linear``,
``norm_nonlinearity``,
``gated_nonlinearity``, ``restrict``
:meth:`Backend.supports`               no         why a group cannot be built (default: every group)
:meth:`Backend.with_options`           no         the backend configured by ``model.backend_options``
:meth:`Backend.export_weights`,        no         weights in the *transfer format* and back, for
:meth:`Backend.import_weights`                    ``gcnnkit compare`` (default: the layer's state dict)
=====================================  =========  ======================================================

*Layers of the contract* (declared in :mod:`gcnnkit.core.layers`). A factory returns either an
:class:`EquivariantLayer` — which declares :meth:`~EquivariantLayer.export_plain` and may honour
:attr:`~EquivariantLayer.channels_last` — or a plain torch module that computes the same on the
flattened layout as on gcnnkit's (a pointwise activation, dropout, ``nn.Linear`` on vectors,
``nn.BatchNorm2d`` on images). Convolutions are :class:`EquivariantConv`: they expose their
expanded filter bank, and their export is that bank in an ``nn.Conv2d``.

*Transfer format.* The weights of a layer as the tied (one filter per field pair) state dict:
convolutions ``weight`` ``[C_out, C_in, k, k]`` (lifting) or ``[C_out, C_in, |G|, k, k]`` (group),
``weight[o, c, g]`` being the filter from input channel ``g`` of field ``c`` to output channel
``e`` of field ``o``, and ``bias`` ``[C_out]``; batch norm ``weight``, ``bias``, ``running_mean``,
``running_var`` ``[C]`` and ``num_batches_tracked``; plain modules their own state dict. A backend
whose layers store their weights in another parametrisation (e.g. a steerable basis) converts in
:meth:`Backend.export_weights` / :meth:`Backend.import_weights`.

*Versioning.* A backend sets ``api_version = BACKEND_API_VERSION`` of the gcnnkit it was written
for; the registry refuses a backend written for another version, with a message naming both.
:func:`gcnnkit.testing.assert_backend_conforms` checks all of the above for any backend.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import torch
from torch import nn

from gcnnkit.core.errors import SpecError, UnsupportedGroupError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import (
    ACTIVATIONS,
    EquivariantConv,
    EquivariantLayer,
    FieldBatchNorm,
    FieldLayerNorm,
    GlobalPool,
    GroupPool,
    OrbitPool,
    SpatialPool,
)
from gcnnkit.core.steerable_layers import (
    GatedNonlinearity,
    InvariantPool,
    NormNonlinearity,
    Restriction,
    SteerableBatchNorm,
    SteerableGlobalPool,
)

__all__ = ["BACKEND_API_VERSION", "ACTIVATIONS", "Backend", "EquivariantLayer", "EquivariantConv"]

#: Version of the backend plugin API; a backend declares the version it was written for.
#: 2: the layer contract (EquivariantLayer, EquivariantConv), transfer hooks on the Backend,
#: ``orbit_pool`` takes the map size.
BACKEND_API_VERSION = 2


# ------------------------------------------------------------------------------ backend
class Backend(abc.ABC):
    """Builds equivariant layers for a group. Subclasses set ``name`` and ``api_version``.

    Every factory has the leading arguments ``(group, in_type)`` and returns a layer of the
    contract (see the module docstring) mapping a tensor of ``in_type`` to the type the network
    builder expects, so any layer of one backend can be compared one to one with the same layer of
    another.
    """

    name: str = ""
    api_version: int | None = None

    # ----------------------------------------------------------------- options
    def with_options(self, **options) -> Backend:
        """A backend configured with ``model.backend_options`` from a config.

        Backends without options refuse any, naming the bad key.
        """
        if options:
            key = sorted(options)[0]
            raise SpecError(f"model.backend_options: backend {self.name!r} has no option {key!r}; it takes none")
        return self

    # ------------------------------------------------------------------ groups
    def supports(self, group: Group) -> str | None:
        """``None`` when this backend can build layers for ``group``, else the reason it cannot."""
        return None

    def require(self, group: Group) -> None:
        """Raise :class:`UnsupportedGroupError` when ``group`` is not supported."""
        reason = self.supports(group)
        if reason is not None:
            raise UnsupportedGroupError(f"backend {self.name!r} does not support group {group.name}: {reason}")

    # ------------------------------------------------------------ convolutions
    @abc.abstractmethod
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
        """``[B, C_in, H, W] → [B, out_fields, |G|, H', W']``: correlate with ``|G|`` transformed filters."""

    @abc.abstractmethod
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
        """``[B, C_in, |G|, H, W] → [B, out_fields, |G|, H', W']``: filters transformed spatially
        and permuted along the group axis."""

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
        """``[B, D_in, H, W] → [B, D_out, H', W']`` between any two field types (``image``, ``group``
        flattened, or ``steerable``; :mod:`gcnnkit.core.fields`): kernels with
        ``K(g·p) = ρ_out(g) K(p) ρ_in(g)⁻¹``. The network calls it whenever the input or the output
        is ``steerable``; its :meth:`~EquivariantConv.filter_bank` is ``[D_out, D_in, k, k]`` and its
        bias (only on trivial output fields, the others must stay unbiased) ``[D_out]``. Group
        inputs/outputs keep their ``[B, C, |G|, H, W]`` shape. Default: refused, naming the backend."""
        raise SpecError(
            f"backend {self.name!r} builds regular fields only; {in_type} → {out_type} needs a backend with "
            f"steerable convolutions (native on exact groups, escnn)"
        )

    # ----------------------------------------------------- layers with defaults
    def batch_norm(self, group: Group, in_type: FieldType) -> nn.Module:
        """Batch norm with one mean/variance/affine per field, shared over the group axis (shape preserving);
        on steerable fields :class:`~gcnnkit.core.steerable_layers.SteerableBatchNorm` (norm-based on
        non-permutation fields)."""
        if in_type.kind == "steerable":
            return SteerableBatchNorm(group, in_type)
        if in_type.kind == "group":
            return FieldBatchNorm(in_type.channels, group.order)
        return nn.BatchNorm2d(in_type.channels)

    def group_pool(self, group: Group, in_type: FieldType, mode: str = "max") -> nn.Module:
        """``[B, C, |G|, H, W] → [B, C, H, W]``: ``max`` or ``mean`` over the group axis (invariant); steerable
        ``[B, D, H, W] → [B, F, H, W]``: max/mean over permutation fields, the norm of the others."""
        if in_type.kind == "steerable":
            return InvariantPool(group, in_type, mode)
        return GroupPool(group.order, mode)

    def activation(self, group: Group, in_type: FieldType, name: str = "relu") -> nn.Module:
        """Pointwise nonlinearity (shape preserving); only on permutation fields (it acts per channel)."""
        if name not in ACTIVATIONS:
            raise SpecError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
        _require_permutation(in_type, name, "norm_act or gated")
        return ACTIVATIONS[name]()

    def dropout(self, group: Group, in_type: FieldType, p: float = 0.5) -> nn.Module:
        """Dropout (identity in eval mode, so it never affects the equivariance check)."""
        return nn.Dropout(p)

    def layer_norm(self, group: Group, in_type: FieldType, affine: bool = True, eps: float = 1e-5) -> nn.Module:
        """Per-sample normalisation over everything but the batch axis (``C, (|G|,) H, W``), then an
        optional scale and shift per field (shared over the group axis and space)."""
        if in_type.kind == "steerable":
            raise SpecError(f"layernorm normalises across fields and is not defined on {in_type}; use batchnorm")
        return FieldLayerNorm(in_type.channels, _order(group, in_type), affine, eps)

    def spatial_pool(
        self,
        group: Group,
        in_type: FieldType,
        mode: str = "max",
        kernel_size: int = 2,
        stride: int | None = None,
        padding: int = 0,
    ) -> nn.Module:
        """Max/avg pooling over space, per channel: ``[B, C, (|G|,) H, W] → [B, C, (|G|,) H', W']`` (max only
        on permutation fields; averaging is linear and fits any field)."""
        if mode == "max":
            _require_permutation(in_type, "max pooling", "mode: avg")
        return SpatialPool(mode, kernel_size, stride, padding)

    def global_pool(self, group: Group, in_type: FieldType, mode: str = "avg") -> nn.Module:
        """Pool over space (and the group axis, if any): ``→ [B, C]`` invariant features (steerable: one per
        field, :class:`~gcnnkit.core.steerable_layers.SteerableGlobalPool`)."""
        if in_type.kind == "steerable":
            return SteerableGlobalPool(group, in_type, mode)
        return GlobalPool(mode, _order(group, in_type))

    def orbit_pool(self, group: Group, in_type: FieldType, mode: str = "mean", *, size: int) -> nn.Module:
        """``[B, C, (|G|,) size, size] → [B, C·size²]``: pool over the group axis and over the group's
        spatial action on the map (``mean``/``max`` of ``g·x`` over ``g``), then flatten. The map keeps
        its spatial layout but is invariant, so a linear head may read every position."""
        if in_type.kind == "steerable":
            raise SpecError(f"orbit_pool takes image or group maps, not {in_type}; put group_pool before it")
        return OrbitPool(group, mode, size, in_type.kind == "group")

    def norm_nonlinearity(self, group: Group, in_type: FieldType, fn: str = "relu", bias: bool = True) -> nn.Module:
        """Each field scaled by ``φ(|f| − b)/|f|`` (shape preserving; any field type)."""
        return NormNonlinearity(group, in_type, fn, bias)

    def gated_nonlinearity(self, group: Group, in_type: FieldType) -> nn.Module:
        """Fields of the second half times ``sigmoid`` of the first half's invariant gates; the gates are
        dropped (:func:`~gcnnkit.core.steerable_layers.gated_output_type`)."""
        return GatedNonlinearity(group, in_type)

    def restrict(self, group: Group, in_type: FieldType, subgroup_id) -> nn.Module:
        """The identity on the tensor, flattening a group map: the next layers are built for the subgroup
        (:func:`~gcnnkit.core.steerable_layers.restricted_type`)."""
        return Restriction(group, in_type, subgroup_id)

    def linear(self, group: Group, in_type: FieldType, out_features: int, bias: bool = True) -> nn.Module:
        """``[B, C] → [B, out_features]`` on invariant features."""
        return nn.Linear(in_type.channels, out_features, bias=bias)

    # ---------------------------------------------------------- weight transfer
    def export_weights(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        """``layer``'s weights in the transfer format (see the module docstring). Default: its state dict."""
        return {key: value.detach().clone() for key, value in layer.state_dict().items()}

    def import_weights(self, layer: nn.Module, state: Mapping[str, torch.Tensor]) -> float:
        """Load transfer-format ``state`` into ``layer``; returns the relative residual of the projection
        onto the layer's parameter space (0 when exact). Default: ``load_state_dict``."""
        with torch.no_grad():
            layer.load_state_dict(dict(state))
        return 0.0

    @property
    def stores_transfer_format(self) -> bool:
        """True when this backend keeps its weights in the transfer format (it converts nothing)."""
        cls = type(self)
        return cls.export_weights is Backend.export_weights and cls.import_weights is Backend.import_weights

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _require_permutation(in_type: FieldType, what: str, instead: str) -> None:
    """Refuse a per-channel map on fields whose representation is not a permutation (it would break equivariance)."""
    if not in_type.is_permutation:
        odd = sorted({r.name for r in in_type.reps if not r.is_permutation})
        raise SpecError(
            f"{what} acts per channel, which breaks the equivariance of {', '.join(odd)} fields in {in_type}; "
            f"use {instead}"
        )


def _order(group: Group, in_type: FieldType) -> int:
    """Channels per field of ``in_type``: ``|G|`` for group maps, 1 otherwise."""
    return group.order if in_type.kind == "group" else 1
