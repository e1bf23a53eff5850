"""The layer contract, and the layers every backend shares.

:class:`EquivariantLayer` and :class:`EquivariantConv` are what a backend's factories return (see
:mod:`gcnnkit.core.backend`); the other classes are the default layers of
:class:`~gcnnkit.core.backend.Backend`, which a backend may use or replace. Each one exports itself
to plain torch modules on the *flattened layout* ``[B, C·|G|, H, W]`` (:meth:`export_plain`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map

from gcnnkit.core.errors import SpecError
from gcnnkit.core.group import Group
from gcnnkit.core.transforms import transform_image

#: Pointwise nonlinearities every backend provides (they act per channel, so they commute
#: with the permutation action of any group).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

_POOL_MODES = ("max", "avg")
_GROUP_POOL_MODES = ("max", "mean")
#: ``torch.compiler.is_compiling`` (torch >= 2.3), else dynamo's own flag.
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling
_T = TypeVar("_T")


# ----------------------------------------------------------------------------- contract
class EquivariantLayer(nn.Module, metaclass=abc.ABCMeta):
    """A layer of the contract that is more than a plain torch module.

    Attributes:
        channels_last: set by :meth:`gcnnkit.models.network.EquivariantNet.set_channels_last`; a
            layer that honours it runs its convolution in ``torch.channels_last`` (NHWC) memory
            format. Values do not change, only the layout (and so the kernels) does.
    """

    channels_last: bool = False

    @abc.abstractmethod
    def export_plain(self) -> nn.Module:
        """This layer as plain torch modules on the flattened layout (one module, or an
        ``nn.Sequential`` of several), with detached copies of the current weights; it computes
        what the layer computes in eval mode. Shapes: ``[B, C_in(·|G|), H, W]`` (or ``[B, C]``)
        in, the layer's output flattened the same way out."""


