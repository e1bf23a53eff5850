"""Steerable layers between any field types, built from escnn modules, on plain tensors.

A field type is an ordered list of representations (:mod:`gcnnkit_escnn.representations`); a tensor
of it is ``[B, D, H, W]`` with ``D`` the sum of the fields' sizes, field after field, each field's
channels in its representation's basis (escnn's). A type made only of regular fields may also come
as ``[B, C, |G|, H, W]`` (gcnnkit's group layout); it is read as ``[B, C·|G|, H, W]``.

============================  =================================  =========================================
layer                         escnn module                       what it does
============================  =================================  =========================================
:class:`EscnnFieldConv`       ``R2Conv``                         convolution ``in_reps → out_reps``
:class:`EscnnNormAct`         ``NormNonLinearity`` (``n_relu``)  ``x·relu(|x| − b)/|x|`` per field
:class:`EscnnGated`           ``GatedNonLinearity1``             ``x_i·sigmoid(γ_i − b_i)`` per gated field
:class:`EscnnFieldBatchNorm`  ``InnerBatchNorm`` +               per field: permutation fields by their
                              ``NormBatchNorm``                  channels' statistics, others by the norm
:class:`EscnnRestriction`     ``RestrictionModule``              re-reads the fields on a subgroup
:class:`EscnnInvariantPool`   ``GroupPooling`` + ``NormPool``    per field: max over a permutation field's
                                                                 channels, norm of any other field
============================  =================================  =========================================

Fields are handed to escnn in their own order; where escnn groups fields by size internally (norm and
gated nonlinearities, norm batch norm), the per-field parameters are re-ordered at the boundary so that
the transfer format (:mod:`gcnnkit_escnn.transfer`) lists them field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantConv, EquivariantLayer, eval_cached
from gcnnkit_escnn._compat import enn
from gcnnkit_escnn.basis import RING_SIGMA, RingCutoff, complete_basis, pixel_rings
from gcnnkit_escnn.init import generalized_he_init
from gcnnkit_escnn.layers import EscnnLayer, GeometricTensor, _private_basis
from gcnnkit_escnn.representations import escnn_field_type, escnn_representation, is_permutation


def flat(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, |G|, H, W]`` → ``[B, C·|G|, H, W]`` (a view); ``[B, D, H, W]`` unchanged."""
    return x.flatten(1, 2) if x.ndim == 5 else x


def _size_order(sizes: Sequence[int]) -> list[int]:
    """Field indices in the order escnn's size-grouped modules visit them (by size, then position)."""
    return sorted(range(len(sizes)), key=lambda i: (sizes[i], i))


class _SteerableLayer(EscnnLayer):
    """Common state: the group, its escnn gspace, the input representations."""

    def _common(self, group: Group, in_reps: Sequence[Any]) -> None:
        self.group = group
        self.in_reps = tuple(in_reps)

    @property
    def gspace(self):
        return self.escnn_group.gspace

    @property
    def in_type(self):
        return escnn_field_type(self.gspace, self.in_reps)


# ----------------------------------------------------------------------------- convolution
class _PairFilter:
    """escnn ``basis_filter`` that applies, to each block, the complete-basis selection of its pair of
    representations (set by :class:`_FieldR2Conv` just before escnn filters that block)."""

    def __init__(self) -> None:
        self.current = None

    def __call__(self, attr: dict) -> bool:
        return self.current(attr)


def _field_conv_class():
    from gcnnkit_escnn.layers import _R2Conv

    class _FieldR2Conv(_R2Conv):
        """``R2Conv`` whose complete-basis filter follows the representation pair being built."""

        def _build_kernel_basis(self, in_repr, out_repr):
            pair_filter = getattr(self, "_pair_filter", None)
            if pair_filter is not None:
                choice = complete_basis(self.space, in_repr, out_repr, self.kernel_size, self.dilation)
                pair_filter.current = choice.basis_filter
            return super()._build_kernel_basis(in_repr, out_repr)

    return _FieldR2Conv


_FieldR2Conv = _field_conv_class()


