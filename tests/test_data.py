"""Data sets, augmentation and test-time protocols."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.core.errors import DataError
from gcnnkit.core.transforms import random_angles, rotate_images
from gcnnkit.run.config import Config, DataConfig
from gcnnkit.run.data import (
    Split,
    apply_protocol,
    augment_batch,
    canonical_name,
    dataset_info,
    load_dataset,
    normalise,
    protocol_batches,
)


def data_config(**changes) -> DataConfig:
    return Config.from_dict({"data": changes}).data


@pytest.fixture(scope="module")
def digits():
    return load_dataset(data_config(), seed=0)


def d4_images(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of ``x`` ``[..., H, W]`` under D4."""
    return [torch.rot90(x.flip(-1) if f else x, k, dims=(-2, -1)) for f in (0, 1) for k in range(4)]


# --------------------------------------------------------------------------------- digits
def test_digits_shapes_range_and_padding(digits):
    assert digits.info.image_shape == (1, 17, 17) and digits.info.num_classes == 10
    assert digits.train.images.shape == (1437, 1, 17, 17) and digits.test.images.shape == (360, 1, 17, 17)
    assert digits.train.images.dtype == torch.float32 and digits.train.labels.dtype == torch.int64
    for split in (digits.train, digits.test):
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        border = torch.ones(17, 17, dtype=torch.bool)
        border[2:-2, 2:-2] = False
        assert split.images[..., border].abs().max() == 0  # 2 pixels of zero padding to rotate into
        assert split.images.amax(dim=(1, 2, 3)).min() > 0.5  # every digit has ink


def test_digits_split_is_stratified_fixed_and_disjoint(digits):
    counts = torch.bincount(digits.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20 % of ~180 per class
    other_seed = load_dataset(data_config(), seed=7)
    assert torch.equal(other_seed.test.images, digits.test.images)  # test set independent of run seed
    train = {tuple(x.flatten().tolist()) for x in digits.train.images}
    assert not any(tuple(x.flatten().tolist()) in train for x in digits.test.images)


def test_digits_image_size_and_subsets():
    data = load_dataset(data_config(image_size=21, train_size=100, test_size=50), seed=3)
    assert data.train.images.shape == (100, 1, 21, 21) and data.test.images.shape == (50, 1, 21, 21)
    again = load_dataset(data_config(image_size=21, train_size=100, test_size=50), seed=3)
    other = load_dataset(data_config(image_size=21, train_size=100, test_size=50), seed=4)
    assert torch.equal(again.train.images, data.train.images)  # deterministic from the seed
    assert not torch.equal(other.train.images, data.train.images)
    assert torch.equal(other.test.images, data.test.images)  # test subset does not depend on the seed


def test_subset_larger_than_the_split_is_an_error():
    with pytest.raises(DataError, match=r"^data\.train_size: 5000 is more than the 1437 images available"):
        load_dataset(data_config(train_size=5000))


def test_normalisation_uses_train_statistics(digits):
    x = normalise(digits.train.images, digits.mean, digits.std)
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(digits.normalise(digits.test.images), normalise(digits.test.images, digits.mean, digits.std))


# ---------------------------------------------------------------------- names and shapes
@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("digits", None, ("digits", 1, 17, 10)),
        ("mnist", None, ("MNIST", 1, 28, 10)),
        ("FashionMNIST", 32, ("FashionMNIST", 1, 32, 10)),
        ("cifar10", None, ("CIFAR10", 3, 32, 10)),
        ("CIFAR100", None, ("CIFAR100", 3, 32, 100)),
        ("svhn", None, ("SVHN", 3, 32, 10)),
    ],
)
def test_dataset_info_without_loading(name, size, expected):
    info = dataset_info(data_config(name=name, image_size=size, root="/nonexistent"))
    assert (info.name, info.in_channels, info.image_size, info.num_classes) == expected


