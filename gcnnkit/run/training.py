"""Training: the loop, metrics, checkpoints and resume.

The run directory it writes is described in :mod:`gcnnkit.run.rundir`; ``metrics.jsonl`` holds one
JSON object per completed epoch: epoch, train_loss, train_acc, test_<protocol> for each eval
protocol, lr (at the epoch's start), epoch_seconds (training + evaluation), device. It is rewritten
from the history the checkpoint carries (:mod:`gcnnkit.run.metrics`).

What guards a run (``docs/reliability.md``): one writer per run directory (:mod:`gcnnkit.run.lock`),
SIGINT/SIGTERM/SIGHUP stop it with the resume hint (:mod:`gcnnkit.run.signals`), a non-finite loss
or weight stops it keeping the last finite checkpoint (:mod:`gcnnkit.run.divergence`).

:func:`train` is the whole job; ``gcnnkit train`` is a thin layer over it. Runs are
reproducible: data order, augmentation and dropout of epoch ``e`` come from generators seeded
with ``(seed, e)``, so on CPU an interrupted run resumed to the end has the same weights as an
uninterrupted one. Learning-rate schedules are a closed form of the step and of
``train.epochs``; extending a finished run with more epochs therefore stretches its schedule.

Under ``torchrun --nproc_per_node=N`` the same :func:`train` runs data-parallel in N processes
(``DistributedDataParallel``; the plumbing is in :mod:`gcnnkit.run.distributed`, the user's guide in
``docs/distributed.md``): ``train.batch_size`` stays the batch of one optimiser step, shared
by the processes; metrics are summed across them; rank 0 alone logs and writes the run
directory, whose checkpoint is the same as a single process's (the plain model's state dict).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gcnnkit.core.errors import ConfigError, GcnnkitError
from gcnnkit.core.registry import plugin_distributions
from gcnnkit.run import distributed
from gcnnkit.run.config import Config, config_differences, load_config
from gcnnkit.run.data import Dataset, augment_batch, colour_jitter, load_dataset, save_data_description
from gcnnkit.run.divergence import DivergenceGuard
from gcnnkit.run.ema import EMA
from gcnnkit.run.evaluation import evaluate, validate
from gcnnkit.run.lock import RunLock
from gcnnkit.run.logs import RunLogs, require_tensorboard, write_metrics_csv
from gcnnkit.run.metrics import salvage_metrics, write_metrics
from gcnnkit.run.precision import Precision
from gcnnkit.run.rundir import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    build_model_from_config,
    check_checkpoint,
    checkpoint_error,
    load_checkpoint,
    load_weights,
    new_run_dir,
    resolve_device,
    save_checkpoint,
    write_text_atomic,
)
from gcnnkit.run.selection import Selector
from gcnnkit.run.signals import SignalGuard, signal_suffix
from gcnnkit.run.steps import optimiser_step


@dataclass
class RunSummary:
    """What ``summary.json`` holds: the outcome of a finished run."""

    run_dir: str
    epochs: int
    params: int
    accuracy: dict[str, float]  # protocol -> test accuracy after the last epoch
    wall_time_s: float  # from the start of train(): build, data, training, evaluation; summed over resumes
    device: str
    seed: int
    precision: str  # of the training forward pass: fp32, bf16 or fp16
    backend: str
    group: str
    preset: str | None
    data: str
    train_loss: float
    train_acc: float
    versions: dict[str, str] = field(default_factory=dict)  # torch, gcnnkit and installed plugin distributions
    epochs_trained: int = 0  # fewer than epochs when stopped early
    select: str = "last"  # train.select
    selected_epoch: int = 0  # the epoch whose weights `accuracy` is of (best.pt unless select is last)
    stopped_early: bool = False
    val: dict[str, float] = field(
        default_factory=dict
    )  # val_loss, val_acc of the selected epoch; {} without a validation set

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        accs = ", ".join(f"{p} {100 * a:.2f}%" for p, a in self.accuracy.items())
        arch = f"preset {self.preset}" if self.preset else "custom layers"
        if self.select != "last":
            accs += f" (epoch {self.selected_epoch}, best by {self.select})"
        return (
            f"done: group {self.group}, backend {self.backend}, {arch}, {self.params:,} params, {accs}, "
            f"{self.wall_time_s:.1f}s on {self.device}, run dir {self.run_dir}"
        )


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for epoch ``epoch`` of a run with seed ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def make_optimizer(config: Config, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(config: Config, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps (schedules advance every step).

    ``cosine``: half a cosine from 1 to 0 over the run; ``step``: ``gamma`` every ``step_size``
    epochs; ``onecycle``: cosine warm-up from 1/25 to 1 over the first 30 % of steps, then
    cosine annealing to 1/25e4 (as ``torch.optim.lr_scheduler.OneCycleLR``, without momentum
    cycling). Being a closed form of the step, a resumed run with more epochs recomputes it.
    """
    t = config.train
    total = max(1, t.epochs * steps_per_epoch)
    if t.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if t.schedule == "step":
        return t.gamma ** ((step // steps_per_epoch) // t.step_size)
    if t.schedule == "onecycle":
        warm = max(1, int(0.3 * total))
        start, end = 1 / 25, 1 / 25e4
        if step < warm:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / warm))
        frac = min(1.0, (step - warm) / max(1, total - warm))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as tensors and plain values."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_gauss": [int(np_has_gauss), float(np_gauss)],
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": int(py_version),
        "python_gauss": py_gauss,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))


