"""Docs that run: every fenced code block of README.md and docs/**/*.md is a test.

Where blocks run
    Each page gets a scratch folder: ``repo/``, a copy of the repository (without .git, .venv,
    runs/, caches), the working directory of every block, so a verbatim command never touches a
    committed file; ``shared`` → ``../shared`` beside the repository, so ``../shared/data``
    resolves as it does from the repository root; ``venv/``, a throwaway virtual environment
    layered over the one running the tests (it sees everything installed there) and first on
    ``PATH`` (``python``, ``pip``, ``gcnnkit``, ``torchrun`` are its own), so ``pip install`` and
    ``pip uninstall`` in a page change only it; ``TMPDIR`` is inside the folder too. The blocks of
    a page run in page order in that folder, each in a new process, and a block may use what an
    earlier one wrote. Selecting one block (``-k``) first runs the page's blocks before it.
    A block that changes or deletes a file of the copy, or adds one under docs/, fails: run
    verbatim in a checkout, it would have done that to the repository.

What a block does, by its language
    ``bash``/``sh``: one bash script (``set -eo pipefail``), must exit 0.
    ``console``, or an unlabelled block whose lines start with ``$ ``: every ``$ command`` runs
    on its own; the lines up to the next ``$ `` are its output (stdout and stderr together) and are
    compared with what it prints (see :func:`output_mismatch`: ``...`` stands for any lines,
    durations such as ``3.5s`` are not compared, decimals agree to 1e-3, numbers in e-notation to
    a factor of 10, everything else exactly). The exit status must be 0, or 2 when the output
    starts with ``error:`` or ``Usage:`` (a user error), or 130 after ``sigint-after``.
    ``python``: run with the interpreter; a top-level expression line ending in ``# True`` is
    asserted to be true.
    ``yaml``: a config: loaded with ``gcnnkit.run.config.load_config`` and its model built.
    Other languages (toml, json) and unlabelled blocks without ``$ `` are text (formulas, file
    listings, messages, signatures) and are not run, unless a marker says what to check.

Markers: HTML comments (invisible on the rendered page), one per line, directly above a fence
    ``<!-- docs-test: skip REASON -->``     not run; reported as skipped with the reason
    ``<!-- docs-test: ci -->``              run by ``.ci/run`` itself; checked: it is there verbatim
    ``<!-- docs-test: slow -->``            runs only with ``pytest -m slow``
    ``<!-- docs-test: cuda -->``            needs a CUDA device: skipped without one
    ``<!-- docs-test: append ARGS -->``     ARGS appended to every command of the block that starts
                                            with ``gcnnkit``, ``python`` or ``torchrun`` (shrinks
                                            a long run; visible in the page's source)
    ``<!-- docs-test: save PATH -->``       the block is also written to PATH (in ``repo/``)
    ``<!-- docs-test: fragment REASON -->`` yaml that is part of a config: only parsed
    ``<!-- docs-test: file PATH -->``       the block is the file PATH (relative to ``repo/``), as
                                            written by earlier blocks or committed: yaml and json
                                            compared as data (numbers as in output), code exactly
    ``<!-- docs-test: ignore KEY,... -->``  with ``file``: json/yaml keys not compared (timings, paths)
    ``<!-- docs-test: pytest -->``          python test functions: saved and run with pytest
    ``<!-- docs-test: continues -->``       python that continues the page's previous python block:
                                            both run in one process
    ``<!-- docs-test: without MOD,... -->`` python that must run with these top-level modules
                                            unimportable (e.g. a loader that needs only torch)
    ``<!-- docs-test: sigint-after TEXT --> console: Ctrl-C (SIGINT) to the first command as soon
                                            as it prints a line starting with TEXT
Keep ``skip`` rare and give every one a reason; prefer making a block runnable.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER_RE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<name>[\w-]+)\s*(?P<arg>.*?)\s*-->\s*$")
FENCE_RE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)\s*$")
MARKERS = {
    "skip": True,
    "ci": False,
    "slow": False,
    "cuda": False,
    "append": True,
    "save": True,
    "fragment": True,
    "file": True,
    "ignore": True,
    "pytest": False,
    "continues": False,
    "without": True,
    "sigint-after": True,
}  # name -> needs an argument
SHELL, CONSOLE, PYTHON, YAML, TEXT = "shell", "console", "python", "yaml", "text"
#: Folders of the repository not copied into a page's scratch folder.
NOT_COPIED = {".git", ".venv", "runs", "data", "site", "build", "dist"}
#: Seconds one command or block may run.
TIMEOUT = 900


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    markers: dict[str, str] = field(default_factory=dict)
    index: int = 0  # position on its page

    @property
    def kind(self) -> str:
        if self.lang in ("bash", "sh", "shell"):
            return SHELL
        if self.lang == "console" or (not self.lang and any(x.startswith("$ ") for x in self.text.splitlines())):
            return CONSOLE
        if self.lang in ("python", "py"):
            return PYTHON
        if self.lang in ("yaml", "yml"):
            return YAML
        return TEXT

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        """Does this block run (by default or with -m slow)? Text runs only when compared with a file."""
        if "skip" in self.markers or "ci" in self.markers:
            return False
        return self.kind != TEXT or "file" in self.markers


def parse_page(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with their markers; a marker not directly above a fence is an error."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: dict[str, str] = {}
    pending_line = 0
    i = 0
    while i < len(lines):
        marker = MARKER_RE.match(lines[i])
        if marker:
            name, arg = marker["name"], marker["arg"]
            if name not in MARKERS:
                raise ValueError(
                    f"{page.name}:{i + 1}: unknown docs-test marker {name!r}; allowed: {', '.join(MARKERS)}"
                )
            if MARKERS[name] and not arg:
                raise ValueError(f"{page.name}:{i + 1}: docs-test marker {name!r} needs an argument")
            pending[name], pending_line = arg, i + 1
            i += 1
            continue
        if "docs-test" in lines[i]:
            raise ValueError(f"{page.name}:{i + 1}: malformed docs-test marker: {lines[i].strip()}")
        fence = FENCE_RE.match(lines[i])
        if fence:
            indent, close = fence["indent"], fence["fence"]
            body, j = [], i + 1
            while j < len(lines) and lines[j].strip() != close:
                body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
                j += 1
            blocks.append(Block(page, i + 1, fence["lang"], "\n".join(body) + "\n", pending, len(blocks)))
            pending = {}
            i = j + 1
            continue
        if pending:
            raise ValueError(f"{page.name}:{pending_line}: docs-test marker not directly above a code block")
        i += 1
    if pending:
        raise ValueError(f"{page.name}:{pending_line}: docs-test marker not directly above a code block")
    return blocks


BLOCKS = [block for page in PAGES for block in parse_page(page)]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _param(block: Block):
    marks = []
    if "skip" in block.markers:
        marks.append(pytest.mark.skip(reason=f"{block.where}: {block.markers['skip']}"))
    if "slow" in block.markers:
        marks.append(pytest.mark.slow)
    if "cuda" in block.markers:
        marks.append(pytest.mark.skipif(not _cuda(), reason=f"{block.where}: needs a CUDA device"))
    return pytest.param(block, marks=marks, id=f"{block.page.relative_to(ROOT)}:{block.line}-{block.kind}")


# ------------------------------------------------------------------------------------ scratch folders
class PageRun:
    """A page's scratch folder and the blocks already run in it."""

    def __init__(self, page: Path, base: Path):
        self.page = page
        self.base = base
        self.repo = base / "repo"
        self.done: set[int] = set()
        self.failed: str | None = None
        shutil.copytree(ROOT, self.repo, ignore=_ignore)
        self.committed = _fingerprints(self.repo)
        shared = ROOT.parent / "shared"
        if shared.is_dir():
            (base / "shared").symlink_to(shared, target_is_directory=True)
        (base / "tmp").mkdir()
        self.venv = _layered_venv(base / "venv")
        bin_dir = self.venv / "bin"
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(self.venv),
            "TMPDIR": str(base / "tmp"),
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            "PIP_NO_INPUT": "1",
        }
        for name in ("PYTHONHOME", "GCNNKIT_DEBUG", "GCNNKIT_DISABLE_PLUGIN_AUTOLOAD", "RANK", "WORLD_SIZE"):
            self.env.pop(name, None)
        self.python = str(bin_dir / "python")