def test_unknown_dataset_lists_supported_names():
    with pytest.raises(DataError) as info:
        canonical_name("ImageNet")
    assert str(info.value).startswith("data.name: 'ImageNet' is not a supported data set; allowed: digits, MNIST,")
    assert "CIFAR10" in str(info.value) and "SVHN" in str(info.value)


@pytest.mark.parametrize("name", ["MNIST", "CIFAR10", "SVHN"])
def test_missing_files_give_one_line_without_torchvision_traceback(tmp_path, name):
    with pytest.raises(DataError) as info:
        load_dataset(data_config(name=name, root=str(tmp_path / "x")))
    message = str(info.value)
    assert message.startswith(f"data.root: no {name} data under '{tmp_path / 'x'}' (download: false); ")
    assert "set data.download: true" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_mnist_from_shared_data(mnist_root):
    data = load_dataset(data_config(name="mnist", root=str(mnist_root), test_size=500, train_size=2000), seed=0)
    assert data.info.image_shape == (1, 28, 28)
    assert data.train.images.shape == (2000, 1, 28, 28) and data.test.images.shape == (500, 1, 28, 28)
    assert 0.0 <= data.train.images.min() and data.train.images.max() <= 1.0
    assert data.mean.item() == pytest.approx(0.1307, abs=0.01)  # MNIST's well-known statistics
    assert data.std.item() == pytest.approx(0.3081, abs=0.01)
    assert set(data.test.labels.tolist()) == set(range(10))


def test_mnist_resized(mnist_root):
    data = load_dataset(data_config(name="MNIST", root=str(mnist_root), image_size=29, train_size=64, test_size=64))
    assert data.train.images.shape == (64, 1, 29, 29)
    assert 0.0 <= data.train.images.min() and data.train.images.max() <= 1.0


def test_mnist_padded_keeps_the_digits_and_pads_with_their_edge(mnist_root):
    """``resize: pad`` (the GDL C4CNN write-up's ``np.pad(..., (2, 3), mode="edge")``): 28 → 33."""
    sizes = {"root": str(mnist_root), "train_size": 64, "test_size": 64}
    plain = load_dataset(data_config(name="MNIST", **sizes), seed=0)
    padded = load_dataset(data_config(name="MNIST", image_size=33, resize="pad", **sizes), seed=0)
    for a, b in ((plain.train, padded.train), (plain.test, padded.test)):
        assert b.images.shape == (64, 1, 33, 33) and torch.equal(a.labels, b.labels)
        assert torch.equal(b.images[..., 2:30, 2:30], a.images)  # 2 before, 3 after, same scale
        assert torch.equal(b.images[..., 2:30, :2], a.images[..., :, :1].expand(-1, -1, -1, 2))  # edge copies
        assert torch.equal(b.images[..., 30:, 2:30], a.images[..., -1:, :].expand(-1, -1, 3, -1))
    with pytest.raises(DataError, match="data.resize: pad cannot shrink 28×28 images to image_size 20"):
        load_dataset(data_config(name="MNIST", image_size=20, resize="pad", **sizes))


def test_normalise_false_feeds_the_pixels_unchanged(mnist_root):
    data = load_dataset(data_config(name="MNIST", root=str(mnist_root), normalise=False, train_size=64, test_size=64))
    assert torch.equal(data.mean, torch.zeros(1)) and torch.equal(data.std, torch.ones(1))
    assert torch.equal(data.normalise(data.train.images), data.train.images)


# -------------------------------------------------------------------------------- protocols
@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 2, 9, 9, generator=torch.Generator().manual_seed(0))


def test_exact_protocols(images):
    assert torch.equal(apply_protocol(images, "upright"), images)
    assert torch.equal(apply_protocol(images, "rot90"), torch.rot90(images, 1, dims=(2, 3)))
    assert torch.equal(apply_protocol(images, "rot180"), images.flip(2).flip(3))
    assert torch.equal(apply_protocol(images, "rot270"), torch.rot90(images, -1, dims=(2, 3)))
    assert torch.equal(apply_protocol(images, "flip"), images[..., torch.arange(8, -1, -1)])


