"""Representations of the core (irreps, quotients, sums, tensor products, restriction), steerable field
types and their spec syntax: checked against the group law, against escnn matrix by matrix, and
against main's stored outputs for regular fields."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from _helpers import NATIVE_GROUPS, registered_group
from click.testing import CliRunner
from conftest import assert_user_error
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.cli import main
from gcnnkit.core.backend import Backend
from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType, field_type_from_spec
from gcnnkit.core.group import Group, cyclic_group, dihedral_group
from gcnnkit.core.representation import (
    Representation,
    RepresentationCatalog,
    RepresentationError,
    direct_sum,
    parse_rep_name,
    tensor_product,
)
from gcnnkit.models.network import build_model, build_network
from gcnnkit.models.spec import parse_layers

REFERENCE = Path(__file__).parent / "data" / "regular_reference.json"
SMALL_GROUPS = [cyclic_group(n) for n in (1, 2, 3, 4, 5, 6, 8)] + [dihedral_group(n) for n in (1, 2, 3, 4, 6, 8)]


def _ids(groups):
    return [g.name for g in groups]


def _all_reps(group: Group) -> list[Representation]:
    return group.all_representations()


# ------------------------------------------------------------------ group law
@pytest.mark.parametrize("group", SMALL_GROUPS, ids=_ids(SMALL_GROUPS))
def test_every_representation_is_an_orthogonal_homomorphism(group):
    for rep in _all_reps(group):
        assert rep.is_homomorphism(atol=1e-12), rep
        assert torch.equal(rep.matrix("e"), torch.eye(rep.size, dtype=torch.float64))
        for g in range(group.order):  # ρ(g)ᵀ = ρ(g⁻¹)
            assert torch.allclose(rep.matrix(g).T, rep.matrix(group.inverse(g)), atol=1e-12)


@pytest.mark.parametrize("group", SMALL_GROUPS, ids=_ids(SMALL_GROUPS))
def test_irreps_are_distinct_and_decompose_the_regular_representation(group):
    irreps = group.irreps()
    assert irreps[0].size == 1 and torch.equal(irreps[0].matrices, group.trivial().matrices)
    assert len({r.params for r in irreps}) == len(irreps)
    for a, b in itertools.combinations(irreps, 2):  # characters of distinct irreps are orthogonal
        assert abs(float((a.character * b.character).sum())) < 1e-9, (a, b)
    # regular = ⊕ irreps, each as often as its dimension over its commutant (1 real, 2 complex type)
    regular = group.regular()
    total = 0
    for irr in irreps:
        norm = round(float((irr.character**2).sum()) / group.order)  # 1: real type, 2: complex type
        assert norm in (1, 2)
        assert regular.multiplicity(irr) == irr.size // norm
        total += regular.multiplicity(irr) * irr.size
    assert total == group.order


@pytest.mark.parametrize("group", SMALL_GROUPS, ids=_ids(SMALL_GROUPS))
def test_quotients_permute_cosets_and_restrictions_are_the_subgroup_matrices(group):
    for sid, members in group.subgroups().items():
        sub, inclusion = group.subgroup(sid)
        assert inclusion == members and sub.order == len(members)
        assert torch.allclose(sub.matrices, group.matrices[list(members)])
        q = group.quotient(sid)
        assert q.is_permutation and q.size * len(members) == group.order and q.kind == "quotient"
        if len(members) == 1:
            assert torch.equal(q.matrices, group.regular().matrices)
        for rep in (q, *group.irreps()):
            res = rep.restrict(sid)
            assert res.group is sub and res.is_homomorphism(atol=1e-12)
            assert torch.equal(res.matrices, rep.matrices[list(members)]) or rep.kind == "trivial"


def test_sums_and_tensor_products():
    d4 = dihedral_group(4)
    a, b = d4.irrep(1, 1), d4.quotient((None, 2))
    s = direct_sum(a, b, d4.trivial())
    assert s.size == 7 and s.kind == "sum" and s.constituents == (a, b, d4.trivial())
    assert s.name == "[irrep_1,1]_[quotient[(None, 2)]]_[trivial]"
    assert s.is_homomorphism(atol=1e-12) and torch.allclose(s.character, a.character + b.character + 1)
    t = tensor_product(a, b)
    assert t.size == 8 and t.kind == "tensor" and t.is_homomorphism(atol=1e-12)
    assert torch.allclose(t.character, a.character * b.character)
    # irrep(1,1) ⊗ irrep(1,1) of D4 = irrep(0,0) ⊕ irrep(1,0) ⊕ irrep(0,2) ⊕ irrep(1,2)
    aa = tensor_product(a, a)
    assert [aa.multiplicity(i) for i in d4.irreps()] == [1, 1, 0, 1, 1]
    with pytest.raises(RepresentationError, match="one group"):
        direct_sum(a, cyclic_group(4).irrep(1))


def test_names_parse_as_escnn_and_spec_write_them():
    assert parse_rep_name("irrep(1, 2)") == ("irrep", (1, 2))
    assert parse_rep_name("irrep_1,2") == ("irrep", (1, 2))
    assert parse_rep_name("irrep_3") == ("irrep", (3,))
    assert parse_rep_name("quotient(None, 2)") == ("quotient", ((None, 2),))
    assert parse_rep_name("quotient[2]") == ("quotient", (2,))
    assert parse_rep_name("quotient[(None, 2)]") == ("quotient", ((None, 2),))
    assert parse_rep_name("regular") == ("regular", ())
    d4 = dihedral_group(4)
    assert d4.representation("irrep_1,1") is d4.irrep(1, 1)
    assert d4.representation("quotient(0,2)") == d4.quotient((0, 2))
    with pytest.raises(RepresentationError, match=r"D4 has no irrep\(2,\); allowed: irrep\(0, 0\)"):
        d4.representation("irrep(2)")
    with pytest.raises(RepresentationError, match="C4 has no subgroup 3; allowed: 1, 2, 4"):
        cyclic_group(4).quotient(3)
    with pytest.raises(RepresentationError, match="not understood"):
        d4.representation("irrep(1")


def test_representation_rejects_bad_matrices():
    c4 = cyclic_group(4)
    with pytest.raises(RepresentationError, match="not orthogonal"):
        Representation(c4, "bad", 2 * torch.ones(4, 1, 1))
    with pytest.raises(RepresentationError, match="kind 'odd' is not allowed"):
        Representation(c4, "bad", torch.ones(4, 1, 1), kind="odd")


# --------------------------------------------------------- plugin catalogs
class _SignCatalog(RepresentationCatalog):
    """A plugin's catalog: the two irreps of a mirror group and an extra named representation."""

    def irreps(self, group):
        return [
            Representation(group, "irrep_0", torch.ones(2, 1, 1), "irrep", (0,)),
            Representation(group, "irrep_1", torch.tensor([[[1.0]], [[-1.0]]]), "irrep", (1,)),
        ]

    def subgroups(self, group):
        return {"whole": [0, 1], "trivial": [0]}

    def extra(self, group):
        return [Representation(group, "mirror_sign", torch.tensor([[[1.0]], [[-1.0]]]), "custom")]


