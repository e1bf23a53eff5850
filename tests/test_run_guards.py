"""What guards a training run: divergence, strict-JSON metrics, signals, the run-directory lock,
checkpoint-loading messages, and eval/export never downloading (docs/reliability.md).

Crashes and resumes (kill -9, SIGTERM in a real process, full disk) are in test_crash_resume.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_CONFIG, assert_user_error, merge

from gcnnkit.cli import main
from gcnnkit.core.errors import ConfigError, DivergenceError, GcnnkitError
from gcnnkit.run import training
from gcnnkit.run.config import Config
from gcnnkit.run.divergence import DivergenceGuard, first_nonfinite
from gcnnkit.run.lock import LOCK_FILE, RunLock
from gcnnkit.run.metrics import metrics_line, write_metrics
from gcnnkit.run.rundir import CHECKPOINT_FILE, load_checkpoint, load_run, read_metrics, save_checkpoint
from gcnnkit.run.signals import Interrupted, SignalGuard
from gcnnkit.run.training import train


def tiny(**sections) -> Config:
    return Config.from_dict(merge(TINY_CONFIG, sections))


def _strict_json(line: str):
    def refuse(constant: str):
        raise AssertionError(f"bare {constant} in {line!r}")

    return json.loads(line, parse_constant=refuse)


# -------------------------------------------------------------------------------- divergence
def test_a_loss_that_becomes_nan_stops_the_run_before_any_checkpoint(tmp_path):
    with pytest.raises(DivergenceError) as err:
        train(tiny(train={"lr": 1e308}), tmp_path / "run", log=None)
    message = str(err.value)
    assert message.startswith("diverged: the training loss became nan at epoch 1, step ")
    assert "no checkpoint" in message and "lower train.lr (now 1e+308)" in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""
    assert not (tmp_path / "run" / "summary.json").exists()


def _diverge_in_epoch_2(monkeypatch, how: str) -> None:
    """Make the real ``_train_epoch`` diverge in epoch 2: a huge learning rate (a non-finite loss, or an
    update too large for float32) or, after a finite epoch, an infinite weight."""
    original = training._train_epoch

    def patched(model, data, config, epoch, optimizer, *args):
        if epoch == 2 and how in ("loss", "overflow"):
            for group in optimizer.param_groups:  # 1e30: weights overflow float32; 1e308: Adam's step size does
                group["lr"] = 1e30 if how == "loss" else 1e308
        out = original(model, data, config, epoch, optimizer, *args)
        if epoch == 2 and how == "weights":
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(training, "_train_epoch", patched)


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("loss", "the training loss became "),
        ("overflow", "the optimizer's update overflowed at epoch 2, step 1 of 7"),
        ("weights", "the weights hold inf after epoch 2"),
    ],
)
def test_a_run_that_diverges_later_keeps_its_last_finite_checkpoint(tmp_path, monkeypatch, how, said):
    _diverge_in_epoch_2(monkeypatch, how)
    run_dir = tmp_path / "run"
    with pytest.raises(DivergenceError) as err:
        train(tiny(train={"epochs": 3}), run_dir, log=None)
    assert said in str(err.value)
    assert f"the last finite checkpoint (epoch 1) stays in {run_dir}" in str(err.value)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert checkpoint["epoch"] == 1 and first_nonfinite(checkpoint["model"]) is None
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1]


def test_a_diverged_run_exits_3_with_one_line(tiny_config, tmp_path):
    result = CliRunner().invoke(
        main, ["train", str(tiny_config), "--set", "train.lr=1e308", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: diverged: the training loss became nan at epoch 1")
    assert "Traceback" not in result.output


def test_the_guard_reads_the_loss_flag_every_n_steps_and_names_the_first_bad_step(tmp_path):
    guard = DivergenceGuard(tmp_path, lr=0.1, precision="bf16", device=torch.device("cpu"), saved_epoch=4)
    guard.every = 4  # as on CUDA or under torchrun
    guard.start_epoch(5, steps=10)
    for step, loss in enumerate([1.0, float("inf"), 2.0], 1):
        guard.observe(step, torch.tensor(loss))  # no read before step 4
    with pytest.raises(DivergenceError) as err:
        guard.observe(4, torch.tensor(float("nan")))
    assert "became nan at epoch 5, step 2 of 10" in str(err.value)
    assert "(epoch 4)" in str(err.value) and "train.mixed_precision: none; now bf16" in str(err.value)


def test_non_finite_optimizer_state_is_divergence_too(tmp_path):
    """Adam's second moments can overflow while the weights stay finite; such a state is not saved either."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param])
    param.grad = torch.tensor([1.0, 1e30, 1.0])  # squared: inf in float32
    optimizer.step()
    guard = DivergenceGuard(tmp_path, lr=1e6, precision="fp32", device=torch.device("cpu"))
    guard.start_epoch(3, steps=7)
    with pytest.raises(
        DivergenceError, match=r"the optimizer state holds inf after epoch 3 \(exp_avg_sq of parameter 0\)"
    ):
        guard.check_weights({"w": param.detach()}, optimizer)


