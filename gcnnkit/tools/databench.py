"""``gcnnkit bench --data CONFIG``: is the input pipeline fast enough for the model, and how much memory?

Three measurements on the configured data set, one after the other in one process:

* **pipeline** — images/s of the training batches alone: read (from memory, or streamed from disk
  by ``data.num_workers`` workers), moved to the device, colour jitter, augmentation and
  normalisation, as in training; no model.
* **model** — images/s of training steps alone (forward, backward, optimiser step) on a batch
  already on the device.
* **training** — images/s of training steps fed by the pipeline: what a run gets.

The pipeline is not the bottleneck when its rate is well above the model's, and then training runs
at about the model's rate. Memory: ``peak_rss`` of this process (``ru_maxrss``) and ``peak_total``,
the largest sum of the proportional set size (PSS: shared pages split between the processes
sharing them) of this process and its ``DataLoader`` workers, sampled every 0.1 s from
``/proc/<pid>/smaps_rollup`` (Linux) — the memory the run really holds. Both are also given for the
data phase alone (loading and the pipeline pass, before the model exists), which separates what
the data costs from the model's activations.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from gcnnkit.run.config import load_config
from gcnnkit.run.data import augment_batch, colour_jitter, load_dataset
from gcnnkit.run.rundir import build_model_from_config, resolve_device
from gcnnkit.tools.table import format_table


def _pss(pid: int) -> int:
    """Proportional set size of process ``pid`` in bytes (0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class MemorySampler:
    """Samples the PSS of this process plus its children every ``interval`` s in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, _pss(me) + sum(_pss(c) for c in _children(me)))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.inf


def run_data_bench(
    config_path: str,
    overrides: Sequence[str] = (),
    *,
    device: str = "cpu",
    max_images: int | None = 4096,
    model_steps: int = 20,
    budget_s: float = 60.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure the configured pipeline, model and training images/s (see the module doc).

    The model and the training part each take ``model_steps`` steps, or fewer (at least 3) when
    they would last longer than ``budget_s`` seconds.
    """
    with MemorySampler() as memory:
        report = _measure(config_path, overrides, device, max_images, model_steps, budget_s, log, memory)
    report["peak_total_pss_bytes"] = memory.peak
    return report


def _measure(config_path, overrides, device, max_images, model_steps, budget_s, log, memory) -> dict[str, Any]:
    config = load_config(config_path, overrides)
    dev = resolve_device(device, option="--device")
    t0 = time.perf_counter()
    data = load_dataset(config.data, seed=config.seed).to(dev)
    load_s = time.perf_counter() - t0
    log(f"data: {data.source}, {len(data.train)} training images, {data.in_memory_reason} (loaded in {load_s:.1f}s)")
    batch = config.train.batch_size
    n = len(data.train) if max_images is None else min(len(data.train), max_images)
    n -= n % batch or 0
    if n < batch:
        n = min(batch, len(data.train))
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(config.seed))[:n].to(dev)
    gen = torch.Generator().manual_seed(config.seed)

    def prepared(x: torch.Tensor) -> torch.Tensor:
        x = colour_jitter(x, config.data.colour_jitter, gen)
        return data.normalise(augment_batch(x, config.data.augment, gen, config.data.augment_degrees))

    # pipeline alone
    t0 = time.perf_counter()
    seen = 0
    for x in data.train.batches(order, batch):
        seen += prepared(x).shape[0]
    _sync(dev)
    pipeline_s = time.perf_counter() - t0
    log(f"pipeline: {seen} images in {pipeline_s:.1f}s")
    time.sleep(2 * memory.interval)  # one more sample before the model exists
    data_peak, data_rss = memory.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # model alone
    torch.manual_seed(config.seed)
    model = build_model_from_config(config, data.info).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    criterion = nn.CrossEntropyLoss()
    x0 = torch.rand(batch, *data.info.image_shape, device=dev)
    y0 = torch.randint(0, data.info.num_classes, (batch,), device=dev)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    step(x0, y0)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    done = 0
    while done < model_steps and (done < 3 or time.perf_counter() - t0 < budget_s):
        step(x0, y0)
        done += 1
        _sync(dev)
    model_s = time.perf_counter() - t0
    model_steps = done
    log(f"model: {model_steps} steps of {batch} in {model_s:.1f}s")

    # training: the model fed by the pipeline
    steps = min(model_steps, math.ceil(n / batch))
    t0 = time.perf_counter()
    fed = 0
    for k, x in enumerate(data.train.batches(order[: steps * batch], batch)):
        idx = order[k * batch : (k + 1) * batch]
        step(prepared(x), data.train.labels[idx])
        fed += x.shape[0]
    _sync(dev)
    train_s = time.perf_counter() - t0
    streamed = not data.in_memory
    workers = config.data.num_workers if streamed else 0
    report = {
        "config": str(config_path),
        "data": data.source,
        "device": str(dev),
        "in_memory": data.in_memory,
        "in_memory_reason": data.in_memory_reason,
        "num_workers": workers,
        "image_shape": list(data.info.image_shape),
        "batch_size": batch,
        "model": config.model.preset or "custom layers",
        "group": config.model.group,
        "load_seconds": load_s,
        "pipeline_images_per_s": _rate(seen, pipeline_s),
        "model_images_per_s": _rate(model_steps * batch, model_s),
        "training_images_per_s": _rate(fed, train_s),
        "pipeline_to_model": _rate(seen, pipeline_s) / _rate(model_steps * batch, model_s),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "pipeline_peak_rss_bytes": data_rss,
        "pipeline_peak_total_pss_bytes": data_peak,
    }
    return report


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def format_data_report(report: dict[str, Any]) -> str:
    """The report as a table and a verdict line."""
    mib = 2**20
    rows = [
        ("measure", "value"),
        ("data", f"{report['data']} {report['image_shape']}, batch {report['batch_size']}"),
        (
            "loading",
            report["in_memory_reason"] + (f", {report['num_workers']} workers" if not report["in_memory"] else ""),
        ),
        ("pipeline images/s", f"{report['pipeline_images_per_s']:.0f}"),
        ("model images/s", f"{report['model_images_per_s']:.0f} ({report['model']} {report['group']}, train step)"),
        ("training images/s", f"{report['training_images_per_s']:.0f} (model fed by the pipeline)"),
        ("pipeline / model", f"{report['pipeline_to_model']:.1f}x"),
        (
            "peak RSS",
            f"{report['peak_rss_bytes'] / mib:.0f} MiB this process; {report['peak_total_pss_bytes'] / mib:.0f} MiB "
            f"with its workers (PSS)",
        ),
        (
            "peak RSS, data only",
            f"{report['pipeline_peak_rss_bytes'] / mib:.0f} MiB this process; "
            f"{report['pipeline_peak_total_pss_bytes'] / mib:.0f} MiB with its workers (PSS), before the model exists",
        ),
    ]
    verdict = (
        "the pipeline is not the bottleneck"
        if report["pipeline_to_model"] >= 1.0
        else "the pipeline IS the bottleneck: add data.num_workers, or hold the set in memory"
    )
    return "\n".join([*format_table(rows), verdict])
