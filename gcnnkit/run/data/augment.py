"""Batch transforms on the model's device: train-time augmentation and the test-time protocols.

They act on whole batches ``[B, C, H, W]`` wherever the batch is (the model's device), the same
code whether the batch came from memory or streamed from disk; randomness comes from a CPU
``torch.Generator`` only, so a run is reproducible on any device.

Test protocols (:data:`PROTOCOLS`): ``upright``; ``rotated`` (sample ``i`` turned by angle
``i`` of :func:`~gcnnkit.core.transforms.random_angles` ``(N, rotation_seed)`` — the same angles every
run); ``rot90``/``rot180``/``rot270`` (exact); ``flip`` (left–right).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gcnnkit.core.transforms import random_angles, rotate_images
from gcnnkit.run.data.splits import AnySplit

#: Train-time augmentations (``data.augment``), see :func:`augment_batch`.
AUGMENTATIONS = ("none", "rot90", "rotate", "flip")
#: Test-time protocols (``eval.protocols``), see :func:`apply_protocol`.
PROTOCOLS = ("upright", "rotated", "rot90", "rot180", "rot270", "flip")


def augment_batch(
    x: torch.Tensor, mode: str, generator: torch.Generator, max_degrees: float | None = None
) -> torch.Tensor:
    """Random train-time transform of each image of ``x`` ``[B, C, H, W]``.

    ``none``: unchanged; ``rot90``: a random multiple of 90°; ``rotate``: a random angle in
    [0°, 360°) (bilinear, zeros outside), or uniform in [−``max_degrees``, ``max_degrees``] when
    that is given (``data.augment_degrees``); ``flip``: a random left–right flip, then a random
    multiple of 90° (a random element of D4). Randomness comes only from ``generator`` (CPU).
    """
    if mode == "none":
        return x
    b = x.shape[0]
    if mode == "rotate":
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        return rotate_images(x, u * 360.0 if max_degrees is None else (2.0 * u - 1.0) * max_degrees)
    if mode not in ("rot90", "flip"):
        raise ValueError(f"unknown augmentation {mode!r}; allowed: {', '.join(AUGMENTATIONS)}")
    quarter_turns = torch.randint(0, 4, (b,), generator=generator)
    if mode == "flip":
        flips = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    return rotate_images(x, quarter_turns.double() * 90.0)


def apply_protocol(x: torch.Tensor, protocol: str, angles: torch.Tensor | None = None) -> torch.Tensor:
    """Transform test images ``[B, C, H, W]`` by a protocol; ``rotated`` needs ``angles`` ``[B]`` (degrees)."""
    if protocol == "upright":
        return x
    if protocol == "flip":
        return x.flip(-1)
    if protocol in ("rot90", "rot180", "rot270"):
        return torch.rot90(x, int(protocol[3:]) // 90, dims=(-2, -1))
    if protocol == "rotated":
        if angles is None:
            raise ValueError("the 'rotated' protocol needs one angle per image")
        return rotate_images(x, angles)
    raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation of each RGB image of ``x`` ``[B, 3, H, W]`` in ``[0, 1]``.

    Each factor is uniform in ``[1 − strength, 1 + strength]`` per image (``data.colour_jitter``):
    brightness scales the pixels, contrast scales them about the image's mean grey, saturation
    about its own grey (luma 0.299 R + 0.587 G + 0.114 B); the result is clipped to ``[0, 1]``.
    Grey images and ``strength`` 0 pass unchanged; rotations commute with it, so it keeps a
    model's symmetry.
    """
    if strength == 0 or x.shape[1] != 3:
        return x
    b = x.shape[0]
    factors = 1.0 + strength * (2.0 * torch.rand(3, b, generator=generator) - 1.0)
    bright, contrast, sat = (f.to(x).view(-1, 1, 1, 1) for f in factors)
    luma = torch.tensor([0.299, 0.587, 0.114]).to(x).view(1, 3, 1, 1)
    x = (x * bright).clamp(0.0, 1.0)
    grey_mean = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - grey_mean) * contrast + grey_mean).clamp(0.0, 1.0)
    grey = (x * luma).sum(dim=1, keepdim=True)
    return ((x - grey) * sat + grey).clamp(0.0, 1.0)


def protocol_batches(
    split: AnySplit, protocol: str, rotation_seed: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(images [b, C, H, W], labels [b])`` of ``split`` under ``protocol``, in order.

    Under ``rotated``, sample ``i`` is turned by ``random_angles(len(split), rotation_seed)[i]``
    whatever the batch size, so every run and every batching sees the same test set.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    angles = random_angles(len(split), rotation_seed) if protocol == "rotated" else None
    images = split.batches(torch.arange(len(split)), batch_size)
    for start, x in zip(range(0, len(split), batch_size), images, strict=True):
        stop = start + batch_size
        yield apply_protocol(x, protocol, None if angles is None else angles[start:stop]), split.labels[start:stop]
