"""Crashes, signals and a full disk: every interrupted run resumes to the weights and metrics of an
uninterrupted one (docs/reliability.md, "Crashes and resume").

Real ``gcnnkit train`` processes are killed (SIGKILL at chosen points and at random moments,
SIGTERM, SIGHUP) on the tiny digits job, then resumed (or, with no checkpoint yet, started again
as the message advises) until they finish; the result must be ``torch.equal`` to an uninterrupted
run's, and ``metrics.jsonl`` must hold epochs 1..N exactly once, each line strict JSON.
The tests that start real processes are ``slow`` (each runs a few seconds of training, twice);
the in-process ones (damaged metrics files, a full disk) run by default.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIG, console_script, merge

from gcnnkit.core.errors import GcnnkitError
from gcnnkit.run.config import Config
from gcnnkit.run.metrics import metrics_line
from gcnnkit.run.rundir import CHECKPOINT_FILE, load_checkpoint, read_metrics, save_checkpoint
from gcnnkit.run.training import train

#: 3 epochs with a random order, flips and a cosine schedule: a resume must restore all of it.
CRASH_CONFIG = merge(TINY_CONFIG, {"data": {"augment": "flip"}, "train": {"epochs": 3, "schedule": "cosine"}})
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def crash_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "crash.yaml"
    path.write_text(yaml.safe_dump(CRASH_CONFIG), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(crash_config, tmp_path_factory) -> Path:
    """The uninterrupted run, trained by the CLI as the interrupted ones are."""
    run_dir = tmp_path_factory.mktemp("crash") / "straight"
    done = subprocess.run(
        [console_script(), "train", str(crash_config), "--out", str(run_dir)], env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return run_dir


def _strict_lines(run_dir: Path) -> list[dict]:
    def refuse(constant: str):
        raise AssertionError(f"bare {constant} in metrics.jsonl")

    text = (run_dir / "metrics.jsonl").read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def _finish(config: Path, run_dir: Path) -> subprocess.CompletedProcess:
    """Continue a killed run as its messages advise: --resume with a checkpoint, a fresh start without."""
    resume = ["--resume"] if (run_dir / CHECKPOINT_FILE).exists() else []
    done = subprocess.run(
        [console_script(), "train", str(config), "--out", str(run_dir), *resume],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done


def _assert_like_reference(run_dir: Path, reference: Path) -> None:
    a, b = load_checkpoint(reference / CHECKPOINT_FILE), load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    lines = _strict_lines(run_dir)
    assert [m["epoch"] for m in lines] == list(range(1, CRASH_CONFIG["train"]["epochs"] + 1))

    def strip(records):
        return [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in records]

    assert strip(lines) == strip(_strict_lines(reference))


def _consistent(run_dir: Path) -> None:
    """What a crash may leave: metrics.jsonl strict JSON, at most the checkpoint's epochs, no gaps."""
    epochs = [m["epoch"] for m in _strict_lines(run_dir)] if (run_dir / "metrics.jsonl").exists() else []
    saved = load_checkpoint(run_dir / CHECKPOINT_FILE)["epoch"] if (run_dir / CHECKPOINT_FILE).exists() else 0
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) <= saved