def _fingerprints(repo: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(repo)): (p.stat().st_size, p.stat().st_mtime_ns) for p in repo.rglob("*") if p.is_file()}


def assert_committed_files_untouched(run: PageRun, block: Block) -> None:
    """A block may add files (run directories, exports) but not change or delete the repository's,
    nor add any under docs/ (tests check docs/examples file by file)."""
    now = _fingerprints(run.repo)
    changed = sorted(
        path
        for path, print_ in run.committed.items()
        if now.get(path) != print_ and (path not in now or (run.repo / path).read_bytes() != (ROOT / path).read_bytes())
    )
    added = sorted(path for path in now if path not in run.committed and path.startswith("docs/"))
    assert not changed, f"{block.where}: changed or deleted files of the repository: {', '.join(changed)}"
    assert not added, f"{block.where}: left files in the repository's docs/: {', '.join(added)}"


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {
        n
        for n in names
        if (top and n in NOT_COPIED)
        or n in ("__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis")
        or n.endswith(".egg-info")
    }


def _layered_venv(path: Path) -> Path:
    """A virtual environment whose interpreter also sees the site-packages of the running one.

    Created without pip (pip comes from the parent); every console script of the installed
    distributions (``gcnnkit``, ``pip``, ``torchrun``, ...) gets a launcher on the new interpreter,
    so ``pip install`` installs into ``path`` and a plugin installed there is seen by ``gcnnkit``.
    """
    from importlib.metadata import entry_points

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(path), "platbase": str(path)}))
    parents = [p for p in dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]) if p]
    lines = [f"import site; site.addsitedir({p!r})" for p in parents]
    (purelib / "_docs_test_parent.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")
    python = path / "bin" / "python"
    for ep in entry_points(group="console_scripts"):
        target = path / "bin" / ep.name
        if target.exists() or not re.fullmatch(r"[\w.-]+", ep.name) or ":" not in ep.value:
            continue
        module, attr = ep.value.split(":", 1)
        target.write_text(
            f"#!{python}\nimport sys\nfrom {module} import {attr.split('.')[0]} as _main\n"
            f"sys.exit(_main{''.join('.' + a for a in attr.strip().split('.')[1:])}())\n",
            encoding="utf-8",
        )
        target.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def page_runs(tmp_path_factory) -> dict[Path, PageRun]:
    runs: dict[Path, PageRun] = {}
    yield runs


