"""The bad-input corpus (tests/bad_inputs.tsv): every bad input is one clear line and exit 2.

Each line of the corpus is ``id<TAB>exit code<TAB>message fragment<TAB>command``. The command is
``gcnnkit``'s arguments (split like a shell), optionally after ``NAME=value`` environment
settings, with ``@name`` placeholders for inputs this module makes once (:func:`inputs`): configs
with a bad key or a bomb, a FIFO, a dangling symlink, a read-only mount, run directories with
broken checkpoints.

Every case runs in-process (click's runner) in an empty working directory, under a time limit,
and must: exit with the expected code; print the fragment; print exactly one line on stderr
(``error: ...``), or click's usage format (``Usage: ...`` then one ``Error: ...`` line); print
no traceback; write nothing into the working directory and change none of the inputs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import CONFIGS, TINY_CONFIG, merge

from gcnnkit.cli import main
from gcnnkit.core.registry import REGISTRY

CORPUS = Path(__file__).with_name("bad_inputs.tsv")
#: seconds a case may take (a hang, e.g. reading a FIFO, fails the case instead of the suite)
TIME_LIMIT = 60


def read_corpus() -> list[tuple[str, int, str, str]]:
    cases = []
    for n, line in enumerate(CORPUS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        assert len(fields) == 4, f"{CORPUS.name}:{n}: expected id, exit code, fragment, command (tab-separated)"
        case_id, code, fragment, command = fields
        cases.append((case_id, int(code), fragment, command))
    return cases


CASES = read_corpus()

BROKEN_POOL = [{"type": "lift", "out": 4}, {"type": "pool", "kernel": 2}, "group_pool", "global_pool", "linear"]

#: placeholder -> text of a config file (or a callable writing the input at a path)
CONFIG_TEXTS = {
    "tiny": yaml.safe_dump(TINY_CONFIG),
    "bomb": "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)),
    "deep_list": "seed: " + "[" * 20000 + "]" * 20000 + "\n",
    "deep_map": "seed: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
    "dup_key": "seed: 1\nseed: 2\n",
    "bad_yaml": "model: {backend: native\ntrain: [\n",
    "tab_yaml": "model:\n\tbackend: native\n",
    "top_list": "- seed\n- 1\n",
    "top_scalar": "hello\n",
    "unknown_key": "modle: {group: C4}\n",
    "broken_pool": yaml.safe_dump(merge(TINY_CONFIG, {"model": {"preset": None, "layers": BROKEN_POOL}})),
    "c4": (CONFIGS / "digits_c4.yaml").read_text(encoding="utf-8"),
}


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _train_tiny(run_dir: Path) -> None:
    config = merge(TINY_CONFIG, {"train": {"epochs": 1}, "data": {"train_size": 64, "test_size": 32}})
    from gcnnkit.run.config import Config
    from gcnnkit.run.training import train

    train(Config.from_dict(config), out_dir=run_dir)


def _broken_run(good: Path, path: Path, change) -> Path:
    path.mkdir()
    (path / "config.yaml").write_bytes((good / "config.yaml").read_bytes())
    state = torch.load(good / "checkpoint.pt", weights_only=True)
    result = change(state)
    if isinstance(result, bytes):
        (path / "checkpoint.pt").write_bytes(result)
    else:
        torch.save(state, path / "checkpoint.pt")
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def _evil(state):
    import pickle

    return pickle.dumps({"format": 1, "model": _Evil()})


def _nan(state):
    state["model"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in state["model"].items()}


def _shapes(state):
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(3, 3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Every placeholder of the corpus, made once; the values are absolute paths (or texts)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    out: dict[str, str] = {}
    for name, text in CONFIG_TEXTS.items():
        path = root / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        out[name] = str(path)
    out["binary"] = str(_write_bytes(root / "binary.yaml", b"seed: \xff\xfe\x00\x01\n"))
    out["huge"] = str(_write_bytes(root / "huge.yaml", b"# " + b"x" * 1_100_000 + b"\n"))
    os.mkfifo(root / "fifo.yaml")
    out["fifo"] = str(root / "fifo.yaml")
    (root / "dangling").symlink_to(root / "nowhere" / "x")
    out["dangling"] = str(root / "dangling")
    (root / "a_file").write_text("not a folder\n")
    out["file"] = str(root / "a_file")
    out["long"] = str(root / ("n" * 300))
    (root / "empty_dir").mkdir()
    out["empty_dir"] = str(root / "empty_dir")
    out["missing"] = str(root / "missing.yaml")
    run = root / "run"
    _train_tiny(run)
    out["run"] = str(run)
    out["run_nan"] = str(_broken_run(run, root / "run_nan", _nan))
    out["run_nomodel"] = str(_broken_run(run, root / "run_nomodel", lambda s: s.pop("model") and None))
    out["run_shapes"] = str(_broken_run(run, root / "run_shapes", _shapes))
    out["run_garbage"] = str(_broken_run(run, root / "run_garbage", lambda s: b"not a checkpoint at all"))
    out["run_evil"] = str(_broken_run(run, root / "run_evil", _evil))
    out["run_format"] = str(_broken_run(run, root / "run_format", lambda s: s.update(format=99)))
    out["ro"] = str(_read_only_mount(root / "ro"))
    out["root"] = str(root)
    return out


def _read_only_mount(path: Path) -> Path:
    """A read-only tmpfs where root may mount one; else a folder without write permission."""
    path.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
        if done.returncode == 0:
            import atexit

            atexit.register(subprocess.run, ["umount", str(path)], capture_output=True)
            return path
    path.chmod(0o555)
    return path


def _needs_unwritable(command: str, inputs: dict[str, str]) -> None:
    ro = Path(inputs["ro"])
    if "@ro" in command and os.access(ro, os.W_OK) and not os.statvfs(ro).f_flag & os.ST_RDONLY:
        pytest.skip("no read-only mount possible here (not root) and root ignores folder permissions")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"the case ran longer than {TIME_LIMIT} s")


def run_case(command: str, inputs: dict[str, str]):
    """Split ``command`` (leading NAME=value words are environment settings), fill in the ``@name`` placeholders."""
    words = shlex.split(command)
    env = {}
    while words and "=" in words[0] and words[0].split("=", 1)[0].isupper():
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    args = [re.sub(r"@([a-z0-9_]+)", lambda m: inputs.get(m.group(1), m.group(0)), w) for w in words]
    if env:
        REGISTRY.refresh()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT)
    try:
        return CliRunner(env=env).invoke(main, args, catch_exceptions=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if env:
            REGISTRY.refresh()


def test_corpus_is_large_and_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 150 and len(set(ids)) == len(ids)


@pytest.mark.parametrize(("case_id", "code", "fragment", "command"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, code, fragment, command, inputs, tmp_path, monkeypatch):
    _needs_unwritable(command, inputs)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _snapshot(Path(inputs["root"]))
    result = run_case(command, inputs)
    assert not isinstance(result.exception, _Hang), f"{case_id}: hung"
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code == code, f"{case_id}: exit {result.exit_code}: {output}\n{result.exception!r}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{case_id}: {result.exception!r}")
    err = result.stderr.strip().splitlines()
    if err and err[0].startswith("Usage:"):  # click's own format for a malformed command line
        errors = [line for line in err if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        line = errors[0]
    else:
        assert len(err) == 1 and err[0].startswith("error: "), f"{case_id}: stderr {result.stderr!r}"
        line = err[0]
    assert fragment in line, f"{case_id}: {fragment!r} not in {line!r}"
    assert list(cwd.iterdir()) == [], f"{case_id}: wrote {list(cwd.iterdir())}"
    assert _snapshot(Path(inputs["root"])) == before, f"{case_id}: changed an input"
