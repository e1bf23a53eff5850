"""Layers on steerable field types ``[B, D, H, W]`` (:mod:`gcnnkit.core.fields`) that keep equivariance for
every kind of field, the defaults of :class:`~gcnnkit.core.backend.Backend` for them.

=====================  ==========================================================================
layer                  what it does to field ``f`` (``|f|``: its norm at a pixel)
=====================  ==========================================================================
NormNonlinearity       ``f · φ(|f| − b) / |f|``, ``b = exp(log_bias)`` learned per field (escnn's
                       ``NormNonLinearity``): any field, the norm is invariant
GatedNonlinearity      the first half of the fields are 1-dimensional invariant *gates*; gated
                       field ``i`` (second half) becomes ``f_i · sigmoid(gate_i − b_i)`` (escnn's
                       ``GatedNonLinearity1``)
SteerableBatchNorm     permutation fields: one mean/variance/affine per field, shared over its
                       channels (as regular fields); other fields: divided by the root of their
                       mean squared norm per channel, times a learned scale (no shift)
InvariantPool          ``→ [B, F, H, W]``: max/mean over a permutation field's channels, the norm
                       of any other field
SteerableGlobalPool    ``→ [B, F]``: :class:`InvariantPool`, then max/avg over space
Restriction            the identity on the tensor; the field type is re-read on a subgroup
=====================  ==========================================================================

All are plain torch modules on the flattened layout (a group map's ``[B, C·|G|, H, W]`` is the steerable
layout of ``C`` regular fields), so they export as they are.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantLayer

#: Norm nonlinearities ``φ`` (escnn's ``n_relu``, ``n_sigmoid``, ``n_softplus``, ``squash``).
NORM_FUNCTIONS = ("relu", "sigmoid", "softplus", "squash")
_EPS = 1e-10


def _field_index(reps) -> torch.Tensor:
    """``[D]`` long: the field of each channel."""
    return torch.cat([torch.full((r.size,), i, dtype=torch.long) for i, r in enumerate(reps)])


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1, 2) if x.ndim == 5 else x


def _field_sum(x: torch.Tensor, index: torch.Tensor, fields: int) -> torch.Tensor:
    """``[B, D, H, W] → [B, F, H, W]``: the sum of each field's channels."""
    out = x.new_zeros(x.shape[0], fields, *x.shape[2:])
    return out.index_add(1, index, x)


def _is_gate(rep) -> bool:
    return rep.size == 1 and bool((rep.matrices == 1).all())


