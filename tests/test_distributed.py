"""Data-parallel training under torchrun (2 CPU processes, gloo): one run directory written by
rank 0, checkpoints that evaluate like a single process's, metrics reduced across processes,
deterministic resume; and the pure helpers of :mod:`gcnnkit.run.distributed`.

The multi-process tests start ``python -m torch.distributed.run --standalone --nproc_per_node=2``
as a subprocess: once with the ``gcnnkit`` console script (the user's command line), once with
this file as the worker script (``python tests/test_distributed.py worker OUT``), which runs
several trainings and checks in one launch, in a process group it creates itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import console_script

from gcnnkit.core.errors import ConfigError
from gcnnkit.run import distributed
from gcnnkit.run.config import Config

HERE = Path(__file__).resolve()

#: A digits job of a few seconds; ``flip`` augmentation exercises the shared random stream; a
#: constant learning rate lets a 1-epoch run resumed to 2 epochs match a 2-epoch run.
DDP_CONFIG: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "model": {"backend": "native", "group": "C4", "preset": "gcnn-tiny"},
    "data": {"name": "digits", "train_size": 128, "test_size": 120, "augment": "flip"},
    "train": {"epochs": 2, "batch_size": 8, "optimizer": "adam", "lr": 0.01, "schedule": "none"},
    # 50 does not divide 120: rank 0 evaluates batches 0 and 2 (50 + 20 images), rank 1 batch 1
    "eval": {"protocols": ["upright", "rotated", "rot90"], "batch_size": 50},
}
#: 129 = 16 batches of 8 + 1: in the last step rank 1 has no sample and runs a stand-in.
WORKER_CONFIG: dict[str, Any] = {**DDP_CONFIG, "data": {**DDP_CONFIG["data"], "train_size": 129}}
#: Without batch norm (whose batch statistics are per process) nor dropout, a DDP step is the
#: single-process step up to float rounding: same global batch, same augmentation, mean loss.
NO_BN_CONFIG: dict[str, Any] = {
    **WORKER_CONFIG,
    "model": {
        "backend": "native",
        "group": "C4",
        "layers": [
            {"type": "lift", "out": 6, "kernel": 3},
            "relu",
            {"type": "gconv", "out": 6, "kernel": 3},
            "relu",
            {"type": "group_pool"},
            {"type": "global_pool"},
            {"type": "linear"},
        ],
    },
    "train": {**WORKER_CONFIG["train"], "epochs": 1, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9},
}


def _config(base: dict[str, Any], **train: Any) -> Config:
    return Config.from_dict({**base, "train": {**base["train"], **train}})


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc ARGS`` (a free port: parallel test runs do not collide)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _without_time(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in metrics]


# ---------------------------------------------------------------------- the pure helpers
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 17])
def test_shards_cover_a_batch_once_and_weight_to_its_mean(world, size):
    pieces, weights = [], []
    for rank in range(world):
        part, weight = distributed.shard(size, distributed.Context(rank=rank, world_size=world))
        weights.append(weight)
        if weight:
            pieces.append(range(size)[part])
        else:  # a stand-in: one real index, no weight
            assert part == slice(0, 1) and rank >= size
    assert sorted(i for piece in pieces for i in piece) == list(range(size))  # every sample once
    assert [len(p) for p in pieces] == sorted((len(p) for p in pieces), reverse=True)  # rank 0's share is largest
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    # DDP averages the processes' weighted mean losses: every sample's loss counts 1/size
    for weight, piece in zip([w for w in weights if w], pieces, strict=True):
        assert weight / (world * len(piece)) == pytest.approx(1 / size)


def test_a_single_process_is_not_distributed(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched()
    ctx = distributed.setup(torch.device("cpu"))
    assert ctx == distributed.SINGLE and ctx.is_main and not ctx.enabled
    assert distributed.shard(5, ctx) == (slice(0, 5), 1.0)
    assert distributed.on_main(lambda: 42, ctx) == 42
    assert distributed.all_sum([torch.tensor(2.5), 3], ctx, torch.device("cpu")) == [2.5, 3.0]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, ctx, torch.device("cpu"), (1, 2, 2)) is model
    distributed.teardown(ctx)  # nothing to do


def test_devices_under_torchrun(monkeypatch):
    from gcnnkit.run.rundir import resolve_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched()
    rank = distributed.local_rank()
    assert rank == 1
    assert resolve_device("cpu", local_rank=rank) == torch.device("cpu")
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device: 'cuda:1' names one GPU, but under torchrun"):
            resolve_device("cuda:1", local_rank=rank)
    if torch.cuda.device_count() >= 2:
        assert resolve_device("cuda", local_rank=rank) == torch.device("cuda", 1)
        assert resolve_device("auto", local_rank=rank) == torch.device("cuda", 1)
    elif not torch.cuda.is_available():
        assert resolve_device("auto", local_rank=rank) == torch.device("cpu")
        with pytest.raises(ConfigError, match="is not available"):
            resolve_device("cuda", local_rank=rank)


def test_no_parameter_is_unused_by_the_native_presets():
    from gcnnkit.run.rundir import build_model_from_config

    model = build_model_from_config(Config.from_dict(DDP_CONFIG))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert distributed.unused_parameters(model, (1, 17, 17), torch.device("cpu")) == []
    assert torch.equal(torch.rand(3), expected)  # the global RNG is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # so is the model (BN statistics)

    class HalfUsed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x.flatten(1))

    assert distributed.unused_parameters(HalfUsed(), (1, 2, 2), torch.device("cpu")) == ["spare.weight", "spare.bias"]


# ------------------------------------------------------------------ gcnnkit train under torchrun
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``torchrun --nproc_per_node=2 gcnnkit train`` of :data:`DDP_CONFIG` (2 epochs on CPU)."""
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "ddp.yaml").write_text(yaml.safe_dump(DDP_CONFIG), encoding="utf-8")
    proc = torchrun("--no-python", console_script(), "train", "ddp.yaml", "--out", "run", cwd=folder)
    _check(proc)
    return folder / "run", proc