# ------------------------------------------------------------------------ kill -9 at chosen points
#: Python run in a fresh process: patch one function so that its Nth call kills the process
#: (SIGKILL, no cleanup), then train through the CLI.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import gcnnkit.run.training as training
    import gcnnkit.run.rundir as rundir

    target, name, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module = training if target == "training" else rundir.torch
    original = getattr(module, name)
    calls = [0]

    def patched(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            if name == "save":  # a checkpoint write cut short: half a file, then death
                args[1].write(b"half a checkpoint")
                args[1].flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, name, patched)
    from gcnnkit.cli import main
    main(sys.argv[4:])
    """
)

KILL_POINTS = {
    # after epoch 2's checkpoint, before metrics.jsonl is rewritten (call 1 starts the empty file)
    "between-checkpoint-and-metrics": ("training", "write_metrics", 3),
    "inside-checkpoint-write": ("rundir", "save", 2),  # epoch 2's torch.save, half written
    "during-the-first-epoch": ("training", "augment_batch", 3),  # step 3 of epoch 1: nothing saved yet
    "during-epoch-3": ("training", "augment_batch", 17),  # 7 steps an epoch
}


def _kill_at(point: str, config: Path, run_dir: Path) -> None:
    target, name, nth = KILL_POINTS[point]
    args = [sys.executable, "-c", KILLER, target, name, str(nth), "train", str(config), "--out", str(run_dir)]
    done = subprocess.run(args, env=ENV, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("between-checkpoint-and-metrics", marks=pytest.mark.slow),
        pytest.param("inside-checkpoint-write", marks=pytest.mark.slow),
        pytest.param("during-the-first-epoch", marks=pytest.mark.slow),
        pytest.param("during-epoch-3", marks=pytest.mark.slow),
    ],
)
def test_kill_9_at_a_chosen_point_then_resume_gives_the_uninterrupted_run(point, crash_config, reference, tmp_path):
    run_dir = tmp_path / "run"
    _kill_at(point, crash_config, run_dir)
    _consistent(run_dir)
    if point == "between-checkpoint-and-metrics":
        assert load_checkpoint(run_dir / CHECKPOINT_FILE)["epoch"] == 2
        assert [m["epoch"] for m in _strict_lines(run_dir)] == [1]  # one behind, never ahead
    if point == "inside-checkpoint-write":
        assert load_checkpoint(run_dir / CHECKPOINT_FILE)["epoch"] == 1  # the half-written one never replaced it
    if point == "during-the-first-epoch":
        assert not (run_dir / CHECKPOINT_FILE).exists()
    _finish(crash_config, run_dir)
    _assert_like_reference(run_dir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_run(trial, crash_config, reference, tmp_path):
    rng = random.Random(trial)
    run_dir = tmp_path / "run"
    for _ in range(2):  # up to two kills, each at a random moment of a start or a resume
        resume = ["--resume"] if (run_dir / CHECKPOINT_FILE).exists() else []
        proc = subprocess.Popen(
            [console_script(), "train", str(crash_config), "--out", str(run_dir), *resume],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 8.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if run_dir.exists():
            _consistent(run_dir)
    _finish(crash_config, run_dir)
    _assert_like_reference(run_dir, reference)


# --------------------------------------------------------------------------- SIGTERM, SIGHUP
def _train_until_epoch_1(config: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """A ``gcnnkit train`` process that has printed its epoch 1 line (so epoch 1 is saved)."""
    proc = subprocess.Popen(
        [console_script(), "train", str(config), "--out", str(run_dir), *extra],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            return proc
    proc.wait()
    pytest.fail(f"no epoch 1 line: {proc.stderr.read()}")


@pytest.mark.parametrize(
    ("signum", "code"),
    [
        pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow),
        pytest.param(signal.SIGHUP, 129, marks=pytest.mark.slow),
    ],
)
def test_sigterm_and_sighup_save_print_the_resume_hint_and_resume_exactly(
    signum, code, crash_config, reference, tmp_path
):
    run_dir = tmp_path / "run"
    proc = _train_until_epoch_1(crash_config, run_dir)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == code, err
    assert re.search(
        rf"interrupted by {name} after [12] of 3 epochs \(saved in {re.escape(str(run_dir))}\); "
        rf"continue with: gcnnkit train CONFIG --out {re.escape(str(run_dir))} --resume",
        out,
    ), out
    assert err.strip().splitlines()[-1] == f"interrupted by {name}" and "Traceback" not in err
    _consistent(run_dir)
    _finish(crash_config, run_dir)
    _assert_like_reference(run_dir, reference)


# ---------------------------------------------------------------------------- one writer
@pytest.mark.slow
def test_a_second_train_or_a_resume_on_a_training_run_is_refused(crash_config, tmp_path):
    run_dir = tmp_path / "run"
    first = _train_until_epoch_1(crash_config, run_dir, "--set", "train.epochs=100")  # still training below
    try:
        for extra in ([], ["--resume"]):
            second = subprocess.run(
                [console_script(), "train", str(crash_config), "--out", str(run_dir), *extra],
                env=ENV,
                capture_output=True,
                text=True,
            )
            assert second.returncode == 2
            assert second.stderr.strip() == (
                f"error: --out {run_dir}: another gcnnkit train (pid {first.pid}) is writing this run directory; "
                f"wait for it to end or choose another --out"
            )
        assert first.poll() is None, "the first run ended before the check"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143
    _consistent(run_dir)  # nothing interleaved
    assert not (run_dir / "run.lock").exists()


# ------------------------------------------------------------------- a damaged metrics file
def _cut_last_line(text: str) -> str:
    return text[: len(text) - len(text.splitlines()[-1]) // 2 - 1]  # power loss in the middle of a line


DAMAGES = {
    "truncated last line": _cut_last_line,
    "garbled last line": lambda t: t[: t.rindex("{")] + "\x00\x00\xff{{not json\n",
    "missing last line": lambda t: "".join(t.splitlines(keepends=True)[:-1]),
    "an epoch the checkpoint lacks": lambda t: t + '{"epoch": 3, "train_loss": 0.0}\n',
    "a duplicated line": lambda t: t + t.splitlines(keepends=True)[0],
    "no file": None,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_rewrites_a_damaged_metrics_file_from_the_checkpoint(damage, tiny_run_copy):
    metrics = tiny_run_copy / "metrics.jsonl"
    original = metrics.read_text()
    if DAMAGES[damage] is None:
        metrics.unlink()
    else:
        metrics.write_text(DAMAGES[damage](original))
    train(Config.from_dict(TINY_CONFIG), tiny_run_copy, resume=True, log=None)  # nothing left to train
    assert metrics.read_text() == original


def test_resume_of_a_checkpoint_without_history_salvages_the_readable_lines(tiny_run_copy):
    """Checkpoints written before the history moved into them: the file's readable lines of the
    checkpointed epochs are kept, a cut line is dropped, and the run goes on without a traceback."""
    state = load_checkpoint(tiny_run_copy / CHECKPOINT_FILE)
    del state["metrics"]
    save_checkpoint(tiny_run_copy / CHECKPOINT_FILE, state)
    metrics = tiny_run_copy / "metrics.jsonl"
    first = metrics.read_text().splitlines(keepends=True)[0]
    metrics.write_text(_cut_last_line(metrics.read_text()))
    lines = []
    train(Config.from_dict(merge(TINY_CONFIG, {"train": {"epochs": 3}})), tiny_run_copy, resume=True, log=lines.append)
    assert "metrics.jsonl: no readable line for epochs [2] (an older checkpoint without its history)" in lines
    records = read_metrics(tiny_run_copy)
    assert [m["epoch"] for m in records] == [1, 3] and metrics_line(records[0]) == first


# ------------------------------------------------------------------------------ full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (needs root and a kernel that lets this process mount); skipped otherwise."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` bytes free; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    os.truncate(filler, max(0, filler.stat().st_size - (leave - free)))
    return filler


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(small_disk, tiny_run):
    run_dir = small_disk / "run"
    config = Config.from_dict(TINY_CONFIG)
    filled = []

    def fill_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1/"):  # epoch 1 is saved: leave room for small files, not a checkpoint
            filled.append(_fill(small_disk, leave=(run_dir / CHECKPOINT_FILE).stat().st_size // 2))

    with pytest.raises(GcnnkitError) as err:
        train(config, run_dir, log=fill_after_epoch_1)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message == (
        f"{run_dir}: could not save epoch 2 (No space left on device); the checkpoint of epoch 1 is intact; "
        f"free space and continue with --resume"
    )
    assert load_checkpoint(run_dir / CHECKPOINT_FILE)["epoch"] == 1
    assert not list(run_dir.glob("*.tmp"))
    assert [m["epoch"] for m in _strict_lines(run_dir)] == [1]
    filled[0].unlink()
    train(config, run_dir, resume=True, log=None)
    a, b = load_checkpoint(tiny_run / CHECKPOINT_FILE), load_checkpoint(run_dir / CHECKPOINT_FILE)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [m["epoch"] for m in _strict_lines(run_dir)] == [1, 2]
