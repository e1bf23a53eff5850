"""The groups that act exactly on the pixel grid: C1, C2, C4 (p4), D1, D2, D4 (p4m).

Each is a zero-argument factory registered as an entry point in ``gcnnkit.groups``.
"""

from __future__ import annotations

from gcnnkit.core.group import Group, cyclic_group, dihedral_group


def C1() -> Group:
    """The trivial group: a G-CNN on C1 is a plain CNN."""
    return cyclic_group(1)


def C2() -> Group:
    """Rotations by 0° and 180°."""
    return cyclic_group(2)


def C4() -> Group:
    """Rotations by multiples of 90° (the group p4 of Cohen & Welling, without translations)."""
    return cyclic_group(4)


def D1() -> Group:
    """The identity and the left–right reflection."""
    return dihedral_group(1)


def D2() -> Group:
    """Rotations by 0° and 180° and two reflections."""
    return dihedral_group(2)


def D4() -> Group:
    """Rotations by multiples of 90° and four reflections (p4m without translations)."""
    return dihedral_group(4)
