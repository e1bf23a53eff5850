"""The example backend plugin of ``docs/backend-plugins.md`` (``docs/examples/gcnnkit-loops``): shown
verbatim, installed with pip the way the page says (into a temporary ``--target`` folder, built from
a temporary copy so that the repository gets no ``build/`` or ``*.egg-info``), listed by ``gcnnkit
plugins``, trained for a step, conformant, and gone again once removed."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CONFIG, merge

from gcnnkit.core.errors import PluginError
from gcnnkit.core.registry import AUTOLOAD_ENV, REGISTRY, get_backend, group_names
from gcnnkit.run.config import Config
from gcnnkit.run.training import train
from gcnnkit.testing import assert_backend_conforms

ROOT = Path(__file__).resolve().parents[1]
LOOPS_SRC = ROOT / "docs" / "examples" / "gcnnkit-loops"
DOCS_PAGE = ROOT / "docs" / "backend-plugins.md"
EXAMPLE_FILES = ["gcnnkit_loops.py", "pyproject.toml"]


@pytest.fixture(scope="session")
def loops_site(tmp_path_factory) -> Path:
    """``docs/examples/gcnnkit-loops`` built and installed by pip into a temporary target folder."""
    work = tmp_path_factory.mktemp("loops")
    source = Path(shutil.copytree(LOOPS_SRC, work / "src"))  # build outside the repository
    site = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-compile"]
    command += ["--disable-pip-version-check", "--no-input", "--quiet", "--target", str(site), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip install of the docs backend failed:\n{result.stdout}\n{result.stderr}"
    assert sorted(p.name for p in LOOPS_SRC.iterdir()) == EXAMPLE_FILES  # nothing was written into the repo
    yield site
    shutil.rmtree(work, ignore_errors=True)  # uninstall: nothing was written outside this folder


@pytest.fixture
def loops(loops_site, monkeypatch) -> Path:
    """The installed plugin on ``sys.path`` for one test; removed (and forgotten) afterwards."""
    monkeypatch.syspath_prepend(str(loops_site))
    REGISTRY.refresh()
    yield loops_site
    monkeypatch.undo()
    sys.modules.pop("gcnnkit_loops", None)
    REGISTRY.refresh()
    with pytest.raises(PluginError, match=r"unknown backend 'loops'"):
        get_backend("loops")  # other tests are unaffected


def test_the_example_is_short_and_shown_verbatim():
    files = sorted(p for p in LOOPS_SRC.rglob("*") if p.is_file())
    assert [p.name for p in files] == EXAMPLE_FILES
    assert 60 <= len((LOOPS_SRC / "gcnnkit_loops.py").read_text().splitlines()) <= 120
    page = DOCS_PAGE.read_text()
    for path in files:
        assert path.read_text().strip() in page, f"docs/backend-plugins.md must show {path.name} verbatim"


def test_installing_and_removing_the_example_shows_in_gcnnkit_plugins(loops_site):
    """A fresh process (what `gcnnkit plugins` is) lists the backend while it is installed, not after."""
    script = "import sys; from gcnnkit.cli import main; sys.argv = ['gcnnkit', 'plugins', '--json']; main()"

    def backends(extra_path: Path | None) -> dict[str, dict]:
        env = dict(os.environ)
        env.pop(AUTOLOAD_ENV, None)
        if extra_path is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        return {b["name"]: b for b in json.loads(result.stdout)["backends"]}

    installed = backends(loops_site)
    loops = installed["loops"]
    assert (loops["distribution"], loops["version"], loops["error"]) == ("gcnnkit-loops", "0.1.0", None)
    assert loops["target"] == "gcnnkit_loops:LoopsBackend" and installed["native"]["error"] is None
    assert "loops" not in backends(None)


def test_a_preset_trains_on_the_example_backend(loops, tmp_path):
    config = merge(
        TINY_CONFIG,
        {
            "model": {"backend": "loops", "group": "D4", "preset": "gcnn-tiny"},
            "data": {"name": "digits", "train_size": 32, "test_size": 30},
            "train": {"epochs": 1, "batch_size": 32},  # one optimizer step
            "eval": {"protocols": ["rot90"], "batch_size": 30},
        },
    )
    summary = train(Config.from_dict(config), out_dir=tmp_path / "run", log=None)
    assert (summary.backend, summary.group, summary.epochs) == ("loops", "D4", 1)
    assert math.isfinite(summary.train_loss) and summary.params > 0
    assert summary.versions["gcnnkit-loops"] == "0.1.0"  # the run records the plugin it ran on


def test_the_example_backend_conforms(loops):
    report = assert_backend_conforms("loops")
    assert report.groups == ["C1", "C2", "C4", "D1", "D2", "D4"]
    if "C8" in group_names():  # gcnnkit-rotations: 45° rotations are no rot90/flip, so it is skipped
        assert report.skipped == {"C8": "it rotates filters with rot90/flip only, and some elements are not "
                                  "multiples of 90°"}  # fmt: skip
    assert report.worst("transfer_residual") == 0.0  # it stores the transfer format