def _resume_state(config: Config, run_dir: Path) -> tuple[Config, dict[str, Any]]:
    """The run's checkpoint, and its stored config with ``train.epochs`` taken from ``config``."""
    if not (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"--resume: {run_dir} is not a run directory (no {CONFIG_FILE})")
    if not (run_dir / CHECKPOINT_FILE).exists():
        raise ConfigError(
            f"--resume: {run_dir} has no {CHECKPOINT_FILE} (no epoch completed); start it afresh without --resume"
        )
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    check_checkpoint(checkpoint, run_dir / CHECKPOINT_FILE)
    missing = [k for k in ("optimizer", "scheduler", "rng", "elapsed_s") if k not in checkpoint]
    if missing:
        raise ConfigError(
            f"--resume: {run_dir / CHECKPOINT_FILE} has no {missing[0]!r} entry, so the run cannot continue "
            f"from it (gcnnkit eval and export can still read it)"
        )
    stored = Config.from_dict(checkpoint["config"], source=config.source)
    diffs = [d for d in config_differences(stored.to_dict(), config.to_dict()) if d[0] != "train.epochs"]
    if diffs:
        key, was, given = diffs[0]
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise ConfigError(
            f"--resume: the config differs from the run's in {key}: run has {was!r}, given {given!r}{more}; "
            f"only train.epochs may change"
        )
    done = checkpoint["epoch"]
    if config.train.epochs < done:
        raise ConfigError(
            f"train.epochs: {config.train.epochs} is fewer than the {done} epochs {run_dir} has completed"
        )
    return replace(stored, train=replace(stored.train, epochs=config.train.epochs)), checkpoint


# ------------------------------------------------------------------------------ training
def train(
    config: Config | str | Path,
    out_dir: str | Path | None = None,
    resume: bool = False,
    *,
    log: Callable[[str], None] | None = print,
) -> RunSummary:
    """Train the configured model, evaluating every epoch; return the run's summary.

    Args:
        config: a :class:`~gcnnkit.run.config.Config` or the path of a YAML config.
        out_dir: the run directory; default ``runs/<config-stem>-<YYYYmmdd-HHMMSS>``.
        resume: continue the run in ``out_dir`` from its last completed epoch. Its stored
            config is used; ``config`` may differ only in ``train.epochs`` (to train longer).
        log: called with one line per epoch and a last line summarising the run; ``None``
            silences them. A tqdm bar per epoch goes to stderr when it is a terminal.

    Under ``torchrun`` every process calls this; they train one model data-parallel
    (:mod:`gcnnkit.run.distributed`, ``docs/distributed.md``). Rank 0 alone logs, shows the bar and
    writes the run directory; every process returns the same summary.

    Raises:
        GcnnkitError: bad config, plugin, data, or run directory (one-line message); another
            process is training in ``out_dir``.
        DivergenceError: the loss or the weights became non-finite; the last finite checkpoint is kept.
        KeyboardInterrupt: Ctrl-C, or :class:`~gcnnkit.run.signals.Interrupted` for SIGTERM and SIGHUP
            (the last completed epoch is saved; the resume hint is logged).
    """
    config = config if isinstance(config, Config) else load_config(config)
    local_rank = distributed.local_rank() if distributed.launched() else None
    device = resolve_device(config.device, local_rank=local_rank)  # cuda:LOCAL_RANK under torchrun
    ctx = distributed.setup(device)
    try:
        with SignalGuard() as signals, RunLock() as lock:
            log_fn = (log or _silent) if ctx.is_main else _silent
            summary = _train(config, out_dir, resume, device, ctx, log_fn, signals, lock)
    except BaseException:
        distributed.abandon(ctx)
        raise
    distributed.teardown(ctx)  # waits until rank 0 has written everything
    return summary


