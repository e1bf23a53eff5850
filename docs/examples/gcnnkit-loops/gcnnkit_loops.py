"""gcnnkit-loops: a backend whose filter banks are built with rot90/flip loops over the group.

Only the two convolutions are its own; every other layer is gcnnkit's default. It supports the
groups whose elements all permute pixels (C1, C2, C4, D1, D2, D4 and any such plugin group).
"""

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.backend import Backend
from gcnnkit.core.layers import EquivariantConv


def rotate_flip(psi, group, h):
    """The filters ``psi [..., k, k]`` transformed by the element ``h``: mirror, then rotate."""
    k, j = group.rot90_flip(h)  # h acts as rot90(flip^j(x), k)
    if j:
        psi = torch.flip(psi, dims=(-1,))
    return torch.rot90(psi, k, dims=(-2, -1))


class LoopsConv(EquivariantConv):
    """Lifting (``[B, C, H, W]``) or group (``[B, C, |G|, H, W]``) convolution to ``[B, out, |G|, H', W']``.

    The weight is the transfer format: ``[out, C, k, k]`` (lifting) or ``[out, C, |G|, k, k]`` (group).
    """

    def __init__(self, group, lifting, in_channels, out_fields, kernel_size, stride, padding, dilation, bias):
        super().__init__()
        self.group, self.lifting, self.out_fields = group, lifting, out_fields
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        shape = (out_fields, in_channels, kernel_size, kernel_size)
        if not lifting:
            shape = (out_fields, in_channels, group.order, kernel_size, kernel_size)
        fan_in = in_channels * kernel_size**2 * (1 if lifting else group.order)
        self.weight = nn.Parameter(torch.randn(shape) * (2.0 / fan_in) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(out_fields)) if bias else None

    def filter_bank(self):
        """``[out·|G|, C(·|G|), k, k]``: output channel ``(o, h)`` holds ``T_h ψ[o, c, h⁻¹g]``."""
        bank = []
        for h in range(self.group.order):
            psi = self.weight
            if not self.lifting:  # input channel g of the h-th copy reads the filter slice h⁻¹·g
                h_inv = self.group.inverse(h)
                slices = [self.group.product(h_inv, g) for g in range(self.group.order)]
                psi = psi[:, :, slices].flatten(1, 2)
            bank.append(rotate_flip(psi, self.group, h))
        return torch.stack(bank, dim=1).flatten(0, 1)  # [out, |G|, ...] -> channel o·|G| + h

    def expanded_bias(self):
        """``[out·|G|]``: each field's bias repeated over its ``|G|`` channels."""
        return None if self.bias is None else self.bias.repeat_interleave(self.group.order)

    def forward(self, x):
        x = x if self.lifting else x.flatten(1, 2)  # [B, C, |G|, H, W] -> [B, C·|G|, H, W]
        bank, bias = self.filter_bank(), self.expanded_bias()
        y = F.conv2d(x, bank, bias, self.stride, self.padding, self.dilation)
        return y.unflatten(1, (self.out_fields, self.group.order))


class LoopsBackend(Backend):
    """Lifting and group convolutions by explicit loops; the core's default layers otherwise."""

    name = "loops"
    api_version = 2  # the backend API this plugin is written for (gcnnkit.core.backend.BACKEND_API_VERSION)

    def supports(self, group):
        if not group.exact:
            return "it rotates filters with rot90/flip only, and some elements are not multiples of 90°"
        return None

    def lifting_conv(self, group, in_type, out_fields, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        self.require(group)
        return LoopsConv(group, True, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)

    def group_conv(self, group, in_type, out_fields, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        self.require(group)
        return LoopsConv(group, False, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)
