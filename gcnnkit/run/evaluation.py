"""Evaluation: test accuracy under each protocol, of a model or a run directory.

* :func:`evaluate` — accuracy of a model on a split under protocols (``upright``,
  ``rotated``, ``rot90`` …, see :mod:`gcnnkit.run.data`);
* :func:`evaluate_run` — rebuild a run's model from its stored config and checkpoint
  (``torch.load(weights_only=True)``) and evaluate it;
* :func:`rotation_sweep` / :func:`rotation_sweep_run` — test accuracy as a function of the
  rotation angle over [0°, 360°), of a model or of a run directory (``gcnnkit eval
  --rotation-sweep``; :func:`gcnnkit.tools.plots.plot_rotation_sweep` draws it).

The equivariance check of a configured model is :mod:`gcnnkit.run.check`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcnnkit.core.errors import GcnnkitError
from gcnnkit.core.modes import eval_mode
from gcnnkit.core.transforms import rotate_images
from gcnnkit.run.data import PROTOCOLS, Split, normalise, protocol_batches
from gcnnkit.run.rundir import load_run


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    protocols: Sequence[str] = ("upright",),
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    rotation_seed: int = 1234,
    batch_size: int = 256,
    shard: tuple[int, int] = (0, 1),
    total: Callable[[list[torch.Tensor]], list[float]] | None = None,
) -> dict[str, float]:
    """Accuracy of ``model`` on ``split`` under each protocol, in eval mode.

    Images ``[N, C, H, W]`` in ``[0, 1]`` are transformed by the protocol, then normalised with
    ``mean``/``std`` ``[C]``; they are moved to the model's device batch by batch.

    Several processes share the work with ``shard=(rank, world_size)``: the test set is cut into
    batches by :func:`~gcnnkit.run.data.protocol_batches` as in one process (sample ``i`` turned
    by angle ``i`` under ``rotated``), process ``rank`` runs the model on batches ``rank``,
    ``rank + world_size``, … and ``total`` sums the correct counts across processes
    (:func:`gcnnkit.run.distributed.all_sum`). Every sample is counted once and every logit comes
    from the same batch as in one process, so the accuracies are a single process's.

    Returns:
        ``{protocol: accuracy in [0, 1]}`` in the order given.
    """
    rank, world_size = shard
    device = next(model.parameters()).device
    correct = []
    with eval_mode(model):
        for protocol in protocols:
            count = torch.zeros((), dtype=torch.long, device=device)
            for k, (x, y) in enumerate(protocol_batches(split, protocol, rotation_seed, batch_size)):
                if k % world_size == rank:
                    logits = model(normalise(x.to(device), mean, std))
                    count += (logits.argmax(dim=1) == y.to(device)).sum()
            correct.append(count)
    counts = total(correct) if total is not None and correct else [int(c) for c in correct]
    return {p: int(c) / max(1, len(split)) for p, c in zip(protocols, counts, strict=True)}


@torch.no_grad()
def validate(
    model: nn.Module,
    split: Split,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 256,
    shard: tuple[int, int] = (0, 1),
    total: Callable[[list[torch.Tensor]], list[float]] | None = None,
) -> dict[str, float]:
    """``{"val_loss", "val_acc"}`` of ``model`` (eval mode) on the upright ``split``: the mean plain
    cross-entropy (no label smoothing, so runs with different smoothing compare) and the accuracy.
    ``shard`` and ``total`` share the work between processes as in :func:`evaluate`."""
    rank, world_size = shard
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        for k, (x, y) in enumerate(protocol_batches(split, "upright", 0, batch_size)):
            if k % world_size == rank:
                logits = model(normalise(x.to(device), mean, std)).float()
                y = y.to(device)
                loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
                correct += (logits.argmax(dim=1) == y).sum()
    sums = total([loss_sum, correct]) if total is not None else [float(loss_sum), int(correct)]
    n = max(1, len(split))
    return {"val_loss": float(sums[0]) / n, "val_acc": int(round(sums[1])) / n}


def evaluate_run(
    run_dir: str | Path,
    protocols: Sequence[str] | None = None,
    *,
    device: str | None = None,
    test_size: int | None = None,
    weights: str = "selected",
) -> dict[str, Any]:
    """Evaluate a run's selected checkpoint (``best.pt`` where it kept one, else the last) on its test set.

    Args:
        run_dir: a directory written by :func:`gcnnkit.run.training.train`.
        protocols: default: the run's ``eval.protocols``.
        device: default: the run's ``device`` setting (``auto`` picks CUDA when there is one).
        test_size: test on this many images of the test set instead of the run's ``data.test_size``
            (drawn with the same fixed seed).
        weights: ``selected``, ``best`` or ``last`` (:func:`gcnnkit.run.rundir.load_run`).

    Returns:
        ``{"run_dir", "epoch", "checkpoint", "backend", "group", "preset", "data", "params", "num_test",
        "accuracy": {protocol: accuracy}}``.
    """
    if protocols:
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            raise GcnnkitError(f"protocol {unknown[0]!r} is not allowed; allowed: {', '.join(PROTOCOLS)}")
    run = load_run(run_dir, device=device, test_size=test_size, weights=weights)
    protocols = list(protocols or run.config.eval.protocols)
    accuracy = evaluate(
        run.model,
        run.test,
        protocols,
        mean=run.mean,
        std=run.std,
        rotation_seed=run.config.eval.rotation_seed,
        batch_size=run.config.eval.batch_size,
    )
    return {**run.describe(), "accuracy": accuracy}


# ------------------------------------------------------------------------- rotation sweep
def sweep_angles(step: float = 5.0) -> list[float]:
    """``[0, step, 2·step, …]`` below 360 (degrees); ``step`` in (0, 360]."""
    if not (isinstance(step, (int, float)) and math.isfinite(step) and 0 < step <= 360):
        raise GcnnkitError(f"--step {step!r}: expected an angle in degrees > 0 and <= 360, e.g. 5")
    n = math.ceil(360.0 / step - 1e-9)
    return [float(round(i * step, 9)) for i in range(n)]


def rotate_by(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Turn images ``[B, C, H, W]`` counter-clockwise by ``angle`` degrees about their centre.

    ``angle = 90·k + φ`` with ``0 ≤ φ < 90`` is applied as a bilinear rotation by ``φ`` followed by
    an exact ``rot90`` ``k`` times. The inputs at ``θ`` and ``θ + 90°`` are therefore exact quarter
    turns of each other, and multiples of 90° involve no interpolation at all — so a C4-invariant
    model scores the same at ``θ`` and ``θ + 90°`` (up to argmax ties at float rounding).
    """
    quarters = math.floor(angle / 90.0)
    phi = angle - 90.0 * quarters
    if phi > 1e-9:
        x = rotate_images(x, torch.full((x.shape[0],), phi, dtype=torch.float64))
    k = quarters % 4
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


