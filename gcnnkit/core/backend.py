"""The layer interface every backend implements.

A backend is a factory of ``nn.Module`` layers on plain tensors in gcnnkit's layout (see
:mod:`gcnnkit.core.fields`). Every factory has the same leading arguments ``(group, in_type)``
and returns a module mapping a tensor of ``in_type`` to a tensor of the type given by
:meth:`Backend.out_type` — so any layer of one backend can be compared one to one with the
same layer of another.

Backends register under the entry-point group ``gcnnkit.backends``; the entry point's
object is a :class:`Backend` subclass or instance with ``api_version`` set to the
:data:`BACKEND_API_VERSION` it was written for.

Layers that do not depend on how convolutions are implemented (activations, dropout, layer
norm, spatial, global and orbit pooling, linear head) have default implementations here; a
backend may override any of them.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.errors import SpecError, UnsupportedGroupError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.transforms import transform_image

#: Version of the backend plugin API; a backend declares the version it was written for.
BACKEND_API_VERSION = 1

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


class Backend(abc.ABC):
    """Builds equivariant layers for a group. Subclasses set ``name`` and ``api_version``."""

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
    ) -> nn.Module:
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
    ) -> nn.Module:
        """``[B, C_in, |G|, H, W] → [B, out_fields, |G|, H', W']``: filters transformed spatially
        and permuted along the group axis."""

    @abc.abstractmethod
    def group_pool(self, group: Group, in_type: FieldType, mode: str = "max") -> nn.Module:
        """``[B, C, |G|, H, W] → [B, C, H, W]``: ``max`` or ``mean`` over the group axis (invariant)."""

    @abc.abstractmethod
    def batch_norm(self, group: Group, in_type: FieldType) -> nn.Module:
        """Batch norm with one mean/variance/affine per field, shared over the group axis."""

    # ----------------------------------------------------- shared default layers
    def activation(self, group: Group, in_type: FieldType, name: str = "relu") -> nn.Module:
        """Pointwise nonlinearity (shape preserving)."""
        if name not in ACTIVATIONS:
            raise SpecError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
        return ACTIVATIONS[name]()

    def dropout(self, group: Group, in_type: FieldType, p: float = 0.5) -> nn.Module:
        """Dropout (identity in eval mode, so it never affects the equivariance check)."""
        return nn.Dropout(p)

    def layer_norm(self, group: Group, in_type: FieldType, affine: bool = True, eps: float = 1e-5) -> nn.Module:
        """Per-sample normalisation over everything but the batch axis (``C, (|G|,) H, W``), then an
        optional scale and shift per field (shared over the group axis and space)."""
        return FieldLayerNorm(in_type.channels, affine, eps)

    def spatial_pool(
        self,
        group: Group,
        in_type: FieldType,
        mode: str = "max",
        kernel_size: int = 2,
        stride: int | None = None,
        padding: int = 0,
    ) -> nn.Module:
        """Max/avg pooling over space, per channel: ``[B, C, (|G|,) H, W] → [B, C, (|G|,) H', W']``."""
        return SpatialPool(mode, kernel_size, stride, padding)

    def global_pool(self, group: Group, in_type: FieldType, mode: str = "avg") -> nn.Module:
        """Pool over space (and the group axis, if any): ``→ [B, C]`` invariant features."""
        return GlobalPool(mode)

    def orbit_pool(self, group: Group, in_type: FieldType, mode: str = "mean") -> nn.Module:
        """``[B, C, (|G|,) H, W] → [B, C·H·W]``: pool over the group axis and over the group's spatial
        action on the map (``mean``/``max`` of ``g·x`` over ``g``), then flatten. The map keeps its
        spatial layout but is invariant, so a linear head may read every position."""
        return OrbitPool(group, mode)

    def linear(self, group: Group, in_type: FieldType, out_features: int, bias: bool = True) -> nn.Module:
        """``[B, C] → [B, out_features]`` on invariant features."""
        return nn.Linear(in_type.channels, out_features, bias=bias)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_POOL_MODES = ("max", "avg")


class SpatialPool(nn.Module):
    """Max/avg pooling over the last two axes of ``[B, C, H, W]`` or ``[B, C, |G|, H, W]``."""

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

    def extra_repr(self) -> str:
        return f"mode={self.mode}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GlobalPool(nn.Module):
    """Pool everything but batch and channel: ``[B, C, ...] → [B, C]`` (max or avg)."""

    def __init__(self, mode: str = "avg"):
        super().__init__()
        if mode not in _POOL_MODES:
            raise SpecError(f"unknown global pooling mode {mode!r}; allowed: {', '.join(_POOL_MODES)}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return flat.amax(dim=2) if self.mode == "max" else flat.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class FieldLayerNorm(nn.Module):
    """Layer norm of ``[B, C, ...]`` over all but the batch axis, with an optional affine map per field.

    The mean and variance of a sample are taken over every entry, so a permutation of the entries
    (any exact group element acting on a group or image map) leaves them unchanged: the layer is
    equivariant. The scale and shift have one value per field (``C``), shared over the group axis
    and space, as in batch norm. ``affine=False`` is ``F.layer_norm(x, x.shape[1:])``.
    """

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one group over all of (C, ...) is a per-sample layer norm; group_norm's affine is per channel
        # (axis 1), i.e. per field — the same result as layer_norm + broadcasting, in one fused op
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, affine={self.weight is not None}, eps={self.eps:g}"


class OrbitPool(nn.Module):
    """``[B, C, |G|, H, W]`` or ``[B, C, H, W]`` → ``[B, C·H·W]``: ``mean``/``max`` over the group axis
    and over ``transform_image(·, g)`` for every ``g`` of the group, then flatten.

    The result is invariant: rotating the input by ``r`` rotates the group-pooled map by ``r``,
    which only reorders the orbit ``{g·m}``. Exact for elements that permute pixels, approximate
    (bilinear) for the others; the map must be square when the group has 90° rotations.
    """

    def __init__(self, group: Group, mode: str = "mean"):
        super().__init__()
        if mode not in ("mean", "max"):
            raise SpecError(f"unknown orbit pooling mode {mode!r}; allowed: mean, max")
        self.group, self.mode = group, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # group map: pool the group axis first (it commutes with the orbit average)
            x = x.mean(dim=2) if self.mode == "mean" else x.amax(dim=2)
        orbit = torch.stack([transform_image(x, self.group, g) for g in range(self.group.order)])
        pooled = orbit.mean(dim=0) if self.mode == "mean" else orbit.amax(dim=0)
        return pooled.flatten(1)

    def extra_repr(self) -> str:
        return f"group={self.group.name}, mode={self.mode}"