def _page_run(runs: dict[Path, PageRun], page: Path, tmp_path_factory) -> PageRun:
    if page not in runs:
        slug = re.sub(r"\W+", "-", str(page.relative_to(ROOT)))
        runs[page] = PageRun(page, tmp_path_factory.mktemp(slug))
    return runs[page]


# ------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.runnable or "skip" in b.markers])
def test_block(block: Block, page_runs, tmp_path_factory, request):
    run = _page_run(page_runs, block.page, tmp_path_factory)
    slow_selected = "slow" in block.markers
    for earlier in BLOCKS:
        if earlier.page != block.page or earlier.index >= block.index or earlier.index in run.done:
            continue
        if not earlier.runnable or ("slow" in earlier.markers and not slow_selected):
            continue
        if "cuda" in earlier.markers and not _cuda():
            continue
        if run.failed:
            break
        _run_block(run, earlier)
    if run.failed:
        pytest.fail(f"{block.where}: not run, an earlier block of the page failed: {run.failed}")
    _run_block(run, block)


def _run_block(run: PageRun, block: Block) -> None:
    run.done.add(block.index)
    try:
        RUNNERS[block.kind](run, block)
        assert_committed_files_untouched(run, block)
    except BaseException as exc:
        if block.kind in (SHELL, CONSOLE, PYTHON):  # may have left the folder half-done
            run.failed = str(exc).splitlines()[0] if str(exc) else f"{block.where}: {type(exc).__name__}"
        raise


def test_ci_blocks_are_in_ci_run():
    """A block marked ``ci`` is a line of ``.ci/run``, verbatim: CI runs it, the docs tests do not."""
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()}
    marked = [b for b in BLOCKS if "ci" in b.markers]
    assert marked, "the README's install commands are marked ci"
    for block in marked:
        for line in block.text.strip().splitlines():
            assert line.strip() in ci_lines, f"{block.where}: {line.strip()!r} is not a line of .ci/run"


def test_every_code_block_is_run_or_skipped_with_a_reason():
    """bash, console, python and yaml blocks run unless marked skip (with a reason) or ci."""
    for block in BLOCKS:
        if block.kind == TEXT:
            assert "append" not in block.markers and "slow" not in block.markers, f"{block.where}: marker on text"
        if "skip" in block.markers:
            assert len(block.markers["skip"].split()) >= 2, f"{block.where}: say why the block is skipped"


def test_the_markers_are_rare():
    """Skips and fragments stay the exception."""
    code = [b for b in BLOCKS if b.kind != TEXT]
    skipped = [b for b in code if "skip" in b.markers or "fragment" in b.markers]
    assert len(skipped) <= len(code) // 5, [b.where for b in skipped]


