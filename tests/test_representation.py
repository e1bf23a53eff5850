"""The regular representation: permutation matrices of the group product, the action on the group axis."""

from __future__ import annotations

import itertools

import pytest
import torch
from _helpers import NATIVE_GROUPS, registered_group
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.core.group import cyclic_group, dihedral_group
from gcnnkit.core.representation import Representation, regular_representation
from gcnnkit.core.transforms import transform_group_map


def _groups_for_property():
    return st.tuples(st.integers(1, 12), st.booleans()).map(
        lambda t: dihedral_group(t[0]) if t[1] else cyclic_group(t[0])
    )


def _check_regular(group):
    rep = regular_representation(group)
    n = group.order
    assert rep.size == n and rep.name == "regular" and rep.group is group
    mats = rep.matrices
    assert mats.shape == (n, n, n)
    # permutation matrices: 0/1 entries, exactly one 1 per row and column
    assert set(mats.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mats.sum(dim=1), torch.ones(n, n, dtype=mats.dtype))
    assert torch.equal(mats.sum(dim=2), torch.ones(n, n, dtype=mats.dtype))
    assert torch.equal(mats[0], torch.eye(n, dtype=mats.dtype))
    eye = torch.eye(n, dtype=mats.dtype)
    for g, h in itertools.product(range(n), repeat=2):
        # ρ(g) e_h = e_{g·h}
        assert torch.equal(rep.matrix(g) @ eye[h], eye[group.product(g, h)])
    for a, b in itertools.product(range(n), repeat=2):
        assert torch.equal(rep.matrix(a) @ rep.matrix(b), rep.matrix(group.product(a, b)))
    for g in range(n):  # orthogonal: ρ(g)ᵀ = ρ(g⁻¹)
        assert torch.equal(rep.matrix(g).T, rep.matrix(group.inverse(g)))
    assert rep.is_homomorphism()


@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_regular_representation_of_registered_groups(name):
    _check_regular(registered_group(name))


@settings(max_examples=10, deadline=None)
@given(group=_groups_for_property())
def test_regular_representation_property(group):
    _check_regular(group)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_group_map_action_on_the_group_axis_is_the_regular_representation(name):
    """On a spatially constant map the action of g on the group axis is ρ(g) (same convention)."""
    group = registered_group(name)
    rep = regular_representation(group)
    x = torch.randn(2, 3, group.order, 1, 1, dtype=torch.float64)
    for g in range(group.order):
        acted = transform_group_map(x, group, g)[..., 0, 0]  # [2, 3, |G|]
        expected = torch.einsum("ij,bcj->bci", rep.matrix(g), x[..., 0, 0])
        assert torch.equal(acted, expected)


def test_is_homomorphism_detects_a_broken_representation():
    group = registered_group("C4")
    mats = regular_representation(group).matrices.clone()
    mats[2] = torch.eye(4, dtype=mats.dtype)  # ρ(r2) := I, a permutation, but ρ(r1)ρ(r1) ≠ ρ(r2) now
    assert not Representation(group, "broken", mats).is_homomorphism()


def test_representation_validates_shape_and_looks_up_by_name():
    group = registered_group("D4")
    with pytest.raises(ValueError, match=r"must be \[\|G\|, n, n\]"):
        Representation(group, "bad", torch.zeros(7, 8, 8))
    with pytest.raises(ValueError, match=r"must be \[\|G\|, n, n\]"):
        Representation(group, "bad", torch.zeros(8, 2, 3))
    rep = regular_representation(group)
    assert torch.equal(rep.matrix("r1f"), rep.matrices[5])
    assert "regular" in repr(rep) and "size=8" in repr(rep)