class EscnnFieldConv(_SteerableLayer, EquivariantConv):
    """escnn's ``R2Conv`` from ``in_reps`` to ``out_reps``: ``[B, D_in, H, W] → [B, D_out, H', W']``.

    ``basis="complete"`` spans every equivariant kernel of the pixel grid (the native backend's
    space, :mod:`gcnnkit_escnn.basis`), chosen per pair of representations.
    """

    escnn_children = ("conv",)

    def __init__(
        self,
        group: Group,
        in_reps: Sequence[Any],
        out_reps: Sequence[Any],
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        basis: str = "escnn",
        group_layout: bool = False,
    ) -> None:
        super().__init__()
        self._common(group, in_reps)
        self.out_reps = tuple(out_reps)
        self.group_layout = group_layout  # output [B, C, |G|, H, W] (all-regular output, gcnnkit's group layout)
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.has_bias, self.basis = bias, basis
        self._cache = None
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        gspace = self.gspace
        in_type, out_type = escnn_field_type(gspace, self.in_reps), escnn_field_type(gspace, self.out_reps)
        kwargs: dict[str, Any] = {}
        pair_filter = None
        if self.basis == "complete":
            rings = pixel_rings(self.kernel_size, self.dilation)
            pair_filter = _PairFilter()
            kwargs = {
                "rings": [r for r, _ in rings],
                "sigma": [RING_SIGMA] * len(rings),
                "frequencies_cutoff": RingCutoff(rings),
                "basis_filter": pair_filter,
            }
        conv = _FieldR2Conv.__new__(_FieldR2Conv)
        object.__setattr__(conv, "_pair_filter", pair_filter)
        conv.__init__(
            in_type,
            out_type,
            self.kernel_size,
            padding=self.padding,
            stride=self.stride,
            dilation=self.dilation,
            bias=self.has_bias,
            initialize=False,
            **kwargs,
        )
        object.__setattr__(conv, "_pair_filter", None)
        self.conv = conv
        _private_basis(self.conv)
        _project_basis(self.conv, self.escnn_group, self.kernel_size)
        if initialize:
            generalized_he_init(self.conv.weights.data, self.conv.basisexpansion)

    def expand(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Expanded filter ``[D_out, D_in, k, k]`` and bias ``[D_out]`` (escnn's, which is gcnnkit's order)."""
        weights = self.conv.weights
        with torch.autocast(device_type=weights.device.type, enabled=False):
            return self.conv.expand_parameters()

    def _expanded(self):
        sources = [t for t in (self.conv.weights, self.conv.bias) if t is not None]
        return eval_cached(self, sources, self.expand)

    def filter_bank(self) -> torch.Tensor:
        return self._expanded()[0]

    def expanded_bias(self) -> torch.Tensor | None:
        return self._expanded()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _filter, _bias = self._expanded()
        y = F.conv2d(flat(x), _filter, _bias, self.stride, self.padding, self.dilation)
        return y.unflatten(1, (len(self.out_reps), -1)) if self.group_layout else y

    @property
    def basis_dimension(self) -> int:
        """Number of learnable coefficients (all field pairs)."""
        return int(self.conv.basisexpansion.dimension())

    def extra_repr(self) -> str:
        return (
            f"group={self.group.name}, in={self.in_type.size} channels ({len(self.in_reps)} fields), "
            f"out={sum(r.size for r in escnn_field_type(self.gspace, self.out_reps).representations)} channels "
            f"({len(self.out_reps)} fields), kernel_size={self.kernel_size}, basis={self.basis} "
            f"({self.basis_dimension} coefficients)"
        )


@torch.no_grad()
def _project_basis(conv, eg, kernel_size: int) -> None:
    """Make the sampled basis exactly equivariant under the group's exact elements ``E``.

    escnn samples its basis in float32, so a float64 layer was equivariant to ~1e-7 only. Each block's
    basis is replaced, in float64, by its group average ``K'(p) = 1/|E| Σ_a ρ_out(a) K(a⁻¹p) ρ_in(a)ᵀ`` (the
    projection onto the equivariant kernels, which moves it by float32 round-off), then rounded to float32.
    For exact elements every ``ρ(a)`` is a signed permutation and ``a`` permutes pixels, and rounding
    commutes with both, so the float32 basis is exactly equivariant: float64 layers are exact too.
    """
    from gcnnkit.core.transforms import transform_image

    group = eg.group
    if eg.perm is not None:  # a group listed in another order than escnn's: keep escnn's basis
        return
    exact = [a for a in range(group.order) if group.is_exact(a)]
    if len(exact) < 2:
        return
    grid = torch.arange(kernel_size * kernel_size, dtype=torch.float64).reshape(kernel_size, kernel_size)
    pixels = [transform_image(grid, group, a).reshape(-1).round().long() for a in exact]
    expansion = conv.basisexpansion
    reps = {r.name: r for r in (*conv.in_type.representations, *conv.out_type.representations)}

    def matrices(rep) -> list[torch.Tensor]:
        out = []
        for a in exact:
            m = torch.as_tensor(rep(eg.elements[a]), dtype=torch.float64)
            out.append(m.round() if bool(((m - m.round()).abs() < 1e-9).all()) else m)
        return out

    for pair in expansion._representations_pairs:
        block = getattr(expansion, f"block_expansion_{expansion._escape_pair(pair)}")
        basis = block.sampled_basis  # [dim, out size, in size, k²]
        b64 = basis.to(torch.float64)
        acc = torch.zeros_like(b64)
        for rho_out, rho_in, pix in zip(matrices(reps[pair[1]]), matrices(reps[pair[0]]), pixels, strict=True):
            acc += torch.einsum("oO,dOIs,iI->dois", rho_out, b64.index_select(3, pix), rho_in)
        acc /= len(exact)
        moved = float((acc - b64).norm() / b64.norm().clamp_min(1e-30))
        if moved > 1e-4:  # the basis was not equivariant to begin with: a convention error, not round-off
            raise RuntimeError(f"escnn basis {pair} moved by {moved:.1e} under the group average")
        basis.copy_(acc.to(basis.dtype))


# ----------------------------------------------------------------------------- nonlinearities
#: gcnnkit's norm functions → escnn's ``NormNonLinearity`` names.
NORM_FUNCTIONS = {"relu": "n_relu", "sigmoid": "n_sigmoid", "softplus": "n_softplus", "squash": "squash"}


class EscnnNormAct(_SteerableLayer, EquivariantLayer):
    """escnn's ``NormNonLinearity``: each field ``x ↦ x · φ(|x| − b)/|x|`` (``φ``: relu, sigmoid, softplus;
    ``squash``: ``t/(1+t)``, no bias), one learned ``b > 0`` per field (escnn stores ``log b``). Equivariant
    for any orthogonal representation."""

    escnn_children = ("module",)

    def __init__(self, group: Group, in_reps: Sequence[Any], fn: str = "relu", bias: bool = True) -> None:
        super().__init__()
        self._common(group, in_reps)
        self.fn, self.has_bias = fn, bias
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        self.module = enn.NormNonLinearity(self.in_type, NORM_FUNCTIONS[self.fn], bias=self.has_bias)
        sizes = [r.size for r in self.in_type.representations]
        # escnn's log_bias[j] belongs to field bias_order[j]
        self.register_buffer("bias_order", torch.tensor(_size_order(sizes), dtype=torch.long), persistent=False)

    def field_bias(self) -> torch.Tensor | None:
        """``[fields]`` bias ``b`` in field order (``None`` without bias)."""
        if self.module.log_bias is None:
            return None
        b = torch.exp(self.module.log_bias.detach().reshape(-1))
        return torch.empty_like(b).index_copy_(0, self.bias_order, b)

    def set_field_bias(self, bias: torch.Tensor) -> None:
        """Set ``b`` (``[fields]``, field order, all > 0)."""
        with torch.no_grad():
            log = torch.log(bias.to(self.module.log_bias.dtype).clamp_min(1e-30))
            self.module.log_bias.copy_(log.index_select(0, self.bias_order).reshape(self.module.log_bias.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(GeometricTensor(flat(x), self.module.in_type)).tensor
        return y.view(x.shape)

    def export_plain(self) -> nn.Module:
        """The core's :class:`~gcnnkit.core.steerable_layers.NormNonlinearity` with this bias."""
        from gcnnkit.core.steerable_layers import NormNonlinearity

        plain = NormNonlinearity(self.group, FieldType("steerable", reps=self.in_reps), self.fn, self.has_bias)
        if plain.log_bias is not None:
            with torch.no_grad():
                plain.log_bias.copy_(torch.log(self.field_bias()))
        return plain