class NormNonlinearity(nn.Module):
    """``[B, D, H, W]`` → same: each field scaled by ``φ(|f| − b) / |f|`` (0 where ``|f| = 0``)."""

    def __init__(self, group: Group, in_type: FieldType, fn: str = "relu", bias: bool = True) -> None:
        super().__init__()
        if fn not in NORM_FUNCTIONS:
            raise SpecError(f"norm nonlinearity: unknown function {fn!r}; allowed: {', '.join(NORM_FUNCTIONS)}")
        if fn == "squash" and bias:
            raise SpecError("norm nonlinearity: 'squash' takes no bias; set bias: false")
        reps = in_type.field_reps(group)
        self.fn, self.fields, self.kind = fn, len(reps), in_type.kind
        self.register_buffer("index", _field_index(reps), persistent=False)
        self.log_bias = nn.Parameter(torch.zeros(len(reps))) if bias else None

    def _phi(self, t: torch.Tensor) -> torch.Tensor:
        if self.fn == "relu":
            return torch.relu(t)
        if self.fn == "sigmoid":
            return torch.sigmoid(t)
        if self.fn == "softplus":
            return F.softplus(t)
        return t / (1.0 + t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = _flat(x)
        norms = _field_sum(flat * flat, self.index, self.fields).sqrt()
        shifted = norms if self.log_bias is None else norms - self.log_bias.exp().to(norms.dtype)[:, None, None]
        scale = self._phi(shifted) / norms.clamp_min(_EPS)
        scale = torch.where(norms <= _EPS, torch.zeros_like(scale), scale)
        return (flat * scale.index_select(1, self.index)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"fields={self.fields}, fn={self.fn}, bias={self.log_bias is not None}"


def gated_output_type(group: Group, in_type: FieldType, where: str) -> FieldType:
    """The second half of ``in_type``'s fields, after checking that the first half are invariant 1-d gates."""
    reps = in_type.field_reps(group)
    n = len(reps) // 2
    if in_type.kind != "steerable" or len(reps) % 2 or not all(_is_gate(r) for r in reps[:n]):
        raise SpecError(
            f"{where}: a gated nonlinearity needs an even number of fields, the first half invariant 1-d gates "
            f"(trivial), one per gated field of the second half; got {in_type}, e.g. out: {{trivial: 4, irrep(1): 4}}"
        )
    return FieldType.of(reps[n:])


class GatedNonlinearity(EquivariantLayer):
    """``[B, D, H, W] → [B, D', H, W]``: gated field ``i`` times ``sigmoid(gate_i − bias_i)``; the gates
    (the first half of the fields) are dropped. An all-regular output is ``[B, C, |G|, H, W]`` (its
    :meth:`export_plain` keeps the flattened layout)."""

    flat_output = False

    def __init__(self, group: Group, in_type: FieldType) -> None:
        super().__init__()
        self.out_type = gated_output_type(group, in_type, "gated")
        reps = in_type.field_reps(group)
        n = len(reps) // 2
        self.gates, self.order = n, group.order
        self.register_buffer("index", _field_index(reps[n:]), persistent=False)
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(x[:, : self.gates] - self.bias.to(x.dtype)[:, None, None])
        y = x[:, self.gates :] * gates.index_select(1, self.index)
        if self.out_type.kind == "group" and not self.flat_output:
            return y.reshape(y.shape[0], self.out_type.channels, self.order, *y.shape[-2:])
        return y

    def export_plain(self) -> nn.Module:
        """A copy that returns the flattened layout ``[B, C·|G|, H, W]`` for an all-regular output."""
        plain = copy.deepcopy(self)
        plain.flat_output = True
        return plain

    def extra_repr(self) -> str:
        return f"gates={self.gates}, out={self.out_type}"


class SteerableBatchNorm(nn.Module):
    """Batch norm per field (class docstring of the module): ``[B, D, H, W]`` → same.

    ``weight`` ``[fields]`` scales every field; ``bias`` ``[permutation fields]`` shifts the permutation
    fields only (a shift of a rotating field would break equivariance, so the others have none).
    """

    def __init__(self, group: Group, in_type: FieldType, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        reps = in_type.field_reps(group)
        self.fields, self.eps, self.momentum = len(reps), eps, momentum
        self.register_buffer("index", _field_index(reps), persistent=False)
        self.register_buffer("sizes", torch.tensor([r.size for r in reps], dtype=torch.float32), persistent=False)
        self.register_buffer("centred", torch.tensor([r.is_permutation for r in reps]), persistent=False)
        self.register_buffer("shifted", self.centred.nonzero().flatten(), persistent=False)  # fields with a bias
        self.weight = nn.Parameter(torch.ones(len(reps)))
        self.bias = nn.Parameter(torch.zeros(len(self.shifted)))
        self.register_buffer("running_mean", torch.zeros(len(reps)))
        self.register_buffer("running_var", torch.ones(len(reps)))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = _flat(x)
        if self.training:
            count = flat.shape[0] * flat.shape[2] * flat.shape[3]
            sizes = self.sizes.to(flat.dtype)
            channel_mean = flat.mean(dim=(0, 2, 3))
            first = channel_mean.new_zeros(self.fields).index_add(0, self.index, channel_mean)
            second = channel_mean.new_zeros(self.fields).index_add(0, self.index, (flat * flat).mean(dim=(0, 2, 3)))
            mean = torch.where(self.centred, first / sizes, torch.zeros_like(first))
            var = second / sizes - mean * mean
            with torch.no_grad():
                n = count * sizes
                unbiased = torch.where(self.centred, var * n / (n - 1).clamp_min(1), var)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean.to(flat.dtype), self.running_var.to(flat.dtype)
        scale = self.weight.to(flat.dtype) / (var + self.eps).sqrt()
        bias = scale.new_zeros(self.fields).index_copy(0, self.shifted, self.bias.to(flat.dtype))
        shift = torch.where(self.centred, bias - mean * scale, torch.zeros_like(scale))
        out = flat * scale.index_select(0, self.index)[:, None, None] + shift.index_select(0, self.index)[:, None, None]
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"fields={self.fields}, eps={self.eps:g}, momentum={self.momentum}"


class InvariantPool(nn.Module):
    """``[B, D, H, W] → [B, F, H, W]``: per field, ``max``/``mean`` of a permutation field's channels (they
    are permuted by the group), the norm of any other field (it is invariant). The output is ``F`` images."""

    def __init__(self, group: Group, in_type: FieldType, mode: str = "max") -> None:
        super().__init__()
        if mode not in ("max", "mean"):
            raise SpecError(f"invariant pooling mode must be 'max' or 'mean', got {mode!r}")
        reps = in_type.field_reps(group)
        self.fields, self.mode = len(reps), mode
        self.register_buffer("index", _field_index(reps), persistent=False)
        self.register_buffer("sizes", torch.tensor([r.size for r in reps], dtype=torch.float32), persistent=False)
        self.register_buffer("permutation", torch.tensor([r.is_permutation for r in reps]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = _flat(x)
        norms = _field_sum(flat * flat, self.index, self.fields).sqrt()
        if self.mode == "mean":
            pooled = _field_sum(flat, self.index, self.fields) / self.sizes.to(flat.dtype)[:, None, None]
        else:
            shape = (flat.shape[0], self.fields, *flat.shape[2:])
            index = self.index[None, :, None, None].expand_as(flat)
            pooled = flat.new_full(shape, float("-inf")).scatter_reduce(1, index, flat, "amax", include_self=False)
        return torch.where(self.permutation[:, None, None], pooled, norms)

    def extra_repr(self) -> str:
        return f"fields={self.fields}, mode={self.mode}"


class SteerableGlobalPool(nn.Module):
    """``[B, D, H, W] → [B, F]``: :class:`InvariantPool` (``max`` for ``mode="max"``, ``mean`` for ``avg``),
    then ``max``/``avg`` over space: invariant features."""

    def __init__(self, group: Group, in_type: FieldType, mode: str = "avg") -> None:
        super().__init__()
        if mode not in ("max", "avg"):
            raise SpecError(f"unknown global pooling mode {mode!r}; allowed: max, avg")
        self.mode = mode
        self.pool = InvariantPool(group, in_type, "max" if mode == "max" else "mean")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).flatten(2)
        return pooled.amax(dim=2) if self.mode == "max" else pooled.mean(dim=2)


class Restriction(nn.Module):
    """The identity on the tensor (a group map is flattened to the steerable layout): the layer after it
    reads the fields as representations of a subgroup (:func:`restricted_type`)."""

    def __init__(self, group: Group, in_type: FieldType, subgroup_id) -> None:
        super().__init__()
        self.subgroup_id = subgroup_id
        self.subgroup, _ = group.subgroup(subgroup_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _flat(x)

    def extra_repr(self) -> str:
        return f"subgroup={self.subgroup.name} {self.subgroup_id!r}"


def restricted_type(group: Group, in_type: FieldType, subgroup_id) -> FieldType:
    """``in_type`` re-read on the subgroup: images stay images, every other field its restricted
    representation (a ``steerable`` type; vectors stay vectors)."""
    if in_type.kind in ("image", "vector"):
        return in_type
    return FieldType("steerable", reps=tuple(r.restrict(subgroup_id) for r in in_type.field_reps(group)))