def test_first_nonfinite_names_the_tensor():
    state = {"a": torch.ones(2), "steps": torch.tensor(3), "b": torch.tensor([0.0, -float("inf")])}
    assert first_nonfinite(state) == ("b", "inf")
    assert first_nonfinite({"a": torch.ones(2)}) is None


# ------------------------------------------------------------------------------- metrics file
def test_metrics_lines_are_strict_json_even_for_non_finite_values(tmp_path):
    line = metrics_line({"epoch": 1, "train_loss": float("nan"), "lr": float("inf"), "x": [-float("inf")]})
    assert _strict_json(line) == {"epoch": 1, "train_loss": "nan", "lr": "inf", "x": ["-inf"]}
    write_metrics(tmp_path, [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": float("nan")}])
    assert [_strict_json(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_reading_a_garbled_metrics_file_is_one_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "tr')
    with pytest.raises(GcnnkitError, match=r"metrics.jsonl: line 2 is not JSON \(.*\); --resume rewrites the file$"):
        read_metrics(tmp_path)


def test_a_fresh_run_starts_an_empty_metrics_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 9.0}\n{"epoch": 1, "trunc')  # a stopped run's
    train(tiny(), run_dir, log=None)
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2]
    assert read_metrics(run_dir)[0]["train_loss"] != 9.0


def test_the_checkpoint_carries_the_metrics_history(tiny_run):
    history = load_checkpoint(tiny_run / CHECKPOINT_FILE)["metrics"]
    assert history == read_metrics(tiny_run)
    assert (tiny_run / "metrics.jsonl").read_text() == "".join(metrics_line(m) for m in history)


# ------------------------------------------------------------------------------------ signals
def test_signals_are_deferred_while_a_checkpoint_is_written():
    with SignalGuard() as guard:
        with pytest.raises(Interrupted) as err:
            with guard.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                written = True  # the block finishes before the signal is raised
        assert written and err.value.exit_code == 143 and err.value.signal_name == "SIGTERM"


def test_a_sigterm_during_the_save_lets_it_finish_then_stops(tmp_path, monkeypatch):
    original = training.save_checkpoint

    def save_and_get_terminated(path, state):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the save
        original(path, state)

    monkeypatch.setattr(training, "save_checkpoint", save_and_get_terminated)
    lines = []
    with pytest.raises(Interrupted) as err:
        train(tiny(), tmp_path / "run", log=lines.append)
    assert err.value.exit_code == 143
    assert lines[-1].startswith(f"interrupted by SIGTERM after 1 of 2 epochs (saved in {tmp_path / 'run'})")
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["epoch"] == 1
    assert [m["epoch"] for m in read_metrics(tmp_path / "run")] == [1]  # written too, before the stop


def test_train_restores_the_previous_signal_handlers(tmp_path):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGHUP, mine)
    try:
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        train(tiny(train={"epochs": 1}), tmp_path / "run", log=None)
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_caller_handler_is_left_alone(tmp_path):
    """A SIGHUP ignored (as under nohup) stays ignored during training."""
    seen = []
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:

        def poke(line: str) -> None:
            if line.startswith("epoch 1/"):
                os.kill(os.getpid(), signal.SIGHUP)
                seen.append(line)

        train(tiny(train={"epochs": 1}), tmp_path / "run", log=poke)  # finishes
        assert seen and (tmp_path / "run" / "summary.json").exists()
    finally:
        signal.signal(signal.SIGHUP, previous)


# -------------------------------------------------------------------------------------- lock
def test_a_second_writer_is_refused_naming_the_holder(tiny_run_copy):
    with RunLock() as held:
        held.acquire(tiny_run_copy)
        assert (tiny_run_copy / LOCK_FILE).read_text().strip() == str(os.getpid())
        expected = f"--out {tiny_run_copy}: another gcnnkit train (pid {os.getpid()}) is writing this run directory"
        with pytest.raises(ConfigError, match=re.escape(expected)):
            train(tiny(train={"epochs": 3}), tiny_run_copy, resume=True, log=None)
        with pytest.raises(ConfigError, match=re.escape(expected)):
            train(tiny(), tiny_run_copy, log=None)
    assert not (tiny_run_copy / LOCK_FILE).exists()  # released and removed
    train(tiny(train={"epochs": 3}), tiny_run_copy, resume=True, log=None)
    assert [m["epoch"] for m in read_metrics(tiny_run_copy)] == [1, 2, 3]


def test_a_lock_left_by_a_crash_does_not_block(tiny_run_copy):
    (tiny_run_copy / LOCK_FILE).write_text("999999\n")  # the file of a killed run: no process holds it
    train(tiny(train={"epochs": 3}), tiny_run_copy, resume=True, log=None)
    assert not (tiny_run_copy / LOCK_FILE).exists()


def test_a_locked_run_is_refused_by_the_cli_in_one_line(tiny_run_copy, tiny_config):
    with RunLock() as held:
        held.acquire(tiny_run_copy)
        result = CliRunner().invoke(main, ["train", str(tiny_config), "--out", str(tiny_run_copy), "--resume"])
    assert_user_error(result, str(tiny_run_copy), f"pid {os.getpid()}", "another gcnnkit train")


# -------------------------------------------------------------------------------- checkpoints
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"format": 1, "model": _Evil()}, "holds objects other than tensors and plain values (it names "),
        (b"not a checkpoint at all", "not a readable gcnnkit checkpoint"),
    ],
)
def test_a_foreign_file_is_refused_without_advice_to_unpickle_it(tmp_path, payload, expected):
    path = tmp_path / CHECKPOINT_FILE
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(GcnnkitError) as err:
        load_checkpoint(path)
    assert expected in str(err.value) and "will not be loaded" in str(err.value)
    assert "weights_only" not in str(err.value) and len(str(err.value).splitlines()) == 1