def test_a_group_plugin_adds_representations_through_a_catalog():
    mirror = Group(
        "Mirror", ["e", "m"], [[[1, 0], [0, 1]], [[1, 0], [0, -1]]], api_version=1, representations=_SignCatalog()
    )
    assert [r.name for r in mirror.all_representations()] == ["trivial", "regular", "irrep_0", "irrep_1", "mirror_sign"]
    assert mirror.representation("mirror_sign").kind == "custom"
    assert torch.equal(mirror.quotient("trivial").matrices, mirror.regular().matrices)
    sub, inclusion = mirror.subgroup("trivial")  # the default subgroup_group: the parent's elements
    assert sub.element_names == ("e",) and inclusion == (0,)
    plain = Group("Plain", ["e", "m"], [[[1, 0], [0, 1]], [[1, 0], [0, -1]]], api_version=1)
    assert [r.name for r in plain.all_representations()] == ["trivial", "regular"]
    with pytest.raises(RepresentationError, match="Plain declares no irreducible representations"):
        plain.irreps()
    with pytest.raises(ValueError, match="must be a gcnnkit.core.representation.RepresentationCatalog"):
        Group("Bad", ["e"], [[[1, 0], [0, 1]]], api_version=1, representations=object())


def test_rotations_plugin_groups_carry_the_catalog():
    for name in ("C8", "D8", "C16", "D16"):
        group = registered_group(name)
        assert [r.name for r in group.irreps()] == [
            r.name for r in (cyclic_group if name[0] == "C" else dihedral_group)(int(name[1:])).irreps()
        ]


# ------------------------------------------------------------------ escnn
def _escnn_matrices(rep, elements):
    import numpy as np

    return torch.from_numpy(np.stack([np.asarray(rep(e), dtype=np.float64) for e in elements]))


