"""Measure equivariance: ``f(g·x)`` against ``g·f(x)`` for every group element.

The relative error of a module ``f`` at element ``g`` is::

    max |f(g·x) − g·f(x)|  /  max |f(x)|

(max over all tensor entries), where ``g·`` is the action of :class:`~gcnnkit.core.fields.FieldType`
on the input and output types. :func:`check_network` reports it for each layer of an
:class:`~gcnnkit.models.network.EquivariantNet` (on that layer's own random input) and end to end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.modes import eval_mode

#: Default tolerance on the relative error in float32.
DEFAULT_TOLERANCE = 1e-5


@dataclass
class EquivarianceResult:
    """Relative equivariance error of one module, per group element."""

    name: str
    in_type: FieldType
    out_type: FieldType
    errors: dict[str, float] = field(default_factory=dict)
    exact: dict[str, bool] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        """Worst relative error over the elements checked."""
        return max(self.errors.values(), default=0.0)

    @property
    def max_exact_error(self) -> float:
        """Worst relative error over the exact elements (pixel permutations): should be ~1e-7."""
        return max((e for g, e in self.errors.items() if self.exact.get(g, True)), default=0.0)

    @property
    def max_interpolated_error(self) -> float | None:
        """Worst relative error over interpolated elements (e.g. 45°); ``None`` if none were checked."""
        errs = [e for g, e in self.errors.items() if not self.exact.get(g, True)]
        return max(errs) if errs else None

    def merge(self, other: EquivarianceResult) -> EquivarianceResult:
        """Errors of both results (e.g. exact elements on noise, interpolated ones on smooth input)."""
        return EquivarianceResult(
            self.name, self.in_type, self.out_type, {**self.errors, **other.errors}, {**self.exact, **other.exact}
        )

    @property
    def worst_element(self) -> str | None:
        return max(self.errors, key=self.errors.get) if self.errors else None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "in_type": str(self.in_type),
            "out_type": str(self.out_type),
            "max_rel_error": self.max_error,
            "max_exact_rel_error": self.max_exact_error,
            "max_interpolated_rel_error": self.max_interpolated_error,
            "worst_element": self.worst_element,
            "errors": self.errors,
        }


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual − expected| / max|expected|`` (0 when both are zero)."""
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


@torch.no_grad()
def equivariance_errors(
    module: nn.Module,
    group: Group,
    in_type: FieldType,
    out_type: FieldType,
    x: torch.Tensor,
    elements: Iterable[int | str] | None = None,
    name: str = "module",
) -> EquivarianceResult:
    """Relative error of ``module`` at each element (all of them by default) on input ``x``."""
    result = EquivarianceResult(name, in_type, out_type)
    y = module(x)
    for g in range(group.order) if elements is None else elements:
        gi = group.index(g)
        name = group.element_names[gi]
        result.errors[name] = relative_error(module(in_type.act(group, gi, x)), out_type.act(group, gi, y))
        result.exact[name] = group.is_exact(gi)
    return result


def smooth_images(
    batch: int, channels: int, height: int, width: int, generator: torch.Generator | None = None, sigma: float = 1.5
) -> torch.Tensor:
    """``[B, C, H, W]`` Gaussian-blurred noise inside the inscribed disc, unit standard deviation.

    Rotating such an image by an arbitrary angle with bilinear interpolation changes it little,
    so it measures a network's error at interpolated elements (45°, …) rather than the
    interpolation error of white noise itself.
    """
    x = torch.randn(batch * channels, 1, height, width, generator=generator)
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, radius))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    ys = torch.arange(height, dtype=x.dtype) - (height - 1) / 2
    xs = torch.arange(width, dtype=x.dtype) - (width - 1) / 2
    r = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    disc = torch.clamp((min(height, width) - 1) / 2 - 1 - r, 0.0, 1.0)  # soft edge, zero at the border
    x = x * disc
    x = x / x.std().clamp_min(1e-12)
    return x.reshape(batch, channels, height, width)


