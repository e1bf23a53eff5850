"""The interleaved timing loop shared by ``gcnnkit bench`` and ``gcnnkit compare``: which calls it
makes in which order, and how it summarises them (no assertion on how long anything takes)."""

from __future__ import annotations

import torch

from gcnnkit.tools.timing import CLOCKS, interleaved, medians, ratios, time_call

CPU = torch.device("cpu")


def test_time_call_is_positive_for_both_clocks():
    x = torch.randn(256, 256)
    for clock in CLOCKS:
        assert time_call(lambda: x @ x, CPU, 3, clock) > 0


def recorder(names):
    calls: list[str] = []
    return calls, {name: (lambda name=name: calls.append(name)) for name in names}


def test_interleaved_warms_up_then_rotates_the_order_every_repetition():
    calls, steps = recorder("abc")
    samples = interleaved(steps, CPU, 4, warmup=2)
    assert calls == list("abc" * 2) + list("abcbcacababc")
    assert {name: len(s) for name, s in samples.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for s in samples.values() for t in s)


def test_interleaved_repeats_each_sample_until_the_first_step_lasts_min_time():
    calls, steps = recorder("ab")
    interleaved(steps, CPU, 2, min_time=0.02)  # a no-op lasts far less than 20 ms: many calls per sample
    inner = calls.count("b") // 2
    assert inner > 1 and calls.count("a") == 1 + 2 * inner  # one call of the first step sets the count


def test_medians_and_per_repetition_ratios():
    samples = {"floor": [1.0, 2.0, 4.0], "x": [3.0, 2.0, 4.0]}
    assert medians(samples) == {"floor": 2.0, "x": 3.0}
    per_rep = ratios(samples, "floor")
    assert per_rep == {"x": [3.0, 1.0, 1.0]}
    assert medians(per_rep) == {"x": 1.0}  # the median ratio, not the ratio of medians (1.5)
