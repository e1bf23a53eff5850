"""Shared fixtures and helpers for the config, data, training and CLI tests.

Nothing here is autouse: other test modules are unaffected.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
#: The shared data folder beside the repository (``../shared/data`` from the repo root).
SHARED_DATA = ROOT.parent / "shared" / "data"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: A digits job that trains in about a second per epoch on one CPU core.
TINY_CONFIG: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "model": {"backend": "native", "group": "C4", "preset": "gcnn-tiny"},
    "data": {"name": "digits", "train_size": 200, "test_size": 120},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01},
    "eval": {"protocols": ["upright", "rotated", "rot90"], "batch_size": 60},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in, one level of sections deep."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def assert_user_error(result, *parts: str) -> None:
    """A click result with exit 2 and one ``error: ...`` line on stderr naming ``parts``, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def console_script() -> str:
    """Path of the installed ``gcnnkit`` console script (fails the test when it is not installed)."""
    script = Path(sys.executable).parent / "gcnnkit"
    found = str(script) if script.exists() else shutil.which("gcnnkit")
    if found is None:
        pytest.fail("the gcnnkit console script is not installed (pip install -e .)")
    return found


@pytest.fixture
def mnist_root() -> Path:
    """``../shared/data`` when it holds MNIST/raw; skips the test otherwise."""
    raw = SHARED_DATA / "MNIST" / "raw"
    if not all((raw / name).is_file() for name in MNIST_FILES):
        pytest.skip(f"MNIST is not in {raw}")
    return SHARED_DATA


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """``write_config(mapping_or_text, name="tiny.yaml")`` → path of a YAML file in ``tmp_path``."""

    def write(content: dict[str, Any] | str, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
        return path

    return write


@pytest.fixture
def tiny_config(write_config) -> Path:
    """A YAML file with :data:`TINY_CONFIG`."""
    return write_config(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-epoch :data:`TINY_CONFIG` run, trained once per session. Copy it before changing it."""
    from gcnnkit.run.config import Config
    from gcnnkit.run.training import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(Config.from_dict(TINY_CONFIG), out_dir=run_dir, log=None)
    return run_dir


@pytest.fixture
def tiny_run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`tiny_run` that a test may modify."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))