# ------------------------------------------------------------------------------------ runners
def _append(command: str, args: str) -> str:
    """``args`` inserted at the end of a command, before a trailing ``# comment``."""
    code, comment = _split_comment(command)
    return f"{code.rstrip()} {args}" + (f"  {comment}" if comment else "")


def _split_comment(line: str) -> tuple[str, str]:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


APPEND_TO = re.compile(r"^\s*(gcnnkit|python3?|torchrun)\s")


def _with_appended(text: str, args: str | None) -> str:
    """``text`` with ``args`` appended to every command starting with gcnnkit/python/torchrun."""
    if not args:
        return text
    out, command = [], []
    for line in text.splitlines():
        command.append(line)
        if line.rstrip().endswith("\\"):
            continue
        joined = "\n".join(command)
        if APPEND_TO.match(command[0]):
            joined = "\n".join(command[:-1] + [_append(command[-1], args)])
        out.append(joined)
        command = []
    out.extend(command)
    return "\n".join(out) + "\n"


def _run(run: PageRun, argv: list[str], block: Block, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv,
        cwd=run.repo,
        env=run.env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
    )
    return result


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def run_shell(run: PageRun, block: Block) -> None:
    script = run.base / f"block-{block.line}.sh"
    script.write_text("set -eo pipefail\n" + _with_appended(block.text, block.markers.get("append")), encoding="utf-8")
    result = _run(run, ["bash", str(script)], block)
    assert result.returncode == 0, f"{block.where}: exit {result.returncode}\n{_tail(result.stdout)}"


def console_commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(command, expected output lines) for every ``$ `` line of a console block."""
    command: str | None = None
    output: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            if command is not None:
                yield command, output
            command, output = line[2:], []
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command + "\n" + lines[i]
        elif command is not None:
            output.append(line)
        i += 1
    if command is not None:
        yield command, output


def run_console(run: PageRun, block: Block) -> None:
    sigint_after = block.markers.get("sigint-after")
    for n, (command, expected) in enumerate(console_commands(block.text)):
        command = _with_appended(command, block.markers.get("append")).rstrip("\n")
        if sigint_after and n == 0:
            code, output = _run_interrupted(run, command, sigint_after.strip("\"'"))
            want = 130
        else:
            result = _run(run, ["bash", "-c", command], block)
            code, output = result.returncode, result.stdout
            first = next((x for x in expected if x.strip()), "")
            want = 2 if first.startswith(("error:", "Usage:")) else 0
        assert code == want, f"{block.where}: `{command}` exited {code}, expected {want}\n{_tail(output)}"
        problem = output_mismatch(expected, output.splitlines())
        assert problem is None, f"{block.where}: `{command}`: {problem}\n--- printed:\n{_tail(output, 60)}"


def _run_interrupted(run: PageRun, command: str, prefix: str) -> tuple[int, str]:
    """Run ``command``; send SIGINT once it prints a line starting with ``prefix``."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=run.repo,
        env=run.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, sent, deadline = [], False, time.monotonic() + TIMEOUT
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if not sent and line.startswith(prefix):
            proc.send_signal(signal.SIGINT)
            sent = True
        if time.monotonic() > deadline:
            proc.kill()
            break
    code = proc.wait(timeout=60)
    assert sent, f"`{command}` never printed a line starting with {prefix!r}"
    return code, "".join(lines)


def _true_asserted(source: str) -> str:
    """Top-level one-line expressions commented ``# True`` become assertions."""
    lines = source.splitlines()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Expr) and node.lineno == node.end_lineno:
            line = lines[node.lineno - 1]
            code, comment = _split_comment(line)
            if comment.startswith("# True"):
                lines[node.lineno - 1] = f"assert {code.strip()}, {code.strip()!r}  {comment}"
    return "\n".join(lines) + "\n"


BLOCKER = """\
import sys as _sys

class _DocsTestBlocker:
    blocked = {blocked!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}} (the docs test makes it unimportable)")
        return None

_sys.meta_path.insert(0, _DocsTestBlocker())
del _sys
"""


def _python_source(block: Block) -> str:
    """The block's code, after the code of the blocks it continues."""
    source = _true_asserted(block.text)
    if "continues" in block.markers:
        before = [b for b in BLOCKS if b.page == block.page and b.kind == PYTHON and b.index < block.index]
        assert before, f"{block.where}: marked continues, but no python block comes before it"
        source = _python_source(before[-1]) + "\n" + source
    return source


