"""Training end to end: run directory, metrics, atomic checkpoints, resume, evaluation, check."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIG, merge

from gcnnkit.core.errors import ConfigError, GcnnkitError
from gcnnkit.run.check import check_equivariance
from gcnnkit.run.config import Config, load_config
from gcnnkit.run.evaluation import evaluate_run
from gcnnkit.run.rundir import CHECKPOINT_FILE, build_model_from_config, load_checkpoint, read_metrics, save_checkpoint
from gcnnkit.run.training import lr_factor, train

BROKEN_LAYERS = [  # 2×2/stride-2 pooling on the odd 17×17 grid drops the last row and column
    {"type": "lift", "out": 4, "kernel": 3},
    "relu",
    {"type": "pool", "mode": "max", "kernel": 2, "stride": 2},
    {"type": "group_pool"},
    {"type": "global_pool"},
    {"type": "linear"},
]


def tiny(**sections) -> Config:
    return Config.from_dict(merge(TINY_CONFIG, sections))


def _plain(value) -> bool:
    """True for what ``weights_only`` loading allows and our checkpoints promise: tensors and plain values."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items()) or all(
            isinstance(k, int) and _plain(v) for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))


# ------------------------------------------------------------------------------- a run
def test_run_directory_holds_config_metrics_checkpoint_summary(tiny_run):
    assert sorted(p.name for p in tiny_run.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "data.json",
        "metrics.csv",
        "metrics.jsonl",
        "summary.json",
    ]
    assert yaml.safe_load((tiny_run / "config.yaml").read_text()) == Config.from_dict(TINY_CONFIG).to_dict()

    metrics = read_metrics(tiny_run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert set(m) == {
            "epoch",
            "train_loss",
            "train_acc",
            "test_upright",
            "test_rotated",
            "test_rot90",
            "lr",
            "epoch_seconds",
            "device",
        }
        assert m["device"] == "cpu" and m["epoch_seconds"] > 0 and math.isfinite(m["train_loss"])
        assert all(0.0 <= m[k] <= 1.0 for k in ("train_acc", "test_upright", "test_rotated", "test_rot90"))
    assert metrics[0]["lr"] == pytest.approx(0.01) and metrics[1]["lr"] < metrics[0]["lr"]  # cosine schedule

    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["accuracy"] == {p: metrics[-1][f"test_{p}"] for p in ("upright", "rotated", "rot90")}
    assert (summary["group"], summary["backend"], summary["preset"], summary["data"]) == (
        "C4",
        "native",
        "gcnn-tiny",
        "digits",
    )
    assert (summary["epochs"], summary["seed"], summary["device"]) == (2, 0, "cpu")
    assert summary["params"] == build_model_from_config(Config.from_dict(TINY_CONFIG)).num_parameters()
    assert summary["wall_time_s"] > 0 and summary["run_dir"] == str(tiny_run)


def test_checkpoint_loads_with_weights_only_and_holds_plain_values(tiny_run):
    state = torch.load(tiny_run / CHECKPOINT_FILE, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config"} <= set(state)
    assert state["epoch"] == 2
    assert state["config"] == Config.from_dict(TINY_CONFIG).to_dict()
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert _plain(state)
    model = build_model_from_config(Config.from_dict(state["config"]))
    model.load_state_dict(state["model"])  # every weight is there


def test_training_learns(tmp_path):
    """Not a benchmark: the loop optimises (the tiny model fits 32 images better and better)."""
    config = tiny(
        data={"train_size": 32}, train={"epochs": 8, "lr": 0.05, "schedule": "none"}, eval={"protocols": ["upright"]}
    )
    metrics = read_metrics(train(config, out_dir=tmp_path / "run", log=None).run_dir)
    assert metrics[-1]["train_loss"] < 0.85 * metrics[0]["train_loss"]


@pytest.mark.slow
def test_the_default_jobs_show_the_g_cnn_advantage(tmp_path, monkeypatch):
    """The README's claim: on digits, the C4 G-CNN is as good upright and far better rotated by 90°."""
    from conftest import CONFIGS

    monkeypatch.chdir(tmp_path)
    c4 = train(CONFIGS / "digits_c4.yaml", out_dir="c4", log=None).accuracy
    cnn = train(CONFIGS / "digits_cnn.yaml", out_dir="cnn", log=None).accuracy
    assert c4["upright"] > 0.95 and cnn["upright"] > 0.9
    assert c4["rot90"] == c4["upright"]
    assert c4["rot90"] > cnn["rot90"] + 0.3
    assert c4["rotated"] > cnn["rotated"]


def test_printed_lines(tmp_path):
    lines = []
    summary = train(tiny(train={"epochs": 1}), out_dir=tmp_path / "run", log=lines.append)
    assert lines[1].startswith("epoch 1/1  loss ")
    last = lines[-1]
    for part in (
        "group C4",
        "backend native",
        "preset gcnn-tiny",
        f"{summary.params:,} params",
        "upright ",
        "rotated ",
        f"run dir {tmp_path / 'run'}",
    ):
        assert part in last
    assert re.search(r", \d+\.\ds on cpu,", last)


def test_default_run_dir_is_named_after_the_config(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = train(load_config(tiny_config.resolve(), ["train.epochs=1"]), log=None)
    assert re.fullmatch(r"runs/tiny-\d{8}-\d{6}", summary.run_dir)
    assert (tmp_path / summary.run_dir / "summary.json").is_file()


def test_a_run_dir_is_not_overwritten(tiny_run):
    with pytest.raises(ConfigError, match="already holds a run; add --resume to continue it"):
        train(tiny(), out_dir=tiny_run, log=None)


@pytest.mark.parametrize("augment", ["rot90", "rotate", "flip"])
def test_augmentations_train(tmp_path, augment):
    summary = train(tiny(data={"augment": augment, "train_size": 64}, train={"epochs": 1}), tmp_path / "r", log=None)
    assert math.isfinite(summary.train_loss)


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("adamw", "onecycle"), ("adam", "none")])
def test_optimizers_and_schedules_train(tmp_path, optimizer, schedule):
    config = tiny(
        train={"epochs": 1, "optimizer": optimizer, "schedule": schedule, "label_smoothing": 0.1},
        data={"train_size": 64},
    )
    assert math.isfinite(train(config, tmp_path / "r", log=None).train_loss)


def test_bf16_autocast_on_cpu(tmp_path):
    config = tiny(train={"epochs": 1, "mixed_precision": "bf16"}, data={"train_size": 64})
    assert math.isfinite(train(config, tmp_path / "r", log=None).train_loss)


def test_channels_last_trains_the_same_model(tmp_path):
    """channels_last changes the layout of every convolution, not the run: same losses, same weights."""
    runs = {}
    for flag in (False, True):
        # plain SGD: Adam's g/√v would magnify the float rounding of another summation order
        config = tiny(train={"epochs": 1, "optimizer": "sgd", "channels_last": flag}, data={"train_size": 64})
        summary = train(config, tmp_path / str(flag), log=None)
        state = torch.load(tmp_path / str(flag) / "checkpoint.pt", weights_only=True)["model"]
        runs[flag] = summary.train_loss, state
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=1e-4, atol=1e-5)