def _silent(line: str) -> None:
    pass


def _open_run(
    config: Config, out_dir: str | Path | None, resume: bool, lock: RunLock
) -> tuple[Path, Config, dict[str, Any] | None]:
    """The run directory, the config to train (the stored one on resume) and the checkpoint to resume from.

    An existing run directory is locked first, so its checkpoint is read by its only writer.
    """
    if out_dir is not None and Path(out_dir).is_dir():
        lock.acquire(Path(out_dir))
    if not resume:
        return new_run_dir(config, out_dir), config, None
    if out_dir is None:
        raise ConfigError("--resume needs --out RUN_DIR, the run to continue")
    run_dir = Path(out_dir)
    config, checkpoint = _resume_state(config, run_dir)
    return run_dir, config, checkpoint


def _train(
    config: Config,
    out_dir: str | Path | None,
    resume: bool,
    device: torch.device,
    ctx: distributed.Context,
    log: Callable[[str], None],
    signals: SignalGuard,
    lock: RunLock,
) -> RunSummary:
    main = ctx.is_main  # only rank 0 touches the run directory; the others learn its outcome from it
    run_dir, config, checkpoint = distributed.on_main(lambda: _open_run(config, out_dir, resume, lock), ctx)
    started = time.perf_counter()

    precision = Precision.for_config(
        config.train.mixed_precision, device, checkpoint.get("precision") if checkpoint is not None else None
    )
    if config.train.batch_size < ctx.world_size:
        raise ConfigError(
            f"train.batch_size: {config.train.batch_size} is the batch of one step over all {ctx.world_size} "
            f"processes; give at least {ctx.world_size}"
        )
    if config.train.tensorboard:
        require_tensorboard()
    seed_everything(config.seed)
    model = build_model_from_config(config).to(device)  # before loading data: config errors come first
    if config.train.channels_last:
        model.set_channels_last()
    with distributed.rank_zero_first(ctx):  # a download happens once per file system
        data = load_dataset(config.data, seed=config.seed).to(device)
    val = data.val  # the source's own validation split, or the data.val_split part the loader carved
    selector = Selector.for_config(config.train, has_val=val is not None)
    test_each_epoch = config.eval.test_each_epoch
    if test_each_epoch is None:  # today's per-epoch test curves unless there is a validation set to watch
        test_each_epoch = val is None
    ema = EMA(model, config.train.ema) if config.train.ema is not None else None
    best_state = None  # the selected weights (best.pt), on every process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)  # only now: a config error leaves no empty run dir behind
        if not lock.held:
            lock.acquire(run_dir)
            if checkpoint is None:
                new_run_dir(config, run_dir)  # another run may have filled it since it was chosen
        save_data_description(data, run_dir)  # class names, statistics, the in-memory choice, skipped files
    optimizer = make_optimizer(config, model.parameters())
    steps_per_epoch = math.ceil(len(data.train) / config.train.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, steps_per_epoch))
    first_epoch, elapsed_before = 1, 0.0
    history: list[dict[str, Any]] = []  # metrics of the completed epochs; the checkpoint carries them
    if checkpoint is not None:
        _restore(checkpoint, model, optimizer, scheduler, precision, run_dir / CHECKPOINT_FILE)
        # the optimizer holds the rate of the last step taken; with more epochs the schedule has
        # stretched, so the next step's rate must come from the schedule, not the checkpoint
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * lr_factor(config, scheduler.last_epoch, steps_per_epoch)
        first_epoch, elapsed_before = checkpoint["epoch"] + 1, checkpoint["elapsed_s"]
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        selector.load_state_dict(checkpoint.get("selection", {}))
        if selector.keeps_best and (run_dir / BEST_FILE).is_file():
            best_state = load_checkpoint(run_dir / BEST_FILE)["model"]
        log(f"resuming {run_dir} after epoch {checkpoint['epoch']} of {config.train.epochs}")
        history = checkpoint.get("metrics")
        if history is None:  # a checkpoint from before the history moved into it
            history = salvage_metrics(run_dir, first_epoch) if main else []
            lost = sorted(set(range(1, first_epoch)) - {m["epoch"] for m in history})
            if lost:
                log(f"{METRICS_FILE}: no readable line for epochs {lost} (an older checkpoint without its history)")
    if main:
        write_metrics(run_dir, history)  # a fresh run starts an empty file; a resumed one holds the checkpoint's epochs
        write_metrics_csv(run_dir, history)
        write_text_atomic(run_dir / CONFIG_FILE, config.to_yaml())
    net = distributed.wrap(model, ctx, device, data.info.image_shape)  # `model` itself in a single process
    where = str(device) if not ctx.enabled else f"{device.type} x{ctx.world_size}"
    val_note = f" / {len(val)} val" if val is not None else ""
    log(
        f"{config.model.group} {config.model.backend} {config.model.preset or 'custom layers'}: "
        f"{model.num_parameters():,} params, {data.info.name} {len(data.train)} train{val_note} / "
        f"{len(data.test)} test, {where}, {precision.name} ({precision.reason}), run dir {run_dir}"
    )
    if not data.builtin:  # the user's own images: where from, in memory or streamed, and why
        skipped = f", {len(data.skipped)} corrupt files skipped" if data.skipped else ""
        log(f"data: {data.source}, {data.in_memory_reason}{skipped}")
    judged = ema.module if ema is not None else model  # the weights evaluated, selected and tested
    logs = RunLogs(run_dir, config.train.tensorboard, first_epoch) if main else None

    def test(weights: nn.Module) -> dict[str, float]:
        return evaluate(
            weights,
            data.test,
            config.eval.protocols,
            mean=data.mean,
            std=data.std,
            rotation_seed=config.eval.rotation_seed,
            batch_size=config.eval.batch_size,
            shard=(ctx.rank, ctx.world_size),
            total=lambda counts: distributed.all_sum(counts, ctx, device),
        )

    record: dict[str, Any] = {}
    done = first_epoch - 1  # last epoch with a checkpoint
    guard = DivergenceGuard(run_dir, config.train.lr, precision.name, device, ctx, saved_epoch=done)
    if selector.should_stop:  # a resumed run that had stopped early stays stopped
        log(selector.stop_message(done))
    try:
        for epoch in range(first_epoch, config.train.epochs + 1):
            if selector.should_stop:
                break
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            after_step = (lambda: ema.update(model)) if ema is not None else None
            loss, acc = _train_epoch(
                net, data, config, epoch, optimizer, scheduler, precision, device, ctx, guard, after_step
            )
            guard.check_weights(model.state_dict(), optimizer)  # before evaluating or saving them
            distributed.sync_state(model, ctx)  # every process evaluates the weights rank 0 saves
            if ema is not None:
                distributed.sync_state(ema.module, ctx)
            record = {"epoch": epoch, "train_loss": loss, "train_acc": acc}
            if val is not None:
                record.update(
                    validate(
                        judged,
                        val,
                        mean=data.mean,
                        std=data.std,
                        batch_size=config.eval.batch_size,
                        shard=(ctx.rank, ctx.world_size),
                        total=lambda sums: distributed.all_sum(sums, ctx, device),
                    )
                )
            accuracy = test(judged) if test_each_epoch else {}
            record.update({f"test_{p}": a for p, a in accuracy.items()})
            record.update({"lr": lr, "epoch_seconds": time.perf_counter() - t0, "device": where})
            history = [*history, record]
            selected = selector.update(epoch, record)
            if selected and selector.keeps_best:
                best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
            if main:
                state = _checkpoint_state(epoch, config, data, model, optimizer, scheduler, precision)
                state["elapsed_s"] = elapsed_before + time.perf_counter() - started
                state["metrics"] = history
                state["selection"] = selector.state_dict()
                if ema is not None:
                    state["ema"] = ema.state_dict()
                with signals.deferred():  # a signal now waits until checkpoint and metrics are both written
                    if selected and selector.keeps_best:  # before checkpoint.pt, whose selection state points at it
                        best = _best_state(epoch, config, data, best_state, precision, record)
                        save_checkpoint(run_dir / BEST_FILE, best)
                    _save(run_dir, state, history, done)
                    done = guard.saved_epoch = epoch  # before a deferred signal is raised
                logs.epoch(record, history)
            done = guard.saved_epoch = epoch
            vals = f"  val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}" if val is not None else ""
            tests = "".join(f"  {p} {a:.4f}" for p, a in accuracy.items())
            log(
                f"epoch {epoch}/{config.train.epochs}  loss {loss:.4f}  acc {acc:.4f}{vals}{tests}  lr {lr:.2e}  "
                f"{record['epoch_seconds']:.1f}s"
            )
            if selector.should_stop:
                log(selector.stop_message(epoch))
    except KeyboardInterrupt as exc:
        log(
            f"interrupted{signal_suffix(exc)} after {done} of {config.train.epochs} epochs (saved in {run_dir}); "
            f"continue with: gcnnkit train CONFIG --out {run_dir} --resume"
        )
        raise
    finally:
        if logs is not None:
            logs.close()

    rows = distributed.on_main(lambda: history, ctx)
    record = rows[-1]
    selected_epoch = selector.best_epoch if selector.keeps_best else record["epoch"]
    selected_row = next((r for r in rows if r["epoch"] == selected_epoch), {})
    if not selector.keeps_best and all(f"test_{p}" in record for p in config.eval.protocols):
        accuracy = {p: record[f"test_{p}"] for p in config.eval.protocols}  # tested after the last epoch already
    else:  # the test set's one look: at the selected weights
        if best_state is not None:
            judged.load_state_dict(best_state)
        accuracy = test(judged)
    summary = RunSummary(
        run_dir=str(run_dir),
        epochs=config.train.epochs,
        params=model.num_parameters(),
        accuracy=accuracy,
        wall_time_s=elapsed_before + time.perf_counter() - started,
        device=where,
        seed=config.seed,
        precision=precision.name,
        backend=config.model.backend,
        group=config.model.group,
        preset=config.model.preset,
        data=data.info.name,
        train_loss=record["train_loss"],
        train_acc=record["train_acc"],
        versions=_versions(),
        epochs_trained=record["epoch"],
        select=selector.select,
        selected_epoch=selected_epoch,
        stopped_early=selector.should_stop,
        val={k: selected_row[k] for k in ("val_loss", "val_acc") if k in selected_row},
    )
    if main:
        write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2) + "\n")
    log(summary.line())
    return summary


