"""Layers built from escnn modules that take and return plain tensors in gcnnkit's layout.

Every layer holds the escnn module that does the work (``R2Conv``, ``InnerBatchNorm``,
``ReLU``/``PointwiseNonLinearity``, ``PointwiseMaxPool2D``, ``PointwiseDropout``) and wraps its
tensors in ``GeometricTensor`` on the way in and out: ``[B, C, |G|, H, W]`` group features are viewed
as escnn's ``[B, C·|G|, H, W]`` (C regular fields), ``[B, C, H, W]`` images as C trivial fields.
Group pooling and average pooling are the core's layers (see :mod:`gcnnkit_escnn.backend`).

Channel order. Pointwise layers and batch norm (statistics shared by the channels of a field) do
not depend on the order of the channels inside a field, so they never permute anything.
Convolutions put escnn's regular-representation channels in gcnnkit's element order by
permuting the rows/columns of the *expanded filter* (once per expansion, cached in eval mode),
never the activations — and only for groups whose order differs from escnn's
(:mod:`gcnnkit_escnn.spaces`; for C_N and D_N it does not).

Robustness.

* ``state_dict`` has the same keys and shapes in train and eval mode: the convolution is escnn's
  ``R2Conv`` without the ``filter``/``expanded_bias`` buffers that escnn registers in eval mode;
  the eval-mode cache of the expanded filter is a plain attribute, invalidated when the weights
  change (their version counter), never saved.
* escnn modules hold objects that cannot be pickled (closures in escnn's groups). Pickling a layer
  stores its constructor arguments and its escnn modules' state dicts and rebuilds the escnn
  modules on unpickling (the sampled basis is a buffer in the state dict, so the rebuilt layer
  computes exactly the same filters). ``copy.deepcopy`` copies parameters and buffers and shares
  escnn's immutable structure (gspaces, field types, representations, analytic bases).
* Under ``torch.autocast`` the filter is expanded in the weights' precision and ``conv2d`` runs in
  the autocast precision.
* escnn samples its basis in float32; each convolution rebuilds the sampled basis's output channels
  from one per coset of the exact elements by exact permutations (:func:`_symmetrise_basis`), so its
  layers are equivariant under exact elements to the precision they run in (float64 too).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.group import Group
from gcnnkit.core.layers import ACTIVATIONS, EquivariantConv, EquivariantLayer, eval_cached, plain_batch_norm
from gcnnkit.core.transforms import transform_image
from gcnnkit_escnn._compat import enn
from gcnnkit_escnn.basis import complete_basis
from gcnnkit_escnn.init import generalized_he_init
from gcnnkit_escnn.spaces import escnn_group

GeometricTensor = enn.GeometricTensor
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


# ----------------------------------------------------------------------------- escnn modules
class _R2Conv(enn.R2Conv):
    """escnn's ``R2Conv`` without its eval-mode ``filter``/``expanded_bias`` buffers.

    escnn registers them on ``eval()`` and deletes them on ``train()``, so its ``state_dict``
    changes with the mode. Here ``forward`` always expands the filter; the gcnnkit layer caches it.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in ("filter", "expanded_bias"):
            self._buffers.pop(name, None)

    def train(self, mode: bool = True):
        return nn.Module.train(self, mode)

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        _filter, _bias = self.expand_parameters()
        out = F.conv2d(input.tensor, _filter, _bias, self.stride, self.padding, self.dilation, self.groups)
        return GeometricTensor(out, self.out_type)


class _PointwiseFunction(enn.PointwiseNonLinearity):
    """escnn's pointwise nonlinearity with any ``torch.nn.functional`` function (silu, gelu)."""

    def __init__(self, in_type, function: str) -> None:
        super().__init__(in_type, "p_relu")
        self.function_name = function
        self._function = getattr(F, function)