def test_channels_last_with_bf16_autocast(tmp_path):
    config = tiny(train={"epochs": 1, "channels_last": True, "mixed_precision": "bf16"}, data={"train_size": 64})
    assert math.isfinite(train(config, tmp_path / "r", log=None).train_loss)


def test_fp16_needs_cuda(tmp_path):
    with pytest.raises(ConfigError, match="train.mixed_precision: fp16 needs a CUDA device, but the device is cpu"):
        train(tiny(train={"mixed_precision": "fp16"}), tmp_path / "r", log=None)


def test_missing_cuda_device_is_a_config_error(tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: cuda:0 without CUDA
    with pytest.raises(ConfigError, match=rf"device: '{missing}' (is not available|does not exist)"):
        train(tiny(device=missing), tmp_path / "r", log=None)


@pytest.mark.parametrize(
    ("schedule", "at", "expected"),
    [
        ("none", [0, 50, 100], [1.0, 1.0, 1.0]),
        ("cosine", [0, 50, 100], [1.0, 0.5, 0.0]),
        ("step", [0, 39, 40, 80], [1.0, 1.0, 0.5, 0.25]),  # 10 steps per epoch, step_size 4 epochs
        ("onecycle", [0, 30, 100], [1 / 25, 1.0, 1 / 25e4]),
    ],
)
def test_lr_schedules(schedule, at, expected):
    config = tiny(train={"epochs": 10, "schedule": schedule, "step_size": 4, "gamma": 0.5})
    assert [lr_factor(config, step, steps_per_epoch=10) for step in at] == pytest.approx(expected)


# ------------------------------------------------------------------------------- checkpoints
def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"format": 1, "epoch": 1})
    assert not (tmp_path / "checkpoint.pt.tmp").exists()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": 1, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a zip")
    with pytest.raises(GcnnkitError, match="checkpoint.pt: not a readable gcnnkit checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")


