"""Transformed filter banks: ``|G|`` copies of each filter, built with precomputed indices.

For an element ``h`` the transformed filter is ``(T_h ψ)(p) = ψ(h⁻¹p)``. When ``h`` permutes
pixels (multiples of 90°, reflections) this is an exact index gather; otherwise (e.g. 45°)
it is a fixed ``[k², k²]`` bilinear interpolation matrix per element. Both are computed once
per layer from the group's own action (:func:`gcnnkit.core.transforms.transform_image`), so any
group plugged into gcnnkit works without a special case.
"""

from __future__ import annotations

import torch

from gcnnkit.core.group import Group
from gcnnkit.core.transforms import transform_image


def pixel_permutations(group: Group, kernel_size: int) -> torch.Tensor:
    """``[|G|, k²]`` long: ``perm[h, p]`` is the pixel of ``ψ`` that ``T_h ψ`` shows at ``p``.

    Only for exact groups.
    """
    k = kernel_size
    grid = torch.arange(k * k, dtype=torch.float64).reshape(k, k)
    return torch.stack([transform_image(grid, group, h).reshape(-1) for h in range(group.order)]).round().long()


def interpolation_matrices(group: Group, kernel_size: int) -> torch.Tensor:
    """``[|G|, k², k²]`` float: ``vec(T_h ψ) = M[h] @ vec(ψ)`` (bilinear for non-exact elements)."""
    k = kernel_size
    basis = torch.eye(k * k, dtype=torch.float64).reshape(k * k, k, k)
    mats = [transform_image(basis, group, h).reshape(k * k, k * k).T for h in range(group.order)]
    return torch.stack(mats).to(torch.float32)


def disc_mask(kernel_size: int) -> torch.Tensor:
    """``[k, k]`` mask of the pixels within radius ``(k-1)/2`` of the centre.

    Used for non-exact groups: a pixel further out (the corners of a 3×3 kernel, at √2) rotates
    out of the square at 45° and would be lost by interpolation, so only the inscribed disc is
    kept and the interpolated filter bank is nearly equivariant.
    """
    c = (kernel_size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(kernel_size), torch.arange(kernel_size), indexing="ij")
    return (((ys - c) ** 2 + (xs - c) ** 2) <= c**2 + 1e-6).to(torch.float32)


def group_conv_indices(group: Group, kernel_size: int) -> torch.Tensor:
    """``[|G|, |G|, k²]`` long index into a flattened ``[|G|·k²]`` group filter.

    ``idx[h, g, p] = (h⁻¹·g)·k² + perm[h, p]``: the output channel ``h`` sees input group
    channel ``g`` through the filter slice ``h⁻¹g``, spatially transformed by ``h``.
    """
    kk = kernel_size * kernel_size
    perm = pixel_permutations(group, kernel_size)  # [G, kk]
    source = group.cayley_table[group.inverses]  # [h, g] -> h⁻¹·g
    return source[:, :, None] * kk + perm[:, None, :]