def _save(run_dir: Path, state: dict[str, Any], history: list[dict[str, Any]], saved_epoch: int) -> None:
    """Write the checkpoint, then the metrics file from the history it carries. A failed write (a full
    disk) is one line; both writes are atomic, so the previous files stay intact."""
    epoch, failed = state["epoch"], "checkpoint"
    try:
        save_checkpoint(run_dir / CHECKPOINT_FILE, state)
        failed = "metrics"
        write_metrics(run_dir, history)
    except OSError as exc:
        for name in (CHECKPOINT_FILE, METRICS_FILE):  # the half-written temporary file, if any
            run_dir.joinpath(name + ".tmp").unlink(missing_ok=True)
        why = exc.strerror or str(exc)
        if failed == "metrics":
            raise GcnnkitError(
                f"{run_dir}: saved the checkpoint of epoch {epoch} but could not rewrite {METRICS_FILE} ({why}); "
                f"free space and continue with --resume, which rewrites it"
            ) from None
        then = (
            f"the checkpoint of epoch {saved_epoch} is intact; free space and continue with --resume"
            if saved_epoch
            else "no checkpoint was written; free space and start the run again"
        )
        raise GcnnkitError(f"{run_dir}: could not save epoch {epoch} ({why}); {then}") from None


def _checkpoint_state(
    epoch: int,
    config: Config,
    data: Dataset,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: Precision,
) -> dict[str, Any]:
    """Everything needed to resume after ``epoch``: state dicts and plain values only."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": precision.scaler.state_dict() if precision.scaler is not None else {},
        "precision": precision.mode,
        "rng": rng_state(),
        "config": config.to_dict(),
        "normalisation": {"mean": data.mean.tolist(), "std": data.std.tolist()},
        "data": data.describe(),
    }


def _best_state(
    epoch: int,
    config: Config,
    data: Dataset,
    weights: dict[str, torch.Tensor],
    precision: Precision,
    record: dict[str, Any],
) -> dict[str, Any]:
    """``best.pt``: the selected epoch's weights (the EMA's with ``train.ema``) in the checkpoint
    format, so ``gcnnkit eval``/``export`` load it like ``checkpoint.pt``; no optimiser state."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": weights,
        "precision": precision.mode,
        "config": config.to_dict(),
        "normalisation": {"mean": data.mean.tolist(), "std": data.std.tolist()},
        "data": data.describe(),
        "selection": {"metric": config.train.select, "value": record[config.train.select]},
    }


