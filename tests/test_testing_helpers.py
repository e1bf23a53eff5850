"""``gcnnkit.testing`` (and the measurements in ``gcnnkit.core.equivariance`` behind it): pass on good
inputs, raise ``AssertionError`` on bad ones."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import NATIVE_GROUPS, randomize_parameters, registered_group
from torch import nn

from gcnnkit.core.equivariance import check_network, equivariance_errors, relative_error
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import GROUP_API_VERSION, Group, cyclic_group, dihedral_group
from gcnnkit.core.registry import get_backend
from gcnnkit.models.network import EquivariantNet, build_model
from gcnnkit.models.spec import parse_layers
from gcnnkit.testing import assert_equivariant, assert_group_axioms, assert_network_equivariant

IMG = FieldType("image", 1)


def fixed_conv(kernel: list[list[float]]) -> nn.Conv2d:
    k = torch.tensor(kernel, dtype=torch.float32)
    conv = nn.Conv2d(1, 1, k.shape[-1], padding=k.shape[-1] // 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(k.view(1, 1, *k.shape))
    return conv


ISOTROPIC = [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]  # D4-symmetric Laplacian
SHIFT_RIGHT = [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]  # no symmetry but the identity
MIRROR_SYMMETRIC = [[0.0, 2.0, 0.0], [1.0, 0.0, 1.0], [0.0, -1.0, 0.0]]  # symmetric left–right only


# --------------------------------------------------------------------------- assert_group_axioms
@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_assert_group_axioms_passes_on_registered_groups(name):
    assert_group_axioms(registered_group(name))


@pytest.mark.parametrize("group", [cyclic_group(8), dihedral_group(3), dihedral_group(8), cyclic_group(12)])
def test_assert_group_axioms_passes_on_non_exact_groups(group):
    assert_group_axioms(group)


def test_assert_group_axioms_rejects_a_non_group():
    rot90 = [[0.0, -1.0], [1.0, 0.0]]
    half = Group("half", ["e", "r1"], [[[1.0, 0.0], [0.0, 1.0]], rot90], api_version=GROUP_API_VERSION)
    with pytest.raises(AssertionError, match="not closed"):
        assert_group_axioms(half)


class _RotateThenFlip(Group):
    """D4 whose reflections rotate *before* mirroring: the pixel action no longer matches the
    matrices, and is not a homomorphism of the group's own product."""

    def rot90_flip(self, g):
        k, j = super().rot90_flip(g)
        return ((-k) % 4, j) if j else (k, j)


def test_assert_group_axioms_rejects_a_wrong_pixel_action():
    d4 = dihedral_group(4)
    bad = _RotateThenFlip("D4bad", d4.element_names, d4.matrices, api_version=GROUP_API_VERSION)
    with pytest.raises(AssertionError, match=r"D4bad: T\(\w+\) T\(\w+\) != T\(\w+·\w+\) on images"):
        assert_group_axioms(bad)


# --------------------------------------------------------------------------- assert_equivariant
@pytest.mark.parametrize("name", ["C4", "D4"])
def test_assert_equivariant_passes_on_equivariant_layers(name):
    group = registered_group(name)
    lift = get_backend("native").lifting_conv(group, FieldType("image", 2), 3, 3, padding=1)
    randomize_parameters(lift)
    result = assert_equivariant(
        lift.eval(), group, FieldType("image", 2), FieldType("group", 3), torch.randn(2, 2, 9, 9)
    )
    assert set(result.errors) == set(group.element_names)
    assert result.max_error <= 1e-5 and result.errors["e"] == 0.0
    # an isotropic fixed filter is D4-equivariant as an image → image map
    assert_equivariant(fixed_conv(ISOTROPIC), group, IMG, IMG, torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("name", ["C2", "C4", "D1", "D4"])
def test_assert_equivariant_rejects_an_asymmetric_kernel(name):
    group = registered_group(name)
    with pytest.raises(AssertionError) as info:
        assert_equivariant(fixed_conv(SHIFT_RIGHT), group, IMG, IMG, torch.randn(2, 1, 9, 9))
    msg = str(info.value)
    assert f"not {name}-equivariant" in msg and "exceeds 1e-05" in msg


def test_assert_equivariant_respects_elements_and_tolerance():
    d4 = registered_group("D4")
    conv = fixed_conv(MIRROR_SYMMETRIC)
    x = torch.randn(2, 1, 9, 9)
    result = assert_equivariant(conv, d4, IMG, IMG, x, elements=["e", "f"])  # mirror symmetry holds
    assert set(result.errors) == {"e", "f"}
    with pytest.raises(AssertionError, match="at element r"):  # rotations do not
        assert_equivariant(conv, d4, IMG, IMG, x)
    assert_equivariant(conv, d4, IMG, IMG, x, tolerance=math.inf)


def test_equivariance_errors_reports_each_element():
    d4 = registered_group("D4")
    result = equivariance_errors(fixed_conv(MIRROR_SYMMETRIC), d4, IMG, IMG, torch.randn(1, 1, 7, 7), name="m")
    assert result.name == "m" and list(result.errors) == list(d4.element_names)
    assert result.errors["e"] == 0.0 and result.errors["f"] < 1e-6 and result.errors["r1"] > 0.1
    assert result.worst_element != "e" and result.max_error == max(result.errors.values())
    d = result.to_dict()
    assert d["in_type"] == "image[1]" and d["max_rel_error"] == result.max_error


def test_relative_error():
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_error(torch.ones(3), torch.zeros(3)) == math.inf
    assert relative_error(torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0])) == pytest.approx(0.25)


# --------------------------------------------------------------------------- whole networks
def test_assert_network_equivariant_passes_and_restores_the_mode():
    net = build_model("native", "D4", preset="gcnn-tiny", in_channels=1, image_size=11, num_classes=3)
    randomize_parameters(net)
    net.train()
    results = assert_network_equivariant(net, (1, 11, 11))
    assert [r.name for r in results] == net.layer_names() + ["end-to-end"]
    assert net.training  # check_network puts the net in eval mode and back


def test_check_network_feeds_a_float64_network_float64_images():
    """Regression: the images were float32 whatever the network, so a float64 network failed in conv2d."""
    net = build_model("native", "D4", preset="gcnn-tiny", in_channels=1, image_size=11, num_classes=3)
    randomize_parameters(net)
    single = check_network(net, (1, 11, 11), batch=2)
    double = assert_network_equivariant(net.double(), (1, 11, 11), tolerance=1e-12)
    assert [r.name for r in double] == [r.name for r in single]
    assert max(r.max_error for r in double) < 1e-3 * max(r.max_error for r in single)


def _net_with(layer: nn.Module, group) -> EquivariantNet:
    specs = parse_layers(["relu", "global_pool"])
    types = [FieldType("image", 1), FieldType("image", 1), FieldType("vector", 1)]
    return EquivariantNet(group, "test", specs, [layer, _Flatten()], types[:2], types[1:])


class _Flatten(nn.Module):
    def forward(self, x):
        return x.mean(dim=(-2, -1))


def test_assert_network_equivariant_names_the_bad_layer():
    """A shift by one pixel keeps the global mean almost invariant, but the layer check catches it."""
    c4 = registered_group("C4")
    net = _net_with(fixed_conv(SHIFT_RIGHT), c4)
    with pytest.raises(AssertionError, match=r"0\.act: .* at r"):
        assert_network_equivariant(net, (1, 9, 9))
    results = check_network(net, (1, 9, 9), batch=2)
    assert results[0].max_error > 0.1
    good = _net_with(fixed_conv(ISOTROPIC), c4)
    assert_network_equivariant(good, (1, 9, 9))