def run_python(run: PageRun, block: Block) -> None:
    if "file" in block.markers:  # the code of a file (run by the blocks that install or test it)
        run_text(run, block)
        return
    source = _python_source(block)
    if "save" in block.markers:
        _save(run, block)
    if "pytest" in block.markers:
        folder = run.base / f"pytest-{block.line}"
        folder.mkdir()
        (folder / f"test_docs_block_{block.line}.py").write_text(block.text, encoding="utf-8")
        argv = [run.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(folder), str(folder)]
        result = _run(run, argv, block)
        assert result.returncode == 0, f"{block.where}: pytest exited {result.returncode}\n{_tail(result.stdout)}"
        assert re.search(r"\b\d+ passed\b", result.stdout), f"{block.where}: no test ran\n{_tail(result.stdout)}"
        return
    if "without" in block.markers:
        blocked = sorted(m.strip() for m in block.markers["without"].split(",") if m.strip())
        source = BLOCKER.format(blocked=blocked) + source
    script = run.base / f"block-{block.line}.py"
    script.write_text(source, encoding="utf-8")
    result = _run(run, [run.python, str(script)], block)
    assert result.returncode == 0, f"{block.where}: python exited {result.returncode}\n{_tail(result.stdout)}"


def _save(run: PageRun, block: Block) -> Path:
    path = run.repo / block.markers["save"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text, encoding="utf-8")
    return path


def run_yaml(run: PageRun, block: Block) -> None:
    from gcnnkit.run.config import load_config
    from gcnnkit.run.rundir import build_model_from_config

    data = yaml.safe_load(block.text)
    if "file" in block.markers:
        _compare_data(block, data, _read_data(run, block))
    if "fragment" in block.markers:
        return
    path = _save(run, block) if "save" in block.markers else run.base / f"block-{block.line}.yaml"
    if "save" not in block.markers:
        path.write_text(block.text, encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(run.repo)  # relative paths in the config (data.root) as the reader's commands see them
    try:
        build_model_from_config(load_config(path))
    finally:
        os.chdir(cwd)


def run_text(run: PageRun, block: Block) -> None:
    """A block marked ``file``: json compared as data, anything else (code) as text, exactly."""
    path = run.repo / block.markers["file"]
    assert path.is_file(), f"{block.where}: {block.markers['file']} was not written by the blocks above"
    if block.lang == "json":
        _compare_data(block, json.loads(block.text), _read_data(run, block))
        return
    shown = [line.rstrip() for line in block.text.strip("\n").splitlines()]
    actual = [line.rstrip() for line in path.read_text(encoding="utf-8").strip("\n").splitlines()]
    pairs = enumerate(zip(shown, actual, strict=False))
    differs = next((n for n, (a, b) in pairs if a != b), min(len(shown), len(actual)))
    assert shown == actual, (
        f"{block.where}: differs from {block.markers['file']} at its line {differs + 1}: "
        f"page {shown[differs] if differs < len(shown) else '(end)'!r}, "
        f"file {actual[differs] if differs < len(actual) else '(end)'!r}"
    )


def _read_data(run: PageRun, block: Block):
    path = run.repo / block.markers["file"]
    assert path.is_file(), f"{block.where}: {block.markers['file']} was not written by the blocks above"
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def _compare_data(block: Block, shown, actual) -> None:
    if isinstance(actual, list) and isinstance(shown, dict):
        assert len(actual) == 1, f"{block.where}: {block.markers['file']} has {len(actual)} records, the page shows one"
        actual = actual[0]
    ignore = {k.strip() for k in block.markers.get("ignore", "").split(",") if k.strip()}
    problem = data_mismatch(shown, actual, ignore)
    assert problem is None, f"{block.where}: differs from {block.markers['file']}: {problem}"


RUNNERS = {SHELL: run_shell, CONSOLE: run_console, PYTHON: run_python, YAML: run_yaml, TEXT: run_text}


# ------------------------------------------------------------------------------------ comparing output
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?P<unit>s\b)?")


