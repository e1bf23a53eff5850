"""Grid symmetry: which strides and pools keep a network equivariant on a square pixel grid.

A rotation by 90° (or a reflection) about the centre of an ``n × n`` map maps its pixel grid onto
itself. A convolution or pooling window of size ``k`` (dilation ``d``), padding ``p`` and stride
``s`` puts its ``m`` outputs at the input positions ``c_j = −p + j·s + d·(k − 1)/2``. The layer
commutes with the group action exactly when that output grid is symmetric about the input centre,
``c_0 + c_{m−1} = n − 1``, i.e. when the last window ends exactly on the padded border::

    (n + 2p − d·(k − 1) − 1) mod s == 0

Stride 1 always satisfies it; stride 2 needs an odd ``n + 2p − d·(k − 1)``. When it fails, the
output grid is shifted off-centre and the layer (hence the network) is not equivariant to any
non-trivial rotation or reflection, whatever the weights: a 2×2/stride-2 pool on a 17×17 map, or a
3×3/stride-2 convolution with padding 1 on a 16×16 one. (One exception: a pool with a single
window that covers the whole map pools globally and is exact wherever it starts.)
:func:`grid_problem` walks a layer spec from the image size and names the first layer that
breaks the condition, so the network is refused before it is built
(``model.allow_non_equivariant: true`` builds it anyway).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gcnnkit.models.spec import LayerSpec, parse_layers

#: Layer types that change the side of the feature map.
RESAMPLING = ("lift", "gconv", "pool")
#: Layer types after which there is no map left
POOLED = ("global_pool", "orbit_pool", "linear")


def resolve_padding(padding: int | str, kernel: int, dilation: int) -> int:
    """``"same"`` → ``dilation·(kernel-1)/2`` (odd kernels); an int is returned unchanged."""
    if padding == "same":
        return dilation * (kernel - 1) // 2
    return int(padding)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Side of a convolution's (or pooling's) output on a ``size``² input."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def is_centred(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> bool:
    """True when the output grid of the window is symmetric about the centre of the ``size``² input."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) % stride == 0


@dataclass(frozen=True)
class Window:
    """The resampling a ``lift``/``gconv``/``pool`` layer does: kernel, stride, padding, dilation."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    pooling: bool = False

    @classmethod
    def of(cls, spec: LayerSpec) -> Window | None:
        """The window of a resampling layer, ``None`` for layers that keep the map's side."""
        p = spec.params
        if spec.type in ("lift", "gconv"):
            padding = resolve_padding(p["padding"], p["kernel"], p["dilation"])
            return cls(p["kernel"], p["stride"], padding, p["dilation"])
        if spec.type == "pool":
            return cls(p["kernel"], p["stride"] or p["kernel"], p["padding"], pooling=True)
        return None

    def output_size(self, size: int) -> int:
        return conv_output_size(size, self.kernel, self.stride, self.padding, self.dilation)

    def centred(self, size: int) -> bool:
        """:func:`is_centred`, or a pool whose one window covers the whole map (a global pool)."""
        if self.pooling and self.output_size(size) == 1 and self.kernel - 1 - self.padding >= size - 1:
            return True
        return is_centred(size, self.kernel, self.stride, self.padding, self.dilation)

    def describe(self) -> str:
        extra = f", dilation {self.dilation}" if self.dilation != 1 else ""
        return f"kernel {self.kernel}, stride {self.stride}, padding {self.padding}{extra}"


def windows(specs: Sequence[LayerSpec], image_size: int, where: str = "layer ") -> tuple[list, int | None]:
    """Every resampling window from an ``image_size``² input, inside residual blocks too (their body and
    projection shortcut): ``([(label, window, input side), ...], output side)``; the side is ``None`` once
    the map is pooled away (global pooling), where the walk stops."""
    items: list[tuple[str, Window, int]] = []
    size = image_size
    for i, spec in enumerate(specs):
        label = f"{where}{i} ({spec.type})"
        if spec.type in POOLED:
            return items, None
        if spec.type == "residual":
            body = parse_layers(spec.params["layers"], f"{label}.layers")
            inner, out = windows(body, size, f"{label} body layer ")
            items += inner
            if out is None:
                return items, None
            if spec.params["shortcut"] == "projection":
                stride = math.prod(w.stride for _, w, _ in inner)
                items.append((f"{label} shortcut", Window(1, stride, 0), size))
            size = out
            continue
        window = Window.of(spec)
        if window is not None:
            items.append((label, window, size))
            size = window.output_size(size)
    return items, size


def map_sizes(specs: Sequence[LayerSpec], image_size: int) -> list[int]:
    """The side of the map entering each layer (``len(specs)`` entries), from an ``image_size``² input."""
    sizes, size = [], image_size
    for spec in specs:
        sizes.append(size)
        if spec.type == "residual":
            _, out = windows(parse_layers(spec.params["layers"]), size)
            size = size if out is None else out
            continue
        window = Window.of(spec)
        if window is not None:
            size = window.output_size(size)
    return sizes


def first_off_centre(specs: Sequence[LayerSpec], image_size: int) -> tuple[str, Window, int] | None:
    """``(label, window, input side)`` of the first window whose output grid is off-centre on an
    ``image_size``² input, else ``None``. Windows after the map has shrunk to nothing are not judged
    (the build reports that)."""
    for label, window, size in windows(specs, image_size)[0]:
        if size < 1 or window.output_size(size) < 1:
            continue
        if not window.centred(size):
            return label, window, size
    return None


def working_image_sizes(specs: Sequence[LayerSpec], image_size: int, count: int = 3) -> list[int]:
    """Up to ``count`` image sizes nearest ``image_size`` (>= 8) whose every layer keeps the grid centred."""
    found = []
    for delta in range(1, 4 * max(image_size, 8)):
        for n in (image_size - delta, image_size + delta):
            if n >= 8 and first_off_centre(specs, n) is None and min(map_sizes(specs, n)) >= 1:
                found.append(n)
        if len(found) >= count:
            break
    return sorted(found[:count])


def grid_problem(specs: Sequence[LayerSpec], image_size: int, group_name: str, group_order: int) -> str | None:
    """One line naming the first layer that breaks ``group_name``-equivariance by resampling off-centre.

    ``None`` when every stride and pool keeps the grid symmetric, or the group is trivial.
    """
    if group_order <= 1:
        return None
    found = first_off_centre(specs, image_size)
    if found is None:
        return None
    label, window, size = found
    s = window.stride
    residue = (1 + window.dilation * (window.kernel - 1) - 2 * window.padding) % s
    good_maps = [n for n in range(max(1, size - 2 * s), size + 2 * s + 1) if n % s == residue and n != size][:3]
    images = working_image_sizes(specs, image_size)
    image_hint = f"; image sizes that work: {', '.join(map(str, images))} (data.image_size)" if images else ""
    return (
        f"{label}: {window.describe()} on a {size}×{size} map (image {image_size}×{image_size}) "
        f"samples the grid off its centre, so the network is not {group_name}-equivariant; it needs "
        f"(size + 2·padding − dilation·(kernel − 1) − 1) divisible by the stride, e.g. maps of "
        f"{', '.join(map(str, good_maps))}{image_hint}; or set model.allow_non_equivariant: true"
    )
