"""Groups: axioms, conventions (names, index order, D4 = r^k f^j at 4j+k), products, inverses,
the pixel action, and that ``check_group_axioms`` rejects things that are not groups."""

from __future__ import annotations

import itertools

import pytest
import torch
from _helpers import (
    EXPECTED_ELEMENTS,
    FLIP,
    NATIVE_GROUPS,
    inverse_by_search,
    product_by_matrices,
    registered_group,
    rot_flip,
    rotation_matrix,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.core.group import (
    GROUP_API_VERSION,
    Group,
    GroupAxiomError,
    check_group_axioms,
    cyclic_group,
    dihedral_group,
)
from gcnnkit.core.transforms import transform_image

EYE = torch.eye(2, dtype=torch.float64)


# --------------------------------------------------------------------------- registered groups
@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_registered_group_satisfies_axioms(name):
    group = registered_group(name)
    check_group_axioms(group)  # raises on failure
    assert group.name == name
    assert group.api_version == GROUP_API_VERSION
    assert group.element_names == EXPECTED_ELEMENTS[name]
    assert group.order == len(group) == len(EXPECTED_ELEMENTS[name])
    assert group.identity == 0 and torch.equal(group.matrix(0), EYE)
    assert group.exact


@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_cayley_table_matches_matrix_products(name):
    """The derived table agrees with a brute-force search over matrix products."""
    group = registered_group(name)
    for a, b in itertools.product(range(group.order), repeat=2):
        assert group.product(a, b) == product_by_matrices(group, a, b)
        assert group.product(group.element_names[a], group.element_names[b]) == group.product(a, b)
    for g in range(group.order):
        assert group.inverse(g) == inverse_by_search(group, g)
        assert group.product(g, group.inverse(g)) == 0
        assert group.product(group.inverse(g), g) == 0


@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_matrices_are_rotations_and_reflections_by_name(name):
    """``rk`` is a counter-clockwise rotation by k·360/N, ``rkf`` = rotation after reflection."""
    group = registered_group(name)
    n_rot = sum(1 for e in group.element_names if not e.endswith("f"))
    for idx, el in enumerate(group.element_names):
        reflect = el.endswith("f")
        k = 0 if el in ("e", "f") else int(el[1:].rstrip("f"))
        expected = rotation_matrix(360.0 * k / n_rot) @ (FLIP if reflect else EYE)
        assert torch.allclose(group.matrix(idx), expected, atol=1e-12), el
        assert group.rot90_flip(idx) == ((round(4 * k / n_rot)) % 4, int(reflect))


# --------------------------------------------------------------------------- D4 convention
@pytest.mark.parametrize("size", [5, 6])
def test_d4_index_convention(size):
    """Element ``r^k f^j`` sits at index ``4j + k`` and acts as ``rot90(flip^j(x), k)``."""
    d4 = registered_group("D4")
    x = torch.randn(2, size, size, dtype=torch.float64)
    for j in range(2):
        for k in range(4):
            idx = 4 * j + k
            name = ("e" if k == 0 else f"r{k}") if j == 0 else ("f" if k == 0 else f"r{k}f")
            assert d4.element_names[idx] == name
            assert d4.index(name) == idx
            assert d4.rot90_flip(idx) == (k, j)
            expected = torch.rot90(torch.flip(x, dims=(-1,)) if j else x, k, dims=(-2, -1))
            assert torch.equal(transform_image(x, d4, idx), expected)


def test_rotation_direction_and_reflection_on_a_picture():
    """r1 is counter-clockwise on screen: the pixel right of the centre goes to above it;
    f mirrors left–right."""
    d4 = registered_group("D4")
    img = torch.zeros(5, 5)
    img[2, 4] = 1.0  # right of centre (row 2 is the middle row, rows go down)
    up = transform_image(img, d4, "r1")
    assert up[0, 2] == 1.0 and up.sum() == 1.0  # top middle
    mirrored = transform_image(img, d4, "f")
    assert mirrored[2, 0] == 1.0 and mirrored.sum() == 1.0


@pytest.mark.parametrize("name", NATIVE_GROUPS)
@pytest.mark.parametrize("size", [(7, 7), (8, 8), (5, 9)])
def test_pixel_action_agrees_with_the_matrices(name, size):
    """A pixel at Cartesian position p (origin at the centre, y up) lands at matrix(g) @ p."""
    group = registered_group(name)
    h, w = size
    r, c = 1, w - 2  # an asymmetric spot
    img = torch.zeros(h, w)
    img[r, c] = 1.0
    p = torch.tensor([c - (w - 1) / 2, (h - 1) / 2 - r], dtype=torch.float64)
    for g in range(group.order):
        out = transform_image(img, group, g)
        ((r2, c2),) = out.nonzero().tolist()
        oh, ow = out.shape
        q = torch.tensor([c2 - (ow - 1) / 2, (oh - 1) / 2 - r2], dtype=torch.float64)
        assert torch.allclose(q, group.matrix(g) @ p), (name, group.element_names[g])


@pytest.mark.parametrize(
    ("a", "b", "ab"),
    [
        ("r1", "r1", "r2"),
        ("r1", "r3", "e"),
        ("r3", "r3", "r2"),
        ("f", "r1", "r3f"),
        ("r1", "f", "r1f"),
        ("f", "f", "e"),
        ("r1f", "r1f", "e"),
        ("r2", "f", "r2f"),
        ("f", "r3f", "r1"),
        ("r1f", "f", "r1"),
        ("r1f", "r1", "f"),
    ],
)
def test_known_d4_products(a, b, ab):
    d4 = registered_group("D4")
    assert d4.element_names[d4.product(a, b)] == ab


def test_conjugating_a_rotation_by_the_reflection_inverts_it():
    d4 = registered_group("D4")
    for k in range(4):
        rk = d4.index("e" if k == 0 else f"r{k}")
        conj = d4.product(d4.product("f", rk), "f")
        assert conj == (-k) % 4


@pytest.mark.parametrize(
    ("name", "el", "inv"),
    [
        ("C4", "r1", "r3"),
        ("C4", "r2", "r2"),
        ("C2", "r1", "r1"),
        ("D4", "r1", "r3"),
        ("D4", "r3f", "r3f"),
        ("D4", "f", "f"),
        ("D2", "r1f", "r1f"),
        ("C1", "e", "e"),
    ],
)
def test_known_inverses(name, el, inv):
    group = registered_group(name)
    assert group.element_names[group.inverse(el)] == inv


def test_index_accepts_names_and_indices_and_rejects_others():
    d4 = registered_group("D4")
    assert d4.index("r2f") == 6 and d4.index(6) == 6 and d4.index(0) == 0
    with pytest.raises(KeyError, match=r"no element 'r4'.*e, r1, r2, r3, f"):
        d4.index("r4")
    with pytest.raises(KeyError, match=r"index 8.*0\.\.7"):
        d4.index(8)
    with pytest.raises(KeyError):
        d4.index(-1)


# --------------------------------------------------------------------------- pixel homomorphism
@pytest.mark.parametrize("name", NATIVE_GROUPS)
@pytest.mark.parametrize("shape", [(3, 5, 5), (2, 6, 6), (1, 1, 1), (2, 4, 7)])
def test_pixel_action_is_a_homomorphism(name, shape):
    """T_a T_b = T_{a·b} exactly (bit for bit), odd, even and non-square sizes."""
    group = registered_group(name)
    x = torch.randn(shape)
    for a, b in itertools.product(range(group.order), repeat=2):
        left = transform_image(transform_image(x, group, b), group, a)
        right = transform_image(x, group, group.product(a, b))
        assert torch.equal(left, right), (group.element_names[a], group.element_names[b])
    assert torch.equal(transform_image(x, group, 0), x)


# --------------------------------------------------------------------------- families (property)
@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 12))
def test_cyclic_group_properties(n):
    group = cyclic_group(n)
    check_group_axioms(group)
    assert group.name == f"C{n}" and group.order == n
    assert group.element_names == ("e",) + tuple(f"r{k}" for k in range(1, n))
    for a, b in itertools.product(range(n), repeat=2):
        assert group.product(a, b) == (a + b) % n
    for g in range(n):
        assert group.inverse(g) == (-g) % n
        assert torch.allclose(group.matrix(g), rotation_matrix(360.0 * g / n), atol=1e-12)
        assert torch.det(group.matrix(g)).item() == pytest.approx(1.0)
        assert group.is_exact(g) == ((4 * g) % n == 0)
    assert group.exact == (n in (1, 2, 4))


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 12))
def test_dihedral_group_properties(n):
    group = dihedral_group(n)
    check_group_axioms(group)
    assert group.name == f"D{n}" and group.order == 2 * n
    # (r^a f^i)(r^b f^j) = r^(a + (-1)^i b) f^(i+j)
    for (i, a), (j, b) in itertools.product(itertools.product(range(2), range(n)), repeat=2):
        k = (a + (-1) ** i * b) % n
        assert group.product(n * i + a, n * j + b) == n * ((i + j) % 2) + k
    for g in range(n, 2 * n):  # reflections are involutions with det -1
        assert group.inverse(g) == g
        assert torch.det(group.matrix(g)).item() == pytest.approx(-1.0)
    assert group.exact == (n in (1, 2, 4))


