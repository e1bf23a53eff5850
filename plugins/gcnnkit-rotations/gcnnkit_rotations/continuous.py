"""The continuous groups SO(2) and O(2), band-limited, as gcnnkit groups (escnn backend only).

A gcnnkit :class:`~gcnnkit.core.group.Group` is a finite set of elements with one 2×2 matrix each.
SO(2) and O(2) have infinitely many, so a :class:`ContinuousGroup` carries

* its **samples**: the rotations by multiples of ``360°/SAMPLES`` (and, for O(2), those rotations
  after the mirror ``x ↦ −x``), in the element order of ``C_SAMPLES``/``D_SAMPLES``. They are what
  ``gcnnkit check`` acts with: the multiples of 90° (and the mirrors) permute pixels and are
  judged, every other angle is interpolated and reported, one error per angle;
* its **band limit** ``max_frequency``: the irreps ``irrep(k)`` (SO(2)) / ``irrep(j, k)`` (O(2))
  with ``k ≤ max_frequency`` are the representations a field may use; SO(2) and O(2) have no
  (finite) regular representation;
* its escnn gspace, ``rot2dOnR2(N=-1, maximum_frequency=L)`` / ``flipRot2dOnR2(N=-1, ...)``, which
  the escnn backend builds its layers on (the filters are steerable for every angle, not only the
  samples).

Names: ``SO2`` and ``O2`` (band limit :data:`DEFAULT_MAX_FREQUENCY`), ``SO2_{N}`` / ``O2_{N}`` (band
limit N), e.g. ``SO2_6``. The native backend builds layers for finite groups only and refuses these.
"""

from __future__ import annotations

import math

import torch

from gcnnkit.core.group import Group, cyclic_group, dihedral_group
from gcnnkit.core.representation import Representation, RepresentationCatalog, RepresentationError
from gcnnkit_rotations.groups import API_VERSION, _cyclic_table, _dihedral_table

#: Band limit of ``SO2`` and ``O2``.
DEFAULT_MAX_FREQUENCY = 4
#: Rotations sampled (multiples of 360°/SAMPLES): 22.5° apart, the multiples of 90° among them.
SAMPLES = 16


class BandLimitedIrreps(RepresentationCatalog):
    """The irreps of SO(2) (``irrep(k)``) or O(2) (``irrep(j, k)``) up to the band limit, with escnn's
    matrices, evaluated at the sampled elements: for the rotation ``r_θ`` (and ``r_θ f``, the mirror first)
    ``irrep(k)``: ``R(kθ)``; ``irrep(0, 0)``: 1; ``irrep(1, 0)``: ``det`` (−1 on mirrors);
    ``irrep(1, k)``: ``R(kθ)·diag(1, −1)^f``."""

    def __init__(self, family: str, max_frequency: int) -> None:
        self.family, self.max_frequency = family, max_frequency

    def irreps(self, group: Group) -> list[Representation]:
        out = []
        for params in group.irrep_params():
            mats = torch.stack([_irrep_matrix(self.family, params, h) for h in range(group.order)])
            name = "irrep_" + ",".join(map(str, params))
            out.append(Representation(group, name, mats, "irrep", params))
        return out


def _irrep_matrix(family: str, params: tuple[int, ...], h: int) -> torch.Tensor:
    k_sample, flip = h % SAMPLES, h // SAMPLES
    theta = 2 * math.pi * k_sample / SAMPLES
    if family == "SO2":
        (k,) = params
        j = 1
    else:
        j, k = params
    if k == 0:
        return torch.tensor([[(-1.0) ** (j * flip)]], dtype=torch.float64)
    c, s = _snap(math.cos(k * theta)), _snap(math.sin(k * theta))
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return rot @ torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64)) if flip else rot


def _snap(v: float) -> float:
    r = round(v)
    return float(r) if abs(v - r) < 1e-12 else v