@pytest.mark.escnn
@pytest.mark.parametrize("group", SMALL_GROUPS, ids=_ids(SMALL_GROUPS))
def test_matrices_names_and_order_are_escnns(group):
    pytest.importorskip("escnn")
    from gcnnkit_escnn.spaces import escnn_group

    eg = escnn_group(group)  # the element correspondence the escnn backend uses
    fiber = eg.gspace.fibergroup
    assert torch.allclose(
        _escnn_matrices(fiber.regular_representation, eg.elements), group.regular().matrices, atol=1e-12
    )
    assert [r.name for r in group.irreps()] == [r.name for r in fiber.irreps()]
    for rep in group.irreps():
        theirs = fiber.irrep(*rep.params)
        assert theirs.name == rep.name
        assert torch.allclose(_escnn_matrices(theirs, eg.elements), rep.matrices, atol=1e-12), rep.name
    for sid, members in group.subgroups().items():
        theirs = fiber.quotient_representation(sid)
        q = group.quotient(sid)
        assert theirs.name == q.name
        assert torch.allclose(_escnn_matrices(theirs, eg.elements), q.matrices, atol=1e-12), q.name
        # restriction: escnn's subgroup elements, mapped into the group, are ours in our order
        sub, parent, _ = fiber.subgroup(sid)
        index = {e: i for i, e in enumerate(eg.elements)}
        assert tuple(index[parent(e)] for e in sub.elements) == members, sid


# ---------------------------------------------------------------- field types
def test_steerable_field_type_layout_and_action():
    d4 = dihedral_group(4)
    reps = (d4.regular(), d4.irrep(1, 1), d4.irrep(1, 1), d4.trivial())
    ft = FieldType("steerable", reps=reps)
    assert ft.channels == 4 and ft.size == 13 and ft.offsets == (0, 8, 10, 12)
    assert str(ft) == "steerable[regular, irrep_1,1×2, trivial]" and not ft.is_permutation
    assert ft.shape(d4, 2, 5, 5) == (2, 13, 5, 5) and ft.field_reps(d4) == reps
    x = torch.randn(2, 13, 5, 5, dtype=torch.float64)
    for g, h in itertools.product(range(8), repeat=2):  # an action: g·(h·x) = (gh)·x
        assert torch.allclose(ft.act(d4, g, ft.act(d4, h, x)), ft.act(d4, d4.product(g, h), x), atol=1e-12)
    assert FieldType.of([d4.regular()] * 3) == FieldType("group", 3)
    assert FieldType.of(reps) == ft and FieldType.of(reps) != FieldType.of(reps[:3])
    assert FieldType("image", 2).field_reps(d4) == (d4.trivial(),) * 2
    with pytest.raises(ValueError, match="only steerable field types carry reps"):
        FieldType("group", 2, reps)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_regular_fields_move_alike_in_the_group_and_the_steerable_layout(name):
    group = registered_group(name)
    steer, grp = FieldType("steerable", reps=(group.regular(),) * 3), FieldType("group", 3)
    x = torch.randn(2, 3, group.order, 5, 5, dtype=torch.float64)
    for g in range(group.order):
        assert torch.equal(steer.act(group, g, x.flatten(1, 2)), grp.act(group, g, x).flatten(1, 2))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_field_type_from_spec_keeps_the_order_property(data):
    group = data.draw(st.sampled_from(SMALL_GROUPS))
    reps = group.all_representations()
    picks = data.draw(
        st.lists(
            st.tuples(st.sampled_from(reps), st.integers(1, 3)), min_size=1, max_size=4, unique_by=lambda t: t[0].name
        )
    )
    spec = {r.name: n for r, n in picks}
    ft = field_type_from_spec(group, spec, "layer 0 (gconv)")
    expected = [r for r, n in picks for _ in range(n)]
    assert list(ft.field_reps(group)) == expected
    assert ft.kind == ("group" if all(r.kind == "regular" for r in expected) else "steerable")


def test_field_type_from_spec_errors_are_one_line():
    d4 = dihedral_group(4)
    with pytest.raises(SpecError, match=r"layer 1 \(gconv\)\.out: group D4 has no irrep\(5,\)"):
        field_type_from_spec(d4, {"irrep(5)": 2}, "layer 1 (gconv)")
    with pytest.raises(SpecError, match=r"out\['regular'\]: expected a field count >= 1, got 0"):
        field_type_from_spec(d4, {"regular": 0}, "layer 1 (gconv)")


def test_spec_accepts_an_ordered_field_mapping():
    (spec,) = parse_layers([{"type": "gconv", "out": {"regular": 8, "irrep(1)": 4, "trivial": 2}}])
    assert list(spec.params["out"].items()) == [("regular", 8), ("irrep(1)", 4), ("trivial", 2)]
    with pytest.raises(SpecError, match=r"model.layers\[0\].out: an empty mapping has no fields"):
        parse_layers([{"type": "gconv", "out": {}}])
    with pytest.raises(SpecError, match=r"out\['trivial'\]: expected a field count >= 1, got -1"):
        parse_layers([{"type": "lift", "out": {"trivial": -1}}])
    with pytest.raises(SpecError, match="expected int or string or mapping"):
        parse_layers([{"type": "lift", "out": [8]}])


