"""Named architecture presets, buildable by name on any backend and group (like timm's models).

A preset is a function of the input image size and channel count returning a layer spec
(see :mod:`gcnnkit.spec`) and the width mode it is written in. Presets in ``params`` width
mode give CNN channel counts; on a group ``G`` they get ``out/√|G|`` fields, so the same
preset on ``C1`` is the parameter-matched CNN baseline of the G-CNN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gcnnkit.errors import SpecError


@dataclass(frozen=True)
class Preset:
    """A named architecture: ``layers(image_size, in_channels)`` → spec list, and its width mode."""

    name: str
    description: str
    layers: Callable[[int, int], list[Any]]
    widths: str = "params"


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add a preset to :data:`PRESETS` (names are unique)."""
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`SpecError` lists the available ones."""
    if name not in PRESETS:
        raise SpecError(f"model.preset: unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _pool(image_size: int) -> dict[str, Any]:
    """2×2/stride-2 max pooling for even sizes, 3×3/stride-2/pad-1 for odd sizes.

    Either way the pooling windows are placed symmetrically on the grid
    (``(size + 2·padding − kernel) % stride == 0``), which keeps rot90/flip equivariance exact.
    """
    if image_size % 2 == 0:
        return {"type": "pool", "mode": "max", "kernel": 2, "stride": 2, "padding": 0}
    return {"type": "pool", "mode": "max", "kernel": 3, "stride": 2, "padding": 1}


def _after_pool(size: int) -> int:
    return size // 2 if size % 2 == 0 else (size + 1) // 2


def _gcnn_small(image_size: int, in_channels: int) -> list[Any]:
    s1 = _after_pool(image_size)
    return [
        {"type": "lift", "out": 24, "kernel": 5},
        "batchnorm",
        "relu",
        {"type": "gconv", "out": 32, "kernel": 3},
        "batchnorm",
        "relu",
        _pool(image_size),
        {"type": "gconv", "out": 64, "kernel": 3},
        "batchnorm",
        "relu",
        _pool(s1),
        {"type": "gconv", "out": 64, "kernel": 3},
        "batchnorm",
        "relu",
        {"type": "group_pool", "mode": "max"},
        {"type": "global_pool", "mode": "avg"},
        {"type": "dropout", "p": 0.2},
        {"type": "linear", "out": "classes"},
    ]


def _gcnn_tiny(image_size: int, in_channels: int) -> list[Any]:
    return [
        {"type": "lift", "out": 8, "kernel": 3},
        "batchnorm",
        "relu",
        {"type": "gconv", "out": 8, "kernel": 3},
        "batchnorm",
        "relu",
        _pool(image_size),
        {"type": "group_pool", "mode": "max"},
        {"type": "global_pool", "mode": "avg"},
        {"type": "linear", "out": "classes"},
    ]


register_preset(
    Preset(
        "gcnn-small",
        "default: lift 5×5 + 3 group convs (CNN widths 24-32-64-64, ~63k parameters on every group), "
        "batch norm, ReLU, 2 max pools, max over the group, global average pool, linear head",
        _gcnn_small,
    )
)
register_preset(
    Preset(
        "gcnn-tiny",
        "smoke-test size: lift 3×3 + one group conv (CNN width 8), one pool, group and global pooling, linear",
        _gcnn_tiny,
    )
)
