"""Native layers on plain tensors in gcnnkit's layout.

Each convolution stores its weights in tied form (one filter per field pair; ``state_dict``
is the same in train and eval mode), expands them to the full ``|G|``-fold filter bank with
one gather (or one ``einsum`` for interpolated groups), and runs a single ``conv2d``.

For exact groups the gather is one ``index_select`` with indices precomputed in the bank's
final ``[C_out·|G|, C_in(·|G|), k, k]`` order (no permute copy; its backward is one
``index_add``). In eval mode without grad the bank and the per-channel bias are cached until
the weights change; under ``torch.compile`` the cache is bypassed so graphs have no side
effects. Both convolutions are :class:`~gcnnkit.core.layers.EquivariantConv` (their export is the
filter bank in an ``nn.Conv2d``); the field batch norm adds an NHWC path to the core's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantConv, eval_cached
from gcnnkit.core.layers import FieldBatchNorm as CoreFieldBatchNorm
from gcnnkit_native.filters import disc_mask, group_conv_indices, interpolation_matrices, pixel_permutations


class _GroupConvBase(EquivariantConv):
    """Shared machinery: conv hyper-parameters, bias per field, eval-mode filter-bank cache, NHWC
    (:attr:`channels_last`)."""

    def __init__(
        self,
        group: Group,
        in_channels: int,
        out_fields: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        bias: bool,
        weight_shape: tuple[int, ...],
        fan_in: int,
    ) -> None:
        super().__init__()
        self.group = group
        self.in_channels, self.out_fields = in_channels, out_fields
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.weight = nn.Parameter(torch.randn(weight_shape) * math.sqrt(2.0 / fan_in))
        self.bias = nn.Parameter(torch.zeros(out_fields)) if bias else None
        if not group.exact:
            self.register_buffer("mask", disc_mask(kernel_size), persistent=False)
        self._cache: tuple | None = None

    def _expanded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Filter bank (NHWC with ``channels_last``) and per-channel bias; cached in eval mode without
        grad until the weight or bias changes (:func:`~gcnnkit.core.layers.eval_cached`)."""
        sources = [self.weight] if self.bias is None else [self.weight, self.bias]
        return eval_cached(self, sources, lambda: (self._bank(), self._expand_bias()))

    def filter_bank(self) -> torch.Tensor:
        """``[out_fields·|G|, in_channels_total, k, k]`` expanded filters (cached in eval mode)."""
        return self._expanded()[0]

    def expanded_bias(self) -> torch.Tensor | None:
        """``[out_fields·|G|]``: each field's bias repeated over its ``|G|`` channels (or ``None``)."""
        return self._expanded()[1]

    def _bank(self) -> torch.Tensor:
        bank = self._expand()
        return bank.contiguous(memory_format=torch.channels_last) if self.channels_last else bank

    def _expand(self) -> torch.Tensor:
        raise NotImplementedError

    def _expand_bias(self) -> torch.Tensor | None:
        if self.bias is None or self.group.order == 1:
            return self.bias
        return self.bias.repeat_interleave(self.group.order)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        bank, bias = self._expanded()
        if not self.channels_last:
            return F.conv2d(x, bank, bias, self.stride, self.padding, self.dilation)
        x = x.contiguous(memory_format=torch.channels_last)  # the bank already is (see _bank)
        y = F.conv2d(x, bank, bias, self.stride, self.padding, self.dilation)
        return y.contiguous(memory_format=torch.channels_last)  # one input channel leaves conv2d free to pick

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def extra_repr(self) -> str:
        return (
            f"group={self.group.name}, in={self.in_channels}, out_fields={self.out_fields}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )


class LiftingConv(_GroupConvBase):
    """``[B, C_in, H, W] → [B, C_out, |G|, H', W']``: correlation with ``T_h ψ`` for every ``h``.

    ``out[:, o, h] = Σ_c x[:, c] ⋆ (T_h ψ)[o, c]``; equivariant: ``L(T_g x) = g·L(x)``.
    Weight ``[C_out, C_in, k, k]``.
    """

    def __init__(
        self,
        group: Group,
        in_channels: int,
        out_fields: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        k = kernel_size
        super().__init__(
            group,
            in_channels,
            out_fields,
            k,
            stride,
            padding,
            dilation,
            bias,
            (out_fields, in_channels, k, k),
            in_channels * k * k,
        )
        if group.exact:
            perm = pixel_permutations(group, k)  # [G, kk]
            self.register_buffer("perm", perm, persistent=False)
            # bank[o·G + h, c, p] = w[o, c·kk + perm[h, p]]: one index_select in the bank's order
            gather = torch.arange(in_channels)[None, :, None] * (k * k) + perm[:, None, :]  # [G, c, kk]
            self.register_buffer("gather", gather.reshape(-1), persistent=False)
        else:
            self.register_buffer("interp", interpolation_matrices(group, k), persistent=False)  # [G, kk, kk]

    def _expand(self) -> torch.Tensor:
        o, c, k, g = self.out_fields, self.in_channels, self.kernel_size, self.group.order
        if self.group.order == 1:  # the trivial group: the weight is the bank (a view, no copy)
            return self.weight.reshape(o, c, k, k)
        if self.group.exact:
            return self.weight.reshape(o, c * k * k).index_select(1, self.gather).reshape(o * g, c, k, k)
        w = (self.weight * self.mask).reshape(o, c, k * k)
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

    def __init__(
        self,
        group: Group,
        in_fields: int,
        out_fields: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        k, n = kernel_size, group.order
        super().__init__(
            group,
            in_fields,
            out_fields,
            k,
            stride,
            padding,
            dilation,
            bias,
            (out_fields, in_fields, n, k, k),
            in_fields * n * k * k,
        )
        if group.exact:
            index = group_conv_indices(group, k)  # [h, g, kk] into one field pair's [G·kk] filter
            self.register_buffer("index", index.reshape(-1), persistent=False)
            # bank[o·G + h, c·G + g, p] = w[o, c·G·kk + index[h, g, p]]: one index_select in the bank's order
            gather = torch.arange(in_fields)[None, :, None, None] * (n * k * k) + index[:, None]  # [h, c, g, kk]
            self.register_buffer("gather", gather.reshape(-1), persistent=False)
        else:
            source = group.cayley_table[group.inverses]  # [h, g] -> h⁻¹·g
            self.register_buffer("source", source, persistent=False)
            self.register_buffer("interp", interpolation_matrices(group, k), persistent=False)

    def _expand(self) -> torch.Tensor:
        o, c, k, n = self.out_fields, self.in_channels, self.kernel_size, self.group.order
        if n == 1:  # the trivial group: the weight is the bank (a view, no copy)
            return self.weight.reshape(o, c, k, k)
        if self.group.exact:
            return self.weight.reshape(o, c * n * k * k).index_select(1, self.gather).reshape(o * n, c * n, k, k)
        w = (self.weight * self.mask).reshape(o, c, n, k * k)[:, :, self.source]  # [o, c, h, g, kk]
        bank = torch.einsum("hpq,ochgq->ochgp", self.interp.to(w.dtype), w)
        # (o, c, h, g, p) -> (o, h, c, g, p): output channel (o, h), input channel (c, g)
        return bank.permute(0, 2, 1, 3, 4).reshape(o * n, c * n, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n, h, w = x.shape
        y = self._conv(x.reshape(b, c * n, h, w))
        return y.reshape(b, self.out_fields, n, *y.shape[-2:])


class FieldBatchNorm(CoreFieldBatchNorm):
    """The core's field batch norm (statistics and affine shared over the group axis), kept NHWC.

    With ``channels_last`` (set by :meth:`gcnnkit.models.network.EquivariantNet.set_channels_last`) and an
    NHWC input — the ``[B, C·|G|, H, W]`` output of a convolution viewed as 5D — ``BatchNorm3d``
    would return NCHW and the next convolution would convert back. :class:`_FieldBatchNormNHWC`
    computes the same normalisation on the NHWC ``[B, C·|G|, H, W]`` view instead, with its own
    backward, and keeps the layout; values, gradients and running statistics are BatchNorm3d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.channels_last and x.ndim == 5 and x.flatten(1, 2).is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x)
        if self.training or not self.track_running_stats:
            running = None
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                running = (self.running_mean, self.running_var, momentum)
            y = _FieldBatchNormNHWC.apply(x.flatten(1, 2), self.weight, self.bias, x.shape[2], self.eps, running)
        else:  # eval: a per-channel affine map, BatchNorm2d's NHWC kernel with the field statistics repeated
            n = x.shape[2]
            rep = lambda t: None if t is None else t.repeat_interleave(n)  # noqa: E731
            y = F.batch_norm(
                x.flatten(1, 2), rep(self.running_mean), rep(self.running_var), rep(self.weight), rep(self.bias),
                False, 0.0, self.eps,
            )  # fmt: skip
        return y.unflatten(1, (x.shape[1], x.shape[2]))


class _FieldBatchNormNHWC(torch.autograd.Function):
    """Training-mode field batch norm on ``x [B, C·|G|, H, W]`` (any layout, NHWC kept):
    statistics per field over ``(B, |G|, H, W)`` from per-channel sums, then one fused per-channel
    normalisation; backward ``dx = a·dy + b·x + c`` per channel, the batch-norm gradient. Computed
    in float32 for half-precision inputs, in the input's precision otherwise (float64 stays float64)."""

    @staticmethod
    def forward(ctx, x, weight, bias, n, eps, running):
        c = x.shape[1] // n
        compute = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(compute)
        var_ch, mean_ch = torch.var_mean(xf, dim=(0, 2, 3), correction=0)  # [C·|G|]
        mean = mean_ch.view(c, n).mean(1)
        var = (var_ch + mean_ch.square()).view(c, n).mean(1) - mean.square()
        count = x.numel() // c
        if running is not None:
            running_mean, running_var, momentum = running
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * (count / max(count - 1, 1))).to(running_var.dtype), momentum)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(compute)
        shift = -mean * scale if bias is None else bias.to(compute) - mean * scale
        y = torch.addcmul(shift.repeat_interleave(n)[:, None, None], xf, scale.repeat_interleave(n)[:, None, None])
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.n, ctx.count, ctx.has_bias = n, count, bias is not None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, mean, invstd, weight = ctx.saved_tensors
        n, count = ctx.n, ctx.count
        c = mean.shape[0]
        compute = torch.promote_types(x.dtype, torch.float32)
        dyf, xf = dy.to(compute), x.to(compute)
        sum_dy = dyf.sum(dim=(0, 2, 3)).view(c, n).sum(1)  # [C]
        sum_dy_x = (dyf * xf).sum(dim=(0, 2, 3)).view(c, n).sum(1)
        sum_dy_xmu = sum_dy_x - mean * sum_dy  # Σ dy·(x − μ)
        w = torch.ones_like(mean) if weight is None else weight.to(compute)
        a = invstd * w
        b = -a * invstd.square() * sum_dy_xmu / count
        cst = -a * sum_dy / count - b * mean
        rep = lambda t: t.repeat_interleave(n)[:, None, None]  # noqa: E731
        dx = torch.addcmul(torch.addcmul(rep(cst), xf, rep(b)), dyf, rep(a)).to(x.dtype)
        dweight = None if weight is None else (sum_dy_xmu * invstd).to(weight.dtype)
        dbias = sum_dy.to(dy.dtype) if ctx.has_bias else None
        return dx, dweight, dbias, None, None, None
