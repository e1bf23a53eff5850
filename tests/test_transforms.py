"""Actions on tensors: images, group feature maps, field types, interpolated rotations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _helpers import NATIVE_GROUPS, ref_group_map_action, registered_group, rotation_matrix
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import cyclic_group
from gcnnkit.core.transforms import apply_matrix, random_angles, rotate_images, transform_group_map, transform_image


# --------------------------------------------------------------------------- group maps
@pytest.mark.parametrize("name", NATIVE_GROUPS)
@pytest.mark.parametrize("size", [5, 6])
def test_group_map_action_is_a_homomorphism(name, size):
    group = registered_group(name)
    x = torch.randn(2, 3, group.order, size, size)
    for a, b in itertools.product(range(group.order), repeat=2):
        left = transform_group_map(transform_group_map(x, group, b), group, a)
        right = transform_group_map(x, group, group.product(a, b))
        assert torch.equal(left, right), (group.element_names[a], group.element_names[b])
    assert torch.equal(transform_group_map(x, group, "e"), x)


@pytest.mark.parametrize("name", NATIVE_GROUPS)
def test_group_map_action_matches_its_definition(name):
    """(g·f)(h, p) = f(g⁻¹h, g⁻¹p), against a python-loop reference built from the matrices."""
    group = registered_group(name)
    x = torch.randn(2, 2, group.order, 7, 7)
    for g in range(group.order):
        assert torch.equal(transform_group_map(x, group, g), ref_group_map_action(x, group, g))


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(NATIVE_GROUPS), size=st.integers(1, 9), lead=st.integers(0, 2))
def test_group_map_action_property(name, size, lead):
    """Any number of leading axes; action of g then g⁻¹ is the identity."""
    group = registered_group(name)
    x = torch.randn(*([2] * lead), group.order, size, size)
    for g in range(group.order):
        y = transform_group_map(x, group, g)
        assert torch.equal(y, ref_group_map_action(x, group, g))
        assert torch.equal(transform_group_map(y, group, group.inverse(g)), x)


def test_group_map_action_checks_the_group_axis():
    d4 = registered_group("D4")
    with pytest.raises(ValueError, match=r"group axis has size 4, expected \|D4\| = 8"):
        transform_group_map(torch.zeros(1, 1, 4, 3, 3), d4, "r1")


# --------------------------------------------------------------------------- field types
@pytest.mark.parametrize("name", ["C4", "D4"])
def test_field_type_action_and_shape(name):
    group = registered_group(name)
    img, gmap, vec = FieldType("image", 3), FieldType("group", 2), FieldType("vector", 5)
    assert img.shape(group, 4, 6, 7) == (4, 3, 6, 7)
    assert gmap.shape(group, 4, 6, 7) == (4, 2, group.order, 6, 7)
    assert vec.shape(group, 4, 6, 7) == (4, 5)
    x_img, x_map, x_vec = torch.randn(4, 3, 6, 6), torch.randn(4, 2, group.order, 6, 6), torch.randn(4, 5)
    for g in range(group.order):
        assert torch.equal(img.act(group, g, x_img), transform_image(x_img, group, g))
        assert torch.equal(gmap.act(group, g, x_map), ref_group_map_action(x_map, group, g))
        assert torch.equal(vec.act(group, g, x_vec), x_vec)
    assert str(gmap) == "group[2]"


def test_field_type_validation():
    with pytest.raises(ValueError, match="field kind must be one of"):
        FieldType("tensor", 1)
    with pytest.raises(ValueError, match="at least one channel"):
        FieldType("image", 0)


# --------------------------------------------------------------------------- apply_matrix
@pytest.mark.parametrize("size", [5, 6, 9, 28])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_apply_matrix_at_multiples_of_90_matches_rot90(size, k):
    """Bilinear sampling exactly on grid points reproduces rot90.

    float64 to ~1e-6 and far below; float32 only to its grid rounding, which grows with the size
    (normalised coordinates are un-normalised in float32 by grid_sample: ~1e-5 absolute at 28 px).
    """
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    out = apply_matrix(x, rotation_matrix(90 * k))
    assert out.shape == x.shape and out.dtype == torch.float64
    assert torch.allclose(out, torch.rot90(x, k, dims=(-2, -1)), atol=1e-9)
    x32 = x.float()
    out32 = apply_matrix(x32, rotation_matrix(90 * k))
    assert out32.dtype == torch.float32
    assert torch.allclose(out32, torch.rot90(x32, k, dims=(-2, -1)), atol=1e-6 * size)


@pytest.mark.parametrize("size", [5, 6])
def test_apply_matrix_reflection_matches_flip(size):
    x = torch.randn(3, size, size, dtype=torch.float64)  # 3-d input: leading axes are flattened and restored
    flip = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = apply_matrix(x, flip)
    assert out.shape == x.shape
    assert torch.allclose(out, torch.flip(x, dims=(-1,)), atol=1e-9)
    x5 = torch.randn(2, 2, 4, size, size, dtype=torch.float64)  # 5-d (group map) input
    assert torch.allclose(apply_matrix(x5, rotation_matrix(90)), torch.rot90(x5, 1, dims=(-2, -1)), atol=1e-9)


def _centre_of_mass(img: torch.Tensor) -> tuple[float, float]:
    """Cartesian (x right, y up) centre of mass of a non-negative [H, W] image."""
    h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    m = img.to(torch.float64)
    cx = (m * (xs - (w - 1) / 2)).sum() / m.sum()
    cy = (m * ((h - 1) / 2 - ys)).sum() / m.sum()
    return cx.item(), cy.item()


@pytest.mark.parametrize("deg", [30.0, 45.0, 135.0, -60.0])
def test_apply_matrix_rotates_counter_clockwise_about_the_centre(deg):
    """A blob at (6, 0) ends up at R(deg) @ (6, 0): direction and centre of the interpolated action."""
    size = 31
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    c = (size - 1) / 2
    blob = torch.exp(-(((xs - c) - 6.0) ** 2 + (ys - c) ** 2) / (2 * 1.5**2)).float()
    expected = rotation_matrix(deg) @ torch.tensor([6.0, 0.0], dtype=torch.float64)
    for out in (apply_matrix(blob, rotation_matrix(deg)), rotate_images(blob[None, None], torch.tensor([deg]))[0, 0]):
        cx, cy = _centre_of_mass(out)
        assert math.hypot(cx - expected[0].item(), cy - expected[1].item()) < 0.1
        assert out.sum().item() == pytest.approx(blob.sum().item(), rel=1e-2)  # nothing lost off the edge


def test_transform_image_uses_interpolation_for_non_exact_elements():
    c8 = cyclic_group(8)
    x = torch.randn(2, 9, 9)
    assert torch.equal(transform_image(x, c8, "r1"), apply_matrix(x, c8.matrix("r1")))
    assert torch.equal(transform_image(x, c8, "r2"), torch.rot90(x, 1, dims=(-2, -1)))


# --------------------------------------------------------------------------- rotate_images
@pytest.mark.parametrize("size", [7, 8])
def test_rotate_images_exact_at_multiples_of_90(size):
    x = torch.randn(8, 2, size, size)
    angles = torch.tensor([0.0, 90.0, 180.0, 270.0, 360.0, -90.0, 450.0, -180.0])
    out = rotate_images(x, angles)
    for i, a in enumerate(angles.tolist()):
        k = int(a // 90) % 4
        assert torch.equal(out[i], torch.rot90(x[i], k, dims=(-2, -1))), a


def test_rotate_images_mixed_batch_matches_apply_matrix():
    """Quarter turns exactly, other angles as apply_matrix does them; one angle per image."""
    x = torch.randn(5, 1, 11, 11)
    angles = [90.0, 30.0, 0.0, 200.0, -45.0]
    out = rotate_images(x, angles)
    for i, a in enumerate(angles):
        if a % 90 == 0:
            assert torch.equal(out[i], torch.rot90(x[i], int(a // 90) % 4, dims=(-2, -1)))
        else:
            assert torch.allclose(out[i], apply_matrix(x[i], rotation_matrix(a)), atol=1e-5), a


def test_rotate_images_needs_one_angle_per_image():
    with pytest.raises(ValueError, match="3 angles for 2 images"):
        rotate_images(torch.zeros(2, 1, 4, 4), torch.tensor([0.0, 1.0, 2.0]))


# --------------------------------------------------------------------------- random_angles
def test_random_angles_deterministic_per_seed_and_in_range():
    a, b, c = random_angles(1000, seed=3), random_angles(1000, seed=3), random_angles(1000, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (1000,) and a.dtype == torch.float64
    for t in (a, c):
        assert (t >= 0).all() and (t < 360).all()
    assert torch.equal(random_angles(10, seed=3), a[:10])  # prefix-stable
    # not degenerate: spread over the whole circle
    assert a.min() < 5 and a.max() > 355 and abs(a.mean().item() - 180) < 15


def test_random_angles_independent_of_global_rng():
    torch.manual_seed(0)
    a = random_angles(5, seed=1)
    torch.manual_seed(123)
    torch.rand(10)
    assert torch.equal(a, random_angles(5, seed=1))