@settings(max_examples=10, deadline=None)
@given(n=st.sampled_from([4, 8, 12]), dihedral=st.booleans(), size=st.integers(1, 8))
def test_exact_elements_of_larger_groups_compose_exactly(n, dihedral, size):
    """In C8/D12 … only the multiples of 90° (and their reflections) permute pixels; they form a
    subgroup whose pixel action is an exact homomorphism."""
    group = dihedral_group(n) if dihedral else cyclic_group(n)
    exact = [g for g in range(group.order) if group.is_exact(g)]
    assert len(exact) == (8 if dihedral else 4)
    x = torch.randn(2, size, size, dtype=torch.float64)
    for a, b in itertools.product(exact, repeat=2):
        assert group.product(a, b) in exact
        k_a, j_a = group.rot90_flip(a)
        assert torch.equal(transform_image(x, group, a), rot_flip(x, k_a, j_a))
        left = transform_image(transform_image(x, group, b), group, a)
        assert torch.equal(left, transform_image(x, group, group.product(a, b)))


def test_non_exact_elements_are_flagged():
    c8 = cyclic_group(8)
    assert not c8.exact
    assert [c8.is_exact(g) for g in range(8)] == [True, False, True, False, True, False, True, False]
    with pytest.raises(ValueError, match="r1 of C8 is not a pixel permutation"):
        c8.rot90_flip("r1")