@torch.no_grad()
def check_network(
    net: nn.Module,
    image_shape: Sequence[int],
    batch: int = 4,
    seed: int = 0,
    elements: Iterable[int | str] | None = None,
    device: torch.device | str = "cpu",
    smooth: bool = False,
    inner: bool = False,
) -> list[EquivarianceResult]:
    """Per-layer and end-to-end equivariance of an :class:`~gcnnkit.models.network.EquivariantNet`.

    Each layer is fed the output of the previous layers on a random image batch
    ``[batch, *image_shape]`` (so shapes and statistics are realistic) and checked on it; the
    last entry, named ``"end-to-end"``, checks the whole network from the image. The images are
    white noise, or with ``smooth=True`` :func:`smooth_images` (for interpolated elements), in the
    network's floating dtype (drawn in float32, so a float64 copy of a network sees the same images).
    The network is put in eval mode (dropout off, batch norm on running statistics).

    With ``inner=True`` a layer made of parts (a :class:`~gcnnkit.core.residual.ResidualBlock`,
    anything with ``branches()``) is followed by one result per part, named
    ``"<layer>/<part>"`` (e.g. ``"3.residual/body.0.gconv"``, ``"3.residual/shortcut.conv"``), each
    checked on what reaches it from the block's input.

    Returns:
        one :class:`EquivarianceResult` per layer (and part), then the end-to-end one.
    """
    with eval_mode(net):
        gen = torch.Generator().manual_seed(seed)
        group = net.group
        elements = list(range(group.order)) if elements is None else [group.index(g) for g in elements]
        c, h, w = image_shape
        x0 = smooth_images(batch, c, h, w, gen) if smooth else torch.randn(batch, c, h, w, generator=gen)
        x0 = x0.to(device=device, dtype=_floating_dtype(net))
        results = []
        x = x0
        symmetry = getattr(net, "symmetry", None)  # groups per layer, after a restriction (EquivariantNet)
        for i, (name, layer, t_in, t_out) in enumerate(net.typed_layers()):
            if symmetry is None:
                results.append(equivariance_errors(layer, group, t_in, t_out, x, elements, name))
                part_group, part_elements = group, elements
            else:
                results.append(_restricted_errors(layer, symmetry(i - 1), symmetry(i), t_in, t_out, x, elements, name))
                part_group, map_out = symmetry(i)
                part_elements = [map_out[g] for g in elements if map_out[g] is not None]
            if inner:
                results += _part_errors(layer, part_group, x, part_elements, name)
            x = layer(x)
        if symmetry is None:
            results.append(equivariance_errors(net, group, net.in_type, net.out_type, x0, elements, "end-to-end"))
        else:
            last = symmetry(len(net.layers) - 1)
            results.append(
                _restricted_errors(net, symmetry(-1), last, net.in_type, net.out_type, x0, elements, "end-to-end")
            )
        return results


def _restricted_errors(
    module: nn.Module,
    source: tuple[Group, Sequence[int | None]],
    target: tuple[Group, Sequence[int | None]],
    in_type: FieldType,
    out_type: FieldType,
    x: torch.Tensor,
    elements: Sequence[int | str],
    name: str,
) -> EquivarianceResult:
    """:func:`equivariance_errors` where the input is acted on by one group and the output by a subgroup
    (a restriction, or any layer after one): each element of the network's group that lies in the output's
    group, named as in the output's group; elements outside it are not checked (nothing is promised)."""
    (g_in, map_in), (g_out, map_out) = source, target
    if g_in is g_out and tuple(map_in) == tuple(map_out):
        picked = [map_in[g] for g in elements if map_in[g] is not None]
        return equivariance_errors(module, g_in, in_type, out_type, x, picked, name)
    result = EquivarianceResult(name, in_type, out_type)
    with torch.no_grad():
        y = module(x)
        for g in elements:
            if map_out[g] is None:
                continue
            a, b = map_in[g], map_out[g]
            label = g_out.element_names[b]
            result.errors[label] = relative_error(module(in_type.act(g_in, a, x)), out_type.act(g_out, b, y))
            result.exact[label] = g_out.is_exact(b)
    return result


def _part_errors(
    layer: nn.Module, group: Group, x: torch.Tensor, elements: list[int | str], prefix: str
) -> list[EquivarianceResult]:
    """Equivariance of each part of a layer with ``branches()`` (recursively), on ``x`` fed through."""
    results: list[EquivarianceResult] = []
    for branch in getattr(layer, "branches", lambda: [])():
        y = x
        for name, part, t_in, t_out in branch:
            full = f"{prefix}/{name}"
            results.append(equivariance_errors(part, group, t_in, t_out, y, elements, full))
            results += _part_errors(part, group, y, elements, full)
            y = part(y)
    return results


def _floating_dtype(net: nn.Module) -> torch.dtype:
    """The dtype of the first floating parameter or buffer of ``net`` (the default dtype if none)."""
    tensors = (t for t in (*net.parameters(), *net.buffers()) if t.is_floating_point())
    return next(tensors, torch.empty(0)).dtype
