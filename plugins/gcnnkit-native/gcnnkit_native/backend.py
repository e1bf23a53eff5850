"""The native backend: gcnnkit's own layers, for any group registered with gcnnkit."""

from __future__ import annotations

from torch import nn

from gcnnkit.core.backend import BACKEND_API_VERSION, Backend
from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit_native.layers import FieldBatchNorm, GroupConv, GroupPool, LiftingConv

_GROUP_POOL_MODES = ("max", "mean")


class NativeBackend(Backend):
    """From-scratch regular group convolutions.

    Exact groups (C1, C2, C4, D1, D2, D4) get exact filter banks built by index permutation;
    any other finite group gets bilinearly interpolated filters on a disc-masked kernel.
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
    ) -> nn.Module:
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
    ) -> nn.Module:
        return GroupConv(group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)

    def group_pool(self, group: Group, in_type: FieldType, mode: str = "max") -> nn.Module:
        if mode not in _GROUP_POOL_MODES:
            raise SpecError(f"unknown group pooling mode {mode!r}; allowed: {', '.join(_GROUP_POOL_MODES)}")
        return GroupPool(mode)

    def batch_norm(self, group: Group, in_type: FieldType) -> nn.Module:
        if in_type.kind == "group":
            return FieldBatchNorm(in_type.channels)
        return nn.BatchNorm2d(in_type.channels)
