"""Validation split, model selection (best.pt), early stopping, EMA, clipping, accumulation, label
smoothing, CSV/TensorBoard logs, the progress bar and the evaluation report (docs/training.md)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_CONFIG, assert_user_error, console_script, merge
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gcnnkit.cli import main
from gcnnkit.core.errors import ConfigError, DataError
from gcnnkit.run.config import Config
from gcnnkit.run.data import load_dataset
from gcnnkit.run.data.splits import carve
from gcnnkit.run.ema import EMA
from gcnnkit.run.evaluation import evaluate_run
from gcnnkit.run.precision import Precision
from gcnnkit.run.report import class_report
from gcnnkit.run.rundir import BEST_FILE, CHECKPOINT_FILE, load_checkpoint, load_run, read_metrics
from gcnnkit.run.selection import Selector
from gcnnkit.run.steps import optimiser_step
from gcnnkit.run.training import train

PROTOCOLS = ("upright", "rotated", "rot90")
#: 3 epochs on 200 digits, a quarter of them held out for validation, selected by val_acc
VAL_RUN = {
    "data": {"name": "digits", "train_size": 200, "test_size": 120, "val_split": 0.25},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01, "select": "val_acc"},
}


def tiny(**sections) -> Config:
    config = merge(TINY_CONFIG, sections)
    for key in ("data", "train", "eval"):  # merge one level deeper for the nested sections used here
        if key in sections:
            config[key] = {**TINY_CONFIG.get(key, {}), **sections[key]}
    return Config.from_dict(config)


@pytest.fixture(scope="module")
def val_run(tmp_path_factory) -> Path:
    """A finished :data:`VAL_RUN` with EMA, gradient clipping and accumulation. Copy it before changing it."""
    run_dir = tmp_path_factory.mktemp("runs") / "val"
    train(
        tiny(**merge(VAL_RUN, {"train": {**VAL_RUN["train"], "ema": 0.8, "grad_clip": 1.0, "accumulate": 2}})),
        run_dir,
        log=None,
    )
    return run_dir


# ------------------------------------------------------------------------------ the split
@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(2, 30), min_size=2, max_size=6),
    fraction=st.floats(0.05, 0.9),
    seed=st.integers(0, 2**16),
)
def test_the_validation_split_is_stratified_disjoint_and_seeded(counts, fraction, seed):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    rest, val = carve(labels, fraction, seed, "data.val_split")
    assert sorted(rest.tolist() + val.tolist()) == list(range(len(labels)))  # disjoint, nothing lost
    assert val.tolist() == sorted(val.tolist()) and rest.tolist() == sorted(rest.tolist())
    for c, n in enumerate(counts):
        k = int((labels[val] == c).sum())
        assert k == min(n - 1, max(1, round(fraction * n)))  # every class keeps its share on both sides
    assert torch.equal(carve(labels, fraction, seed, "data.val_split")[1], val)


def test_the_split_depends_on_the_seed_and_recomputes_the_statistics():
    data = load_dataset(tiny().data)
    with_val = tiny(data={"val_split": 0.2}).data
    a, b = load_dataset(with_val, seed=0), load_dataset(with_val, seed=1)
    assert len(a.val) != len(b.val) or not torch.equal(a.val.labels, b.val.labels)  # another draw
    assert len(a.train) + len(a.val) == len(data.train) and torch.equal(a.test.labels, data.test.labels)
    assert torch.allclose(a.mean, a.train.images.mean(dim=(0, 2, 3)))
    assert data.val is None


def test_a_class_too_small_to_split_is_a_clear_error():
    with pytest.raises(DataError, match="data.val_split: class 1 has 1 image"):
        carve(torch.tensor([0, 0, 0, 0, 1]), 0.5, 0, "data.val_split")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"data": {"val_split": 1.0}}, "data.val_split: must be >= 0 and < 1, got 1.0"),
        (
            {"train": {"select": "test_acc"}},
            "train.select: 'test_acc' is not allowed; allowed: last, val_acc, val_loss",
        ),
        ({"train": {"early_stopping": {"patience": 0}}}, "train.early_stopping.patience: must be >= 1, got 0"),
        ({"train": {"early_stopping": {"metric": "loss"}}}, "train.early_stopping.metric: 'loss' is not allowed"),
        ({"train": {"grad_clip": 0}}, "train.grad_clip: must be > 0, got 0.0"),
        ({"train": {"accumulate": 0}}, "train.accumulate: must be >= 1, got 0"),
        (
            {"train": {"accumulate": 64, "batch_size": 32}},
            "train.accumulate: 64 micro-batches need train.batch_size >= 64",
        ),
        ({"train": {"ema": 1.0}}, "train.ema: must be > 0 and < 1, got 1.0"),
        ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing: must be >= 0 and < 1, got 1.0"),
        ({"train": {"tensorboard": "yes"}}, "train.tensorboard: expected true or false, got 'yes'"),
        ({"eval": {"test_each_epoch": 1}}, "eval.test_each_epoch: expected true or false or null, got 1"),
    ],
)
def test_bad_options_are_refused_naming_the_key(section, expected):
    with pytest.raises(ConfigError) as info:
        tiny(**section)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("train_section", "expected"),
    [
        ({"select": "val_loss"}, "train.select: val_loss needs a validation set; set data.val_split"),
        ({"early_stopping": {"patience": 2}}, "train.early_stopping: patience 2 needs a validation set"),
    ],
)
def test_selection_without_a_validation_set_is_refused_before_anything_is_written(tmp_path, train_section, expected):
    with pytest.raises(ConfigError, match=expected):
        train(tiny(train=train_section), tmp_path / "run", log=None)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------- a run with validation
def test_a_validated_run_selects_by_val_acc_and_tests_only_at_the_end(val_run):
    rows = read_metrics(val_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"val_loss", "val_acc"} <= set(r) and not any(k.startswith("test_") for k in r)
    best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))  # ties keep the earlier epoch
    summary = json.loads((val_run / "summary.json").read_text())
    assert (summary["select"], summary["selected_epoch"], summary["epochs_trained"]) == ("val_acc", best["epoch"], 3)
    assert summary["val"] == {"val_loss": best["val_loss"], "val_acc": best["val_acc"]}
    state = load_checkpoint(val_run / BEST_FILE)
    assert state["epoch"] == best["epoch"] and state["selection"] == {"metric": "val_acc", "value": best["val_acc"]}
    assert "optimizer" not in state
    # the summary's test accuracy is that of best.pt, which eval picks by default
    assert evaluate_run(val_run, device="cpu")["accuracy"] == pytest.approx(summary["accuracy"])
    assert evaluate_run(val_run, device="cpu")["checkpoint"] == BEST_FILE
    assert evaluate_run(val_run, device="cpu", weights="last")["epoch"] == 3


def test_the_validation_set_is_carved_from_the_training_set(val_run):
    lines = []
    train(
        tiny(**merge(VAL_RUN, {"train": {**VAL_RUN["train"], "epochs": 1}})), val_run.parent / "lines", log=lines.append
    )
    counts = re.search(r"digits (\d+) train / (\d+) val / 120 test", lines[0])
    assert int(counts[1]) + int(counts[2]) == 200 and abs(int(counts[2]) - 50) <= 5  # a quarter, class by class
    assert lines[1].startswith("epoch 1/1  loss ") and "  val loss " in lines[1] and "upright" not in lines[1]
    assert lines[-1].startswith("done: ") and "(epoch 1, best by val_acc)" in lines[-1]


def test_test_each_epoch_keeps_the_per_epoch_test_curves(tmp_path):
    summary = train(
        tiny(data=VAL_RUN["data"], train={"epochs": 2, "select": "val_loss"}, eval={"test_each_epoch": True}),
        tmp_path / "run",
        log=None,
    )
    rows = read_metrics(summary.run_dir)
    assert all({f"test_{p}" for p in PROTOCOLS} | {"val_loss", "val_acc"} <= set(r) for r in rows)
    best = min(rows, key=lambda r: (r["val_loss"], r["epoch"]))
    assert summary.selected_epoch == best["epoch"]
    assert summary.accuracy == {p: best[f"test_{p}"] for p in PROTOCOLS}  # the selected epoch's own test


def test_select_last_with_a_validation_set_tests_the_last_epoch_once(tmp_path):
    summary = train(tiny(data=VAL_RUN["data"], train={"epochs": 2}), tmp_path / "run", log=None)
    rows = read_metrics(tmp_path / "run")
    assert all("val_acc" in r and "test_upright" not in r for r in rows)
    assert not (tmp_path / "run" / BEST_FILE).exists()
    assert (summary.select, summary.selected_epoch) == ("last", 2)
    assert summary.val == {"val_loss": rows[-1]["val_loss"], "val_acc": rows[-1]["val_acc"]}
    assert evaluate_run(tmp_path / "run", device="cpu")["accuracy"] == pytest.approx(summary.accuracy)


def test_without_a_validation_set_nothing_changes(tiny_run):
    rows = read_metrics(tiny_run)
    assert all(not {"val_loss", "val_acc"} & set(r) and "test_upright" in r for r in rows)
    assert not (tiny_run / BEST_FILE).exists()
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert (summary["select"], summary["selected_epoch"], summary["stopped_early"], summary["val"]) == (
        "last",
        2,
        False,
        {},
    )


def test_metrics_csv_holds_the_rows_of_metrics_jsonl(val_run, tiny_run):
    for run in (val_run, tiny_run):
        with open(run / "metrics.csv", newline="") as f:
            table = list(csv.DictReader(f))
        rows = read_metrics(run)
        assert list(table[0]) == list(rows[0])
        assert [{k: str(v) for k, v in r.items()} for r in rows] == table


def test_ema_weights_are_saved_evaluated_and_differ_from_the_trained_ones(val_run):
    state = load_checkpoint(val_run / CHECKPOINT_FILE)
    assert state["ema"].keys() == state["model"].keys()
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    run = load_run(val_run, weights="last", with_data=False)
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, state["ema"][key]), key  # what eval tests is the average


# --------------------------------------------------------------------------- early stopping
def test_early_stopping_stops_and_a_resume_stays_stopped(tmp_path):
    config = tiny(
        data=VAL_RUN["data"],
        train={
            "epochs": 5,
            "select": "val_acc",
            "early_stopping": {"patience": 1, "metric": "val_loss", "min_delta": 9},
        },
    )
    lines = []
    summary = train(config, tmp_path / "run", log=lines.append)
    assert summary.epochs_trained == 2 and summary.stopped_early and summary.epochs == 5
    assert "early stopping after epoch 2: val_loss has not improved on " in "\n".join(lines)
    assert "for 1 epochs (patience 1)" in "\n".join(lines)
    lines = []
    again = train(config, tmp_path / "run", resume=True, log=lines.append)
    assert again.epochs_trained == 2 and again.accuracy == summary.accuracy
    assert any(line.startswith("early stopping after epoch 2") for line in lines)
    assert len(read_metrics(tmp_path / "run")) == 2


def test_selector_tracks_best_and_patience_separately():
    class T:  # the train section
        select, early_stopping = "val_acc", type("E", (), {"patience": 2, "metric": "val_loss", "min_delta": 0.0})

    s = Selector.for_config(T, has_val=True)
    picks = [
        s.update(e, {"val_acc": acc, "val_loss": loss})
        for e, (acc, loss) in enumerate([(0.5, 1.0), (0.5, 0.9), (0.6, 0.95), (0.4, 0.99)], 1)
    ]
    assert picks == [True, False, True, False] and s.best_epoch == 3
    assert s.stale == 2 and s.should_stop
    restored = Selector.for_config(T, has_val=True)
    restored.load_state_dict(s.state_dict())
    assert restored == s


def _interrupt_after_epoch_1(line: str) -> None:
    if line.startswith("epoch 1/"):
        raise KeyboardInterrupt


def test_resume_keeps_the_best_so_far_and_the_ema(tmp_path):
    config = tiny(data=VAL_RUN["data"], train={"epochs": 2, "select": "val_loss", "ema": 0.5, "schedule": "none"})
    straight = train(config, tmp_path / "straight", log=None)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "split", log=_interrupt_after_epoch_1)
    resumed = train(config, tmp_path / "split", resume=True, log=None)
    assert (resumed.selected_epoch, resumed.val, resumed.accuracy) == (
        straight.selected_epoch,
        straight.val,
        straight.accuracy,
    )
    for name in (BEST_FILE, CHECKPOINT_FILE):
        a, b = load_checkpoint(tmp_path / "straight" / name), load_checkpoint(tmp_path / "split" / name)
        for key in ("model", "ema") if name == CHECKPOINT_FILE else ("model",):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (name, key)


# ------------------------------------------------------------------ EMA, clipping, accumulation
def test_ema_update_is_the_moving_average():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(model, 0.9)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 3))  # moves the running statistics, counts a batch
    ema.update(model)
    now = model.state_dict()
    for key, value in ema.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[key] + 0.1 * now[key]), key
        else:
            assert torch.equal(value, now[key]), key  # num_batches_tracked is copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def _linear_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(5, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 5, generator=gen))
        model.bias.zero_()
    x = torch.randn(10, 5, generator=gen) * 10
    y = torch.randint(0, 3, (10,), generator=gen)
    return model, x, y


@pytest.mark.parametrize("accumulate", [2, 3, 10])
def test_accumulated_micro_batches_give_the_batch_gradient(accumulate):
    grads = []
    for k in (1, accumulate):
        model, x, y = _linear_problem()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        loss, logits = optimiser_step(
            model, x, y, nn.CrossEntropyLoss(), opt, Precision("none", torch.device("cpu")), accumulate=k
        )
        grads.append((model.weight.grad.clone(), loss.item(), logits))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert grads[0][1] == pytest.approx(grads[1][1], rel=1e-6)
    assert torch.allclose(grads[0][2], grads[1][2])


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("clip", [1e-3, 0.5, 3.0, 1e3])
def test_gradient_clipping_bounds_the_step(clip, scaled):
    """The step's size is min(gradient norm, clip); with a loss scaler (fp16) the gradients are
    unscaled before clipping, so the limit is in true units."""
    model, x, y = _linear_problem()
    precision = Precision("none", torch.device("cpu"))
    if scaled:
        precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    start = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    nn.CrossEntropyLoss()(model(x), y).backward()
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    opt.zero_grad()
    optimiser_step(model, x, y, nn.CrossEntropyLoss(), opt, precision, grad_clip=clip)
    step = math.sqrt(sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(model.parameters(), start, strict=True)))
    assert step == pytest.approx(min(norm, clip), rel=1e-4)


def test_label_smoothing_changes_the_training_loss(tmp_path):
    plain = train(tiny(data={"train_size": 64}, train={"epochs": 1}), tmp_path / "a", log=None)
    smooth = train(tiny(data={"train_size": 64}, train={"epochs": 1, "label_smoothing": 0.3}), tmp_path / "b", log=None)
    assert smooth.train_loss != plain.train_loss
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_FILE)["config"]["train"]["label_smoothing"] == 0.3


# ------------------------------------------------------------------------------ logging
def test_tensorboard_gets_every_metric(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(data={"train_size": 64}, train={"epochs": 2, "tensorboard": True}), tmp_path / "run", log=None)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    rows = read_metrics(tmp_path / "run")
    assert set(events.Tags()["scalars"]) == {k for k in rows[0] if k not in ("epoch", "device")}
    loss = events.Scalars("train_loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in rows])


def test_tensorboard_missing_is_one_line(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    result = CliRunner().invoke(
        main, ["train", str(tiny_config), "--out", str(tmp_path / "run"), "--set", "train.tensorboard=true"]
    )
    assert_user_error(
        result, "train.tensorboard: true needs the tensorboard package", "pip install 'gcnnkit[tensorboard]'"
    )
    assert not (tmp_path / "run").exists()


def test_a_progress_bar_on_a_terminal(tmp_path, tiny_config):
    """stderr on a pseudo-terminal: tqdm draws the epoch's batches there."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    # a terminal 80 columns wide (a fresh pseudo-terminal has 0, and tqdm fits the bar into that)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    cmd = [console_script(), "train", str(tiny_config), "--out", str(tmp_path / "run")]
    cmd += ["--set", "data.train_size=64", "--set", "train.epochs=1"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=follower, text=True, timeout=300)
    os.set_blocking(leader, False)
    drawn = b""
    while True:  # what the bar drew is waiting in the terminal (a few hundred bytes)
        try:
            chunk = os.read(leader, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    os.close(follower)
    assert proc.returncode == 0
    assert b"epoch 1/1" in drawn and b"/2 [" in drawn and b"batch" in drawn  # 64 images: 2 batches of 32
    assert "epoch 1/1  loss" in proc.stdout


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capfd):
    train(tiny(data={"train_size": 64}, train={"epochs": 1}), tmp_path / "run", log=None)
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------------------------- the report
def test_class_report_counts_and_auc():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    report = class_report(probs, labels, ["cat", "dog"])
    assert report["confusion"] == [[1, 1], [1, 2]]  # row: true, column: predicted
    assert report["per_class"] == {"cat": {"images": 2, "accuracy": 0.5}, "dog": {"images": 3, "accuracy": 2 / 3}}
    assert report["accuracy"] == 3 / 5
    # ROC AUC = P(score of a random positive > score of a random negative): 5 of the 6 pairs
    assert report["roc_auc"] == pytest.approx(5 / 6)
    assert class_report(probs[:2], torch.tensor([1, 1]), ["a", "b"])["roc_auc"] is None
    assert "roc_auc" not in class_report(torch.eye(3), torch.arange(3), ["a", "b", "c"])


