"""Shared helpers for the core / native-backend test modules (owned by the core-tests engineer).

Everything here is deliberately written *independently* of the code under test where that is
cheap (reference group actions, naive filter banks), so that the tests compare two
implementations instead of one implementation with itself.
"""

from __future__ import annotations

import math

import torch

from gcnnkit.core.group import Group

#: The groups shipped by the native plugin (entry points of ``gcnnkit-native``).
NATIVE_GROUPS = ("C1", "C2", "C4", "D1", "D2", "D4")

#: Element names per group, in index order, as documented in docs/concepts.md.
EXPECTED_ELEMENTS = {
    "C1": ("e",),
    "C2": ("e", "r1"),
    "C4": ("e", "r1", "r2", "r3"),
    "D1": ("e", "f"),
    "D2": ("e", "r1", "f", "r1f"),
    "D4": ("e", "r1", "r2", "r3", "f", "r1f", "r2f", "r3f"),
}


def registered_group(name: str) -> Group:
    """A native group through the registry (what users get)."""
    from gcnnkit.core.registry import get_group

    return get_group(name)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual − expected| / max|expected|`` computed here, not with gcnnkit's helper."""
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def rot_flip(x: torch.Tensor, k: int, j: int) -> torch.Tensor:
    """Reference pixel action of ``r^k f^j``: reflect left–right first (``j``), then rot90 ``k`` times."""
    if j:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1))


def rotation_matrix(deg: float) -> torch.Tensor:
    """Counter-clockwise rotation (Cartesian, y up), float64, snapped at multiples of 90°."""
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    m = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return torch.where((m - m.round()).abs() < 1e-12, m.round(), m)


FLIP = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)


def ref_group_map_action(x: torch.Tensor, group: Group, g: int) -> torch.Tensor:
    """``(g·f)(h, p) = f(g⁻¹h, g⁻¹p)`` with an explicit python loop over ``h``.

    Spatial part via :func:`rot_flip` (``(k, j)`` read from the element's matrix here, not
    with ``Group.rot90_flip``).
    """
    k, j = matrix_to_rot_flip(group.matrices[g])
    g_inv = inverse_by_search(group, g)
    slices = []
    for h in range(group.order):
        src = product_by_matrices(group, g_inv, h)
        slices.append(rot_flip(x[..., src, :, :], k, j))
    return torch.stack(slices, dim=-3)


def ref_image_action(x: torch.Tensor, group: Group, g: int) -> torch.Tensor:
    k, j = matrix_to_rot_flip(group.matrices[g])
    return rot_flip(x, k, j)


def matrix_to_rot_flip(m: torch.Tensor) -> tuple[int, int]:
    """``(k, j)`` with ``m = R(90k) @ F^j`` by brute force over the 8 candidates."""
    for j in range(2):
        for k in range(4):
            cand = rotation_matrix(90 * k) @ (FLIP if j else torch.eye(2, dtype=torch.float64))
            if torch.allclose(cand, m.to(torch.float64), atol=1e-9):
                return k, j
    raise ValueError(f"not a pixel permutation: {m}")


def product_by_matrices(group: Group, a: int, b: int) -> int:
    """Index of ``a·b`` found by matrix multiplication and search (independent of the Cayley table)."""
    target = group.matrices[a] @ group.matrices[b]
    hits = [i for i in range(group.order) if torch.allclose(group.matrices[i], target, atol=1e-9)]
    assert len(hits) == 1, hits
    return hits[0]


def inverse_by_search(group: Group, g: int) -> int:
    eye = torch.eye(2, dtype=torch.float64)
    hits = [i for i in range(group.order) if torch.allclose(group.matrices[g] @ group.matrices[i], eye, atol=1e-9)]
    assert len(hits) == 1, hits
    return hits[0]


def randomize_parameters(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter and batch-norm running statistic a non-trivial random value.

    Default inits (zero bias, unit BN scale, zero running mean) would hide bugs such as a bias
    broadcast along the wrong axis.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (0.5 if p.ndim == 1 else 0.0))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
