"""The CIFAR-10 configs of Cohen & Welling (2016) §8.2 train end to end, and the rotated-MNIST
P4CNNRotationPooling config holds its source's protocol.

CIFAR-10 cannot be downloaded here, so a fixture writes a stand-in in torchvision's on-disk
format (``cifar-10-batches-py``: pickled ``data_batch_1..5``, ``test_batch``, ``batches.meta``):
32×32 RGB images made from scikit-learn's bundled 8×8 digits (upscaled, tinted per class),
with their md5 sums registered in place of the real ones, so the committed configs run through
the real loading code (torchvision's ``CIFAR10`` with ``download: false``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from conftest import CONFIGS

from gcnnkit.cli import main
from gcnnkit.run.config import load_config

CIFAR_CONFIGS = sorted(p.name for p in CONFIGS.glob("cifar10_*.yaml"))
EXPECTED = {
    "cifar10_allcnnc_z2.yaml": ("allcnnc-z2", "C1"),
    "cifar10_allcnnc_p4.yaml": ("allcnnc-p4", "C4"),
    "cifar10_allcnnc_p4m.yaml": ("allcnnc-p4m", "D4"),
    "cifar10_resnet44_z2.yaml": ("resnet44-z2", "C1"),
    "cifar10_resnet44_p4m.yaml": ("resnet44-p4m", "D4"),
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fake_cifar_root(tmp_path_factory) -> Path:
    """A CIFAR-10 stand-in: 5 training batches of 20 and a test batch of 20 digit images, 32×32 RGB uint8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:120], dtype=torch.float32).unsqueeze(1) / 16.0  # [120, 1, 8, 8]
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    labels = digits.target[:120].tolist()
    tint = torch.rand(10, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.7 + 0.3
    rgb = images * tint[torch.tensor(labels)]  # [120, 3, 32, 32], a colour per class
    data = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).reshape(120, 3 * 32 * 32).numpy()
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch = {"data": np.ascontiguousarray(data[20 * i : 20 * (i + 1)]), "labels": labels[20 * i : 20 * (i + 1)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [str(c) for c in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


@pytest.fixture
def fake_cifar(fake_cifar_root: Path, monkeypatch) -> Path:
    """Register the stand-in's md5 sums with torchvision, so its integrity check passes."""
    torchvision = pytest.importorskip("torchvision")
    cls = torchvision.datasets.CIFAR10
    folder = fake_cifar_root / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
    return fake_cifar_root


def test_every_cifar_preset_has_a_committed_config_with_the_published_protocol():
    assert CIFAR_CONFIGS == sorted(EXPECTED)
    for name, (preset, group) in EXPECTED.items():
        c = load_config(CONFIGS / name)
        assert (c.model.preset, c.model.group, c.model.backend) == (preset, group, "native")
        assert (c.data.name, c.data.download, c.data.image_size, c.data.resize, c.data.augment) == (
            "CIFAR10",
            True,
            33,
            "pad",
            "none",
        )
        # gconv_experiments CIFAR10/train.py defaults (the README's command): MomentumSGD (Chainer lr 0.01,
        # momentum 0.9), batch 128, weight decay 0.001, 100 epochs, no lr decay
        t = c.train
        assert (t.epochs, t.batch_size, t.optimizer, t.lr, t.momentum, t.weight_decay, t.schedule) == (
            100,
            128,
            "sgd",
            0.01,
            0.9,
            0.001,
            "none",
        )
        assert (c.data.train_size, c.data.test_size, t.mixed_precision) == (None, None, "none")


def test_the_cifar_configs_refuse_to_train_without_the_download(tmp_path: Path):
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(CONFIGS / "cifar10_allcnnc_p4.yaml"),
            "--set",
            f"data.root={tmp_path}",
            "--set",
            "data.download=false",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "no CIFAR10 data under" in result.output and "Traceback" not in result.output


def _train(config: str, root: Path, out: Path, *extra: str):
    args = ["train", str(CONFIGS / config), "--set", f"data.root={root}", "--set", "data.download=false"]
    for setting in ("data.train_size=16", "data.test_size=16", "train.epochs=1", "train.batch_size=16"):
        args += ["--set", setting]
    args += ["--set", "eval.batch_size=16", "--set", "device=cpu", *extra, "--out", str(out)]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(
    "config",
    [
        "cifar10_allcnnc_z2.yaml",
        pytest.param("cifar10_allcnnc_p4.yaml", marks=pytest.mark.slow),
        pytest.param("cifar10_allcnnc_p4m.yaml", marks=pytest.mark.slow),
        pytest.param("cifar10_resnet44_z2.yaml", marks=pytest.mark.slow),
        pytest.param("cifar10_resnet44_p4m.yaml", marks=pytest.mark.slow),
    ],
)
def test_cifar_config_trains_end_to_end_on_a_stand_in(config, fake_cifar: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = _train(config, fake_cifar, out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    committed = yaml.safe_load((CONFIGS / config).read_text())
    assert (summary["preset"], summary["group"]) == (committed["model"]["preset"], committed["model"]["group"])
    assert set(summary["accuracy"]) == set(committed["eval"]["protocols"])
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    assert (out / "checkpoint.pt").is_file()
    if committed["model"]["group"] != "C1":  # exactly invariant: the rot90 accuracy is the upright one
        assert summary["accuracy"]["rot90"] == pytest.approx(summary["accuracy"]["upright"])
