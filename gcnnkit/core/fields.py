"""Field types: what a tensor between two layers is and how the group acts on it.

===========  ======================  =======================================================
kind         shape                   action of ``g``
===========  ======================  =======================================================
image        ``[B, C, H, W]``        spatial only (C trivial fields): ``x(g⁻¹p)``
group        ``[B, C, |G|, H, W]``   spatial and regular rep on the group axis: ``f(g⁻¹h, g⁻¹p)``
steerable    ``[B, D, H, W]``        spatial and ``ρ_i(g)`` on each field's block of channels
vector       ``[B, C]``              none (invariant features, logits)
===========  ======================  =======================================================

A *steerable* field type is an ordered tuple of representations ``reps`` (as escnn's
``FieldType``): field ``i`` occupies channels ``offsets[i] : offsets[i] + reps[i].size`` of
``D = Σ size``, and ``g`` acts by ``(g·f)(p) = ρ(g) f(g⁻¹p)`` with ``ρ = ⊕ reps``, exactly as on
escnn's ``GeometricTensor``. ``image`` and ``group`` are the special cases of only trivial and only
regular fields, kept in their own layouts (a group map flattened, ``[B, C·|G|, H, W]``, is the
steerable layout of ``C`` regular fields). :meth:`FieldType.of` picks the kind for a tuple of
representations; :func:`field_type_from_spec` reads a spec's ``out``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch

from gcnnkit.core.errors import SpecError
from gcnnkit.core.group import Group
from gcnnkit.core.representation import Representation, RepresentationError, direct_sum
from gcnnkit.core.transforms import transform_group_map, transform_image

Kind = Literal["image", "group", "steerable", "vector"]
KINDS: tuple[str, ...] = ("image", "group", "steerable", "vector")


@dataclass(frozen=True)
class FieldType:
    """``channels`` fields of one ``kind``; a ``group`` field has ``|G|`` channels.

    A ``steerable`` type is given by its representations, ``FieldType("steerable", reps=(...))``
    (``channels`` is then the number of fields, filled in); the other kinds have ``reps == ()`` and
    :meth:`field_reps` gives their representations.
    """

    kind: Kind
    channels: int = 0
    reps: tuple[Representation, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "steerable":
            reps = tuple(self.reps)
            if not reps:
                raise ValueError("a steerable field type needs at least one representation")
            if any(not isinstance(r, Representation) for r in reps) or len({r.group for r in reps}) != 1:
                raise ValueError("a steerable field type needs Representations of one group")
            object.__setattr__(self, "reps", reps)
            if self.channels not in (0, len(reps)):
                raise ValueError(
                    f"a steerable field type has one channel count per field: {len(reps)}, got {self.channels}"
                )
            object.__setattr__(self, "channels", len(reps))
            return
        if self.reps:
            raise ValueError(f"only steerable field types carry reps; a {self.kind} type is given by its channels")
        if self.channels < 1:
            raise ValueError(f"a field type needs at least one channel, got {self.channels}")

    # ------------------------------------------------------------- building
    @staticmethod
    def of(reps: Sequence[Representation]) -> FieldType:
        """The field type of these fields: ``group`` when all are regular (today's layout, fast path),
        else ``steerable``."""
        reps = tuple(reps)
        if reps and all(r.kind == "regular" for r in reps):
            return FieldType("group", len(reps))
        return FieldType("steerable", reps=reps)

    def field_reps(self, group: Group) -> tuple[Representation, ...]:
        """The representation of each field: trivial for ``image``, regular for ``group``, ``reps`` for
        ``steerable``; ``()`` for ``vector``."""
        if self.kind == "steerable":
            return self.reps
        if self.kind == "image":
            return (group.trivial(),) * self.channels
        if self.kind == "group":
            return (group.regular(),) * self.channels
        return ()

    # ------------------------------------------------------------- geometry
    @cached_property
    def size(self) -> int:
        """Channels of a steerable tensor, ``D = Σ reps[i].size`` (``channels`` for the other kinds)."""
        return sum(r.size for r in self.reps) if self.kind == "steerable" else self.channels

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """First channel of each field of a steerable type."""
        out, at = [], 0
        for r in self.reps:
            out.append(at)
            at += r.size
        return tuple(out)

    @cached_property
    def representation(self) -> Representation:
        """``⊕ reps``: the action on the channels of a steerable type, ``[|G|, D, D]`` matrices."""
        if self.kind != "steerable":
            raise ValueError(f"only steerable field types have one representation, not {self}")
        return self.reps[0] if len(self.reps) == 1 else direct_sum(*self.reps)

    @property
    def is_permutation(self) -> bool:
        """True when every field's representation permutes its channels (pointwise maps commute with it)."""
        return self.kind != "steerable" or all(r.is_permutation for r in self.reps)

    def shape(self, group: Group, batch: int, height: int = 0, width: int = 0) -> tuple[int, ...]:
        """Tensor shape of this type for a batch (spatial size ignored for vectors)."""
        if self.kind == "vector":
            return (batch, self.channels)
        if self.kind == "image":
            return (batch, self.channels, height, width)
        if self.kind == "steerable":
            return (batch, self.size, height, width)
        return (batch, self.channels, group.order, height, width)

    def act(self, group: Group, g: int | str, x: torch.Tensor) -> torch.Tensor:
        """Apply group element ``g`` to a tensor of this type."""
        if self.kind == "vector":
            return x
        if self.kind == "image":
            return transform_image(x, group, g)
        if self.kind == "steerable":
            rho = self.representation.matrix(group.index(g)).to(dtype=x.dtype, device=x.device)
            return torch.einsum("ij,bjhw->bihw", rho, transform_image(x, group, g))
        return transform_group_map(x, group, g)

    def __str__(self) -> str:
        if self.kind != "steerable":
            return f"{self.kind}[{self.channels}]"
        runs: list[list[Any]] = []
        for r in self.reps:
            if runs and runs[-1][0] == r.name:
                runs[-1][1] += 1
            else:
                runs.append([r.name, 1])
        return "steerable[" + ", ".join(f"{name}×{n}" if n > 1 else name for name, n in runs) + "]"


def field_type_from_spec(group: Group, out: Mapping[str, int], where: str) -> FieldType:
    """A spec's ``out: {regular: 8, irrep(1): 4, trivial: 2}`` (ordered) → the field type of those fields
    on ``group``, in that order (:meth:`FieldType.of`).

    Raises:
        SpecError: a name ``group`` does not offer, or a count below 1 (one line, naming it).
    """
    reps: list[Representation] = []
    for name, count in out.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SpecError(f"{where}.out[{name!r}]: expected a field count >= 1, got {count!r}")
        try:
            rep = group.representation(str(name))
        except RepresentationError as e:
            raise SpecError(f"{where}.out: {e}") from None
        reps += [rep] * count
    if not reps:
        raise SpecError(f"{where}.out: needs at least one field, e.g. {{regular: 8}}")
    return FieldType.of(reps)
