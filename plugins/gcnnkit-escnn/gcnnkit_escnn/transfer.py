"""Weights between escnn layers and gcnnkit's transfer format (:mod:`gcnnkit.core.backend`).

The transfer format of a layer is the tied ``state_dict`` of gcnnkit's reference (native) layer of
the same spec: convolutions ``weight`` ``[C_out, C_in, k, k]`` (lifting) or ``[C_out, C_in, |G|, k, k]``
(group) and ``bias`` ``[C_out]``; batch norm ``weight``/``bias``/``running_mean``/
``running_var``/``num_batches_tracked`` ``[C]``; layers that are plain torch modules in both
backends (linear head) their own state dict.

* escnn → transfer format (:func:`export_weights`) is exact for groups that permute pixels: the
  expanded escnn filter is equivariant, so it lies in the native tied space and is its ``h = e``
  slice, expanded by the native rule (the sampled basis is symmetrised for exact elements, see
  :func:`gcnnkit_escnn.layers._symmetrise_basis`).
* transfer format → escnn (:func:`import_weights`) solves least squares for the escnn coefficients
  whose expanded filter has that ``h = e`` slice. It is exact when escnn's basis spans the native
  tied space (``basis: complete``); with escnn's default basis it is the projection onto the
  smaller space, and its relative residual ``‖W − Ŵ‖ / ‖W‖`` is returned.

For an exact group the ``h = e`` slice determines the whole equivariant filter bank (every other
slice is a transformed copy), so matching it matches the bank.

Steerable layers (:mod:`gcnnkit_escnn.steerable`, any field types): a convolution's transfer format is
its whole expanded filter ``weight`` ``[D_out, D_in, k, k]`` and bias ``[D_out]`` (basis-free, so any two
bases of the same space transfer exactly; imported per pair of fields by least squares); the norm
nonlinearity ``log_bias`` ``[fields]`` (``b = exp(log_bias)``), the gated one ``bias`` ``[gates]``, in
field order; the field batch norm ``weight``, ``bias``, ``running_mean``, ``running_var`` ``[fields]`` in
field order
(:func:`~gcnnkit_escnn.steerable.field_batch_norm_state`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gcnnkit_escnn import steerable
from gcnnkit_escnn.layers import EscnnBatchNorm, EscnnConv, EscnnLayer, _block

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bias_slice(layer: EscnnConv, bias: torch.Tensor) -> torch.Tensor:
    return bias.reshape(layer.out_fields, layer.group.order)[:, 0]


@torch.no_grad()
def export_weights(layer: nn.Module) -> dict[str, torch.Tensor]:
    """The transfer-format state of ``layer`` (see the module docstring)."""
    if isinstance(layer, steerable.EscnnFieldConv):
        _filter, _bias = layer.expand()
        state = {"weight": _filter.detach().clone()}
        if _bias is not None:
            state["bias"] = _bias.detach().clone()
        return state
    if isinstance(layer, steerable.EscnnNormAct):
        bias = layer.field_bias()
        return {} if bias is None else {"log_bias": torch.log(bias).clone()}
    if isinstance(layer, steerable.EscnnGated):
        return {"bias": layer.field_bias().clone()}
    if isinstance(layer, steerable.EscnnFieldBatchNorm):
        return steerable.field_batch_norm_state(layer)
    if isinstance(layer, EscnnConv):
        _filter, _bias = layer.expand()
        n, k = layer.group.order, layer.kernel_size
        bank = _filter.reshape(layer.out_fields, n, -1, k, k)[:, 0]  # output channel (o, e)
        if layer.in_kind == "group":
            bank = bank.reshape(layer.out_fields, layer.in_channels, n, k, k)
        state = {"weight": bank.clone()}
        if _bias is not None:
            state["bias"] = _bias_slice(layer, _bias).clone()
        return state
    if isinstance(layer, EscnnBatchNorm):
        bn = layer.batch_norm
        return {key: getattr(bn, key).detach().clone() for key in _BN_KEYS if getattr(bn, key, None) is not None}
    if isinstance(layer, EscnnLayer):
        return {}
    return {key: value.detach().clone() for key, value in layer.state_dict().items()}


def _slice_basis(layer: EscnnConv) -> torch.Tensor:
    """``[dim, C_in_group·k²]``: the ``h = e`` output channel of each basis element, input channels in
    gcnnkit's order."""
    eg = layer.escnn_group
    basis = _block(layer.conv).sampled_basis  # [dim, out_size, in_size, k²] (escnn channel order)
    identity_channel = 0 if eg.perm is None else int(eg.perm[layer.group.identity])
    sliced = basis[:, identity_channel]  # [dim, in_size, k²]
    if layer.in_kind == "group" and eg.perm is not None:
        sliced = sliced.index_select(1, eg.perm.to(sliced.device))
    return sliced.reshape(sliced.shape[0], -1)


@torch.no_grad()
def import_weights(layer: nn.Module, state: Mapping[str, torch.Tensor]) -> float:
    """Load transfer-format ``state`` into ``layer``; the relative residual of the projection (0 if exact)."""
    if isinstance(layer, steerable.EscnnFieldConv):
        return steerable.load_field_conv_state(layer, state)
    if isinstance(layer, steerable.EscnnNormAct):
        if "log_bias" in state:
            layer.set_field_bias(torch.exp(state["log_bias"].to(torch.float64)))
        return 0.0
    if isinstance(layer, steerable.EscnnGated):
        layer.set_field_bias(state["bias"])
        return 0.0
    if isinstance(layer, steerable.EscnnFieldBatchNorm):
        steerable.load_field_batch_norm_state(layer, state)
        return 0.0
    if isinstance(layer, EscnnConv):
        conv = layer.conv
        target = state["weight"].to(torch.float64).reshape(layer.out_fields * layer.in_channels, -1)  # [pairs, in·k²]
        basis = _slice_basis(layer).to(torch.float64)  # [dim, in·k²]
        coeffs = torch.linalg.lstsq(basis.T, target.T).solution.T  # [pairs, dim]
        fit = coeffs @ basis
        scale = target.norm()
        residual = float((fit - target).norm() / scale) if scale > 0 else 0.0
        conv.weights.copy_(coeffs.reshape(-1).to(conv.weights.dtype))
        if conv.bias is not None:
            native_bias = state.get("bias")
            if native_bias is None:
                conv.bias.zero_()
            else:
                expanded = native_bias.to(torch.float64).repeat_interleave(layer.group.order)
                solution = torch.linalg.lstsq(conv.bias_expansion.to(torch.float64), expanded[:, None]).solution
                conv.bias.copy_(solution[:, 0].to(conv.bias.dtype))
        layer._cache = None
        return residual
    if isinstance(layer, EscnnBatchNorm):
        bn = layer.batch_norm
        for key in _BN_KEYS:
            if key in state and getattr(bn, key, None) is not None:
                getattr(bn, key).copy_(state[key])
        return 0.0
    if isinstance(layer, EscnnLayer):
        return 0.0
    layer.load_state_dict(dict(state))
    return 0.0
