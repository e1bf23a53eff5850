"""The plugin's own tests: what a third-party group plugin ships (see docs/group-plugins.md)."""

from __future__ import annotations

import pytest
import torch
from gcnnkit_rotations import C8, C16, D8, D16, cyclic, dihedral

from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import cyclic_group, dihedral_group
from gcnnkit.testing import assert_equivariant, assert_group_axioms


@pytest.mark.parametrize("factory", [C8, C16, D8, D16])
def test_groups_are_groups(factory):
    group = factory()
    assert_group_axioms(group)
    assert group.api_version == 1 and group.escnn["N"] == group.order // (2 if group.name[0] == "D" else 1)


@pytest.mark.parametrize("n", range(1, 13))
def test_closed_form_cayley_tables_match_the_matrices(n):
    for mine, reference in ((cyclic(n), cyclic_group(n)), (dihedral(n), dihedral_group(n))):
        assert mine == reference and mine.escnn == reference.escnn
        assert torch.equal(mine.cayley_table, reference.cayley_table)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_families_refuse_bad_orders(bad):
    for family in (cyclic, dihedral):
        with pytest.raises(ValueError, match="integer N >= 1"):
            family(bad)


def test_rotating_an_image_by_the_exact_elements():
    group = D8()
    exact = [g for g in range(group.order) if group.is_exact(g)]
    assert [group.element_names[g] for g in exact] == ["e", "r2", "r4", "r6", "f", "r2f", "r4f", "r6f"]
    x = torch.randn(2, 1, 9, 9)
    assert_equivariant(torch.nn.Identity(), group, FieldType("image", 1), FieldType("image", 1), x, elements=exact)