def _tokens(line: str) -> list[tuple[str, str | None]]:
    """("text", words) and ("number", digits) pieces of a line; a duration such as ``3.5s`` is
    ("number", None). Runs of whitespace count as one space (table columns may widen)."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    for m in NUMBER.finditer(line):
        words = " ".join(line[pos : m.start()].split())
        if words:
            out.append(("text", words))
        out.append(("number", None if m["unit"] else m.group(0)))
        pos = m.end()
    words = " ".join(line[pos:].split())
    if words:
        out.append(("text", words))
    return out


def numbers_agree(shown: str, actual: str) -> bool:
    """Integers exactly; decimals to 1e-3 (relative); e-notation within a factor of 10."""
    a, b = shown.replace(",", ""), actual.replace(",", "")
    try:
        x, y = float(a), float(b)
    except ValueError:
        return shown == actual
    if "e" in a.lower():
        if x == 0 or y == 0:
            return x == y
        return (x > 0) == (y > 0) and abs(math.log10(abs(x) / abs(y))) <= 1
    if "." in a:
        return abs(x - y) <= 1e-3 * max(abs(x), abs(y)) + 1e-12
    return a == b


def _line_mismatch(shown: str, actual: str) -> str | None:
    s, a = _tokens(shown), _tokens(actual)
    differs = f"line differs:\n  page:    {shown}\n  printed: {actual}"
    if [kind for kind, _ in s] != [kind for kind, _ in a]:
        return differs
    for (kind, x), (_, y) in zip(s, a, strict=True):
        if kind == "text" and x != y:
            return differs
        if kind == "number" and (x is None) != (y is None):
            return differs
        if kind == "number" and x is not None and not numbers_agree(x, y):
            return f"{x} against {y} in\n  page:    {shown}\n  printed: {actual}"
    return None


def output_mismatch(shown: list[str], actual: list[str]) -> str | None:
    """None when ``actual`` matches the output ``shown`` on the page, else what differs.

    ``...`` on a line of its own matches any number of lines (including none).
    """
    shown = _strip_blank_ends([x.rstrip() for x in shown])
    actual = _strip_blank_ends([x.rstrip() for x in actual])
    memo: dict[tuple[int, int], str | None] = {}

    def match(i: int, j: int) -> str | None:
        if (i, j) in memo:
            return memo[i, j]
        if i == len(shown):
            result = None if j == len(actual) else f"extra printed line: {actual[j]}"
        elif shown[i].strip() == "...":
            result = match(i + 1, j)
            k = j
            while result is not None and k < len(actual):
                k += 1
                result = match(i + 1, k)
        elif j == len(actual):
            result = f"missing line: {shown[i]}"
        else:
            result = _line_mismatch(shown[i], actual[j]) or match(i + 1, j + 1)
        memo[i, j] = result
        return result

    return match(0, 0)


def _strip_blank_ends(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def data_mismatch(shown, actual, ignore: set[str], where: str = "") -> str | None:
    """None when parsed YAML/JSON ``shown`` equals ``actual`` (numbers as in :func:`numbers_agree`)."""
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return f"{where or 'top'}: page shows a mapping, the file has {type(actual).__name__}"
        if set(shown) != set(actual):
            return f"{where or 'top'}: keys differ: page {sorted(shown)}, file {sorted(actual)}"
        for key in shown:
            if key in ignore:
                continue
            problem = data_mismatch(shown[key], actual[key], ignore, f"{where}.{key}" if where else str(key))
            if problem:
                return problem
        return None
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(shown) != len(actual):
            return f"{where}: page shows {shown!r}, the file has {actual!r}"
        for n, (x, y) in enumerate(zip(shown, actual, strict=True)):
            problem = data_mismatch(x, y, ignore, f"{where}[{n}]")
            if problem:
                return problem
        return None
    if isinstance(shown, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return None if numbers_agree(repr(shown), repr(float(actual))) else f"{where}: page {shown}, file {actual}"
    if shown != actual or type(shown) is not type(actual):
        return f"{where}: page {shown!r}, file {actual!r}"
    return None


# ------------------------------------------------------------------------------------ the matcher itself
def test_output_matching_rules():
    assert output_mismatch(["epoch 1/1  loss 2.4268  3.5s"], ["epoch 1/1  loss 2.42681  12.0s"]) is None
    assert output_mismatch(["loss 2.4268"], ["loss 2.5268"]) is not None
    assert output_mismatch(["63,114 params"], ["63,115 params"]) is not None
    assert output_mismatch(["err 1.97e-07 ok"], ["err 5.1e-07 ok"]) is None
    assert output_mismatch(["err 1.97e-07 ok"], ["err 3.0e-05 ok"]) is not None
    assert output_mismatch(["0.00e+00"], ["1.00e-09"]) is not None
    assert output_mismatch(["a", "...", "z"], ["a", "b", "c", "z"]) is None
    assert output_mismatch(["a", "...", "z"], ["a", "z"]) is None
    assert output_mismatch(["a", "...", "z"], ["a", "b"]) is not None
    assert output_mismatch(["a  b"], ["a b"]) is None
    assert output_mismatch(["upright 10.00%"], ["upright 9.72%"]) is not None
    assert output_mismatch(["x"], ["x", "y"]) is not None
    assert data_mismatch({"a": 0.1, "t": 3.5}, {"a": 0.1, "t": 9.0}, {"t"}) is None
    assert data_mismatch({"a": 0.1}, {"a": 0.2}, set()) is not None
    assert data_mismatch({"a": 1}, {"a": 1, "b": 2}, set()) is not None


def test_append_goes_before_comments_and_after_continuations():
    text = "gcnnkit bench  # the presets\npip install x\ntorchrun a \\\n    b\n"
    assert _with_appended(text, "--repeats 1") == (
        "gcnnkit bench --repeats 1  # the presets\npip install x\ntorchrun a \\\n    b --repeats 1\n"
    )


def test_markers_must_sit_on_a_block(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- docs-test: slow -->\n\ntext\n")
    with pytest.raises(ValueError, match="not directly above"):
        parse_page(page)
    page.write_text("<!-- docs-test: sloow -->\n```bash\nx\n```\n")
    with pytest.raises(ValueError, match="unknown docs-test marker"):
        parse_page(page)


def test_without_makes_modules_unimportable():
    attempt = "try:\n    import json\nexcept ImportError:\n    print('blocked')\n"
    script = BLOCKER.format(blocked=["json"]) + attempt
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "blocked", result.stderr


def test_a_block_may_not_touch_the_repository(tmp_path):
    run = PageRun(ROOT / "README.md", tmp_path)
    block = BLOCKS[0]
    (run.repo / "runs").mkdir()
    (run.repo / "runs" / "x.json").write_text("{}")  # new files outside docs/: fine
    assert_committed_files_untouched(run, block)
    (run.repo / "docs" / "examples" / "gcnnkit-hexflip" / "build").mkdir()
    (run.repo / "docs" / "examples" / "gcnnkit-hexflip" / "build" / "x").write_text("")
    with pytest.raises(AssertionError, match="left files in the repository's docs/"):
        assert_committed_files_untouched(run, block)
    shutil.rmtree(run.repo / "docs" / "examples" / "gcnnkit-hexflip" / "build")
    (run.repo / "configs" / "digits_c4.yaml").write_text("seed: 1\n")
    with pytest.raises(AssertionError, match="configs/digits_c4.yaml"):
        assert_committed_files_untouched(run, block)


def test_true_comments_become_assertions():
    assert _true_asserted("x = 1\nx == 1  # True: yes\n") == "x = 1\nassert x == 1, 'x == 1'  # True: yes\n"


# ------------------------------------------------------------------------------------ CLI --help examples
#: Appended to the ``--help`` examples of these commands to keep them short (the last value of an option wins).
HELP_SHRINK = {
    "train": ["--set", "train.epochs=1", "--set", "data.train_size=64", "--set", "data.test_size=60"],
    "compare": ["--repeats", "1", "--timing-batch", "2"],
    "bench": ["--repeats", "1", "--min-time", "0", "--no-per-layer"],
    "make-folder": ["--count", "64"],  # tiles: 64, not 20,000 (digits ignore it)
}
#: Commands whose examples take a minute or more on 2 cores: a test of their own.
SLOW_HELP = {"compare", "bench"}


def help_examples() -> list[tuple[str, str]]:
    """(help page, example line) for every ``gcnnkit ...`` line under ``Examples:`` or ``Quick start:``
    in ``gcnnkit --help`` and ``gcnnkit COMMAND --help``, in that order."""
    from click.testing import CliRunner

    from gcnnkit.cli import COMMANDS, main

    examples = []
    for command in ["", *COMMANDS]:
        result = CliRunner().invoke(main, [*command.split(), "--help"])
        assert result.exit_code == 0, result.output
        section = False
        for line in result.output.splitlines():
            if re.fullmatch(r"\s*(Examples|Quick start):\s*", line):
                section = True
            elif section and line.strip().startswith("gcnnkit "):
                examples.append((command or "gcnnkit", _split_comment(line.strip())[0].strip()))
            elif section and not line.strip():
                section = False
    return examples


def _run_help_examples(examples: list[str], folder: Path, monkeypatch) -> None:
    """Run ``examples`` in order in ``folder`` (holding a copy of configs/). A run directory
    ``runs/X`` that an example reads and no earlier example wrote is trained first, shrunk, from
    ``configs/digits_X.yaml``."""
    from click.testing import CliRunner

    from gcnnkit.cli import main

    shutil.copytree(ROOT / "configs", folder / "configs")
    monkeypatch.chdir(folder)
    runner = CliRunner()
    examples = sorted(examples, key=lambda line: not line.startswith("gcnnkit make-folder "))  # folders first
    needs_folder = any("data/digits-folder" in line or "folder_example" in line for line in examples)
    if needs_folder and not any(line.startswith("gcnnkit make-folder data/digits-folder") for line in examples):
        made = runner.invoke(main, ["make-folder", "data/digits-folder"])  # what configs/folder_example.yaml reads
        assert made.exit_code == 0, made.output
    for line in examples:
        argv = shlex.split(line)[1:]
        if "cuda" in argv and not _cuda():
            continue
        outs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"}
        for arg in argv:
            if (
                re.fullmatch(r"runs/\w+", arg)
                and arg not in outs
                and not Path(arg).exists()
                and argv[0] != "make-folder"
            ):
                name = arg[5:]
                config = (
                    f"configs/digits_{name}.yaml"
                    if Path(f"configs/digits_{name}.yaml").exists()
                    else f"configs/{name}_example.yaml"
                )
                train = ["train", config, "--out", arg, *HELP_SHRINK["train"]]
                made = runner.invoke(main, train)
                assert made.exit_code == 0, made.output
        result = runner.invoke(main, [*argv, *HELP_SHRINK.get(argv[0], [])])
        assert result.exit_code == 0, f"`{line}` exited {result.exit_code}:\n{_tail(result.output)}"


@pytest.mark.slow
def test_cli_help_examples_run(tmp_path, monkeypatch):
    """Every example in ``--help`` works (compare and bench: in the next test)."""
    examples = [line for _, line in help_examples() if line.split()[1] not in SLOW_HELP]
    assert any(x.startswith("gcnnkit eval") for x in examples) and any(x.startswith("gcnnkit export") for x in examples)
    _run_help_examples(examples, tmp_path, monkeypatch)


@pytest.mark.slow
def test_cli_help_examples_run_slow(tmp_path, monkeypatch):
    examples = [line for _, line in help_examples() if line.split()[1] in SLOW_HELP]
    assert examples
    _run_help_examples(examples, tmp_path, monkeypatch)


def test_cli_md_shows_the_help_examples():
    """docs/cli.md shows the examples of ``compare`` and ``bench`` "from --help": the same lines."""
    shown = [b for b in BLOCKS if b.page.name == "cli.md" and b.kind == SHELL]
    for command in ("compare", "bench"):
        in_help = {line for page, line in help_examples() if page == command}
        on_page = {x.strip() for b in shown for x in b.text.splitlines() if x.startswith(f"gcnnkit {command} ")}
        assert in_help and on_page == in_help, (command, on_page ^ in_help)


# ------------------------------------------------------------------------------------ the errors table
#: The inputs of docs/configuration.md's error table that are not a YAML mapping: the file's text.
ERROR_TABLE_FILES = {
    "duplicate `seed:`": "seed: 0\nseed: 1\n",
    "a file that is a list": "- seed\n",
    "missing file": None,  # the path does not exist
}


def test_the_error_table_of_configuration_md(tmp_path, monkeypatch):
    """Every row of the error table is the one line that input gets (config, model or data)."""
    from gcnnkit.core.errors import GcnnkitError
    from gcnnkit.run.config import load_config
    from gcnnkit.run.data import load_dataset
    from gcnnkit.run.rundir import build_model_from_config

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = text[text.index("## Errors") : text.index("## Python")]
    rows = re.findall(r"^\| (.+?) \| `(.+)` \|$", table, flags=re.M)
    assert len(rows) >= 15, rows
    monkeypatch.chdir(tmp_path)  # no data/ folder here
    for n, (given, message) in enumerate(rows):
        path = tmp_path / f"row{n}.yaml"
        if given in ERROR_TABLE_FILES:
            content = ERROR_TABLE_FILES[given]
            if content is None:
                path = tmp_path / "nonexist.yaml"
            else:
                path.write_text(content, encoding="utf-8")
        else:
            path.write_text(re.match(r"`(.+?)`", given)[1] + "\n", encoding="utf-8")
        with pytest.raises(GcnnkitError) as info:
            config = load_config(path)
            build_model_from_config(config)
            load_dataset(config.data)
        expected = message.replace("<file>", str(path)) if "<file>" in message else message
        if given == "missing file":
            expected = message.replace("nonexist.yaml", str(path))
        assert str(info.value) == expected, given