# ----------------------------------------------------------------------------- gcnnkit layers
class EscnnLayer(nn.Module):
    """Base of the layers: plain tensors in and out, escnn modules inside (see the module docstring).

    Subclasses set :attr:`escnn_children` and implement :meth:`_build` (which creates those
    children from the layer's plain attributes; ``initialize=False`` when a state dict follows).
    """

    escnn_children: tuple[str, ...] = ()

    def _build(self, initialize: bool) -> None:
        raise NotImplementedError

    @property
    def escnn_group(self):
        return escnn_group(self.group)

    # pickling: rebuild escnn modules from the constructor arguments, then load their state
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        modules = dict(state["_modules"])
        saved = {}
        for name in self.escnn_children:
            module = modules.pop(name)
            saved[name] = (module.state_dict(), module.training)
        state["_modules"] = modules
        state["_escnn_saved"] = saved
        state["_cache"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("_escnn_saved", {})
        super().__setstate__(state)
        self._build(initialize=False)
        for name, (module_state, training) in saved.items():
            module = getattr(self, name)
            module.load_state_dict(module_state)
            module.train(training)

    def __deepcopy__(self, memo: dict) -> EscnnLayer:
        # escnn's structure (gspaces, field types, representations, analytic bases, index
        # bookkeeping) is immutable after construction: share it; copy parameters and buffers.
        for name in self.escnn_children:
            for module in getattr(self, name).modules():
                for key, value in vars(module).items():
                    if key not in _MODULE_INTERNALS and not isinstance(value, torch.Tensor):
                        memo.setdefault(id(value), value)
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = None if key == "_cache" else copy.deepcopy(value, memo)
        return new


def _as_fields(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, |G|, H, W]`` → ``[B, C·|G|, H, W]`` (a view); images unchanged."""
    return x.flatten(1, 2) if x.ndim == 5 else x


class EscnnConv(EscnnLayer, EquivariantConv):
    """Lifting (``in_kind="image"``) or group (``in_kind="group"``) convolution: escnn's ``R2Conv``
    between trivial/regular input fields and ``out_fields`` regular fields.

    ``[B, C_in, H, W]`` or ``[B, C_in, |G|, H, W]`` → ``[B, out_fields, |G|, H', W']``; NHWC with
    :attr:`channels_last`.
    """

    escnn_children = ("conv",)

    def __init__(
        self,
        group: Group,
        in_kind: str,
        in_channels: int,
        out_fields: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        basis: str = "escnn",
    ) -> None:
        super().__init__()
        self.group, self.in_kind = group, in_kind
        self.in_channels, self.out_fields = in_channels, out_fields
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.has_bias, self.basis = bias, basis
        self._cache: tuple | None = None
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        eg = self.escnn_group
        in_type = eg.field_type(self.in_kind, self.in_channels)
        out_type = eg.field_type("group", self.out_fields)
        kwargs = {}
        if self.basis == "complete":
            choice = complete_basis(
                eg.gspace, in_type.representations[0], eg.regular_repr, self.kernel_size, self.dilation
            )
            kwargs = choice.conv_kwargs()
        # recompute=False: escnn shares one sampled basis between equal layers; make it private
        # so that loading one model's state dict never changes another model's basis.
        self.conv = _R2Conv(
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
        _private_basis(self.conv)
        _symmetrise_basis(self.conv, eg, self.in_kind, self.kernel_size)
        if initialize:
            generalized_he_init(self.conv.weights.data, self.conv.basisexpansion)
        out_index = eg.channel_index(self.out_fields)
        in_index = eg.channel_index(self.in_channels) if self.in_kind == "group" else None
        self.register_buffer("out_index", out_index, persistent=False)
        self.register_buffer("in_index", in_index, persistent=False)

    # ------------------------------------------------------------------ filters
    def expand(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Expanded filter ``[out_fields·|G|, C_in(·|G|), k, k]`` and bias, channels in gcnnkit's order."""
        weights = self.conv.weights
        with torch.autocast(device_type=weights.device.type, enabled=False):
            _filter, _bias = self.conv.expand_parameters()
        if self.out_index is not None:
            _filter = _filter.index_select(0, self.out_index)
            _bias = None if _bias is None else _bias.index_select(0, self.out_index)
        if self.in_index is not None:
            _filter = _filter.index_select(1, self.in_index)
        return _filter, _bias

    def _expanded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`expand`, cached in eval mode without autograd until the weights, bias or basis change
        (:func:`~gcnnkit.core.layers.eval_cached`)."""
        sources = [t for t in (self.conv.weights, self.conv.bias, _block(self.conv).sampled_basis) if t is not None]
        return eval_cached(self, sources, self._conv_parameters)

    def _conv_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`expand`, with the filter NHWC when ``channels_last``."""
        _filter, _bias = self.expand()
        if self.channels_last:
            _filter = _filter.contiguous(memory_format=torch.channels_last)
        return _filter, _bias

    def filter_bank(self) -> torch.Tensor:
        """``[out_fields·|G|, C_in(·|G|), k, k]``: the expanded filter in gcnnkit's channel order
        (output channel ``o·|G| + h``, input channel ``c·|G| + g``), as the native layers'."""
        return self._expanded()[0]

    def expanded_bias(self) -> torch.Tensor | None:
        """``[out_fields·|G|]`` bias (constant over each field's channels), or ``None``."""
        return self._expanded()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _filter, _bias = self._expanded()
        x = _as_fields(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # the filter already is (_conv_parameters)
        y = F.conv2d(x, _filter, _bias, self.stride, self.padding, self.dilation)
        return y.unflatten(1, (self.out_fields, self.group.order))

    @property
    def basis_dimension(self) -> int:
        """Number of basis elements per pair of fields."""
        return _block(self.conv).dimension()

    def extra_repr(self) -> str:
        return (
            f"group={self.group.name}, in={self.in_kind}[{self.in_channels}], out_fields={self.out_fields}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, bias={self.has_bias}, basis={self.basis} "
            f"({self.basis_dimension} per field pair)"
        )


def _block(conv: enn.R2Conv):
    """The single block expansion of a convolution between homogeneous field types."""
    expansion = conv.basisexpansion
    pairs = expansion._representations_pairs
    if len(pairs) != 1:
        raise ValueError(f"expected one kind of input and output field, got {pairs}")
    return getattr(expansion, f"block_expansion_{expansion._escape_pair(pairs[0])}")


def _private_basis(conv: enn.R2Conv) -> None:
    """Give ``conv`` its own copy of escnn's (process-wide shared) sampled basis module."""
    expansion = conv.basisexpansion
    for name, block in list(expansion.named_children()):
        private = copy.copy(block)
        for key in _MODULE_INTERNALS:  # no nn.Module bookkeeping shared with the cached module
            value = getattr(block, key)
            if isinstance(value, (dict, set)):
                object.__setattr__(private, key, copy.copy(value))
        private._buffers = {k: (None if v is None else v.clone()) for k, v in block._buffers.items()}
        setattr(expansion, name, private)


@torch.no_grad()
def _symmetrise_basis(conv: enn.R2Conv, eg, in_kind: str, kernel_size: int) -> None:
    """Make the sampled basis exactly equivariant under the group's exact elements.

    escnn samples its basis in float32, so the filter of output channel ``a·h`` is the exact
    transform by ``a`` of that of channel ``h`` only up to float32 round-off (~1e-7), which is all
    the equivariance a float64 layer had. Here every output channel ``h = a·r`` (``a`` exact, ``r``
    the first element of the coset ``E·h`` of the exact elements ``E``) is rebuilt from channel ``r``
    by the exact pixel permutation of ``a`` and, for group inputs, the permutation ``g ↦ a⁻¹g`` of the
    input channels: ``B[h, g, p] = B[r, a⁻¹g, T_a⁻¹p]``. It moves the basis by float32 round-off only;
    checkpoints keep their own basis (it is a buffer in the state dict).
    """
    group = eg.group
    exact = [a for a in range(group.order) if group.is_exact(a)]
    if len(exact) == 1:
        return
    block = _block(conv)
    basis = block.sampled_basis  # [dim, out |G|, in (|G| or 1), k²], escnn's channel order
    table, inverse = group.cayley_table, group.inverses
    grid = torch.arange(kernel_size * kernel_size, dtype=torch.float64).reshape(kernel_size, kernel_size)
    # (T_a ψ)(p) = ψ(pixels[a][p]) for a k×k filter ψ
    pixels = {a: transform_image(grid, group, a).reshape(-1).round().long() for a in exact}
    perm = torch.arange(group.order) if eg.perm is None else eg.perm  # gcnnkit element h -> escnn channel
    ours = basis.index_select(1, perm)
    if in_kind == "group":
        ours = ours.index_select(2, perm)
    rebuilt = torch.empty_like(ours)
    for h in range(group.order):
        r = min(int(table[a, h]) for a in exact)  # the coset's first element; h = a·r
        a = next(a for a in exact if int(table[a, r]) == h)
        source = ours[:, r]
        if in_kind == "group":
            source = source.index_select(1, table[int(inverse[a])])  # input channel g <- a⁻¹·g
        rebuilt[:, h] = source.index_select(2, pixels[a])
    if in_kind == "group":
        rebuilt = rebuilt.index_copy(2, perm, rebuilt.clone())
    basis.copy_(torch.empty_like(rebuilt).index_copy_(1, perm, rebuilt))


class EscnnBatchNorm(EscnnLayer, EquivariantLayer):
    """escnn's ``InnerBatchNorm``: one mean/variance/affine per field, shared by its ``|G|`` channels.

    The forward pass calls InnerBatchNorm's own torch batch norm directly, because
    ``InnerBatchNorm.forward`` copies the result into a preallocated output (8% of a D4 forward pass).
    """

    escnn_children = ("bn",)

    def __init__(self, group: Group, kind: str, channels: int) -> None:
        super().__init__()
        self.group, self.kind, self.channels = group, kind, channels
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        self.bn = enn.InnerBatchNorm(self.escnn_group.field_type(self.kind, self.channels))
        if len(self.bn._contiguous) != 1 or not all(self.bn._contiguous.values()):
            raise ValueError("InnerBatchNorm over fields of one size expected")

    @property
    def batch_norm(self) -> nn.modules.batchnorm._BatchNorm:
        """The torch batch norm inside escnn's module (one entry per field)."""
        (module,) = self.bn.children()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # InnerBatchNorm's own computation for one contiguous block of equal fields (always the case
        # here): its torch batch norm on [B, fields, field size, H, W], without the copy into a
        # preallocated output that InnerBatchNorm.forward makes (8% of a D4 forward pass).
        fields = x if x.ndim == 5 else x.unsqueeze(2)
        return self.batch_norm(fields).view(x.shape)

    def export_plain(self) -> nn.BatchNorm2d:
        return plain_batch_norm(self.batch_norm, self.group.order if self.kind == "group" else 1)


class EscnnPointwise(EscnnLayer, EquivariantLayer):
    """A channel-wise escnn module (nonlinearity, max pooling, dropout) on image or group features."""

    escnn_children = ("module",)
    _ACTIVATIONS = {
        "relu": lambda t: enn.ReLU(t),
        "elu": lambda t: enn.ELU(t),
        "leaky_relu": lambda t: enn.LeakyReLU(t, negative_slope=0.01),
        "tanh": lambda t: enn.PointwiseNonLinearity(t, "p_tanh"),
        "sigmoid": lambda t: enn.PointwiseNonLinearity(t, "p_sigmoid"),
        "silu": lambda t: _PointwiseFunction(t, "silu"),
        "gelu": lambda t: _PointwiseFunction(t, "gelu"),
    }

    def __init__(self, group: Group, kind: str, channels: int, op: str, **params: Any) -> None:
        super().__init__()
        self.group, self.kind, self.channels, self.op, self.params = group, kind, channels, op, dict(params)
        self._build(initialize=True)

    def _build(self, initialize: bool) -> None:
        ftype = self.escnn_group.field_type(self.kind, self.channels)
        p = self.params
        if self.op in self._ACTIVATIONS:
            self.module = self._ACTIVATIONS[self.op](ftype)
        elif self.op == "max_pool":
            self.module = enn.PointwiseMaxPool2D(ftype, p["kernel_size"], p["stride"], p["padding"])
        elif self.op == "dropout":
            self.module = enn.PointwiseDropout(ftype, p["p"])
        else:
            raise ValueError(f"unknown pointwise operation {self.op!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(GeometricTensor(_as_fields(x), self.module.in_type)).tensor
        return y.unflatten(1, x.shape[1:3]) if x.ndim == 5 else y

    def export_plain(self) -> nn.Module:
        p = self.params
        if self.op == "max_pool":
            return nn.MaxPool2d(p["kernel_size"], p["stride"], p["padding"])
        if self.op == "dropout":
            return nn.Dropout(p["p"])
        return ACTIVATIONS[self.op]()  # escnn's pointwise functions are torch's, leaky_relu's slope included

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v}" for k, v in self.params.items())
        return f"op={self.op}, {self.kind}[{self.channels}]{params}"