def test_eval_report_cli(val_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["eval", str(val_run), "--report", "--json", "--out", str(tmp_path / "cm.png")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["checkpoint"] == BEST_FILE and list(out["report"]) == list(PROTOCOLS)
    for protocol, report in out["report"].items():
        assert sum(map(sum, report["confusion"])) == out["num_test"] == 120
        assert report["accuracy"] == pytest.approx(out["accuracy"][protocol])
        assert sum(c["images"] for c in report["per_class"].values()) == 120
    assert out["accuracy"] == pytest.approx(evaluate_run(val_run, device="cpu")["accuracy"])
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out["png"] == str(tmp_path / "cm.png")

    copy = Path(shutil.copytree(val_run, tmp_path / "copy"))
    text = runner.invoke(main, ["eval", str(copy), "--report", "--protocol", "rot90", "--checkpoint", "last"])
    assert text.exit_code == 0, text.output
    assert "epoch 3 (checkpoint.pt)" in text.stdout and "rot90: accuracy " in text.stdout
    assert "confusion matrix (rows: true class, columns: predicted class)" in text.stdout
    assert f"confusion matrices: {copy / 'confusion.png'}" in text.stdout and (copy / "confusion.png").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--out", "x.png"], "--out needs --report"),
        (["--report", "--rotation-sweep"], "--report and --rotation-sweep do not go together"),
        (["--checkpoint", "best"], "has no best.pt (it is kept only with train.select: val_acc or val_loss)"),
    ],
)
def test_eval_report_errors(tiny_run, args, expected):
    assert_user_error(CliRunner().invoke(main, ["eval", str(tiny_run), *args]), expected)