@torch.no_grad()
def rotation_sweep(
    model: nn.Module,
    split: Split,
    angles: Sequence[float],
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 256,
) -> list[float]:
    """Accuracy of ``model`` (eval mode) on ``split`` with every image turned by each angle (degrees).

    Images ``[N, C, H, W]`` in ``[0, 1]`` are turned with :func:`rotate_by` (zeros outside), then
    normalised with ``mean``/``std`` ``[C]``. Returns one accuracy in ``[0, 1]`` per angle, in order.
    """
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for angle in angles:
            correct = 0
            for start in range(0, len(split), batch_size):
                x = rotate_by(split.images[start : start + batch_size], float(angle))
                logits = model(normalise(x.to(device), mean, std))
                correct += (logits.argmax(dim=1) == split.labels[start : start + batch_size].to(device)).sum().item()
            out.append(correct / max(1, len(split)))
    return out


def rotation_sweep_run(
    run_dir: str | Path,
    step: float = 5.0,
    *,
    device: str | None = None,
    test_size: int | None = None,
    weights: str = "selected",
) -> dict[str, Any]:
    """:func:`rotation_sweep` of a run's selected checkpoint over ``[0°, 360°)`` in steps of ``step``.

    Returns:
        :func:`evaluate_run`'s description of the run (``run_dir``, ``epoch``, ``backend``, ``group``,
        ``preset``, ``data``, ``params``, ``num_test``) with ``"angles"`` (degrees) and
        ``"accuracy"`` (one value in ``[0, 1]`` per angle).
    """
    angles = sweep_angles(step)
    run = load_run(run_dir, device=device, test_size=test_size, weights=weights)
    accuracy = rotation_sweep(
        run.model, run.test, angles, mean=run.mean, std=run.std, batch_size=run.config.eval.batch_size
    )
    return {**run.describe(), "angles": angles, "accuracy": accuracy}
