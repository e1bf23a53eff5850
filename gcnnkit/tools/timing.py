"""Interleaved timing of several steps, the one loop behind ``gcnnkit bench`` and ``gcnnkit compare``.

Every repetition runs each step once, in an order rotated by one each repetition, so that drift
and noise from other processes hit all steps alike. A step's time is the median over the
repetitions, and a ratio between two steps the median of the per-repetition ratios (steadier than
the ratio of medians when the machine is shared).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

#: Clocks :func:`time_call` reads: ``wall`` (CUDA: events) or ``cpu`` — CPU seconds of the
#: whole process (all threads), which other processes on a shared machine hardly disturb.
CLOCKS = ("wall", "cpu")


def time_call(fn: Callable[[], Any], device: torch.device, inner: int = 1, clock: str = "wall") -> float:
    """Seconds per call of ``fn`` (``inner`` calls back to back; CUDA: events, synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0 / inner
    now = time.process_time if clock == "cpu" else time.perf_counter
    t0 = now()
    for _ in range(inner):
        fn()
    return (now() - t0) / inner


def interleaved(
    steps: Mapping[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    *,
    warmup: int = 0,
    min_time: float = 0.0,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds per call of each step in every repetition, ``{name: [repeats samples]}``.

    ``warmup`` untimed calls of every step come first (caches, allocator, cudnn plans). Each sample
    times the step called enough times back to back that the first step lasts about ``min_time``
    seconds (:func:`time_call`; once when 0). Repetition ``r`` runs the steps starting at the
    ``r``-th, cyclically.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    names = list(steps)
    inner = 1
    if min_time > 0:
        inner = max(1, math.ceil(min_time / max(time_call(steps[names[0]], device, 1, clock), 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(time_call(steps[name], device, inner, clock))
    return samples


def medians(samples: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each step's samples."""
    return {name: statistics.median(s) for name, s in samples.items()}


def ratios(samples: Mapping[str, list[float]], reference: str) -> dict[str, list[float]]:
    """Per-repetition ratios ``time / reference time`` of every step but ``reference``."""
    ref = samples[reference]
    return {
        name: [a / max(b, 1e-12) for a, b in zip(s, ref, strict=True)]
        for name, s in samples.items()
        if name != reference
    }