def test_report_out_with_several_runs_is_refused(tiny_run):
    result = CliRunner().invoke(main, ["eval", str(tiny_run), str(tiny_run), "--report", "--out", "x.png"])
    assert_user_error(result, "--out names one PNG, but 2 runs were given")


# ------------------------------------------------------------------------------ under torchrun
@pytest.mark.slow
def test_selection_ema_and_accumulation_under_ddp(tmp_path):
    """Two processes: sharded validation sums to a single process's, best.pt and the EMA are rank 0's."""
    import yaml
    from test_distributed import DDP_CONFIG, _check, torchrun

    from gcnnkit.run.evaluation import validate

    raw = merge(
        DDP_CONFIG,
        {
            "data": {**DDP_CONFIG["data"], "val_split": 0.25},
            "train": {**DDP_CONFIG["train"], "select": "val_acc", "ema": 0.9, "accumulate": 2, "grad_clip": 5.0},
            "eval": {**DDP_CONFIG["eval"], "batch_size": 10},  # 32 validation images: 4 batches over 2 processes
        },
    )
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    proc = torchrun("--no-python", console_script(), "train", "ddp.yaml", "--out", "run", cwd=tmp_path)
    _check(proc)
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / BEST_FILE).is_file() and "ema" in load_checkpoint(run_dir / CHECKPOINT_FILE)
    config = Config.from_dict(raw)
    val = load_dataset(config.data, seed=0).val  # data.val_split: 0.25, carved as in training
    run = load_run(run_dir, device="cpu")
    alone = validate(run.model, val, mean=run.mean, std=run.std, batch_size=10)
    assert alone == pytest.approx(summary["val"], abs=1e-6)
    assert evaluate_run(run_dir, device="cpu")["accuracy"] == pytest.approx(summary["accuracy"])