# -------------------------------------------------------------------------------------- resume
def _interrupt_after_epoch_1(line: str) -> None:
    if line.startswith("epoch 1/"):  # logged after epoch 1's checkpoint is written
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    "how",
    [
        "extend",  # train 1 epoch, then resume with train.epochs=2 (constant lr: schedules span the epochs)
        "interrupt",  # train 2 epochs (cosine), interrupted after epoch 1, then resume
    ],
)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, how):
    schedule = "none" if how == "extend" else "cosine"
    config = tiny(data={"augment": "flip"}, train={"schedule": schedule})  # random order, augmentation
    straight = train(config, tmp_path / "straight", log=None)
    if how == "extend":
        train(tiny(data={"augment": "flip"}, train={"schedule": schedule, "epochs": 1}), tmp_path / "split", log=None)
    else:
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path / "split", log=_interrupt_after_epoch_1)
    lines = []
    resumed = train(config, tmp_path / "split", resume=True, log=lines.append)
    assert lines[0] == f"resuming {tmp_path / 'split'} after epoch 1 of 2"

    a = load_checkpoint(Path(straight.run_dir) / CHECKPOINT_FILE)
    b = load_checkpoint(Path(resumed.run_dir) / CHECKPOINT_FILE)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    strip = [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in read_metrics(straight.run_dir)]
    assert [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in read_metrics(resumed.run_dir)] == strip
    assert resumed.accuracy == straight.accuracy


def test_extending_a_finished_cosine_run_continues_on_the_stretched_schedule(tmp_path):
    """The first step after extending a run takes the stretched schedule's rate, not the old
    schedule's final rate (0 for cosine), which the optimizer state would otherwise keep."""
    train(tiny(train={"schedule": "cosine", "epochs": 1}), tmp_path / "run", log=None)
    extended = tiny(train={"schedule": "cosine", "epochs": 3})
    train(extended, tmp_path / "run", resume=True, log=None)
    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    steps = math.ceil(extended.data.train_size / extended.train.batch_size)
    assert metrics[1]["lr"] == pytest.approx(extended.train.lr * lr_factor(extended, steps, steps))
    assert metrics[1]["lr"] > 0.0