class EquivariantConv(EquivariantLayer):
    """A lifting or group convolution: one ``conv2d`` with its expanded filter bank.

    ``[B, C_in, H, W]`` (lifting) or ``[B, C_in, |G|, H, W]`` (group) → ``[B, out_fields, |G|, H', W']``.
    Subclasses set the attributes below and implement :meth:`filter_bank` and :meth:`expanded_bias`;
    :meth:`export_plain` is derived from them.

    Attributes:
        group: the group.
        kernel_size, stride, padding, dilation: of the ``conv2d`` (square, ints).
    """

    group: Group
    kernel_size: int
    stride: int
    padding: int
    dilation: int

    @abc.abstractmethod
    def filter_bank(self) -> torch.Tensor:
        """``[out_fields·|G|, C_in(·|G|), k, k]``: the expanded filters in gcnnkit's channel order
        (output channel ``o·|G| + h``, input channel ``c·|G| + g`` for group maps). It may be cached
        in eval mode and may be NHWC when :attr:`channels_last` is set."""

    @abc.abstractmethod
    def expanded_bias(self) -> torch.Tensor | None:
        """``[out_fields·|G|]``: each field's bias repeated over its ``|G|`` channels, or ``None``."""

    def export_plain(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` on the flattened layout holding a copy of the filter bank and bias."""
        with torch.no_grad():
            bank = self.filter_bank().detach().clone().contiguous()
            bias = self.expanded_bias()
            conv = nn.Conv2d(
                bank.shape[1],
                bank.shape[0],
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                bias=bias is not None,
                device=bank.device,
                dtype=bank.dtype,
            )
            conv.weight.copy_(bank)
            if bias is not None:
                conv.bias.copy_(bias.detach())
        return conv


def eval_cached(layer: nn.Module, sources: Sequence[torch.Tensor], compute: Callable[[], _T]) -> _T:
    """``compute()``, kept in ``layer._cache`` while ``layer`` is in eval mode without autograd and
    none of ``sources`` (the tensors it is computed from) changed, e.g. a filter bank.

    The key is each source's version, address, device and dtype, and ``layer.channels_last``. Train
    mode or autograd drop the cache; while ``torch.compile`` traces it is bypassed, untouched, so
    graphs have no side effects. The entry keeps the sources alive, so that a replacement tensor
    (``.data =``, ``load_state_dict(assign=True)``) cannot get a freed address with version 0 and match.
    Cached tensors are detached: a bank that is a view of its weight (C1) and was made without grad could
    not be deep-copied after an in-place change of the weight (``load_state_dict``, an optimizer step).
    """
    if _is_compiling():
        return compute()
    if layer.training or torch.is_grad_enabled():
        layer._cache = None
        return compute()
    key = (*((t._version, t.data_ptr(), t.device, t.dtype) for t in sources), getattr(layer, "channels_last", False))
    cache = getattr(layer, "_cache", None)
    if cache is None or cache[0] != key:
        value = tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, compute())
        cache = layer._cache = (key, value, [t.detach() for t in sources])
    return cache[1]


# ------------------------------------------------------------------ plain building blocks
class GroupPool2d(nn.Module):
    """``[B, C·n, H, W] → [B, C, H, W]``: max or mean over the ``n`` group channels of each field.

    The flattened-layout form of group pooling (scriptable, ONNX-exportable).
    """

    def __init__(self, order: int, mode: str = "max") -> None:
        super().__init__()
        if mode not in _GROUP_POOL_MODES:
            raise ValueError(f"group pooling mode must be 'max' or 'mean', got {mode!r}")
        self.order = order
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, self.order, x.shape[2], x.shape[3])
        if self.mode == "max":
            return x.amax(dim=2)
        return x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"order={self.order}, mode={self.mode}"


def plain_batch_norm(bn: nn.modules.batchnorm._BatchNorm, order: int) -> nn.BatchNorm2d:
    """``nn.BatchNorm2d`` over ``C·order`` channels with each field's statistics and affine map of
    ``bn`` (``C`` features) repeated ``order`` times: the same map in eval mode."""
    out = nn.BatchNorm2d(
        bn.num_features * order,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    ref = bn.weight if bn.affine else bn.running_mean
    if ref is not None:
        out.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if bn.track_running_stats:
            out.running_mean.copy_(bn.running_mean.repeat_interleave(order))
            out.running_var.copy_(bn.running_var.repeat_interleave(order))
            out.num_batches_tracked.copy_(bn.num_batches_tracked)
        if bn.affine:
            out.weight.copy_(bn.weight.detach().repeat_interleave(order))
            out.bias.copy_(bn.bias.detach().repeat_interleave(order))
    return out.eval()


# ------------------------------------------------------------------------- default layers
class SpatialPool(EquivariantLayer):
    """Max/avg pooling over the last two axes of ``[B, C, H, W]`` or ``[B, C, |G|, H, W]``
    (average pooling does not count zero padding)."""

    def __init__(self, mode: str = "max", kernel_size: int = 2, stride: int | None = None, padding: int = 0):
        super().__init__()
        if mode not in _POOL_MODES:
            raise SpecError(f"unknown spatial pooling mode {mode!r}; allowed: {', '.join(_POOL_MODES)}")
        self.mode, self.kernel_size = mode, kernel_size
        self.stride, self.padding = stride or kernel_size, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        flat = x.reshape(lead[0], -1, *x.shape[-2:])
        if self.mode == "max":
            out = F.max_pool2d(flat, self.kernel_size, self.stride, self.padding)
        else:
            out = F.avg_pool2d(flat, self.kernel_size, self.stride, self.padding, count_include_pad=False)
        return out.reshape(*lead, *out.shape[-2:])

    def export_plain(self) -> nn.Module:
        if self.mode == "max":
            return nn.MaxPool2d(self.kernel_size, self.stride, self.padding)
        return nn.AvgPool2d(self.kernel_size, self.stride, self.padding, count_include_pad=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GlobalPool(EquivariantLayer):
    """Pool everything but batch and channel: ``[B, C, ...] → [B, C]`` (max or avg).

    ``order`` is the number of channels per field on the flattened layout (``|G|`` for group maps,
    1 for images); only the export needs it.
    """

    def __init__(self, mode: str = "avg", order: int = 1):
        super().__init__()
        if mode not in _POOL_MODES:
            raise SpecError(f"unknown global pooling mode {mode!r}; allowed: {', '.join(_POOL_MODES)}")
        self.mode, self.order = mode, order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return flat.amax(dim=2) if self.mode == "max" else flat.mean(dim=2)

    def export_plain(self) -> nn.Module:
        modules: list[nn.Module] = []
        if self.order > 1:  # max/mean over the group channels, then over space
            modules.append(GroupPool2d(self.order, "max" if self.mode == "max" else "mean"))
        modules.append(nn.AdaptiveMaxPool2d(1) if self.mode == "max" else nn.AdaptiveAvgPool2d(1))
        modules.append(nn.Flatten(1))
        return nn.Sequential(*modules)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class GroupPool(EquivariantLayer):
    """``[B, C, |G|, H, W] → [B, C, H, W]``: max or mean over the group axis. Invariant to its
    permutation, so the output transforms like an image."""

    def __init__(self, order: int, mode: str = "max") -> None:
        super().__init__()
        if mode not in _GROUP_POOL_MODES:
            raise SpecError(f"unknown group pooling mode {mode!r}; allowed: {', '.join(_GROUP_POOL_MODES)}")
        self.order, self.mode = order, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=2) if self.mode == "max" else x.mean(dim=2)

    def export_plain(self) -> nn.Module:
        return GroupPool2d(self.order, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class FieldBatchNorm(EquivariantLayer, nn.BatchNorm3d):
    """Batch norm of ``[B, C, |G|, H, W]`` with statistics and affine map shared over the group axis
    (one per field), which keeps it equivariant. Plain images use ``nn.BatchNorm2d``."""

    def __init__(self, channels: int, order: int, **kwargs) -> None:
        super().__init__(channels, **kwargs)
        self.order = order

    def export_plain(self) -> nn.BatchNorm2d:
        return plain_batch_norm(self, self.order)


class FieldLayerNorm(EquivariantLayer):
    """Layer norm of ``[B, C, ...]`` over all but the batch axis, with an optional affine map per field.

    The mean and variance of a sample are taken over every entry, so a permutation of the entries
    (any exact group element acting on a group or image map) leaves them unchanged: the layer is
    equivariant. The scale and shift have one value per field (``C``), shared over the group axis
    and space, as in batch norm. ``affine=False`` is ``F.layer_norm(x, x.shape[1:])``. ``order``:
    channels per field on the flattened layout (``|G|`` or 1).
    """

    def __init__(self, channels: int, order: int = 1, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.channels, self.order, self.eps = channels, order, eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one group over all of (C, ...) is a per-sample layer norm; group_norm's affine is per channel
        # (axis 1), i.e. per field — the same result as layer_norm + broadcasting, in one fused op
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)

    def export_plain(self) -> nn.GroupNorm:
        norm = nn.GroupNorm(1, self.channels * self.order, eps=self.eps, affine=self.weight is not None)
        if self.weight is not None:
            norm.to(device=self.weight.device, dtype=self.weight.dtype)
            with torch.no_grad():
                norm.weight.copy_(self.weight.detach().repeat_interleave(self.order))
                norm.bias.copy_(self.bias.detach().repeat_interleave(self.order))
        return norm

    def extra_repr(self) -> str:
        return f"{self.channels}, affine={self.weight is not None}, eps={self.eps:g}"


def orbit_matrices(group: Group, side: int) -> torch.Tensor:
    """``[|G|, side², side²]``: ``vec(T_g x) = M[g] @ vec(x)`` for a ``side × side`` map (exact
    elements give permutation matrices, others their bilinear interpolation)."""
    n = side * side
    basis = torch.eye(n, dtype=torch.float64).reshape(n, side, side)
    return torch.stack([transform_image(basis, group, g).reshape(n, n).T for g in range(group.order)]).float()


class OrbitPool(EquivariantLayer):
    """``[B, C, |G|, size, size]`` or ``[B, C, size, size]`` → ``[B, C·size²]``: ``mean``/``max`` over
    the group axis and over ``transform_image(·, g)`` for every ``g`` of the group, then flatten.

    The result is invariant: rotating the input by ``r`` rotates the group-pooled map by ``r``,
    which only reorders the orbit ``{g·m}``. Exact for elements that permute pixels, approximate
    (bilinear) for the others. ``group_input``: whether the input has a group axis.
    """

    def __init__(self, group: Group, mode: str = "mean", size: int = 1, group_input: bool = True):
        super().__init__()
        if mode not in ("mean", "max"):
            raise SpecError(f"unknown orbit pooling mode {mode!r}; allowed: mean, max")
        self.group, self.mode, self.size, self.group_input = group, mode, size, group_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # group map: pool the group axis first (it commutes with the orbit average)
            x = x.mean(dim=2) if self.mode == "mean" else x.amax(dim=2)
        orbit = torch.stack([transform_image(x, self.group, g) for g in range(self.group.order)])
        pooled = orbit.mean(dim=0) if self.mode == "mean" else orbit.amax(dim=0)
        return pooled.flatten(1)

    def export_plain(self) -> nn.Sequential:
        """Group pooling, then the orbit of each pixel as a fixed ``nn.Linear`` on the flattened map
        (mean: one ``[HW, HW]`` matrix; max: ``|G|`` stacked, then ``nn.AdaptiveMaxPool2d``)."""
        n, order = self.size * self.size, self.group.order
        maps = orbit_matrices(self.group, self.size)
        modules: list[nn.Module] = []
        if self.group_input:
            modules.append(GroupPool2d(order, "max" if self.mode == "max" else "mean"))
        modules.append(nn.Flatten(2))  # [B, C, H·W]
        if self.mode == "mean":
            orbit = nn.Linear(n, n, bias=False)
            weight = maps.mean(dim=0)
        else:  # output position p·|G| + g holds (T_g x)[p]; max over the |G| entries of each p
            orbit = nn.Linear(n, n * order, bias=False)
            weight = maps.permute(1, 0, 2).reshape(n * order, n)
        with torch.no_grad():
            orbit.weight.copy_(weight)
        orbit.weight.requires_grad_(False)  # a fixed map, not a parameter to learn
        modules.append(orbit)
        if self.mode == "max":
            modules += [nn.Unflatten(2, (n, order)), nn.AdaptiveMaxPool2d((n, 1))]
        modules.append(nn.Flatten(1))
        return nn.Sequential(*modules)

    def extra_repr(self) -> str:
        return f"group={self.group.name}, mode={self.mode}, size={self.size}"
