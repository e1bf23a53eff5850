"""The action of group elements and arbitrary rotations on tensors.

* images ``[..., H, W]`` transform spatially: ``(g·x)(p) = x(g⁻¹ p)``;
* group feature maps ``[..., |G|, H, W]`` transform spatially *and* along the group axis by
  the regular representation: ``(g·f)(h, p) = f(g⁻¹h, g⁻¹p)``.

Exact elements (multiples of 90°, reflections) are applied with ``rot90``/``flip``, which is
exact; other matrices (e.g. 45°) by bilinear interpolation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gcnnkit.core.group import Group


def transform_image(x: torch.Tensor, group: Group, g: int | str) -> torch.Tensor:
    """Apply element ``g`` to the last two (spatial) axes of ``x`` ``[..., H, W]``."""
    if group.is_exact(g):
        k, j = group.rot90_flip(g)
        if j:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, k, dims=(-2, -1)) if k else x
    return apply_matrix(x, group.matrix(g))


def transform_group_map(x: torch.Tensor, group: Group, g: int | str) -> torch.Tensor:
    """Apply ``g`` to a group feature map ``[..., |G|, H, W]``: spatial transform + regular rep."""
    g = group.index(g)
    if x.shape[-3] != group.order:
        raise ValueError(f"group axis has size {x.shape[-3]}, expected |{group.name}| = {group.order}")
    # out[g·h] = T_g x[h]  <=>  out[i] = T_g x[g⁻¹·i]
    source = group.cayley_table[group.inverse(g)]
    return transform_image(x.index_select(-3, source.to(x.device)), group, g)


def apply_matrix(x: torch.Tensor, matrix: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Transform ``x`` ``[..., H, W]`` by the 2×2 matrix (Cartesian, y up) about the image centre.

    Points that come from outside the image are zero.
    """
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1]) if x.ndim != 4 else x
    m = matrix.to(torch.float64)
    # normalised grid coordinates have y pointing down: conjugate by S = diag(1, -1)
    s = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    theta2 = s @ torch.linalg.inv(m) @ s
    theta = torch.zeros(flat.shape[0], 2, 3, dtype=flat.dtype, device=flat.device)
    theta[:, :, :2] = theta2.to(flat.dtype)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.reshape(shape)


def rotate_images(x: torch.Tensor, angles_deg: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Rotate each image of ``x`` ``[B, C, H, W]`` counter-clockwise by ``angles_deg`` ``[B]``.

    Multiples of 90° are exact (``rot90``); other angles are interpolated, with zeros outside.
    """
    angles = torch.as_tensor(angles_deg, dtype=torch.float64).reshape(-1)
    if angles.numel() != x.shape[0]:
        raise ValueError(f"need one angle per image: {angles.numel()} angles for {x.shape[0]} images")
    out = torch.empty_like(x)
    odd_quarter = (torch.remainder(angles, 180.0) == 90.0).any()
    if odd_quarter and x.shape[-2] != x.shape[-1]:
        raise ValueError(f"rotating by 90° or 270° needs square images, got {x.shape[-2]}×{x.shape[-1]}")
    quarter = torch.remainder(angles, 90.0) == 0
    for k in range(4):
        sel = quarter & (torch.remainder(angles / 90.0, 4.0) == k)
        if sel.any():
            idx = sel.nonzero().squeeze(1).to(x.device)
            out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
    rest = (~quarter).nonzero().squeeze(1)
    if rest.numel():
        rad = torch.deg2rad(angles[rest])
        cos, sin = torch.cos(rad), torch.sin(rad)
        # inverse rotation, conjugated to grid coordinates (y down)
        theta = torch.zeros(rest.numel(), 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        theta = theta.to(dtype=x.dtype, device=x.device)
        sub = x[rest.to(x.device)]
        grid = F.affine_grid(theta, list(sub.shape), align_corners=False)
        out[rest.to(x.device)] = F.grid_sample(sub, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out


def random_angles(n: int, seed: int) -> torch.Tensor:
    """``n`` angles uniform in [0°, 360°), the same for the same seed on every machine."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=gen, dtype=torch.float64) * 360.0


__all__ = ["transform_image", "transform_group_map", "apply_matrix", "rotate_images", "random_angles"]