def _edit_checkpoint(run_dir: Path, edit) -> None:
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    edit(state)
    save_checkpoint(run_dir / CHECKPOINT_FILE, state)


def _widen_first(state):
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(*state["model"][key].shape[:-1], 99)


def _nan_first(state):
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.pop("model"), "an incomplete gcnnkit checkpoint: it has no 'model' entry"),
        (lambda s: s.update(model=[1, 2]), "it has a list as its 'model' entry"),
        (_widen_first, "the weights do not fit the model its config describes: "),
        (lambda s: s["model"].pop(next(iter(s["model"]))), "the checkpoint has no tensor "),
        (lambda s: s["model"].update(extra=torch.ones(1)), "the checkpoint has an unexpected tensor extra"),
        (_nan_first, "the weights hold nan"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "export", "resume"])
def test_a_damaged_checkpoint_is_one_line_exit_2(tiny_run_copy, tiny_config, tmp_path, edit, expected, command):
    _edit_checkpoint(tiny_run_copy, edit)
    args = {
        "eval": ["eval", str(tiny_run_copy)],
        "export": ["export", str(tiny_run_copy), "--out", str(tmp_path / "m.ts")],
        "resume": ["train", str(tiny_config), "--out", str(tiny_run_copy), "--resume", "--set", "train.epochs=3"],
    }[command]
    assert_user_error(CliRunner().invoke(main, args), expected)


def test_a_checkpoint_without_optimizer_state_cannot_resume_but_can_be_evaluated(tiny_run_copy, tiny_config):
    _edit_checkpoint(tiny_run_copy, lambda s: s.pop("optimizer"))
    args = ["train", str(tiny_config), "--out", str(tiny_run_copy), "--resume", "--set", "train.epochs=3"]
    assert_user_error(CliRunner().invoke(main, args), "has no 'optimizer' entry, so the run cannot continue")
    assert CliRunner().invoke(main, ["eval", str(tiny_run_copy)]).exit_code == 0


# ------------------------------------------------------------------- eval never downloads
def test_eval_never_downloads_or_writes_where_a_checkpoint_says(tiny_run_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"

    def point_elsewhere(state):
        state["config"]["data"].update(name="MNIST", root=str(elsewhere), download=True)

    _edit_checkpoint(tiny_run_copy, point_elsewhere)
    for args in (["eval", str(tiny_run_copy)], ["eval", str(tiny_run_copy), "--rotation-sweep", "--step", "90"]):
        assert_user_error(CliRunner().invoke(main, args), "download: false")
    assert not elsewhere.exists()
    run = load_run(tiny_run_copy, with_data=False)  # what export reads: no data at all
    assert run.test is None and not elsewhere.exists()


def test_eval_reads_data_from_the_stored_root_read_only(tiny_run_copy, mnist_root, tmp_path):
    """With the files present, the stored root is read (download forced off) and nothing is written there."""
    before = sorted(str(p) for p in mnist_root.rglob("*"))

    def mnist(state):
        state["config"]["data"].update(name="MNIST", root=str(mnist_root), download=True, test_size=50)

    _edit_checkpoint(tiny_run_copy, mnist)
    try:
        run = load_run(tiny_run_copy, with_data=True)
    except GcnnkitError as exc:  # the tiny digits model may not fit 28x28 images; the data was read first
        assert "weights do not fit" in str(exc) or "cannot run" in str(exc)
    else:
        assert len(run.test) == 50
    assert sorted(str(p) for p in mnist_root.rglob("*")) == before
    shutil.rmtree(tiny_run_copy)
