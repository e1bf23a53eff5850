"""The native backend: gcnnkit's own layers, for any group registered with gcnnkit."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gcnnkit.core.backend import BACKEND_API_VERSION, Backend
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantConv
from gcnnkit_native import transfer
from gcnnkit_native.layers import FieldBatchNorm, GroupConv, LiftingConv
from gcnnkit_native.steerable import SteerableConv


class NativeBackend(Backend):
    """From-scratch regular group convolutions.

    Exact groups (C1, C2, C4, D1, D2, D4) get exact filter banks built by index permutation;
    any other finite group gets bilinearly interpolated filters on a disc-masked kernel. Every
    other layer is the core's default (:mod:`gcnnkit.core.layers`).
    """

    name = "native"
    api_version = BACKEND_API_VERSION

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
        return LiftingConv(group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)

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
        return GroupConv(group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)

    def supports(self, group: Group) -> str | None:
        if group.continuous:
            return (
                "it is continuous, and the native backend builds filter banks for finite groups only; "
                "use model.backend=escnn"
            )
        return None

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
        """Any field types of an exact group (:mod:`gcnnkit_native.steerable`); interpolated groups are
        refused in one line (they keep regular fields; the escnn backend has the rest)."""
        return SteerableConv(group, in_type, out_type, kernel_size, stride, padding, dilation, bias)

    def batch_norm(self, group: Group, in_type: FieldType) -> nn.Module:
        if in_type.kind == "group":
            return FieldBatchNorm(in_type.channels, group.order)  # with its NHWC path
        if in_type.kind == "steerable":
            return super().batch_norm(group, in_type)  # per field, norm-based on non-permutation fields
        return nn.BatchNorm2d(in_type.channels)

    # --------------------------------------------------------- weight transfer
    def export_weights(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        """The state dict, except for steerable convolutions: their whole filter and bias
        (:mod:`gcnnkit_native.transfer`)."""
        if isinstance(layer, SteerableConv):
            return transfer.export_steerable(layer)
        return super().export_weights(layer)

    def import_weights(self, layer: nn.Module, state: Mapping[str, torch.Tensor]) -> float:
        if isinstance(layer, SteerableConv):
            return transfer.import_steerable(layer, state)
        return super().import_weights(layer, state)

    @property
    def stores_transfer_format(self) -> bool:
        """True: every layer but the steerable convolutions stores its weights in the transfer format."""
        return True
