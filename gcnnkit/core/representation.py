"""Representations of finite groups: ``ρ: G → GL(n)`` given as one matrix per element."""

from __future__ import annotations

import torch

from gcnnkit.core.group import Group


class Representation:
    """A representation of ``group`` on ``R^size``.

    Args:
        group: the group represented.
        name: e.g. ``"regular"``.
        matrices: ``[|G|, size, size]`` tensor, ``matrices[g] = ρ(g)``.
    """

    def __init__(self, group: Group, name: str, matrices: torch.Tensor) -> None:
        if matrices.ndim != 3 or matrices.shape[0] != group.order or matrices.shape[1] != matrices.shape[2]:
            raise ValueError(f"representation {name}: matrices must be [|G|, n, n], got {list(matrices.shape)}")
        self.group = group
        self.name = name
        self.matrices = matrices

    @property
    def size(self) -> int:
        """Dimension ``n`` of the representation space."""
        return self.matrices.shape[1]

    def matrix(self, g: int | str) -> torch.Tensor:
        """``ρ(g)`` as an ``[n, n]`` tensor."""
        return self.matrices[self.group.index(g)]

    def is_homomorphism(self, atol: float = 1e-6) -> bool:
        """True when ``ρ(a·b) = ρ(a) ρ(b)`` for all ``a, b``."""
        table = self.group.cayley_table
        prod = torch.einsum("aij,bjk->abik", self.matrices, self.matrices)
        return bool(torch.allclose(prod, self.matrices[table], atol=atol))

    def __repr__(self) -> str:
        return f"Representation({self.group.name}, {self.name}, size={self.size})"


def regular_representation(group: Group) -> Representation:
    """Permutation matrices with ``ρ(g) e_h = e_{g·h}``: one channel per group element.

    This is how a group feature map ``[B, C, |G|, H, W]`` transforms along its group axis.
    """
    n = group.order
    mats = torch.zeros(n, n, n, dtype=torch.float64)
    table = group.cayley_table
    for g in range(n):
        mats[g, table[g], torch.arange(n)] = 1.0
    return Representation(group, "regular", mats)
