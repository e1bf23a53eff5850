"""The repository's promises: CI runs the README's test command, the docs build, the import rules hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, flags=re.S)


def test_readme_starts_with_two_commands():
    blocks = _readme_commands()
    assert len(blocks) >= 2, "README must start with an install-and-train and an install-and-test command"
    install_and_train, install_and_test = blocks[0].strip(), blocks[1].strip()
    assert "pip install" in install_and_train and "gcnnkit train" in install_and_train
    assert "pip install" in install_and_test and "pytest" in install_and_test


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _readme_commands()[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_docs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_rules_hold():
    """The contracts in pyproject.toml ([tool.importlinter]): layers, no plugin imported by gcnnkit,
    plugins on gcnnkit.core only and independent of each other."""
    pytest.importorskip("importlinter")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]
        + ["--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_test_modules_have_unique_names(pytestconfig):
    """pytest imports a test module (and a helper beside it) by its file name, so ``tests/`` and every
    ``plugins/*/tests/`` in ``testpaths`` must not share one (``conftest.py`` files are told apart)."""
    folders = [folder for pattern in pytestconfig.getini("testpaths") for folder in ROOT.glob(pattern)]
    assert ROOT / "tests" in folders and ROOT / "plugins" / "gcnnkit-rotations" / "tests" in folders
    modules = [p for folder in folders for p in folder.rglob("*.py") if p.name != "conftest.py"]
    names = [p.name for p in modules]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
