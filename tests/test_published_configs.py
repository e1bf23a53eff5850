"""Every committed config of a published system trains from the CLI, on both backends.

The configs under ``configs/`` hold the published protocols (10 to 100 epochs of MNIST or rotated
MNIST); here each runs as committed except for the budget — 64 training and 64 test images, one
epoch — through ``gcnnkit train``, on the native backend and, with ``--set model.backend=escnn``,
on escnn. The published numbers themselves are in ``docs/results.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import CONFIGS

from gcnnkit.cli import main
from gcnnkit.models.presets import get_preset

PUBLISHED = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name.startswith(("mnist_", "rotmnist_")))
BACKENDS = ["native", pytest.param("escnn", marks=pytest.mark.escnn)]


def test_every_published_preset_has_a_committed_config():
    presets = {yaml.safe_load((CONFIGS / name).read_text())["model"]["preset"] for name in PUBLISHED}
    published = {"gcnn-uva", "cnn-uva", "gcnn-posit", "cnn-posit", "z2cnn", "p4cnn", "c4cnn-gdl", "cnn-gdl"}
    published |= {"eqcnn", "simplecnn"}
    assert published <= presets, published - presets
    for name in presets:
        get_preset(name)


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
