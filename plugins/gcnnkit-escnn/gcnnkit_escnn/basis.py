"""Which steerable basis an escnn convolution uses: escnn's default, or the complete one.

``basis: escnn`` keeps escnn's defaults (``ceil(k/2)`` rings, Gaussian ring width 0.6/0.4, a
radius-dependent frequency cut-off). They span only part of the kernels the native backend can
learn: for a C4 group convolution 24 of the 36 tied dimensions at k = 3, 44/100 at k = 5,
72/196 at k = 7 (band-limited filters, which behave better under rotations that are not
multiples of 90°).

``basis: complete`` spans every equivariant kernel the pixel grid can hold — for an exact group
(C4, D4, ...) exactly the native backend's tied space (|G|·k² per field pair for group
convolutions, k² for lifting ones) — in four steps:

1. **rings** at every distinct pixel radius ``√(i² + j²)`` of the ``k×k`` grid (times the dilation),
   each a Gaussian of width 0.005 pixels, so that a ring touches only the pixels at its radius;
2. **per-ring frequency cut-off** ``⌊n_r / 2⌋`` for a ring through ``n_r`` pixels — the highest
   angular frequency ``n_r`` samples resolve (a global ``max_frequency`` may replace it);
3. **noise filter**: a basis element that vanishes on every pixel of its ring (e.g. ``sin 2θ`` on
   the 4 pixels at radius 1) samples to float32 round-off (norm ~1e-6, measured ≤ 5e-6) instead of
   0. escnn normalises every element with norm ≥ 1e-6 to unit norm, turning that round-off into a
   filter of pure noise that breaks equivariance (9% error at exact rotations was measured with a
   cut-off of 8 at k = 3). Elements whose sampled norm before normalisation is below
   ``NOISE_TOLERANCE`` × the largest norm are dropped (genuine elements have relative norm ≥ 2e-2);
4. **rank filter**: aliased frequencies repeat what lower ones already span; elements are taken
   lowest frequency first and kept only when they add a new direction (relative residual after
   projecting out the kept ones > ``RANK_TOLERANCE``), so the basis has exactly as many elements as
   its span has dimensions and the parameter count equals the native backend's.

The filters are passed to escnn's ``R2Conv`` as its ``rings``/``sigma``/``frequencies_cutoff`` and a
``basis_filter``; escnn builds, samples and normalises the basis as usual.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

#: ``model.backend_options.basis`` values.
BASES = ("escnn", "complete")
#: Gaussian width of each ring of the complete basis (pixels).
RING_SIGMA = 0.005
#: Elements with a sampled norm below this fraction of the largest one are float noise.
NOISE_TOLERANCE = 1e-3
#: Elements whose residual (relative to their norm) after projecting out the kept ones is below
#: this add no new direction.
RANK_TOLERANCE = 1e-3


def pixel_rings(kernel_size: int, dilation: int = 1) -> list[tuple[float, int]]:
    """``(radius, pixel count)`` of every distinct pixel distance from the centre of the grid."""
    c = (kernel_size - 1) / 2
    counts = Counter(round((i - c) ** 2 + (j - c) ** 2, 6) for i in range(kernel_size) for j in range(kernel_size))
    width = dilation * (kernel_size - 1) / 2
    limit = width * np.sqrt(2)  # escnn asserts rings <= this; keep float round-off below it
    return [(min(dilation * math.sqrt(d2), limit), n) for d2, n in sorted(counts.items())]


class RingCutoff:
    """Frequency cut-off per ring: ``⌊n_r/2⌋`` for a ring through ``n_r`` pixels (0 at the centre),
    or ``max_frequency`` everywhere when given. Picklable (escnn calls it with a ring's radius)."""

    def __init__(self, rings: list[tuple[float, int]], max_frequency: int | None = None):
        self.radii = [r for r, _ in rings]
        self.cutoffs = [0 if r == 0 else (n // 2 if max_frequency is None else max_frequency) for r, n in rings]

    def __call__(self, radius: float) -> float:
        i = min(range(len(self.radii)), key=lambda j: abs(self.radii[j] - radius))
        return float(self.cutoffs[i])


class KeepElements:
    """escnn ``basis_filter``: keep the basis elements whose index (``attr["idx"]``) was selected."""

    def __init__(self, keep: frozenset[int]):
        self.keep = keep

    def __call__(self, attr: dict) -> bool:
        return attr["idx"] in self.keep


@dataclass(frozen=True)
class BasisChoice:
    """Keyword arguments for escnn's ``R2Conv`` and what the selection found.

    ``candidates``: elements under the frequency cut-off; ``noise``: of those, float-noise elements
    (dropped unless the filters are off); ``redundant``: dropped as linearly dependent; ``dimension``:
    elements kept (escnn itself may still drop elements of norm < 1e-6).
    """

    rings: list[float] | None = None
    sigma: list[float] | None = None
    frequencies_cutoff: Callable | None = None
    basis_filter: Callable | None = None
    candidates: int = 0
    noise: int = 0
    redundant: int = 0
    dimension: int = 0

    def conv_kwargs(self) -> dict:
        if self.rings is None:
            return {}
        return {
            "rings": self.rings,
            "sigma": self.sigma,
            "frequencies_cutoff": self.frequencies_cutoff,
            "basis_filter": self.basis_filter,
        }


_SELECTION_CACHE: dict[tuple, BasisChoice] = {}


def grid_points(kernel_size: int, dilation: int = 1) -> np.ndarray:
    """escnn's sampling points (x right, y up) of a ``k×k`` grid, row-major: ``[k², 2]``."""
    from escnn.nn.modules.conv.rd_convolution import get_grid_coords

    return get_grid_coords(2, kernel_size, dilation)


def sample_unnormalised(basis, points: np.ndarray) -> torch.Tensor:
    """``[elements, out·in·points]`` float64: the basis sampled on the grid, before escnn's normalisation."""
    sampled = basis.sample(torch.tensor(points, dtype=torch.float32))  # [points, elements, out, in]
    return sampled.permute(1, 2, 3, 0).reshape(sampled.shape[1], -1).to(torch.float64)


def greedy_independent(vectors: torch.Tensor, order: list[int], tolerance: float = RANK_TOLERANCE) -> list[int]:
    """Indices (of ``order``) of the vectors that each add a new direction, in ``order``
    (Gram–Schmidt with re-orthogonalisation)."""
    kept: list[int] = []
    q = torch.zeros(0, vectors.shape[1], dtype=vectors.dtype)
    for i in order:
        v = vectors[i]
        norm = v.norm()
        if norm == 0:
            continue
        r = v / norm
        for _ in range(2):
            r = r - q.T @ (q @ r)
        res = r.norm()
        if res > tolerance:
            kept.append(i)
            q = torch.cat([q, (r / res)[None]])
    return kept


def complete_basis(
    gspace,
    in_repr,
    out_repr,
    kernel_size: int,
    dilation: int = 1,
    max_frequency: int | None = None,
    noise_filter: bool = True,
) -> BasisChoice:
    """The complete basis for an ``in_repr → out_repr`` convolution (see the module docstring).

    Args:
        max_frequency: one cut-off for every ring instead of ``⌊n_r/2⌋`` (larger values add only
            noise and aliases, which the filters remove).
        noise_filter: drop float-noise elements (only ``False`` to demonstrate what they do).
    """
    key = (id(gspace), in_repr.name, out_repr.name, kernel_size, dilation, max_frequency, noise_filter)
    if key in _SELECTION_CACHE:
        return _SELECTION_CACHE[key]
    ring_list = pixel_rings(kernel_size, dilation)
    rings = [r for r, _ in ring_list]
    sigma = [RING_SIGMA] * len(rings)
    cutoff = RingCutoff(ring_list, max_frequency)
    maximum_frequency = int(max(cutoff(r) for r in rings))
    basis = gspace.build_kernel_basis(in_repr, out_repr, sigma, rings, maximum_frequency=maximum_frequency)
    attrs = list(basis)
    candidates = [b for b, a in enumerate(attrs) if abs(a["irrep:frequency"]) <= cutoff(a["radius"])]
    sampled = sample_unnormalised(basis, grid_points(kernel_size, dilation))
    norms = sampled.norm(dim=1)
    scale = float(norms[candidates].max()) if candidates else 0.0
    clean = [b for b in candidates if float(norms[b]) > NOISE_TOLERANCE * scale]
    order = sorted(clean, key=lambda b: (abs(attrs[b]["irrep:frequency"]), attrs[b]["radius"], b))
    kept = greedy_independent(sampled, order) if noise_filter else candidates
    choice = BasisChoice(
        rings=rings,
        sigma=sigma,
        frequencies_cutoff=cutoff,
        basis_filter=KeepElements(frozenset(attrs[b]["idx"] for b in kept)),
        candidates=len(candidates),
        noise=len(candidates) - len(clean),
        redundant=len(clean) - len(kept) if noise_filter else 0,
        dimension=len(kept),
    )
    _SELECTION_CACHE[key] = choice
    return choice