class ContinuousGroup(Group):
    """A band-limited continuous group, acting through its sampled elements (see the module docstring)."""

    continuous = True

    def __init__(self, name: str, family: str, max_frequency: int, sampled: Group, table) -> None:
        names = [_angle_name(sampled, h) for h in range(sampled.order)]
        gspace = "rot2dOnR2" if family == "SO2" else "flipRot2dOnR2"
        super().__init__(
            name,
            names,
            sampled.matrices,
            api_version=API_VERSION,
            cayley_table=table,
            escnn={"gspace": gspace, "N": -1, "maximum_frequency": max_frequency},
            representations=BandLimitedIrreps(family, max_frequency),
        )
        self.family = family
        self.max_frequency = max_frequency

    def irrep_params(self) -> list[tuple[int, ...]]:
        """Params of the band-limited irreps, escnn's order: ``(k,)`` for SO(2); ``(0, 0), (1, 0), (1, k)`` for O(2)."""
        if self.family == "SO2":
            return [(k,) for k in range(self.max_frequency + 1)]
        return [(0, 0), (1, 0)] + [(1, k) for k in range(1, self.max_frequency + 1)]

    def regular(self) -> Representation:
        raise RepresentationError(
            f"{self.name} is continuous and has no regular representation; use its irreps, e.g. "
            f"{{irrep({', '.join(map(str, self.irrep_params()[1]))}): 8}}"
        )

    def all_representations(self) -> list[Representation]:
        """``trivial`` and the band-limited irreps (no regular representation)."""
        return [self.trivial(), *self.irreps()[1:]]

    def __eq__(self, other: object) -> bool:  # SO2 and SO2_6 share their samples, not their band limit
        return super().__eq__(other) and getattr(other, "max_frequency", None) == self.max_frequency

    def __hash__(self) -> int:
        return hash((self.element_names, self.max_frequency))

    def __repr__(self) -> str:
        return f"ContinuousGroup({self.name}, max_frequency={self.max_frequency}, samples={self.order})"


def _angle_name(sampled: Group, h: int) -> str:
    """``e``, ``22.5°``, ... for rotations; ``f``, ``22.5°f`` for mirrored ones (mirror first)."""
    k, j = h % SAMPLES, h // SAMPLES
    angle = 360.0 * k / SAMPLES
    text = f"{angle:g}°"
    if j:
        return "f" if k == 0 else f"{text}f"
    return "e" if k == 0 else text


def _band(n: object, family: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{family}_{{N}} needs an integer band limit N >= 1, got {n!r}")
    return n


def so2(max_frequency: int = DEFAULT_MAX_FREQUENCY) -> ContinuousGroup:
    """SO(2) with irreps up to ``max_frequency`` (the family ``SO2_{N}``)."""
    n = _band(max_frequency, "SO2")
    name = "SO2" if n == DEFAULT_MAX_FREQUENCY else f"SO2_{n}"
    return ContinuousGroup(name, "SO2", n, cyclic_group(SAMPLES), _cyclic_table(SAMPLES))


def o2(max_frequency: int = DEFAULT_MAX_FREQUENCY) -> ContinuousGroup:
    """O(2) with irreps up to frequency ``max_frequency`` (the family ``O2_{N}``)."""
    n = _band(max_frequency, "O2")
    name = "O2" if n == DEFAULT_MAX_FREQUENCY else f"O2_{n}"
    return ContinuousGroup(name, "O2", n, dihedral_group(SAMPLES), _dihedral_table(SAMPLES))


def SO2() -> ContinuousGroup:
    """SO(2), band limit :data:`DEFAULT_MAX_FREQUENCY`."""
    return so2()


def O2() -> ContinuousGroup:
    """O(2), band limit :data:`DEFAULT_MAX_FREQUENCY`."""
    return o2()


def so2_family(n: int) -> ContinuousGroup:
    """``SO2_{N}``: the group named exactly ``SO2_<N>``."""
    group = so2(n)
    group.name = f"SO2_{n}"
    return group


def o2_family(n: int) -> ContinuousGroup:
    """``O2_{N}``: the group named exactly ``O2_<N>``."""
    group = o2(n)
    group.name = f"O2_{n}"
    return group


so2_family.api_version = API_VERSION
o2_family.api_version = API_VERSION