class EscnnGated(_SteerableLayer, EquivariantLayer):
    """escnn's ``GatedNonLinearity1``: gated field ``i`` times ``sigmoid(γ_i − b_i)`` of its gate ``γ_i``
    (a trivial field), one learned ``b_i`` per gate; the gates are dropped.

    ``gates[i]`` is True for the gate fields of ``in_reps``; the ``i``-th gate (in field order) gates the
    ``i``-th gated field. ``[B, D_in, H, W] → [B, D_gated, H, W]``.
    """

    escnn_children = ("module",)

    def __init__(self, group: Group, in_reps: Sequence[Any], gates: Sequence[bool], group_layout: bool = False) -> None:
        super().__init__()
        self._common(group, in_reps)
        self.gates = tuple(bool(g) for g in gates)
        self.group_layout = group_layout  # output [B, C, |G|, H, W] (all gated fields regular)
        if len(self.gates) != len(self.in_reps) or sum(self.gates) * 2 != len(self.gates):
            raise ValueError(f"gated nonlinearity: {sum(self.gates)} gates for {len(self.gates)} fields")
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        in_type = self.in_type
        labels = ["gate" if g else "gated" for g in self.gates]
        self.module = enn.GatedNonLinearity1(in_type, gates=labels, drop_gates=True)
        reps = in_type.representations
        sizes = [r.size for r, g in zip(reps, self.gates, strict=True) if not g]
        # escnn pairs its j-th gate with the j-th gated field in size order: feed it our gates in that order
        gate_channels = [c for c, g in zip(_field_offsets(reps), self.gates, strict=True) if g]
        order = _size_order(sizes)
        index = torch.arange(in_type.size)
        escnn_gate_channels = sorted(gate_channels)
        for slot, i in zip(escnn_gate_channels, order, strict=True):
            index[slot] = gate_channels[i]
        self.register_buffer("gate_index", index, persistent=False)
        self.register_buffer("bias_order", torch.tensor(order, dtype=torch.long), persistent=False)

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        """GatedNonLinearity1's computation on ``x`` (gates already in escnn's order), in ``x``'s dtype."""
        module = self.module
        gate_slots = [c for c, g in zip(_field_offsets(module.in_type.representations), self.gates, strict=True) if g]
        gates = torch.sigmoid(x[:, gate_slots] - module.bias.to(x.dtype).reshape(1, -1, 1, 1))
        gated = [
            (c, r.size)
            for c, r, g in zip(
                _field_offsets(module.in_type.representations), module.in_type.representations, self.gates, strict=True
            )
            if not g
        ]
        order = _size_order([size for _, size in gated])  # escnn's j-th gate → j-th gated field in size order
        parts = [None] * len(gated)
        for j, i in enumerate(order):
            c, size = gated[i]
            parts[i] = x[:, c : c + size] * gates[:, j : j + 1]
        return torch.cat(parts, dim=1)

    def field_bias(self) -> torch.Tensor:
        """``[gates]`` bias in field order."""
        b = self.module.bias.detach().reshape(-1)
        return torch.empty_like(b).index_copy_(0, self.bias_order, b)

    def set_field_bias(self, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.module.bias.copy_(bias.to(self.module.bias).index_select(0, self.bias_order).reshape(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = flat(x).index_select(1, self.gate_index)
        if x.dtype == torch.float32:
            y = self.module(GeometricTensor(x, self.module.in_type)).tensor
        else:  # escnn's GatedNonLinearity1 allocates a float32 output: the same computation in x's dtype
            y = self._gated(x)
        return y.unflatten(1, (len(self.gates) - sum(self.gates), -1)) if self.group_layout else y

    def export_plain(self) -> nn.Module:
        """The core's :class:`~gcnnkit.core.steerable_layers.GatedNonlinearity` with this bias (flattened
        layout)."""
        from gcnnkit.core.steerable_layers import GatedNonlinearity

        plain = GatedNonlinearity(self.group, FieldType("steerable", reps=self.in_reps))
        with torch.no_grad():
            plain.bias.copy_(self.field_bias())
        return plain.export_plain() if hasattr(plain, "export_plain") else plain


def _field_offsets(reps) -> list[int]:
    offsets, c = [], 0
    for r in reps:
        offsets.append(c)
        c += r.size
    return offsets


def _split_fields(gspace, in_reps) -> tuple[list, list[int], list[int]]:
    """escnn's representation of each field, and the indices of the permutation fields and of the others."""
    reps = [escnn_representation(gspace, r) for r in in_reps]
    perm = [i for i, r in enumerate(in_reps) if is_permutation(r)]
    other = [i for i, r in enumerate(in_reps) if not is_permutation(r)]
    return reps, perm, other


def _channels(reps, fields: list[int]) -> torch.Tensor:
    """The channel indices ``[Σ sizes]`` of ``fields`` (indices into ``reps``), in order."""
    offsets = _field_offsets(reps)
    return torch.tensor([c for i in fields for c in range(offsets[i], offsets[i] + reps[i].size)], dtype=torch.long)


# ----------------------------------------------------------------------------- batch norm
class EscnnFieldBatchNorm(_SteerableLayer, EquivariantLayer):
    """Batch norm per field: escnn's ``InnerBatchNorm`` on the permutation fields (trivial, regular,
    quotient: mean and variance over a field's channels) and ``NormBatchNorm`` on the others (no
    mean; the field divided by the root mean square of its norm per channel, times a learned scale).

    In eval mode both are escnn's modules as they are. In training, escnn's ``NormBatchNorm`` divides by
    its *running* variance (updated first, so the output of a batch depends on the batches before it and
    two calls on the same batch differ); here training divides by the batch's own variance, as torch's batch
    norm and the native backend do, and updates escnn's running variance with the same momentum (biased
    estimate, as the native backend), so both backends train the same model."""

    escnn_children = ("inner", "norm")

    def __init__(self, group: Group, in_reps: Sequence[Any]) -> None:
        super().__init__()
        self._common(group, in_reps)
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        gspace = self.gspace
        reps, perm, other = _split_fields(gspace, self.in_reps)
        self.perm_fields, self.norm_fields = tuple(perm), tuple(other)

        self.inner = enn.InnerBatchNorm(enn.FieldType(gspace, [reps[i] for i in perm])) if perm else nn.Identity()
        self.norm = enn.NormBatchNorm(enn.FieldType(gspace, [reps[i] for i in other])) if other else nn.Identity()
        self.register_buffer("perm_channels", _channels(reps, perm), persistent=False)
        self.register_buffer("norm_channels", _channels(reps, other), persistent=False)
        # norm fields: the field (0..len(other)-1) of each of their channels, and each field's size
        self.register_buffer(
            "norm_index",
            torch.tensor([j for j, i in enumerate(other) for _ in range(reps[i].size)], dtype=torch.long),
            persistent=False,
        )
        self.norm_sizes = [reps[i].size for i in other]

    def _norm_train(self, part: torch.Tensor) -> torch.Tensor:
        """Norm fields in training: divide by the batch's mean of ``|x|²/size`` per field; update escnn's
        running variance."""
        fields = len(self.norm_sizes)
        sq = part.new_zeros(part.shape[0], fields, *part.shape[2:]).index_add(1, self.norm_index, part * part)
        sizes = torch.tensor(self.norm_sizes, dtype=part.dtype, device=part.device)
        var = sq.mean(dim=(0, 2, 3)) / sizes
        groups = _fields_by_size(self.norm_sizes)
        weight = part.new_ones(fields)
        with torch.no_grad():
            for s, members in groups.items():
                running = getattr(self.norm, f"{s}_running_var")
                running.lerp_(var.detach()[members].reshape(running.shape).to(running.dtype), self.norm.momentum)
            self.norm.num_batches_tracked += 1
        for s, members in groups.items():
            w = getattr(self.norm, f"{s}_weight", None)
            if w is not None:
                weight = weight.index_put((torch.tensor(members, device=part.device),), w.reshape(-1).to(part.dtype))
        scale = weight / (var + self.norm.eps).sqrt()
        return part * scale.index_select(0, self.norm_index)[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = flat(x)
        out = torch.empty_like(y)
        if self.perm_fields:
            part = y.index_select(1, self.perm_channels)
            out[:, self.perm_channels] = self.inner(GeometricTensor(part, self.inner.in_type)).tensor.to(y.dtype)
        if self.norm_fields:
            part = y.index_select(1, self.norm_channels)
            if self.training:
                out[:, self.norm_channels] = self._norm_train(part)
            else:
                out[:, self.norm_channels] = self.norm(GeometricTensor(part, self.norm.in_type)).tensor.to(y.dtype)
        return out.view(x.shape)

    def export_plain(self) -> nn.Module:
        """The core's :class:`~gcnnkit.core.steerable_layers.SteerableBatchNorm` with these statistics."""
        from gcnnkit.core.steerable_layers import SteerableBatchNorm

        plain = SteerableBatchNorm(self.group, FieldType("steerable", reps=self.in_reps))
        plain.load_state_dict(field_batch_norm_state(self))
        return plain.eval()


# ----------------------------------------------------------------------------- restriction, pooling
class EscnnRestriction(_SteerableLayer, EquivariantLayer):
    """escnn's ``RestrictionModule``: the same tensor, its fields re-read as representations of the
    subgroup ``subgroup_id`` (escnn's id: ``(None, M)`` for C_M in D_N, ``M`` for C_M in C_N). Identity on
    the values (a group map ``[B, C, |G|, H, W]`` comes out flattened, ``[B, C·|G|, H, W]``: its fields are
    no longer regular ones of the subgroup); the layers after it are built on :attr:`sub_gspace`."""

    escnn_children = ("module",)

    def __init__(self, group: Group, in_reps: Sequence[Any], subgroup_id: Any) -> None:
        super().__init__()
        self._common(group, in_reps)
        self.subgroup_id = subgroup_id
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        try:
            self.module = enn.RestrictionModule(self.in_type, self.subgroup_id)
        except AssertionError:
            # escnn 1.0.11 does not wrap the mirror axis of D4's subgroup (3, 1) below 2π and asserts;
            # the layer is the identity either way, and escnn has no gspace for that mirror to build on
            self.module = nn.Identity()

    @property
    def sub_gspace(self):
        return None if isinstance(self.module, nn.Identity) else self.module.out_type.gspace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.Identity):
            return flat(x)
        return self.module(GeometricTensor(flat(x), self.module.in_type)).tensor  # a group map is flattened

    def export_plain(self) -> nn.Module:
        regular = all(getattr(r, "kind", None) == "regular" for r in self.in_reps)
        return nn.Flatten(1, 2) if regular else nn.Identity()


class EscnnInvariantPool(_SteerableLayer, EquivariantLayer):
    """Invariant map per field: on permutation fields escnn's ``GroupPooling`` (``mode="max"``: max over
    the field's channels) or their mean (``mode="mean"``), on the others escnn's ``NormPool`` (the norm).
    ``[B, D, H, W] → [B, fields, H, W]`` (trivial fields)."""

    escnn_children = ("pool", "norm")

    def __init__(self, group: Group, in_reps: Sequence[Any], mode: str = "max") -> None:
        super().__init__()
        self._common(group, in_reps)
        if mode not in ("max", "mean"):
            raise ValueError(f"invariant pooling mode {mode!r}; allowed: max, mean")
        self.mode = mode
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        gspace = self.gspace
        reps, perm, other = _split_fields(gspace, self.in_reps)

        self.pool = enn.GroupPooling(enn.FieldType(gspace, [reps[i] for i in perm])) if perm else nn.Identity()
        self.norm = enn.NormPool(enn.FieldType(gspace, [reps[i] for i in other])) if other else nn.Identity()
        self.register_buffer("perm_channels", _channels(reps, perm), persistent=False)
        self.register_buffer("norm_channels", _channels(reps, other), persistent=False)
        self.register_buffer("perm_out", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.register_buffer("norm_out", torch.tensor(other, dtype=torch.long), persistent=False)
        self.fields = len(reps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = flat(x)
        out = y.new_empty(y.shape[0], self.fields, *y.shape[2:])
        if len(self.perm_out):
            part = y.index_select(1, self.perm_channels)
            if self.mode == "max" and y.dtype == torch.float32:
                out[:, self.perm_out] = self.pool(GeometricTensor(part, self.pool.in_type)).tensor
            else:  # mean; or max in another dtype (escnn's GroupPooling allocates a float32 output)
                sizes = [r.size for r in self.pool.in_type.representations]
                reduce = (lambda c: c.mean(dim=1)) if self.mode == "mean" else (lambda c: c.amax(dim=1))
                out[:, self.perm_out] = torch.stack([reduce(c) for c in part.split(sizes, dim=1)], dim=1)
        if len(self.norm_out):
            part = y.index_select(1, self.norm_channels)
            if y.dtype == torch.float32:
                out[:, self.norm_out] = self.norm(GeometricTensor(part, self.norm.in_type)).tensor
            else:  # escnn's NormPool allocates a float32 output: the same norms in y's dtype
                sizes = [r.size for r in self.norm.in_type.representations]
                out[:, self.norm_out] = torch.stack([c.norm(dim=1) for c in part.split(sizes, dim=1)], dim=1)
        return out

    def export_plain(self) -> nn.Module:
        """The core's :class:`~gcnnkit.core.steerable_layers.InvariantPool` (it has no weights)."""
        from gcnnkit.core.steerable_layers import InvariantPool

        return InvariantPool(self.group, FieldType("steerable", reps=self.in_reps), self.mode)


# ----------------------------------------------------------------------------- transfer format
def _fields_by_size(sizes: Sequence[int]) -> dict[int, list[int]]:
    """``{size: field indices of that size, in order}`` (how escnn groups fields inside its modules)."""
    out: dict[int, list[int]] = {}
    for i, s in enumerate(sizes):
        out.setdefault(s, []).append(i)
    return out


@torch.no_grad()
def field_batch_norm_state(layer: EscnnFieldBatchNorm) -> dict[str, torch.Tensor]:
    """Transfer format of :class:`EscnnFieldBatchNorm` (the state of the core's ``SteerableBatchNorm``):
    ``weight``, ``running_mean``, ``running_var`` ``[fields]`` in field order, ``bias`` ``[permutation
    fields]`` in field order, and ``num_batches_tracked``. A non-permutation field has no bias and no mean
    (0); its ``running_var`` is the mean of ``|x|²/size`` (escnn's ``NormBatchNorm``)."""
    n = len(layer.in_reps)
    state = {"running_mean": torch.zeros(n), "bias": torch.zeros(n)}
    state.update({k: torch.ones(n) for k in ("weight", "running_var")})
    state["num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    sizes = [escnn_representation(layer.gspace, r).size for r in layer.in_reps]
    if layer.perm_fields:
        for s, fields in _fields_by_size([sizes[i] for i in layer.perm_fields]).items():
            bn = getattr(layer.inner, f"batch_norm_[{s}]")
            idx = torch.tensor([layer.perm_fields[i] for i in fields])
            for key in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(bn, key)
                if value is not None:
                    state[key][idx] = value.detach().float()
            state["num_batches_tracked"] = bn.num_batches_tracked.clone()
    if layer.norm_fields:
        for s, fields in _fields_by_size([sizes[i] for i in layer.norm_fields]).items():
            idx = torch.tensor([layer.norm_fields[i] for i in fields])
            state["running_var"][idx] = getattr(layer.norm, f"{s}_running_var").reshape(-1).float()
            weight = getattr(layer.norm, f"{s}_weight", None)
            if weight is not None:
                state["weight"][idx] = weight.detach().reshape(-1).float()
        state["num_batches_tracked"] = layer.norm.num_batches_tracked.clone()
    state["bias"] = state["bias"][list(layer.perm_fields)]
    return state


@torch.no_grad()
def load_field_batch_norm_state(layer: EscnnFieldBatchNorm, state) -> None:
    """Inverse of :func:`field_batch_norm_state` (a non-permutation field's mean is ignored)."""
    sizes = [escnn_representation(layer.gspace, r).size for r in layer.in_reps]
    if layer.perm_fields:
        for s, fields in _fields_by_size([sizes[i] for i in layer.perm_fields]).items():
            bn = getattr(layer.inner, f"batch_norm_[{s}]")
            idx = torch.tensor([layer.perm_fields[i] for i in fields])
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(bn, key) is not None and key in state:  # bias: one per permutation field
                    getattr(bn, key).copy_(state[key][torch.tensor(fields) if key == "bias" else idx])
            if "num_batches_tracked" in state:
                bn.num_batches_tracked.copy_(state["num_batches_tracked"])
    if layer.norm_fields:
        for s, fields in _fields_by_size([sizes[i] for i in layer.norm_fields]).items():
            idx = torch.tensor([layer.norm_fields[i] for i in fields])
            var = getattr(layer.norm, f"{s}_running_var")
            var.copy_(state["running_var"][idx].reshape(var.shape))
            weight = getattr(layer.norm, f"{s}_weight", None)
            if weight is not None:
                weight.copy_(state["weight"][idx].reshape(weight.shape))


@torch.no_grad()
def load_field_conv_state(layer: EscnnFieldConv, state) -> float:
    """Least-squares escnn coefficients whose expanded filter is ``state["weight"]`` ``[D_out, D_in, k, k]``,
    solved per pair of fields on that pair's block of the sampled basis; the expanded bias likewise.
    Returns the relative residual ``‖W − Ŵ‖ / ‖W‖`` (0 when escnn's basis spans the target)."""
    conv = layer.conv
    expansion = conv.basisexpansion
    gspace = layer.gspace
    in_reps = [escnn_representation(gspace, r) for r in layer.in_reps]
    out_reps = [escnn_representation(gspace, r) for r in layer.out_reps]
    in_off, out_off = _field_offsets(in_reps), _field_offsets(out_reps)
    target = state["weight"].to(torch.float64).flatten(2)  # [D_out, D_in, S]
    fit = torch.zeros_like(target)
    weights = torch.zeros(expansion.dimension(), dtype=torch.float64)
    for pair in expansion._representations_pairs:
        block = getattr(expansion, f"block_expansion_{expansion._escape_pair(pair)}")
        basis = block.sampled_basis.to(torch.float64)  # [dim_b, o, i, S]
        dim_b = basis.shape[0]
        outs = [j for j, r in enumerate(out_reps) if r.name == pair[1]]
        ins = [i for i, r in enumerate(in_reps) if r.name == pair[0]]
        blocks = torch.stack(
            [
                target[out_off[j] : out_off[j] + basis.shape[1], in_off[i] : in_off[i] + basis.shape[2]].reshape(-1)
                for j in outs
                for i in ins
            ]
        )  # [pairs, o·i·S], out-major (escnn's coefficient order)
        matrix = basis.reshape(dim_b, -1)
        coeffs = torch.linalg.lstsq(matrix.T, blocks.T).solution.T  # [pairs, dim_b]
        start, end = expansion._weights_ranges[pair]
        weights[start:end] = coeffs.reshape(-1)
        rebuilt = (coeffs @ matrix).reshape(len(outs) * len(ins), basis.shape[1], basis.shape[2], -1)
        for n, (j, i) in enumerate((j, i) for j in outs for i in ins):
            fit[out_off[j] : out_off[j] + basis.shape[1], in_off[i] : in_off[i] + basis.shape[2]] = rebuilt[n]
    conv.weights.copy_(weights.to(conv.weights.dtype))
    if conv.bias is not None:
        native_bias = state.get("bias")
        if native_bias is None:
            conv.bias.zero_()
        else:
            solution = torch.linalg.lstsq(
                conv.bias_expansion.to(torch.float64), native_bias.to(torch.float64).reshape(-1, 1)
            ).solution
            conv.bias.copy_(solution[:, 0].to(conv.bias.dtype))
    layer._cache = None
    scale = target.norm()
    return float((fit - target).norm() / scale) if scale > 0 else 0.0