# --------------------------------------------------------------- networks
def _net(out, group="C4", seed=0):
    torch.manual_seed(seed)
    layers = [
        {"type": "lift", "out": out, "kernel": 3},
        "relu",
        {"type": "gconv", "out": out},
        "group_pool",
        "global_pool",
        "linear",
    ]
    return build_model("native", group, layers=layers, in_channels=1, image_size=9, num_classes=3)


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_all_regular_mapping_builds_the_bare_int_network(group):
    a, b = _net(4, group), _net({"regular": 4}, group)
    assert a.out_types == b.out_types and a.num_parameters() == b.num_parameters()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x = torch.randn(2, 1, 9, 9)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_a_backend_without_steerable_convolutions_refuses_steerable_fields_in_one_line():
    class RegularOnly(Backend):
        name, api_version = "regular-only", 2

        def lifting_conv(self, *args, **kwargs):  # pragma: no cover - never reached
            raise AssertionError

        group_conv = lifting_conv

    specs = parse_layers([{"type": "lift", "out": {"regular": 2, "irrep(1)": 1}}, "global_pool"])
    with pytest.raises(
        SpecError,
        match=r"backend 'regular-only' builds regular fields only; image\[1\] → steerable\[regular×2, irrep_1\]",
    ):
        build_network(specs, RegularOnly(), cyclic_group(4), 1, 3)


def _reference_cases():
    return sorted(json.loads(REFERENCE.read_text()).items())


@pytest.mark.parametrize(
    ("key", "ref"),
    [
        pytest.param(k, v, marks=[] if k.split("/")[0] in ("gcnn-tiny", "p4cnn", "gcnn-small") else [pytest.mark.slow])
        for k, v in _reference_cases()
    ],
    ids=[k for k, _ in _reference_cases()],
)
def test_every_preset_gives_mains_parameters_and_outputs(key, ref):
    """tests/data/regular_reference.json was written by main's code (before field types had reps): the same
    seed gives the same parameter count and the same float64 logits."""
    preset, group = key.split("/")
    torch.manual_seed(0)
    net = build_model(
        "native", group, preset=preset, in_channels=ref["in_channels"], image_size=ref["size"], num_classes=10
    )
    net = net.double().eval()
    torch.manual_seed(1)
    x = torch.randn(2, ref["in_channels"], ref["size"], ref["size"], dtype=torch.float64)
    with torch.no_grad():
        y = net(x).flatten()
    assert net.num_parameters() == ref["params"]
    torch.testing.assert_close(y, torch.tensor(ref["logits"], dtype=torch.float64), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------- CLI
def test_cli_reps_lists_names_kinds_and_sizes():
    result = CliRunner().invoke(main, ["reps", "D4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "D4: 8 elements" and lines[1].split() == ["name", "spec", "kind", "size", "permutation"]
    assert ["irrep_1,1", "irrep(1,1)", "irrep", "2", "no"] in [line.split() for line in lines]
    assert ["quotient[(None,", "2)]", "quotient(None,2)", "quotient", "4", "yes"] in [line.split() for line in lines]
    data = json.loads(CliRunner().invoke(main, ["reps", "C8", "--json"]).output)
    assert data["group"] == "C8" and data["order"] == 8
    assert [(r["name"], r["size"]) for r in data["representations"]][:4] == [
        ("trivial", 1),
        ("regular", 8),
        ("irrep_0", 1),
        ("irrep_1", 2),
    ]
    assert_user_error(CliRunner().invoke(main, ["reps", "Q9"]), "unknown group 'Q9'")
    assert data["continuous"] is False


def test_cli_reps_says_a_continuous_group_is_continuous():
    result = CliRunner().invoke(main, ["reps", "SO2"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "SO2: continuous, band-limited irreps; checks act with 16 sampled elements"
    data = json.loads(CliRunner().invoke(main, ["reps", "SO2", "--json"]).output)
    assert data["continuous"] is True and [r["spec"] for r in data["representations"]][:2] == ["trivial", "irrep(1)"]


@pytest.mark.parametrize("name", [*NATIVE_GROUPS, "C8", "D8"])
def test_registered_groups_pass_the_representation_checks(name):
    from gcnnkit.testing import assert_representations

    assert_representations(registered_group(name))


def test_the_representation_checks_catch_a_broken_catalog():
    from gcnnkit.testing import assert_representations

    class Broken(_SignCatalog):
        def subgroups(self, group):
            return {"not closed": [1]}

    mirror = Group("Mirror", ["e", "m"], [[[1, 0], [0, 1]], [[1, 0], [0, -1]]], api_version=1, representations=Broken())
    with pytest.raises(AssertionError, match="subgroup 'not closed'"):
        assert_representations(mirror)
