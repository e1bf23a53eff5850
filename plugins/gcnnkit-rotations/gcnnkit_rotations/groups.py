"""Rotation groups ``C_N`` and dihedral groups ``D_N`` for any ``N``, as gcnnkit groups.

The element order and matrices are gcnnkit's (and escnn's) conventions, built by
:func:`gcnnkit.core.group.cyclic_group` / :func:`gcnnkit.core.group.dihedral_group`: ``r^k`` rotates
counter-clockwise by ``k·360°/N``; the ``D_N`` element ``r^k f`` (mirror ``x ↦ -x`` first, then
rotate) has index ``N + k``. The Cayley table is given in closed form, which keeps building a
group with a large ``N`` cheap (deriving it from the matrices compares all ``|G|³`` products).
"""

from __future__ import annotations

import torch

from gcnnkit.core.group import Group, cyclic_group, dihedral_group

#: The group API version these factories are written for: a literal, not ``GROUP_API_VERSION``,
#: so that a gcnnkit with another API version refuses them instead of misreading them. The registry
#: checks it before calling a family, and again on the group each factory returns.
API_VERSION = 1


def _order(n: object, family: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{family}{{N}} needs an integer N >= 1, got {n!r}")
    return n


def _cyclic_table(n: int) -> torch.Tensor:
    k = torch.arange(n)
    return (k[:, None] + k[None, :]) % n


def _dihedral_table(n: int) -> torch.Tensor:
    # element i = n*j + k is r^k f^j;  (r^a f^i)(r^b f^j) = r^(a + (-1)^i b) f^(i+j)
    idx = torch.arange(2 * n)
    k, j = idx % n, idx // n
    sign = 1 - 2 * j[:, None]
    return n * ((j[:, None] + j[None, :]) % 2) + (k[:, None] + sign * k[None, :]) % n


def _with_table(group: Group, table: torch.Tensor) -> Group:
    return Group(
        group.name,
        group.element_names,
        group.matrices,
        api_version=API_VERSION,
        cayley_table=table,
        escnn=group.escnn,
        representations=group.representations,
    )


def cyclic(n: int) -> Group:
    """``C_N``: rotations by multiples of ``360°/N`` (the family ``C{N}``); escnn ``rot2dOnR2(N)``."""
    n = _order(n, "C")
    return _with_table(cyclic_group(n), _cyclic_table(n))


def dihedral(n: int) -> Group:
    """``D_N``: ``N`` rotations and ``N`` mirrors (the family ``D{N}``); escnn ``flipRot2dOnR2(N)``."""
    n = _order(n, "D")
    return _with_table(dihedral_group(n), _dihedral_table(n))


cyclic.api_version = API_VERSION
dihedral.api_version = API_VERSION


def C8() -> Group:
    """Rotations by multiples of 45°; 90° multiples are exact, the others interpolated."""
    return cyclic(8)


def C16() -> Group:
    """Rotations by multiples of 22.5°."""
    return cyclic(16)


def D8() -> Group:
    """Rotations by multiples of 45° and 8 mirrors (the symmetries of a regular octagon)."""
    return dihedral(8)


def D16() -> Group:
    """Rotations by multiples of 22.5° and 16 mirrors."""
    return dihedral(16)
