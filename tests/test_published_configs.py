"""Every committed config of a published system trains from the CLI, on both backends.

The configs under ``configs/`` hold the published protocols (10 to 100 epochs of MNIST or rotated
MNIST); here each runs as committed except for the budget — 64 training and 64 test images, one
epoch — through ``gcnnkit train``, on the native backend and, with ``--set model.backend=escnn``,
on escnn. The published numbers themselves are in ``docs/results.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import CONFIGS

from gcnnkit.cli import main
from gcnnkit.models.presets import get_preset
from gcnnkit.run.config import load_config

PUBLISHED = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name.startswith(("mnist_", "rotmnist_")))
BACKENDS = ["native", pytest.param("escnn", marks=pytest.mark.escnn)]


def test_every_published_preset_has_a_committed_config():
    presets = {yaml.safe_load((CONFIGS / name).read_text())["model"]["preset"] for name in PUBLISHED}
    published = {"gcnn-uva", "cnn-uva", "gcnn-posit", "cnn-posit", "z2cnn", "p4cnn", "c4cnn-gdl", "cnn-gdl"}
    published |= {"eqcnn", "simplecnn", "p4cnn-rotpool"}
    assert published <= presets, published - presets
    for name in presets:
        get_preset(name)


#: Each published protocol as its source has it (file and line in the config's comments and in
#: docs/results.md): epochs, batch, optimizer, lr, weight decay, schedule, augmentation (and its
#: range), normalisation, image size and how it is reached. All use the whole training and test set.
SOURCE_PROTOCOLS = {
    # UvA notebook In [30]-[36]: DataLoader(batch_size=64), AdamW(lr=1e-2, weight_decay=1e-4), max_epochs=10
    "mnist_uva_c4.yaml": (10, 64, "adamw", 1e-2, 1e-4, "none", "none", None, True, 28, "bilinear"),
    "mnist_uva_cnn.yaml": (10, 64, "adamw", 1e-2, 1e-4, "none", "none", None, True, 28, "bilinear"),
    # Posit post: dataloader(batch_size = 128), optim_adam(lr = 1e-2, weight_decay = 1e-4), 10 epochs, no Normalize
    "mnist_posit_c4.yaml": (10, 128, "adam", 1e-2, 1e-4, "none", "none", None, False, 28, "bilinear"),
    "mnist_posit_cnn.yaml": (10, 128, "adam", 1e-2, 1e-4, "none", "none", None, False, 28, "bilinear"),
    # gconv_experiments MNIST_ROT/experiment.py: Adam alpha 1e-3, batch 128, P4CNN 100 / Z2CNN 300 epochs,
    # 'rotation' augmentation = U(-π, π) passed to skimage as degrees
    "rotmnist_p4cnn.yaml": (100, 128, "adam", 1e-3, 0.0, "none", "rotate", 3.141592653589793, True, 28, "bilinear"),
    "rotmnist_z2cnn.yaml": (300, 128, "adam", 1e-3, 0.0, "none", "rotate", 3.141592653589793, True, 28, "bilinear"),
    # the same script, model_epochs['P4CNN_RP.py'] = 100
    "rotmnist_p4cnn_rotpool.yaml": (100, 128, "adam", 1e-3, 0.0, "none", "rotate", math.pi, True, 28, "bilinear"),
    # jipq6175 c4_convolution post: edge-pad (2, 3) to 33, ToTensor only, batch 64, AdamW(5e-5, 1e-5), 51 epochs
    "rotmnist_c4cnn_gdl.yaml": (51, 64, "adamw", 5e-5, 1e-5, "none", "none", None, False, 33, "pad"),
    "rotmnist_cnn_gdl.yaml": (51, 64, "adamw", 5e-5, 1e-5, "none", "none", None, False, 33, "pad"),
    # equivariant-tutorial simple-{cnn,eq}/torch/train.py: ToTensor only, batch 64, AdamW(lr=5e-4) (default wd 0.01)
    "mnist_eqcnn.yaml": (5, 64, "adamw", 5e-4, 0.01, "none", "none", None, False, 28, "bilinear"),
    "mnist_simplecnn.yaml": (5, 64, "adamw", 5e-4, 0.01, "none", "none", None, False, 28, "bilinear"),
}


def test_every_published_config_holds_its_sources_protocol():
    assert set(PUBLISHED) - set(SOURCE_PROTOCOLS) == {"mnist_c4.yaml", "mnist_cnn.yaml"}  # gcnnkit's own jobs
    for name, expected in SOURCE_PROTOCOLS.items():
        c = load_config(CONFIGS / name)
        t, d = c.train, c.data
        got = (t.epochs, t.batch_size, t.optimizer, t.lr, t.weight_decay, t.schedule, d.augment, d.augment_degrees)
        got += (d.normalise, d.image_size, d.resize)
        assert got == expected, name
        assert (d.train_size, d.test_size, t.label_smoothing, t.mixed_precision) == (None, None, 0.0, "none"), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", PUBLISHED)
def test_published_config_trains_from_the_cli(config, backend, mnist_root: Path, tmp_path: Path):
    if backend == "escnn":
        pytest.importorskip("escnn")
    out = tmp_path / "run"
    args = [
        "train",
        str(CONFIGS / config),
        "--set",
        f"data.root={mnist_root}",
        "--set",
        "data.train_size=64",
        "--set",
        "data.test_size=64",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=32",
        "--set",
        "eval.batch_size=64",
        "--set",
        "device=cpu",
        "--set",
        f"model.backend={backend}",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    committed = yaml.safe_load((CONFIGS / config).read_text())
    assert summary["backend"] == backend
    assert summary["preset"] == committed["model"]["preset"]
    assert summary["group"] == committed["model"]["group"]
    assert set(summary["accuracy"]) == set(committed["eval"]["protocols"])
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    assert summary["params"] > 0 and (out / "checkpoint.pt").is_file()
