"""The plugin's own tests: what a third-party group plugin ships (see docs/group-plugins.md)."""

from __future__ import annotations

import pytest
import torch
from gcnnkit_rotations import C8, C16, D8, D16, cyclic, dihedral

from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import cyclic_group, dihedral_group
from gcnnkit.core.registry import get_backend
from gcnnkit.core.transforms import transform_image
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


def test_the_exact_elements_turn_and_mirror_images_exactly():
    """The multiples of 90° and the mirrors are pixel permutations: r^(2k) is ``torch.rot90`` k times,
    r^(2k) f the left-right mirror and then that turn (the conventions of docs/group-plugins.md)."""
    group = D8()
    exact = [g for g in range(group.order) if group.is_exact(g)]
    assert [group.element_names[g] for g in exact] == ["e", "r2", "r4", "r6", "f", "r2f", "r4f", "r6f"]
    x = torch.randn(2, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    for k, (turn, mirror) in enumerate(zip(["e", "r2", "r4", "r6"], ["f", "r2f", "r4f", "r6f"], strict=True)):
        assert torch.equal(transform_image(x, group, turn), torch.rot90(x, k, dims=(-2, -1))), turn
        assert torch.equal(transform_image(x, group, mirror), torch.rot90(x.flip(-1), k, dims=(-2, -1))), mirror


#: Largest relative error at the exact elements in float64: rounding for the native backend; escnn
#: samples its filter bases in float32.
TOLERANCE = {"native": 1e-12, "escnn": 1e-6}


@pytest.mark.parametrize("backend", ["native", pytest.param("escnn", marks=pytest.mark.escnn)])
@pytest.mark.parametrize("factory", [C8, D8])
def test_convolutions_on_the_groups_are_equivariant_at_the_exact_elements(factory, backend):
    """What the plugin is for: a lifting and a group convolution built on its group by a backend."""
    if backend == "escnn":
        pytest.importorskip("escnn")
    group, layers = factory(), get_backend(backend)
    image, fields = FieldType("image", 1), FieldType("group", 2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layers.lifting_conv(group, image, 2, 5, padding=2), layers.group_conv(group, fields, 2, 3, padding=1)
    )
    net = net.double().eval()
    x = torch.randn(2, 1, 11, 11, dtype=torch.float64)
    exact = [g for g in range(group.order) if group.is_exact(g)]
    assert_equivariant(net, group, image, fields, x, tolerance=TOLERANCE[backend], elements=exact)


# ----------------------------------------------------------------------------- continuous groups (0.2)
@pytest.mark.parametrize(("name", "irreps"), [("SO2", 5), ("O2", 6), ("SO2_2", 3), ("O2_1", 3)])
def test_continuous_groups_offer_band_limited_irreps(name, irreps):
    from gcnnkit.core.registry import get_group
    from gcnnkit.core.representation import RepresentationError

    group = get_group(name)
    assert group.continuous and group.name == name
    assert_group_axioms(group)  # the sampled rotations (and mirrors) are a finite subgroup
    assert group.order == (16 if name.startswith("SO2") else 32)
    assert len(group.irreps()) == irreps
    for rep in group.irreps():
        assert rep.is_homomorphism(atol=1e-12)
        assert torch.allclose(rep.matrices @ rep.matrices.transpose(1, 2), torch.eye(rep.size, dtype=torch.float64))
    with pytest.raises(RepresentationError, match="no regular representation"):
        group.regular()
    assert [r.kind for r in group.all_representations()].count("regular") == 0


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_continuous_families_refuse_a_bad_band_limit(bad):
    from gcnnkit_rotations.continuous import o2, so2

    for factory in (so2, o2):
        with pytest.raises(ValueError, match="band limit"):
            factory(bad)