def test_rank_0_alone_logs_and_writes_the_run(ddp_run):
    from gcnnkit.run.rundir import read_metrics

    run_dir, proc = ddp_run
    files = ["checkpoint.pt", "config.yaml", "data.json", "metrics.csv", "metrics.jsonl", "summary.json"]
    assert sorted(p.name for p in run_dir.iterdir()) == files  # no leftovers (.tmp) from a second writer
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2]  # one line per epoch, not one per process
    assert all(m["device"] == "cpu x2" for m in metrics)
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("epoch ")] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert sum(line.startswith("done: ") for line in lines) == 1
    assert "cpu x2" in lines[0] and "128 train / 120 test" in lines[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["accuracy"] == {p: metrics[-1][f"test_{p}"] for p in DDP_CONFIG["eval"]["protocols"]}
    assert summary["device"] == "cpu x2" and summary["run_dir"] == "run"
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == Config.from_dict(DDP_CONFIG).to_dict()


def test_the_checkpoint_is_the_plain_models_state_dict(ddp_run):
    from gcnnkit.run.rundir import build_model_from_config

    run_dir, _ = ddp_run
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"] == Config.from_dict(DDP_CONFIG).to_dict()
    model = build_model_from_config(Config.from_dict(state["config"]))
    assert list(state["model"]) == list(model.state_dict())  # no "module." prefix
    model.load_state_dict(state["model"])


def test_gcnnkit_eval_gives_the_accuracies_the_ddp_run_logged(ddp_run):
    from click.testing import CliRunner

    from gcnnkit.cli import main
    from gcnnkit.run.evaluation import evaluate_run
    from gcnnkit.run.rundir import read_metrics

    run_dir, _ = ddp_run
    logged = {p: read_metrics(run_dir)[-1][f"test_{p}"] for p in DDP_CONFIG["eval"]["protocols"]}
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == logged  # exactly: same batches, same weights
    assert evaluate_run(run_dir)["accuracy"] == logged  # a single-process evaluation of the checkpoint


@pytest.mark.slow
def test_a_user_error_found_by_rank_0_stops_every_process(ddp_run):
    """Rank 0 alone looks at the run directory; its verdict reaches the others (no hang), every
    process exits non-zero and only rank 0 prints the one-line error. (The worker checks the same
    in-process, in the fast suite.)"""
    run_dir, _ = ddp_run
    proc = torchrun("--no-python", console_script(), "train", "ddp.yaml", "--out", "run", cwd=run_dir.parent)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: --out run: already holds a run; add --resume to continue it or choose a new folder"]


@pytest.mark.slow
def test_a_diverging_ddp_run_stops_every_process_at_the_same_step(ddp_run):
    """Every process reads the same combined non-finite-loss flag (gcnnkit.run.divergence), so all
    stop together instead of one waiting for the others in a collective; rank 0 prints one line."""
    folder = ddp_run[0].parent
    proc = torchrun(
        "--no-python", console_script(), "train", "ddp.yaml", "--out", "diverged", "--set", "train.lr=1e308", cwd=folder
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: diverged: the training loss became n")
    assert not (folder / "diverged" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_two_nodes_train_what_one_node_trains(ddp_run, tmp_path):
    """``--nnodes=2 --node_rank --rdzv_endpoint`` (two 1-process "nodes" on this machine) gives the
    metrics of the 1-node, 2-process run: results depend on the number of processes only."""
    import socket

    from gcnnkit.run.rundir import read_metrics

    run_dir, _ = ddp_run
    shutil.copy(run_dir.parent / "ddp.yaml", tmp_path / "ddp.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    cmd += [f"--rdzv_endpoint=127.0.0.1:{port}"]
    train_cmd = ["--no-python", console_script(), "train", "ddp.yaml", "--out", "run"]
    other = subprocess.Popen(
        [*cmd, "--node_rank=1", *train_cmd], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _check(
            subprocess.run(
                [*cmd, "--node_rank=0", *train_cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
        )
        assert other.wait(timeout=120) == 0
    finally:
        if other.poll() is None:
            other.kill()
    assert _without_time(read_metrics(tmp_path / "run")) == _without_time(read_metrics(run_dir))


# ---------------------------------------------------------------- the worker: helpers, resume
@pytest.fixture(scope="module")
def worker_run(tmp_path_factory) -> Path:
    """The worker below, run by 2 processes; returns its output folder."""
    out = tmp_path_factory.mktemp("worker")
    _check(torchrun(str(HERE), "worker", str(out), cwd=out))
    return out


def test_collectives_and_sharded_evaluation_under_torchrun(worker_run):
    checks = json.loads((worker_run / "checks.json").read_text())
    steps = ["all_sum", "on_main", "rank_zero_first", "evaluate", "batch_size", "train", "existing_run", "resume"]
    assert checks == {"0": [*steps, "no_bn"], "1": [*steps, "no_bn"]}  # both processes got through every check


def test_resume_under_ddp_gives_the_weights_of_an_uninterrupted_run(worker_run):
    from gcnnkit.run.rundir import CHECKPOINT_FILE, load_checkpoint, read_metrics

    straight, resumed = (load_checkpoint(worker_run / name / CHECKPOINT_FILE) for name in ("straight", "split"))
    assert straight["epoch"] == resumed["epoch"] == 2
    assert straight["model"].keys() == resumed["model"].keys()
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
    assert _without_time(read_metrics(worker_run / "split")) == _without_time(read_metrics(worker_run / "straight"))


def test_a_ddp_run_resumes_in_a_single_process(worker_run, tmp_path):
    """``train.batch_size`` is global and the data order is the same for any number of processes,
    so a run may continue on another number of processes."""
    from gcnnkit.run.rundir import read_metrics
    from gcnnkit.run.training import train

    run_dir = Path(shutil.copytree(worker_run / "split", tmp_path / "run"))
    summary = train(_config(WORKER_CONFIG, epochs=3), run_dir, resume=True, log=None)
    metrics = read_metrics(run_dir)
    assert [m["device"] for m in metrics] == ["cpu x2", "cpu x2", "cpu"]
    assert summary.accuracy["upright"] == metrics[-1]["test_upright"]


def test_a_ddp_step_is_a_step_on_the_global_batch(worker_run, tmp_path):
    """``train.batch_size`` is the global batch: 2 processes train (almost) the weights 1 does."""
    from gcnnkit.run.rundir import CHECKPOINT_FILE, load_checkpoint, read_metrics
    from gcnnkit.run.training import train

    train(Config.from_dict(NO_BN_CONFIG), tmp_path / "alone", log=None)
    alone = load_checkpoint(tmp_path / "alone" / CHECKPOINT_FILE)["model"]
    shared = load_checkpoint(worker_run / "nobn" / CHECKPOINT_FILE)["model"]
    for key in alone:
        torch.testing.assert_close(shared[key], alone[key], rtol=1e-5, atol=1e-6, msg=key)
    (a,), (b,) = read_metrics(tmp_path / "alone"), read_metrics(worker_run / "nobn")
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1.5 / 129)  # a near tie may flip


@pytest.mark.escnn
def test_the_escnn_backend_trains_under_ddp(tmp_path):
    pytest.importorskip("escnn")
    from gcnnkit.run.evaluation import evaluate_run
    from gcnnkit.run.rundir import read_metrics

    config = {**DDP_CONFIG, "model": {**DDP_CONFIG["model"], "backend": "escnn"}}
    config["train"] = {**config["train"], "epochs": 1}
    (tmp_path / "escnn.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    _check(torchrun("--no-python", console_script(), "train", "escnn.yaml", "--out", "run", cwd=tmp_path))
    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == [1]
    logged = {p: metrics[-1][f"test_{p}"] for p in config["eval"]["protocols"]}
    assert evaluate_run(tmp_path / "run")["accuracy"] == logged


# ------------------------------------------------------------------------------ the worker
def _worker(out: Path) -> None:
    """Run by each of 2 processes: checks of the collectives, then trainings in a process group
    this script creates (so train() must use it and leave it initialised)."""
    import torch.distributed as dist

    from gcnnkit.run.data import load_dataset
    from gcnnkit.run.evaluation import evaluate
    from gcnnkit.run.training import train

    dist.init_process_group("gloo")
    ctx = distributed.setup(torch.device("cpu"))
    assert (ctx.world_size, ctx.owns_group, ctx.backend) == (2, False, "gloo"), ctx
    rank, done = ctx.rank, []

    assert distributed.all_sum([torch.tensor(rank + 0.5), rank], ctx, torch.device("cpu")) == [2.0, 1.0]
    done.append("all_sum")

    def refuse():
        raise ConfigError("rank 0 says no")

    try:
        distributed.on_main(refuse, ctx)
        raise AssertionError("on_main did not raise")
    except ConfigError as exc:
        assert str(exc) == "rank 0 says no"
    try:
        distributed.on_main(lambda: 1 / 0, ctx)
        raise AssertionError("on_main did not raise")
    except ZeroDivisionError:
        assert rank == 0
    except RuntimeError as exc:
        assert rank == 1 and str(exc) == "rank 0: ZeroDivisionError: division by zero"
    assert distributed.on_main(lambda: ("from rank", rank), ctx) == ("from rank", 0)
    done.append("on_main")

    flag = out / "rank0-was-here"
    with distributed.rank_zero_first(ctx):
        if rank == 0:
            time.sleep(0.5)
            flag.write_text("x")
        else:
            assert flag.exists()
    done.append("rank_zero_first")

    # sharded evaluation == single-process evaluation, for a model right on most upright digits
    # (least squares on pixels) and less often under the other protocols; batches of 7 (uneven)
    data = load_dataset(Config.from_dict(DDP_CONFIG).data, seed=0)
    x = data.normalise(data.train.images).flatten(1)
    weight = torch.linalg.lstsq(x, torch.nn.functional.one_hot(data.train.labels, 10).float()).solution
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x.shape[1], 10, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight.T)
    protocols = ["upright", "rotated", "rot90", "flip"]
    kwargs = {"mean": data.mean, "std": data.std, "rotation_seed": 7, "batch_size": 7}
    total = lambda counts: distributed.all_sum(counts, ctx, torch.device("cpu"))  # noqa: E731
    shared = evaluate(model, data.test, protocols, **kwargs, shard=(ctx.rank, ctx.world_size), total=total)
    alone = evaluate(model, data.test, protocols, **kwargs)
    assert shared == alone, (shared, alone)
    assert len(set(alone.values())) > 1 and alone["upright"] > 0.5, alone
    done.append("evaluate")

    with_one = {**WORKER_CONFIG, "train": {**WORKER_CONFIG["train"], "batch_size": 1}}
    try:
        train(Config.from_dict(with_one), out / "bad", log=None)
        raise AssertionError("batch_size 1 on 2 processes was accepted")
    except ConfigError as exc:
        assert "train.batch_size: 1 is the batch of one step over all 2 processes" in str(exc)
    done.append("batch_size")

    lines: list[str] = []
    summary = train(_config(WORKER_CONFIG), out / "straight", log=lines.append)
    assert dist.is_initialized()  # the caller's group is left alone
    assert bool(lines) == (rank == 0), lines  # only rank 0 logs
    assert summary.device == "cpu x2" and summary.run_dir == str(out / "straight")  # every rank gets the summary
    done.append("train")

    try:  # only rank 0 looks at the run directory; the verdict reaches rank 1
        train(_config(WORKER_CONFIG), out / "straight", log=None)
        raise AssertionError("a second run into the same folder was accepted")
    except ConfigError as exc:
        assert "already holds a run; add --resume" in str(exc)
    done.append("existing_run")

    train(_config(WORKER_CONFIG, epochs=1), out / "split", log=None)
    lines = []
    train(_config(WORKER_CONFIG), out / "split", resume=True, log=lines.append)
    assert lines[:1] == ([f"resuming {out / 'split'} after epoch 1 of 2"] if rank == 0 else []), lines
    done.append("resume")

    train(Config.from_dict(NO_BN_CONFIG), out / "nobn", log=None)
    done.append("no_bn")

    gathered: list[Any] = [None, None]
    dist.all_gather_object(gathered, done)
    if rank == 0:
        (out / "checks.json").write_text(json.dumps({str(r): d for r, d in enumerate(gathered)}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"] or len(sys.argv) != 3:
        sys.exit("usage: torchrun --nproc_per_node=2 tests/test_distributed.py worker OUT")
    _worker(Path(sys.argv[2]))