def test_rotated_protocol_turns_each_image_by_its_angle(images):
    angles = torch.tensor([0.0, 90.0, 180.0, 30.0, 45.0, 359.0])
    out = apply_protocol(images, "rotated", angles)
    assert torch.equal(out[1], torch.rot90(images[1], 1, dims=(1, 2)))
    assert torch.equal(out[2], torch.rot90(images[2], 2, dims=(1, 2)))
    assert not torch.allclose(out[3], images[3])
    assert out[4, :, 4, 4].tolist() == pytest.approx(images[4, :, 4, 4].tolist(), abs=1e-6)  # the centre stays
    with pytest.raises(ValueError, match="needs one angle per image"):
        apply_protocol(images, "rotated")


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    batch_a=st.integers(min_value=1, max_value=50),
    batch_b=st.integers(min_value=1, max_value=50),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_rotated_protocol_is_deterministic_and_independent_of_batching(n, batch_a, batch_b, seed):
    gen = torch.Generator().manual_seed(n)
    split = Split(torch.rand(n, 1, 7, 7, generator=gen), torch.arange(n))
    a = [x for x, _ in protocol_batches(split, "rotated", seed, batch_a)]
    b = [x for x, _ in protocol_batches(split, "rotated", seed, batch_b)]
    labels = torch.cat([y for _, y in protocol_batches(split, "rotated", seed, batch_a)])
    assert torch.equal(torch.cat(a), torch.cat(b))
    assert torch.equal(labels, split.labels)  # order kept
    expected = apply_protocol(split.images, "rotated", random_angles(n, seed))
    assert torch.equal(torch.cat(a), expected)


def test_rotated_protocol_changes_with_the_seed():
    split = Split(torch.rand(8, 1, 9, 9, generator=torch.Generator().manual_seed(1)), torch.zeros(8, dtype=torch.long))
    a = torch.cat([x for x, _ in protocol_batches(split, "rotated", 1, 8)])
    b = torch.cat([x for x, _ in protocol_batches(split, "rotated", 2, 8)])
    assert not torch.allclose(a, b)


def test_unknown_protocol(images):
    with pytest.raises(ValueError, match="unknown protocol 'sideways'"):
        apply_protocol(images, "sideways")


# ------------------------------------------------------------------------------ augmentation
@pytest.mark.parametrize(("mode", "group_size"), [("rot90", 4), ("flip", 8)])
def test_exact_augmentations_apply_a_group_element_per_image(images, mode, group_size):
    out = augment_batch(images, mode, torch.Generator().manual_seed(0))
    used = set()
    for x, y in zip(images, out, strict=True):
        matches = [i for i, t in enumerate(d4_images(x)) if torch.equal(t, y)]
        assert matches and matches[0] < group_size
        used.add(matches[0])
    assert len(used) > 1  # random, not a constant transform


def test_rotate_augmentation_is_random_but_reproducible(images):
    a = augment_batch(images, "rotate", torch.Generator().manual_seed(5))
    b = augment_batch(images, "rotate", torch.Generator().manual_seed(5))
    c = augment_batch(images, "rotate", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == images.shape


def test_rotate_augmentation_within_augment_degrees(images):
    """``augment_degrees: d``: angle uniform in [−d, d] (Cohen & Welling's released code: ±π degrees)."""
    out = augment_batch(images, "rotate", torch.Generator().manual_seed(5), max_degrees=3.0)
    u = torch.rand(len(images), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    angles = (2.0 * u - 1.0) * 3.0
    assert angles.abs().max() <= 3.0 and (angles < 0).any() and (angles > 0).any()
    assert torch.equal(out, rotate_images(images, angles))
    full = augment_batch(images, "rotate", torch.Generator().manual_seed(5))  # the default is unchanged
    assert torch.equal(full, rotate_images(images, u * 360.0))


def test_no_augmentation_is_identity(images):
    assert augment_batch(images, "none", torch.Generator()) is images