def test_constructors_reject_bad_orders():
    with pytest.raises(ValueError, match="order must be >= 1"):
        cyclic_group(0)
    with pytest.raises(ValueError, match="order must be >= 1"):
        dihedral_group(0)


def test_equal_groups_hash_equal():
    """``==`` ignores the name, so ``hash`` must too (Python's data model: a == b ⇒ hash(a) == hash(b))."""
    a, b = cyclic_group(4), cyclic_group(4, name="p4")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert cyclic_group(4) != dihedral_group(2)  # same order, different group
    assert registered_group("C4") == cyclic_group(4)


# --------------------------------------------------------------------------- broken groups
def test_constructor_validates_shapes_and_names():
    with pytest.raises(ValueError, match=r"shape \[\|G\|, 2, 2\]"):
        Group("bad", ["e"], [[1.0, 0.0], [0.0, 1.0]], api_version=GROUP_API_VERSION)
    with pytest.raises(ValueError, match="2 element names for 1 matrices"):
        Group("bad", ["e", "a"], [EYE.tolist()], api_version=GROUP_API_VERSION)
    with pytest.raises(ValueError, match="not unique"):
        Group("bad", ["e", "e"], [EYE.tolist(), FLIP.tolist()], api_version=GROUP_API_VERSION)


def test_rejects_matrices_not_closed_under_multiplication():
    group = Group("open", ["e", "r1"], [EYE.tolist(), rotation_matrix(90).tolist()], api_version=GROUP_API_VERSION)
    with pytest.raises(GroupAxiomError, match="open: the matrices are not closed under multiplication"):
        check_group_axioms(group)


