"""Field types: what a tensor between two layers is and how the group acts on it.

=========  ======================  ==========================================================
kind       shape                   action of ``g``
=========  ======================  ==========================================================
image      ``[B, C, H, W]``        spatial only (C trivial fields): ``x(g⁻¹p)``
group      ``[B, C, |G|, H, W]``   spatial and regular rep on the group axis: ``f(g⁻¹h, g⁻¹p)``
vector     ``[B, C]``              none (invariant features, logits)
=========  ======================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gcnnkit.core.group import Group
from gcnnkit.core.transforms import transform_group_map, transform_image

Kind = Literal["image", "group", "vector"]
KINDS: tuple[str, ...] = ("image", "group", "vector")


@dataclass(frozen=True)
class FieldType:
    """``channels`` fields of one ``kind``; a ``group`` field has ``|G|`` channels."""

    kind: Kind
    channels: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field kind must be one of {KINDS}, got {self.kind!r}")
        if self.channels < 1:
            raise ValueError(f"a field type needs at least one channel, got {self.channels}")

    def shape(self, group: Group, batch: int, height: int = 0, width: int = 0) -> tuple[int, ...]:
        """Tensor shape of this type for a batch (spatial size ignored for vectors)."""
        if self.kind == "vector":
            return (batch, self.channels)
        if self.kind == "image":
            return (batch, self.channels, height, width)
        return (batch, self.channels, group.order, height, width)

    def act(self, group: Group, g: int | str, x: torch.Tensor) -> torch.Tensor:
        """Apply group element ``g`` to a tensor of this type."""
        if self.kind == "vector":
            return x
        if self.kind == "image":
            return transform_image(x, group, g)
        return transform_group_map(x, group, g)

    def __str__(self) -> str:
        return f"{self.kind}[{self.channels}]"
