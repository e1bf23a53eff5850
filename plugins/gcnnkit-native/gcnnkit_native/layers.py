"""Native layers on plain tensors in gcnnkit's layout.

Each convolution stores its weights in tied form (one filter per field pair; ``state_dict``
is the same in train and eval mode), expands them to the full ``|G|``-fold filter bank with
one gather (or one ``einsum`` for interpolated groups), and runs a single ``conv2d``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.group import Group
from gcnnkit_native.filters import disc_mask, group_conv_indices, interpolation_matrices, pixel_permutations


class _GroupConvBase(nn.Module):
    """Shared machinery: conv hyper-parameters, bias per field, eval-mode filter-bank cache."""

    def __init__(self, group: Group, in_channels: int, out_fields: int, kernel_size: int, stride: int,
                 padding: int, dilation: int, bias: bool, weight_shape: tuple[int, ...], fan_in: int) -> None:
        super().__init__()
        self.group = group
        self.in_channels, self.out_fields = in_channels, out_fields
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.weight = nn.Parameter(torch.randn(weight_shape) * math.sqrt(2.0 / fan_in))
        self.bias = nn.Parameter(torch.zeros(out_fields)) if bias else None
        if not group.exact:
            self.register_buffer("mask", disc_mask(kernel_size), persistent=False)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def filter_bank(self) -> torch.Tensor:
        """``[out_fields·|G|, in_channels_total, k, k]`` expanded filters (cached in eval mode)."""
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self._expand()
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device, self.weight.dtype)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._expand())
        return self._cache[1]

    def _expand(self) -> torch.Tensor:
        raise NotImplementedError

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(self.group.order)
        return F.conv2d(x, self.filter_bank(), bias, self.stride, self.padding, self.dilation)

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def extra_repr(self) -> str:
        return (f"group={self.group.name}, in={self.in_channels}, out_fields={self.out_fields}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, bias={self.bias is not None}")


class LiftingConv(_GroupConvBase):
    """``[B, C_in, H, W] → [B, C_out, |G|, H', W']``: correlation with ``T_h ψ`` for every ``h``.

    ``out[:, o, h] = Σ_c x[:, c] ⋆ (T_h ψ)[o, c]``; equivariant: ``L(T_g x) = g·L(x)``.
    Weight ``[C_out, C_in, k, k]``.
    """

    def __init__(self, group: Group, in_channels: int, out_fields: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True) -> None:
        k = kernel_size
        super().__init__(group, in_channels, out_fields, k, stride, padding, dilation, bias,
                         (out_fields, in_channels, k, k), in_channels * k * k)
        if group.exact:
            self.register_buffer("perm", pixel_permutations(group, k), persistent=False)  # [G, kk]
        else:
            self.register_buffer("interp", interpolation_matrices(group, k), persistent=False)  # [G, kk, kk]

    def _expand(self) -> torch.Tensor:
        o, c, k, g = self.out_fields, self.in_channels, self.kernel_size, self.group.order
        w = self.weight if self.group.exact else self.weight * self.mask
        w = w.reshape(o, c, k * k)
        if self.group.exact:
            bank = w[:, :, self.perm]  # [o, c, G, kk]
        else:
            bank = torch.einsum("gpq,ocq->ocgp", self.interp.to(w.dtype), w)
        return bank.permute(0, 2, 1, 3).reshape(o * g, c, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv(x)
        return y.reshape(y.shape[0], self.out_fields, self.group.order, *y.shape[-2:])


class GroupConv(_GroupConvBase):
    """``[B, C_in, |G|, H, W] → [B, C_out, |G|, H', W']``: regular group convolution.

    ``out[:, o, h] = Σ_{c, g} x[:, c, g] ⋆ ψ[o, c, h⁻¹g](h⁻¹ ·)``: the filter is transformed
    spatially by ``h`` and its group axis permuted by ``h``. Weight ``[C_out, C_in, |G|, k, k]``.
    """

    def __init__(self, group: Group, in_fields: int, out_fields: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True) -> None:
        k, n = kernel_size, group.order
        super().__init__(group, in_fields, out_fields, k, stride, padding, dilation, bias,
                         (out_fields, in_fields, n, k, k), in_fields * n * k * k)
        if group.exact:
            self.register_buffer("index", group_conv_indices(group, k).reshape(-1), persistent=False)
        else:
            source = group.cayley_table[group.inverses]  # [h, g] -> h⁻¹·g
            self.register_buffer("source", source, persistent=False)
            self.register_buffer("interp", interpolation_matrices(group, k), persistent=False)

    def _expand(self) -> torch.Tensor:
        o, c, k, n = self.out_fields, self.in_channels, self.kernel_size, self.group.order
        if self.group.exact:
            bank = self.weight.reshape(o, c, n * k * k)[:, :, self.index].reshape(o, c, n, n, k * k)
        else:
            w = (self.weight * self.mask).reshape(o, c, n, k * k)[:, :, self.source]  # [o, c, h, g, kk]
            bank = torch.einsum("hpq,ochgq->ochgp", self.interp.to(w.dtype), w)
        # (o, c, h, g, p) -> (o, h, c, g, p): output channel (o, h), input channel (c, g)
        return bank.permute(0, 2, 1, 3, 4).reshape(o * n, c * n, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n, h, w = x.shape
        y = self._conv(x.reshape(b, c * n, h, w))
        return y.reshape(b, self.out_fields, n, *y.shape[-2:])


class GroupPool(nn.Module):
    """``[B, C, |G|, H, W] → [B, C, H, W]``: max or mean over the group axis; invariant to its
    permutation, so the output transforms like an image."""

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=2) if self.mode == "max" else x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class FieldBatchNorm(nn.BatchNorm3d):
    """Batch norm for ``[B, C, |G|, H, W]`` with statistics and affine shared over the group axis
    (one per field), which keeps it equivariant. Plain images use ``nn.BatchNorm2d``."""