def test_rejects_a_repeated_matrix_without_a_table():
    group = Group("twice", ["e", "a"], [EYE.tolist(), EYE.tolist()], api_version=GROUP_API_VERSION)
    with pytest.raises(GroupAxiomError, match="two elements share a matrix"):
        check_group_axioms(group)


def test_accepts_a_non_faithful_action_with_a_table():
    """Z2 acting trivially on the plane is still a group when its table is given."""
    group = Group(
        "Z2triv", ["e", "a"], [EYE.tolist(), EYE.tolist()], api_version=GROUP_API_VERSION, cayley_table=[[0, 1], [1, 0]]
    )
    check_group_axioms(group)
    assert group.inverse("a") == 1


def _identity_mats(n):
    return EYE.expand(n, 2, 2).tolist()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([[0, 1], [1, 2]], r"entries in 0\.\.1"),
        ([[0, 1, 2], [1, 2, 0]], r"must be \[\|G\|, \|G\|\]"),
        ([[1, 0], [0, 1]], r"element 0 \(e\) is not the identity"),
        ([[0, 1, 2], [1, 1, 2], [2, 2, 0]], "identity|not a permutation"),
        ([[0, 1, 2], [1, 2, 2], [2, 0, 1]], "not a permutation"),
    ],
)
def test_rejects_a_bad_cayley_table(table, message):
    n = max(len(table), len(table[0]))
    names = ["e"] + [f"a{i}" for i in range(1, n)]
    group = Group("badtable", names, _identity_mats(n), api_version=GROUP_API_VERSION, cayley_table=table)
    with pytest.raises(GroupAxiomError, match=message) as info:
        check_group_axioms(group)
    assert "badtable" in str(info.value) and "\n" not in str(info.value)


def test_rejects_a_non_associative_table():
    """A loop of order 5 (a Latin square with identity) that is not associative."""
    table = torch.tensor([[0, 1, 2, 3, 4], [1, 0, 3, 4, 2], [2, 4, 0, 1, 3], [3, 2, 4, 0, 1], [4, 3, 1, 2, 0]])
    # sanity of the fixture: Latin square with identity, yet (ab)c != a(bc) somewhere
    assert all(sorted(r) == list(range(5)) for r in table.tolist())
    assert all(sorted(c) == list(range(5)) for c in table.T.tolist())
    assert not torch.equal(table[table, :], table[:, table])
    group = Group(
        "loop5", ["e", "a", "b", "c", "d"], _identity_mats(5), api_version=GROUP_API_VERSION, cayley_table=table
    )
    with pytest.raises(GroupAxiomError, match="loop5: the product is not associative"):
        check_group_axioms(group)


def test_rejects_matrices_that_are_not_a_homomorphism_of_the_table():
    """Klein-four table with C4's rotation matrices: r1·r1 = e by the table, 180° by the matrices."""
    klein = [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]]
    mats = [rotation_matrix(90 * k).tolist() for k in range(4)]
    group = Group("fake", ["e", "r1", "r2", "r3"], mats, api_version=GROUP_API_VERSION, cayley_table=klein)
    with pytest.raises(GroupAxiomError, match="not a homomorphism"):
        check_group_axioms(group)


def test_rejects_non_orthogonal_matrices():
    group = Group(
        "scale",
        ["e", "a"],
        [EYE.tolist(), (2 * EYE).tolist()],
        api_version=GROUP_API_VERSION,
        cayley_table=[[0, 1], [1, 0]],
    )
    with pytest.raises(GroupAxiomError, match="not orthogonal"):
        check_group_axioms(group)


def test_every_installed_group_satisfies_the_axioms():
    """Whatever group plugins are installed (not only the native ones), each exact name loads and is a group."""
    from gcnnkit.core.registry import get_group, group_names

    names = [n for n in group_names() if "{N}" not in n]
    assert set(NATIVE_GROUPS) <= set(names)
    for name in names:
        group = get_group(name)
        check_group_axioms(group)
        assert group.name == name and group.element_names[0] == "e"
