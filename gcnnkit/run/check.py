"""The equivariance check of the model a config describes (``gcnnkit check``).

:func:`check_equivariance` builds the model at random initialisation and measures
``max|f(g·x) − g·f(x)| / max|f(x)|`` per layer and end to end (:mod:`gcnnkit.core.equivariance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gcnnkit.core.equivariance import DEFAULT_TOLERANCE, EquivarianceResult, check_network
from gcnnkit.core.errors import GcnnkitError
from gcnnkit.run.config import Config, load_config
from gcnnkit.run.data import dataset_info
from gcnnkit.run.rundir import build_model_from_config


@dataclass
class EquivarianceReport:
    """Per-layer and end-to-end (last) equivariance errors of a configured model."""

    group: str
    backend: str
    image_shape: tuple[int, int, int]
    tolerance: float
    results: list[EquivarianceResult]
    elements: str = "all"  # "all", or "exact": only the elements that permute pixels
    num_parameters: int = 0
    #: names of the elements that permute pixels (rotations by multiples of 90°, reflections): judged
    exact_elements: tuple[str, ...] = ()
    #: names of the elements that interpolate (e.g. 72° in C5): only approximately equivariant
    interpolated_elements: tuple[str, ...] = ()
    continuous_group: bool = False
    element_names: tuple[str, ...] = ()  # the group's elements, in its order

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

    @property
    def continuous(self) -> bool:
        """True for a continuous group (SO(2), O(2)): its elements are sampled rotations."""
        return self.continuous_group

    def per_angle(self) -> dict[str, float]:
        """End-to-end relative error at each element checked (for SO(2)/O(2): each sampled angle), in the
        group's element order."""
        errors = self.results[-1].errors if self.results else {}
        order = [g for g in self.element_names if g in errors] + [g for g in errors if g not in self.element_names]
        return {g: errors[g] for g in order}

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
            "exact_elements": list(self.exact_elements),
            "interpolated_elements": list(self.interpolated_elements),
            "passed": self.passed,
            "max_rel_error": self.max_error,
            "max_interpolated_rel_error": self.max_interpolated_error,
            "worst_layer": worst.name,
            "worst_element": max(exact_errors, key=exact_errors.get) if exact_errors else None,
            "continuous": self.continuous_group,
            "per_angle": self.per_angle() if self.continuous_group else None,
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
    and end to end (and each part of a residual block, named ``"<block>/<part>"``). For a continuous
    group (SO(2), O(2)) the elements are its sampled rotations (:mod:`gcnnkit_rotations.continuous`),
    and :meth:`EquivarianceReport.per_angle` gives the end-to-end error at each angle. Exact elements
    (multiples of 90°, reflections) are checked on white noise and
    judged against ``tolerance``; with ``elements="all"`` interpolated elements (e.g. 45° in C8),
    which are only approximately equivariant on a pixel grid, are also measured, on smooth images
    (:func:`gcnnkit.core.equivariance.smooth_images`), and reported but not judged. No data is loaded.
    """
    if elements not in ("all", "exact"):
        raise GcnnkitError(f"elements: {elements!r} is not allowed; allowed: all, exact")
    config = config if isinstance(config, Config) else load_config(config)
    info = dataset_info(config.data)
    seed = config.seed if seed is None else seed
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = build_model_from_config(config, info, purpose="check").eval()
    group = model.group
    exact = [g for g in range(group.order) if group.is_exact(g)]
    interpolated = [g for g in range(group.order) if not group.is_exact(g)]
    results = check_network(model, info.image_shape, batch=batch, seed=seed, elements=exact, inner=True)
    if elements == "all" and interpolated:
        smooth = check_network(
            model, info.image_shape, batch=batch, seed=seed, elements=interpolated, smooth=True, inner=True
        )
        results = [a.merge(b) for a, b in zip(results, smooth, strict=True)]
    return EquivarianceReport(
        group.name,
        config.model.backend,
        info.image_shape,
        tolerance,
        results,
        elements,
        model.num_parameters(),
        tuple(group.element_names[g] for g in exact),
        tuple(group.element_names[g] for g in interpolated),
        bool(getattr(group, "continuous", False)),
        group.element_names,
    )
