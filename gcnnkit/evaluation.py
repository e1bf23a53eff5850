"""Evaluation: test accuracy under each protocol, of a model or a run directory, and the
equivariance check of a configured model.

* :func:`evaluate` — accuracy of a model on a split under protocols (``upright``,
  ``rotated``, ``rot90`` …, see :mod:`gcnnkit.data`);
* :func:`evaluate_run` — rebuild a run's model from its stored config and checkpoint
  (``torch.load(weights_only=True)``) and evaluate it;
* :func:`rotation_sweep` / :func:`rotation_sweep_run` — test accuracy as a function of the
  rotation angle over [0°, 360°), of a model or of a run directory (``gcnnkit eval
  --rotation-sweep``; :func:`gcnnkit.plots.plot_rotation_sweep` draws it);
* :func:`check_equivariance` — per-layer and end-to-end equivariance error of the model a
  config describes, at random initialisation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcnnkit.config import PROTOCOLS, Config, load_config
from gcnnkit.data import Split, dataset_info, load_dataset, normalise, protocol_batches
from gcnnkit.equivariance import DEFAULT_TOLERANCE, EquivarianceResult, check_network
from gcnnkit.errors import GcnnkitError
from gcnnkit.transforms import rotate_images


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
) -> dict[str, float]:
    """Accuracy of ``model`` on ``split`` under each protocol, in eval mode.

    Images ``[N, C, H, W]`` in ``[0, 1]`` are transformed by the protocol, then normalised with
    ``mean``/``std`` ``[C]``; they are moved to the model's device batch by batch.

    Returns:
        ``{protocol: accuracy in [0, 1]}`` in the order given.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = {}
        for protocol in protocols:
            correct = 0
            for x, y in protocol_batches(split, protocol, rotation_seed, batch_size):
                logits = model(normalise(x.to(device), mean, std))
                correct += (logits.argmax(dim=1) == y.to(device)).sum().item()
            out[protocol] = correct / max(1, len(split))
        return out
    finally:
        model.train(was_training)


@dataclass
class _LoadedRun:
    """A run's stored config, its test data, and its model with the last checkpoint's weights."""

    run_dir: Path
    config: Config
    checkpoint: dict[str, Any]
    model: nn.Module
    test: Split
    data_name: str
    mean: torch.Tensor
    std: torch.Tensor

    def describe(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "epoch": self.checkpoint["epoch"],
            "backend": self.config.model.backend,
            "group": self.config.model.group,
            "preset": self.config.model.preset,
            "data": self.data_name,
            "params": self.model.num_parameters(),
            "num_test": len(self.test),
        }


def _load_run(run_dir: str | Path, device: str | None, test_size: int | None = None) -> _LoadedRun:
    from gcnnkit.training import CHECKPOINT_FILE, build_model_from_config, load_checkpoint, resolve_device

    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise GcnnkitError(f"{run_dir}: not a run directory with a {CHECKPOINT_FILE} (train one with gcnnkit train)")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    config = Config.from_dict(checkpoint["config"])
    data_cfg = config.data
    if test_size is not None:
        if test_size < 1:
            raise GcnnkitError(f"--test-size: expected a positive number of images, got {test_size}")
        data_cfg = dataclasses.replace(data_cfg, test_size=test_size)
    data = load_dataset(data_cfg, seed=config.seed)
    model = build_model_from_config(config, data.info)
    model.load_state_dict(checkpoint["model"])
    model.to(resolve_device(device or config.device))
    stats = checkpoint["normalisation"]
    return _LoadedRun(
        run_dir,
        config,
        checkpoint,
        model,
        data.test,
        data.info.name,
        torch.tensor(stats["mean"]),
        torch.tensor(stats["std"]),
    )