def test_export_takes_the_selected_weights(val_run, tmp_path):
    from gcnnkit.tools.export import export_run, load_state_export

    report = export_run(val_run, tmp_path / "model.state.pt", "state")
    assert report.rel_error < 1e-5
    best = load_checkpoint(val_run / BEST_FILE)
    assert torch.load(tmp_path / "model.state.pt", weights_only=True)["metadata"]["epoch"] == best["epoch"]
    plain = load_state_export(tmp_path / "model.state.pt")
    run = load_run(val_run, with_data=False)
    x = torch.rand(4, 1, 17, 17)
    with torch.no_grad():
        assert torch.allclose(plain(x), run.model(x), atol=1e-5)


def test_a_two_class_folder_gets_roc_auc_and_its_class_names(tmp_path):
    """A binary folder data set (0s and 1s of the digits as PNGs): the report names the classes by
    their folders and gives the ROC AUC; the run selects on its validation split."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "folder"
    for label, name in ((0, "zero"), (1, "one")):
        (root / name).mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:60]):
            pixels = np.kron((image * 255 / 16).astype(np.uint8), np.ones((2, 2), np.uint8))  # 16×16
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    config = {
        "seed": 0,
        "device": "cpu",
        "model": {"backend": "native", "group": "C4", "preset": "gcnn-tiny"},
        "data": {"name": "folder", "root": str(root), "num_workers": 0, "val_split": 0.25},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "select": "val_loss"},
        "eval": {"protocols": ["upright"]},
    }
    train(Config.from_dict(config), tmp_path / "run", log=None)
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--report", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["report"]["upright"]
    assert report["classes"] == sorted(["zero", "one"]) and set(report["per_class"]) == {"zero", "one"}
    assert 0.0 <= report["roc_auc"] <= 1.0
    text = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--report"]).stdout
    assert f"upright: accuracy {100 * report['accuracy']:.2f}%, ROC AUC {report['roc_auc']:.4f}" in text
