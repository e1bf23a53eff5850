"""The rotated-MNIST data set (``rotmnist``): the documented reconstruction from MNIST, its
determinism and split sizes, and the reader of the original ``.amat`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gcnnkit.core.errors import DataError
from gcnnkit.core.transforms import rotate_images
from gcnnkit.run.config import Config
from gcnnkit.run.data import (
    ROTMNIST_AMAT,
    ROTMNIST_SEED,
    Split,
    dataset_info,
    load_dataset,
    read_amat,
    reconstruct_rotmnist,
    rotmnist_amat_files,
)


def data_config(**changes):
    return Config.from_dict({"data": {"name": "rotmnist", **changes}}).data


def fake_mnist(n: int, seed: int) -> Split:
    """``n`` random 28×28 'digits' whose label is their index mod 10 (and whose pixel [0, 0] is the index)."""
    images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    images[:, 0, 13:15, 13:15] = 1.0
    return Split(images, torch.arange(n) % 10)


@pytest.fixture(scope="module")
def pool() -> tuple[Split, Split]:
    return fake_mnist(60, 0), fake_mnist(15, 1)


def test_reconstruction_follows_the_documented_recipe(pool):
    train, test = reconstruct_rotmnist(*pool, seed=5, sizes=(20, 30))
    assert train.images.shape == (20, 1, 28, 28) and test.images.shape == (30, 1, 28, 28)
    all_x = torch.cat([pool[0].images, pool[1].images])
    all_y = torch.cat([pool[0].labels, pool[1].labels])
    gen = torch.Generator().manual_seed(5)
    order = torch.randperm(75, generator=gen)[:50]
    angles = torch.rand(50, generator=gen, dtype=torch.float64) * 360.0
    expected = rotate_images(all_x[order], angles).clamp(0, 1)
    assert torch.equal(torch.cat([train.images, test.images]), expected)
    assert torch.equal(torch.cat([train.labels, test.labels]), all_y[order])
    assert len(set(order[:20].tolist()) & set(order[20:].tolist())) == 0  # disjoint splits


def test_reconstructing_a_subset_gives_the_whole_sets_images_at_its_indices(pool):
    full_train, full_test = reconstruct_rotmnist(*pool, seed=5, sizes=(20, 30))
    keep = (torch.tensor([0, 3, 19]), torch.tensor([2, 7, 29]))
    train, test = reconstruct_rotmnist(*pool, seed=5, sizes=(20, 30), keep=keep)
    for part, full, idx in ((train, full_train, keep[0]), (test, full_test, keep[1])):
        assert torch.equal(part.images, full.images[idx]) and torch.equal(part.labels, full.labels[idx])
    train, test = reconstruct_rotmnist(*pool, seed=5, sizes=(20, 30), keep=(None, torch.tensor([4])))
    assert torch.equal(train.images, full_train.images) and torch.equal(test.images, full_test.images[4:5])


def test_reconstruction_is_deterministic_and_changes_with_the_seed(pool):
    a = reconstruct_rotmnist(*pool, sizes=(10, 10))
    b = reconstruct_rotmnist(*pool, sizes=(10, 10))
    c = reconstruct_rotmnist(*pool, seed=ROTMNIST_SEED + 1, sizes=(10, 10))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert not torch.equal(a[0].images, c[0].images)


def test_reconstruction_needs_enough_images(pool):
    with pytest.raises(DataError, match="MNIST has 75"):
        reconstruct_rotmnist(*pool, sizes=(50, 50))


def test_rotmnist_info_without_loading():
    info = dataset_info(data_config())
    assert (info.name, info.in_channels, info.image_size, info.num_classes) == ("rotmnist", 1, 28, 10)
    assert Config.from_dict({"data": {"name": "RotMNIST"}}).data.name == "rotmnist"


def test_rotmnist_from_shared_mnist(mnist_root):
    data = load_dataset(data_config(root=str(mnist_root)), seed=3)
    assert len(data.train) == 12_000 and len(data.test) == 50_000
    assert data.source == f"reconstructed from MNIST (seed {ROTMNIST_SEED})"
    assert data.train.images.shape[1:] == (1, 28, 28)
    assert 0.0 <= data.test.images.min() and data.test.images.max() <= 1.0
    assert set(data.test.labels.tolist()) == set(range(10))
    # fixed, documented content: the first training digit and the class balance of the test set
    assert data.train.labels[:10].tolist() == [2, 7, 2, 3, 6, 0, 8, 1, 8, 7]
    assert data.test.labels.bincount().min() > 4000
    assert data.mean.item() == pytest.approx(0.13, abs=0.01)  # rotation keeps MNIST's mean intensity
    # pinned images (pixel sums), as reconstructed before subsets were rebuilt alone
    for split, idx, sums in (
        (data.train, [0, 1, 5000, 11999], [181.5409628385, 117.2422173689, 100.4236802141, 93.4563667357]),
        (data.test, [0, 25000, 49999], [43.7451458090, 107.7332167206, 117.3690484389]),
    ):
        assert split.images[idx].double().sum(dim=(1, 2, 3)).tolist() == pytest.approx(sums, rel=1e-6)
    # a subset is the whole set's images at the subset's indices, to the bit
    part = load_dataset(data_config(root=str(mnist_root), train_size=100, test_size=50), seed=3)
    for split, full, seed in ((part.train, data.train, 3), (part.test, data.test, 0)):
        idx = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))[: len(split)].sort().values
        assert torch.equal(split.images, full.images[idx]) and torch.equal(split.labels, full.labels[idx])


def test_rotmnist_subsets_rotate_only_the_images_they_keep(mnist_root, monkeypatch):
    import gcnnkit.run.data.builtin as data_module  # where the rotated-MNIST reconstruction rotates

    rotated = []

    def counting(x, angles):
        rotated.append(len(x))
        return rotate_images(x, angles)

    monkeypatch.setattr(data_module, "rotate_images", counting)
    data = load_dataset(data_config(root=str(mnist_root), train_size=100, test_size=50), seed=0)
    assert len(data.train) == 100 and len(data.test) == 50
    assert sum(rotated) == 150
    with pytest.raises(DataError, match="data.train_size: 12001 is more than the 12000 images available"):
        load_dataset(data_config(root=str(mnist_root), train_size=12_001), seed=0)


def test_missing_mnist_names_both_sources(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(data_config(root=str(tmp_path)))
    message = str(info.value)
    assert "no MNIST data under" in message and ROTMNIST_AMAT["train"] in message and "\n" not in message


# ----------------------------------------------------------------------------- .amat files
def write_amat(path: Path, n: int, seed: int = 0, columns: int = 785) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.random((n, columns - 1))
    labels = np.arange(n) % 10
    with open(path, "w", encoding="ascii") as f:
        for row, label in zip(pixels, labels, strict=True):
            f.write("  ".join(f"{v:.7e}" for v in row) + f"  {label:.7e}\n")
    return pixels, labels


def test_read_amat_parses_pixels_row_by_row_and_labels(tmp_path):
    pixels, labels = write_amat(tmp_path / "x.amat", 3)
    split = read_amat(tmp_path / "x.amat")
    assert split.images.shape == (3, 1, 28, 28) and split.images.dtype == torch.float32
    assert split.labels.tolist() == labels.tolist() and split.labels.dtype == torch.int64
    assert torch.allclose(split.images[1, 0, 2, 5], torch.tensor(pixels[1, 2 * 28 + 5], dtype=torch.float32))


def test_read_amat_rejects_malformed_files(tmp_path):
    write_amat(tmp_path / "short.amat", 2, columns=100)
    with pytest.raises(DataError, match="has 100 columns per line, expected 785"):
        read_amat(tmp_path / "short.amat")
    (tmp_path / "text.amat").write_text("a b c\n", encoding="ascii")
    with pytest.raises(DataError, match="cannot read"):
        read_amat(tmp_path / "text.amat")
    rows = np.zeros((1, 785))
    rows[0, -1] = 12
    np.savetxt(tmp_path / "labels.amat", rows)
    with pytest.raises(DataError, match="labels 0-9"):
        read_amat(tmp_path / "labels.amat")


@pytest.mark.parametrize("subfolder", ["", "mnist_rotation_new"])
def test_rotmnist_reads_the_original_files_when_data_root_has_them(tmp_path, subfolder):
    folder = tmp_path / subfolder
    folder.mkdir(exist_ok=True)
    assert rotmnist_amat_files(tmp_path) is None
    write_amat(folder / ROTMNIST_AMAT["train"], 12, seed=1)
    assert rotmnist_amat_files(tmp_path) is None  # both files are needed
    write_amat(folder / ROTMNIST_AMAT["test"], 5, seed=2)
    assert rotmnist_amat_files(tmp_path) == {s: str(folder / name) for s, name in ROTMNIST_AMAT.items()}
    data = load_dataset(data_config(root=str(tmp_path)))
    assert len(data.train) == 12 and len(data.test) == 5
    assert data.source.startswith("MNIST-rot .amat files in")
    assert torch.equal(data.test.images, read_amat(folder / ROTMNIST_AMAT["test"]).images)