def test_a_run_stopped_before_its_first_epoch_can_start_afresh(tmp_path):
    def stop_at_start(line: str) -> None:
        if "run dir" in line:  # the first line, logged before any epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(train={"epochs": 1}), tmp_path / "run", log=stop_at_start)
    assert (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    with pytest.raises(ConfigError, match="start it afresh without --resume"):
        train(tiny(train={"epochs": 1}), tmp_path / "run", resume=True, log=None)
    summary = train(tiny(train={"epochs": 1}), tmp_path / "run", log=None)
    assert (tmp_path / "run" / CHECKPOINT_FILE).exists() and summary.accuracy


def test_resume_drops_metrics_of_epochs_without_checkpoint(tiny_run_copy):
    with open(tiny_run_copy / "metrics.jsonl", "a") as f:  # a crash after logging epoch 3, before its checkpoint
        f.write(json.dumps({"epoch": 3, "train_loss": 0.0}) + "\n")
    train(tiny(train={"epochs": 3}), tiny_run_copy, resume=True, log=None)
    metrics = read_metrics(tiny_run_copy)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["train_loss"] > 0.0  # the real epoch 3
    assert yaml.safe_load((tiny_run_copy / "config.yaml").read_text())["train"]["epochs"] == 3


def test_resuming_a_finished_run_without_more_epochs_changes_nothing(tiny_run_copy):
    before = (tiny_run_copy / "metrics.jsonl").read_text()
    summary = train(tiny(), tiny_run_copy, resume=True, log=None)
    assert (tiny_run_copy / "metrics.jsonl").read_text() == before
    assert summary.accuracy["upright"] == read_metrics(tiny_run_copy)[-1]["test_upright"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"train": {"lr": 0.5}},
            "--resume: the config differs from the run's in train.lr: run has 0.01, given 0.5; "
            "only train.epochs may change",
        ),
        ({"model": {"group": "D4"}, "seed": 3}, "in seed: run has 0, given 3 (and 1 more)"),
        ({"train": {"epochs": 1}}, "train.epochs: 1 is fewer than the 2 epochs"),
    ],
)
def test_resume_refuses_a_different_config(tiny_run_copy, changes, expected):
    with pytest.raises(ConfigError) as info:
        train(tiny(**changes), tiny_run_copy, resume=True, log=None)
    assert expected in str(info.value)


def test_resume_needs_a_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="--resume needs --out RUN_DIR"):
        train(tiny(), resume=True, log=None)
    with pytest.raises(ConfigError, match="is not a run directory"):
        train(tiny(), tmp_path, resume=True, log=None)


# ---------------------------------------------------------------------------------- evaluation
def test_evaluate_run_reproduces_the_last_epoch(tiny_run):
    result = evaluate_run(tiny_run)
    last = read_metrics(tiny_run)[-1]
    assert result["accuracy"] == {p: last[f"test_{p}"] for p in ("upright", "rotated", "rot90")}
    assert (result["epoch"], result["num_test"], result["group"], result["data"]) == (2, 120, "C4", "digits")


def test_c4_model_is_invariant_to_quarter_turns_of_the_test_set(tiny_run):
    accuracy = evaluate_run(tiny_run, ["upright", "rot90", "rot180", "rot270"])["accuracy"]
    assert accuracy["rot90"] == accuracy["rot180"] == accuracy["rot270"] == accuracy["upright"]


def test_evaluate_run_errors(tmp_path, tiny_run):
    with pytest.raises(GcnnkitError, match="not a run directory with a checkpoint.pt"):
        evaluate_run(tmp_path)
    with pytest.raises(GcnnkitError, match="protocol 'sideways' is not allowed; allowed: upright,"):
        evaluate_run(tiny_run, ["sideways"])


def test_check_equivariance_of_a_g_cnn():
    report = check_equivariance(tiny())
    assert report.passed and report.max_error < 1e-5
    assert [r.name for r in report.results][-1] == "end-to-end"
    data = report.to_dict()
    assert data["max_rel_error"] == report.max_error and len(data["layers"]) == len(report.results)


def test_check_equivariance_finds_a_misplaced_pool():
    model = {"preset": None, "layers": BROKEN_LAYERS, "allow_non_equivariant": True}
    report = check_equivariance(tiny(model=model))
    assert not report.passed
    assert report.worst.name == "2.pool" and report.max_error > 0.01
    assert report.results[-1].max_error > 1e-5  # the whole network is not invariant either
    assert all(r.max_error < 1e-5 for r in report.results[:2])  # lift and relu are fine


def test_check_equivariance_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_equivariance(tiny())
    assert torch.equal(torch.rand(3), expected)