def _restore(
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: Precision,
    path: Path,
) -> None:
    """Load a checkpoint's state into freshly built training objects (one-line error when it does not fit)."""
    load_weights(model, checkpoint, path)
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if precision.scaler is not None and checkpoint["scaler"]:
            precision.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise checkpoint_error(path, "cannot resume from it", exc) from None


def _train_epoch(
    model: nn.Module,
    data: Dataset,
    config: Config,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: Precision,
    device: torch.device,
    ctx: distributed.Context = distributed.SINGLE,
    guard: DivergenceGuard | None = None,
    after_step: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """One pass over the training set; returns (mean loss, accuracy) over all of it.

    ``guard`` sees every step's loss and stops the epoch at a non-finite one (:mod:`gcnnkit.run.divergence`).

    ``train.batch_size`` is the global batch of one step: every process draws the same order and
    augmentation, then trains on its share of the batch (:func:`gcnnkit.run.distributed.shard`).
    """
    seed = epoch_seed(config.seed, epoch)
    torch.manual_seed(seed if ctx.rank == 0 else epoch_seed(seed, ctx.rank))  # dropout: a stream per process
    gen = torch.Generator().manual_seed(seed)  # order and augmentation: the same on every process
    criterion = nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
    n, batch = len(data.train), config.train.batch_size
    order = torch.randperm(n, generator=gen).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    model.train()
    bar = tqdm(
        range(0, n, batch),
        desc=f"epoch {epoch}/{config.train.epochs}",
        leave=False,
        disable=None if ctx.is_main else True,
        file=sys.stderr,
        unit="batch",
    )
    if guard is not None:
        guard.start_epoch(epoch, math.ceil(n / batch))
    images = data.train.batches(order, batch)  # from memory or streamed from disk: the same pixels
    for step, start in enumerate(bar, 1):
        idx = order[start : start + batch]
        part, weight = distributed.shard(len(idx), ctx)
        # augment the whole global batch, so the generator advances alike everywhere; keep this process's part
        x = colour_jitter(next(images), config.data.colour_jitter, gen)
        x = augment_batch(x, config.data.augment, gen, config.data.augment_degrees)
        x = data.normalise(x[part])
        y = data.train.labels[idx][part]
        with guard.optimizer_step(step) if guard is not None else nullcontext():
            loss, logits = optimiser_step(
                model,
                x,
                y,
                criterion,
                optimizer,
                precision,
                weight=weight,  # 1 in a single process
                accumulate=config.train.accumulate,
                grad_clip=config.train.grad_clip,
            )
        scheduler.step()
        if after_step is not None:
            after_step()
        if guard is not None:
            guard.observe(step, loss)
        if weight:  # 0: a stand-in sample that only keeps this process in step
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
        if bar.disable is False:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    loss_total, correct_total = distributed.all_sum([loss_sum, correct], ctx, device)
    return loss_total / n, correct_total / n


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    try:
        out["gcnnkit"] = version("gcnnkit")
    except PackageNotFoundError:  # a source tree that is not installed
        pass
    return {**out, **plugin_distributions()}
