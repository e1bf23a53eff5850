"""Steerable convolutions in the transfer format (:mod:`gcnnkit.core.backend`), for ``gcnnkit compare``.

A regular layer's transfer format is its own state dict. A :class:`~gcnnkit_native.steerable.SteerableConv`
stores coefficients in its own bases (one tied weight per orbit, or an orthonormal kernel basis per pair
of representations), which no other backend shares; its transfer format is therefore basis-free — the
whole expanded filter ``weight`` ``[D_out, D_in, k, k]`` and bias ``bias`` ``[D_out]``, channels in the
field types' order — as the escnn backend's steerable convolutions (``gcnnkit_escnn.steerable``).

Import projects onto the layer's space, pair of representations by pair: for orbit pairs the least-squares
weight of an orbit is the mean of its entries, for basis pairs (orthonormal) the inner products; the bias
onto the vectors each output representation fixes. The relative residual ``‖W − Ŵ‖ / ‖W‖`` is returned
(0 when the filter was equivariant to begin with).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gcnnkit_native.steerable import SteerableConv


@torch.no_grad()
def export_steerable(layer: SteerableConv) -> dict[str, torch.Tensor]:
    """``{"weight": [D_out, D_in, k, k], "bias": [D_out]}`` (no ``bias`` without one)."""
    state = {"weight": layer._bank().detach().contiguous().clone()}
    bias = layer._bias()
    if bias is not None:
        state["bias"] = bias.detach().clone()
    return state


def _grouped(tensor: torch.Tensor, perm: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Channels of ``tensor`` along ``dim`` in the layer's grouped order (type by type)."""
    if perm is None:
        return tensor
    return tensor.index_select(dim, torch.argsort(perm))


@torch.no_grad()
def import_steerable(layer: SteerableConv, state: Mapping[str, torch.Tensor]) -> float:
    """Project ``state`` onto ``layer``'s equivariant kernels and biases; returns the relative residual."""
    target = state["weight"].to(torch.float64)
    grouped = _grouped(_grouped(target, layer.out_perm, 0), layer.in_perm, 1)
    k = layer.kernel_size
    row = 0
    out_starts, in_starts = [], []
    for u, ro in enumerate(layer.out_types):
        out_starts.append(row)
        row += layer.out_counts[u] * ro.size
    col = 0
    for v, ri in enumerate(layer.in_types):
        in_starts.append(col)
        col += layer.in_counts[v] * ri.size
    for u, v, how in layer._pairs:
        do, di = layer.out_types[u].size, layer.in_types[v].size
        nu, nv = layer.out_counts[u], layer.in_counts[v]
        block = grouped[out_starts[u] : out_starts[u] + nu * do, in_starts[v] : in_starts[v] + nv * di]
        block = block.reshape(nu, do, nv, di, k, k).permute(0, 2, 1, 3, 4, 5).reshape(nu, nv, -1)
        weight = getattr(layer, f"weight_{u}_{v}")
        if weight.shape[-1] == 0:  # no equivariant kernel between these representations
            continue
        if how == "orbit":
            index = getattr(layer, f"orbit_{u}_{v}")
            sums = torch.zeros(nu, nv, weight.shape[-1], dtype=torch.float64).index_add_(2, index, block)
            counts = torch.zeros(weight.shape[-1], dtype=torch.float64).index_add_(
                0, index, torch.ones_like(index, dtype=torch.float64)
            )
            weight.copy_((sums / counts).to(weight.dtype))
        else:
            basis = getattr(layer, f"basis_{u}_{v}").to(torch.float64).reshape(weight.shape[-1], -1)
            weight.copy_(torch.einsum("uvn,bn->uvb", block, basis).to(weight.dtype))
    if layer.has_bias:
        bias = state.get("bias")
        grouped_bias = None if bias is None else _grouped(bias.to(torch.float64), layer.out_perm, 0)
        for u in layer._bias_types:
            param = getattr(layer, f"bias_{u}")
            if grouped_bias is None:
                param.zero_()
                continue
            ro, nu = layer.out_types[u], layer.out_counts[u]
            vectors = getattr(layer, f"bias_basis_{u}").to(torch.float64)  # [m, d]
            part = grouped_bias[out_starts[u] : out_starts[u] + nu * ro.size].reshape(nu, ro.size)
            gram = vectors @ vectors.T
            param.copy_(torch.linalg.solve(gram, vectors @ part.T).T.to(param.dtype))
    layer._cache = None
    fit = layer._bank().to(torch.float64)
    scale = target.norm()
    return float((fit - target).norm() / scale) if scale > 0 else 0.0