def evaluate_run(
    run_dir: str | Path,
    protocols: Sequence[str] | None = None,
    *,
    device: str | None = None,
    test_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate the last checkpoint of a run on its test set.

    Args:
        run_dir: a directory written by :func:`gcnnkit.training.train`.
        protocols: default: the run's ``eval.protocols``.
        device: default: the run's ``device`` setting (``auto`` picks CUDA when there is one).
        test_size: test on this many images of the test set instead of the run's ``data.test_size``
            (drawn with the same fixed seed).

    Returns:
        ``{"run_dir", "epoch", "backend", "group", "preset", "data", "params", "num_test",
        "accuracy": {protocol: accuracy}}``.
    """
    if protocols:
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            raise GcnnkitError(f"protocol {unknown[0]!r} is not allowed; allowed: {', '.join(PROTOCOLS)}")
    run = _load_run(run_dir, device, test_size)
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
        raise GcnnkitError(f"--step: expected an angle in (0, 360] degrees, got {step!r}")
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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = []
        for angle in angles:
            correct = 0
            for start in range(0, len(split), batch_size):
                x = rotate_by(split.images[start : start + batch_size], float(angle))
                logits = model(normalise(x.to(device), mean, std))
                correct += (logits.argmax(dim=1) == split.labels[start : start + batch_size].to(device)).sum().item()
            out.append(correct / max(1, len(split)))
        return out
    finally:
        model.train(was_training)


def rotation_sweep_run(
    run_dir: str | Path,
    step: float = 5.0,
    *,
    device: str | None = None,
    test_size: int | None = None,
) -> dict[str, Any]:
    """:func:`rotation_sweep` of a run's last checkpoint over ``[0°, 360°)`` in steps of ``step``.

    Returns:
        :func:`evaluate_run`'s description of the run (``run_dir``, ``epoch``, ``backend``, ``group``,
        ``preset``, ``data``, ``params``, ``num_test``) with ``"angles"`` (degrees) and
        ``"accuracy"`` (one value in ``[0, 1]`` per angle).
    """
    angles = sweep_angles(step)
    run = _load_run(run_dir, device, test_size)
    accuracy = rotation_sweep(
        run.model, run.test, angles, mean=run.mean, std=run.std, batch_size=run.config.eval.batch_size
    )
    return {**run.describe(), "angles": angles, "accuracy": accuracy}


@dataclass
class EquivarianceReport:
    """Per-layer and end-to-end (last) equivariance errors of a configured model."""

    group: str
    backend: str
    image_shape: tuple[int, int, int]
    tolerance: float
    results: list[EquivarianceResult]
    elements: str = "all"
    num_parameters: int = 0  # "all", or "exact": only the elements that permute pixels

    @property
    def worst(self) -> EquivarianceResult:
        """The layer (or end-to-end entry) with the largest error at an exact element."""
        return max(self.results, key=lambda r: r.max_exact_error)

    @property
    def max_error(self) -> float:
        """Worst relative error over the exact elements (what ``passed`` is judged on)."""
        return self.worst.max_exact_error

    @property
    def max_interpolated_error(self) -> float | None:
        """Worst relative error at interpolated elements (smooth input), ``None`` if none checked."""
        errs = [r.max_interpolated_error for r in self.results if r.max_interpolated_error is not None]
        return max(errs) if errs else None

    @property
    def passed(self) -> bool:
        """True when every layer and the whole network are within ``tolerance`` at every exact element.

        Interpolated elements (e.g. 45° in C8) are never exact on a pixel grid; they are reported,
        not judged.
        """
        return all(r.max_exact_error <= self.tolerance for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        exact_errors = {g: e for g, e in worst.errors.items() if worst.exact.get(g, True)}
        return {
            "group": self.group,
            "backend": self.backend,
            "image_shape": list(self.image_shape),
            "num_parameters": self.num_parameters,
            "tolerance": self.tolerance,
            "elements": self.elements,
            "passed": self.passed,
            "max_rel_error": self.max_error,
            "max_interpolated_rel_error": self.max_interpolated_error,
            "worst_layer": worst.name,
            "worst_element": max(exact_errors, key=exact_errors.get) if exact_errors else None,
            "layers": [r.to_dict() for r in self.results],
        }


def check_equivariance(
    config: Config | str | Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    elements: str = "all",
    batch: int = 2,
    seed: int | None = None,
) -> EquivarianceReport:
    """Build ``config``'s model (random init from ``seed``, default the config's; eval mode, CPU,
    float32) for its data's input shape and measure ``max|f(g·x) − g·f(x)| / max|f(x)|`` per layer
    and end to end. Exact elements (multiples of 90°, reflections) are checked on white noise and
    judged against ``tolerance``; with ``elements="all"`` interpolated elements (e.g. 45° in C8),
    which are only approximately equivariant on a pixel grid, are also measured, on smooth images
    (:func:`gcnnkit.equivariance.smooth_images`), and reported but not judged. No data is loaded.
    """
    if elements not in ("all", "exact"):
        raise GcnnkitError(f"elements: {elements!r} is not allowed; allowed: all, exact")
    from gcnnkit.training import build_model_from_config

    config = config if isinstance(config, Config) else load_config(config)
    info = dataset_info(config.data)
    seed = config.seed if seed is None else seed
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = build_model_from_config(config, info).eval()
    group = model.group
    exact = [g for g in range(group.order) if group.is_exact(g)]
    interpolated = [g for g in range(group.order) if not group.is_exact(g)]
    results = check_network(model, info.image_shape, batch=batch, seed=seed, elements=exact)
    if elements == "all" and interpolated:
        smooth = check_network(model, info.image_shape, batch=batch, seed=seed, elements=interpolated, smooth=True)
        results = [a.merge(b) for a, b in zip(results, smooth, strict=True)]
    return EquivarianceReport(
        group.name,
        config.model.backend,
        info.image_shape,
        tolerance,
        results,
        elements,
        model.num_parameters(),
    )
