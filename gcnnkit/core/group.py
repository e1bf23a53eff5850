"""Finite groups acting on the square pixel grid.

A :class:`Group` is a finite subgroup ``H`` of O(2) given by one 2×2 orthogonal matrix per
element, in Cartesian coordinates (x to the right, y up, origin at the image centre).
Everything else — the Cayley table, inverses, the action on images and on group feature
maps — is derived from those matrices, so any finite group can be plugged in.

Conventions (identical to escnn, so the two backends compare one to one):

* rotation ``r^k`` of ``C_N``/``D_N`` rotates counter-clockwise by ``2πk/N``; for ``N = 4``
  it is ``torch.rot90(x, k, dims=(-2, -1))``;
* the reflection ``f`` mirrors left–right, ``x ↦ -x``: ``torch.flip(x, dims=(-1,))``;
* ``D_N`` element ``r^k f^j`` (reflect first, then rotate) has index ``N*j + k``;
* ``product(a, b)`` is ``a ∘ b`` (apply ``b`` first), so ``matrix(a·b) = matrix(a) @ matrix(b)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch

from gcnnkit.core.irreps import planar_catalog
from gcnnkit.core.representation import (
    Representation,
    RepresentationCatalog,
    RepresentationError,
    parse_rep_name,
    quotient_representation,
    regular_representation,
    trivial_representation,
)

#: Version of the group plugin API described in ``docs/group-plugins.md``. A group declares
#: the version it was written for; the registry refuses groups written for another one.
GROUP_API_VERSION = 1

_EXACT_TOL = 1e-9


class GroupAxiomError(AssertionError):
    """Raised by :func:`check_group_axioms` when a group is not a group (or its action is not one)."""


class Group:
    """A finite group acting on the pixel grid through 2×2 orthogonal matrices.

    A plugin may subclass it for a continuous group (SO(2), O(2)) that acts through finitely many
    sampled elements and sets :attr:`continuous`; backends that build finite filter banks refuse those.

    Args:
        name: registry name, e.g. ``"C4"``.
        element_names: one name per element; index 0 must be the identity.
        matrices: ``[|G|, 2, 2]`` action on Cartesian coordinates (x right, y up).
        api_version: the :data:`GROUP_API_VERSION` the group was written for.
        cayley_table: optional ``[|G|, |G|]`` table ``table[a, b] = index(a·b)``; needed only
            when the action is not faithful (two elements with the same matrix).
        escnn: optional description of the equivalent escnn gspace, e.g.
            ``{"gspace": "rot2dOnR2", "N": 4}``; backends that wrap escnn use it.
        representations: optional :class:`~gcnnkit.core.representation.RepresentationCatalog`: the
            group's irreps, subgroups (for quotient and restricted representations) and extra named
            representations. ``C_N``/``D_N`` built by :func:`cyclic_group`/:func:`dihedral_group` have
            escnn's; without one a group offers ``trivial`` and ``regular`` only.
    """

    #: True for a continuous group given by samples of its elements (backends with finite filter banks refuse it).
    continuous: bool = False

    def __init__(
        self,
        name: str,
        element_names: Sequence[str],
        matrices: torch.Tensor | Sequence,
        *,
        api_version: int,
        cayley_table: torch.Tensor | Sequence | None = None,
        escnn: Mapping | None = None,
        representations: RepresentationCatalog | None = None,
    ) -> None:
        matrices = torch.as_tensor(matrices, dtype=torch.float64)
        if matrices.ndim != 3 or matrices.shape[1:] != (2, 2):
            raise ValueError(f"group {name}: matrices must have shape [|G|, 2, 2], got {list(matrices.shape)}")
        if len(element_names) != matrices.shape[0]:
            raise ValueError(f"group {name}: {len(element_names)} element names for {matrices.shape[0]} matrices")
        if len(set(element_names)) != len(element_names):
            raise ValueError(f"group {name}: element names are not unique: {list(element_names)}")
        self.name = name
        self.element_names: tuple[str, ...] = tuple(element_names)
        self.matrices = matrices
        self.api_version = api_version
        self.escnn = dict(escnn) if escnn is not None else None
        if representations is not None and not isinstance(representations, RepresentationCatalog):
            raise ValueError(
                f"group {name}: representations must be a gcnnkit.core.representation.RepresentationCatalog, "
                f"got {type(representations).__name__}"
            )
        self.representations = representations
        self._given_table = None if cayley_table is None else torch.as_tensor(cayley_table, dtype=torch.long)

    # ----------------------------------------------------------------- structure
    @property
    def order(self) -> int:
        """Number of elements ``|G|``."""
        return len(self.element_names)

    def __len__(self) -> int:
        return self.order

    @property
    def identity(self) -> int:
        """Index of the identity element (always 0)."""
        return 0

    def index(self, element: int | str) -> int:
        """Index of an element given by index or by name."""
        if isinstance(element, str):
            try:
                return self.element_names.index(element)
            except ValueError:
                raise KeyError(
                    f"group {self.name} has no element {element!r}; elements: {', '.join(self.element_names)}"
                ) from None
        if not 0 <= int(element) < self.order:
            raise KeyError(f"group {self.name} has no element index {element}; valid: 0..{self.order - 1}")
        return int(element)

    @cached_property
    def cayley_table(self) -> torch.Tensor:
        """``[|G|, |G|]`` long tensor with ``table[a, b] = index(a·b)``."""
        if self._given_table is not None:
            return self._given_table
        n = self.order
        flat = self.matrices.reshape(n, 4)
        products = torch.einsum("aij,bjk->abik", self.matrices, self.matrices).reshape(n * n, 4)
        dist = torch.cdist(products, flat)
        best = dist.argmin(dim=1)
        if dist.min(dim=1).values.max() > 1e-6:
            raise GroupAxiomError(f"group {self.name}: the matrices are not closed under multiplication")
        if len(set(map(tuple, flat.round(decimals=6).tolist()))) != n:
            raise GroupAxiomError(
                f"group {self.name}: two elements share a matrix; pass cayley_table= for a non-faithful action"
            )
        return best.reshape(n, n)

    def product(self, a: int | str, b: int | str) -> int:
        """Index of ``a·b`` (apply ``b`` first, then ``a``)."""
        return int(self.cayley_table[self.index(a), self.index(b)])

    @cached_property
    def inverses(self) -> torch.Tensor:
        """``[|G|]`` long tensor: ``inverses[g]`` is the index of ``g⁻¹``."""
        return (self.cayley_table == self.identity).long().argmax(dim=1)

    def inverse(self, g: int | str) -> int:
        """Index of ``g⁻¹``."""
        return int(self.inverses[self.index(g)])

    # ----------------------------------------------------------------- action
    def matrix(self, g: int | str) -> torch.Tensor:
        """2×2 float64 action of ``g`` on Cartesian coordinates (x right, y up)."""
        return self.matrices[self.index(g)]

    @cached_property
    def exact(self) -> bool:
        """True when every element permutes the pixel grid (multiples of 90°, reflections)."""
        return bool(((self.matrices - self.matrices.round()).abs() < _EXACT_TOL).all())

    def is_exact(self, g: int | str) -> bool:
        """True when ``g`` permutes pixels exactly (its matrix has integer entries)."""
        m = self.matrix(g)
        return bool(((m - m.round()).abs() < _EXACT_TOL).all())

    def rot90_flip(self, g: int | str) -> tuple[int, int]:
        """For an exact element, ``(k, j)`` such that ``g`` acts as ``rot90(flip^j(x), k)``."""
        m = self.matrix(g)
        if not self.is_exact(g):
            raise ValueError(f"element {self.element_names[self.index(g)]} of {self.name} is not a pixel permutation")
        j = 1 if torch.det(m) < 0 else 0
        rotation = m @ torch.diag(torch.tensor([-1.0, 1.0], dtype=m.dtype)) if j else m
        k = round(math.degrees(math.atan2(rotation[1, 0].item(), rotation[0, 0].item())) / 90.0) % 4
        return k, j

    # ---------------------------------------------------------- representations
    def trivial(self) -> Representation:
        """The trivial representation ``ρ(g) = [1]`` (a scalar field)."""
        return self._trivial

    @cached_property
    def _trivial(self) -> Representation:
        return trivial_representation(self)

    def regular(self) -> Representation:
        """The regular representation: ``ρ(g) e_h = e_{g·h}`` (a group feature map's group axis)."""
        return self._regular

    @cached_property
    def _regular(self) -> Representation:
        return regular_representation(self)

    def _catalog(self, what: str) -> RepresentationCatalog:
        if self.representations is None:
            raise RepresentationError(
                f"group {self.name} declares no {what} (it offers trivial and regular only; a group plugin adds "
                f"them with Group(..., representations=...))"
            )
        return self.representations

    def irreps(self) -> tuple[Representation, ...]:
        """The real irreducible representations, in the catalog's (escnn's) order, trivial first."""
        return self._irreps

    @cached_property
    def _irreps(self) -> tuple[Representation, ...]:
        return tuple(self._catalog("irreducible representations").irreps(self))

    def irrep(self, *params: int) -> Representation:
        """The irrep with these params: ``irrep(k)`` of ``C_N``, ``irrep(j, k)`` of ``D_N``."""
        for rep in self.irreps():
            if rep.params == tuple(params):
                return rep
        allowed = ", ".join(f"irrep({', '.join(map(str, r.params))})" for r in self.irreps())
        raise RepresentationError(f"group {self.name} has no irrep{tuple(params)}; allowed: {allowed}")

    def subgroups(self) -> dict[Any, tuple[int, ...]]:
        """``{subgroup_id: element indices, in the subgroup's order}`` (empty without a catalog)."""
        if self.representations is None:
            return {}
        return {k: tuple(v) for k, v in self.representations.subgroups(self).items()}

    def subgroup(self, subgroup_id: Any) -> tuple[Group, tuple[int, ...]]:
        """The subgroup ``subgroup_id`` as a group, and the index in this group of each of its elements."""
        subgroups = self.subgroups()
        if subgroup_id not in subgroups:
            allowed = ", ".join(map(str, subgroups)) or "none"
            raise RepresentationError(f"group {self.name} has no subgroup {subgroup_id!r}; allowed: {allowed}")
        if subgroup_id not in self._subgroup_cache:
            self._subgroup_cache[subgroup_id] = self.representations.subgroup_group(self, subgroup_id)
        return self._subgroup_cache[subgroup_id], subgroups[subgroup_id]

    @cached_property
    def _subgroup_cache(self) -> dict:
        return {}

    def quotient(self, subgroup_id: Any) -> Representation:
        """The permutation representation on the cosets of the subgroup ``subgroup_id``."""
        self._catalog("subgroups")
        return quotient_representation(self, subgroup_id)

    def extra_representations(self) -> tuple[Representation, ...]:
        """The catalog's further named representations (kind ``custom``)."""
        return () if self.representations is None else tuple(self.representations.extra(self))

    def representation(self, name: str) -> Representation:
        """A representation by the name a spec uses: ``trivial``, ``regular``, ``irrep(1)``/``irrep_1``,
        ``irrep(1,2)``, ``quotient(2)``/``quotient(None,2)``, or an extra name of the catalog."""
        for rep in self.extra_representations():
            if rep.name == name:
                return rep
        kind, args = parse_rep_name(name)
        if kind == "trivial" and not args:
            return self.trivial()
        if kind == "regular" and not args:
            return self.regular()
        if kind == "irrep" and args:
            return self.irrep(*args)
        if kind == "quotient":
            return self.quotient(args[0])
        extra = [r.name for r in self.extra_representations()]
        allowed = ", ".join(["trivial", "regular", "irrep(...)", "quotient(...)", *extra])
        raise RepresentationError(f"group {self.name} has no representation {name!r}; allowed: {allowed}")

    def all_representations(self) -> list[Representation]:
        """What ``gcnnkit reps`` lists: trivial, regular, the irreps, the quotient by every proper
        non-trivial subgroup, and the catalog's extra representations."""
        reps = [self.trivial(), self.regular()]
        if self.representations is not None:
            reps += list(self.irreps())
            for sid, members in self.subgroups().items():
                if 1 < len(members) < self.order:
                    reps.append(self.quotient(sid))
            reps += list(self.extra_representations())
        return reps

    def __repr__(self) -> str:
        return f"Group({self.name}, order={self.order})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Group)
            and self.element_names == other.element_names
            and torch.equal(self.matrices, other.matrices)
        )

    def __hash__(self) -> int:
        # must agree with __eq__, which ignores the name: equal groups need equal hashes
        return hash(self.element_names)


def _rotation(theta: float) -> list[list[float]]:
    c, s = math.cos(theta), math.sin(theta)
    # Snap to exact values so that multiples of 90° are recognised as pixel permutations.
    c, s = (round(c) if abs(c - round(c)) < 1e-12 else c), (round(s) if abs(s - round(s)) < 1e-12 else s)
    return [[c, -s], [s, c]]


def cyclic_group(n: int, name: str | None = None) -> Group:
    """``C_N``: rotations by multiples of ``360°/N``; elements ``e, r1, …, r{N-1}``."""
    if n < 1:
        raise ValueError(f"cyclic group order must be >= 1, got {n}")
    names = ["e"] + [f"r{k}" for k in range(1, n)]
    mats = [_rotation(2 * math.pi * k / n) for k in range(n)]
    escnn = {"gspace": "trivialOnR2"} if n == 1 else {"gspace": "rot2dOnR2", "N": n}
    catalog = planar_catalog("C", n)
    return Group(name or f"C{n}", names, mats, api_version=GROUP_API_VERSION, escnn=escnn, representations=catalog)


def dihedral_group(n: int, name: str | None = None) -> Group:
    """``D_N``: ``N`` rotations and ``N`` reflections; element ``r^k f^j`` at index ``N*j + k``."""
    if n < 1:
        raise ValueError(f"dihedral group order must be >= 1, got {n}")
    flip = [[-1.0, 0.0], [0.0, 1.0]]
    names, mats = [], []
    for j in range(2):
        for k in range(n):
            rot = _rotation(2 * math.pi * k / n)
            names.append(("e" if k == 0 else f"r{k}") if j == 0 else ("f" if k == 0 else f"r{k}f"))
            mats.append(
                (torch.tensor(rot, dtype=torch.float64) @ torch.tensor(flip, dtype=torch.float64)).tolist()
                if j
                else rot
            )
    escnn = {"gspace": "flipRot2dOnR2", "N": n}
    catalog = planar_catalog("D", n)
    return Group(name or f"D{n}", names, mats, api_version=GROUP_API_VERSION, escnn=escnn, representations=catalog)


def check_group_axioms(group: Group) -> None:
    """Check closure, identity, inverses, associativity and that the matrices are a homomorphism.

    Raises:
        GroupAxiomError: naming the first axiom that fails.
    """
    n = group.order
    table = group.cayley_table
    if table.shape != (n, n) or table.min() < 0 or table.max() >= n:
        raise GroupAxiomError(f"{group.name}: Cayley table must be [|G|, |G|] with entries in 0..{n - 1}")
    e = group.identity
    ar = torch.arange(n)
    if not (torch.equal(table[e], ar) and torch.equal(table[:, e], ar)):
        raise GroupAxiomError(f"{group.name}: element 0 ({group.element_names[0]}) is not the identity")
    for row in table:
        if sorted(row.tolist()) != list(range(n)):
            raise GroupAxiomError(f"{group.name}: a row of the Cayley table is not a permutation (no inverses)")
    # associativity: (ab)c == a(bc) for all triples
    left = table[table, :]  # [a, b, c] -> (ab)c
    right = table[:, table]  # [a, b, c] -> a(bc)
    if not torch.equal(left, right):
        raise GroupAxiomError(f"{group.name}: the product is not associative")
    inv = group.inverses
    if not torch.equal(table[ar, inv], torch.full((n,), e)):
        raise GroupAxiomError(f"{group.name}: g·g⁻¹ != e")
    mats = group.matrices
    if not torch.allclose(mats @ mats.transpose(1, 2), torch.eye(2, dtype=mats.dtype).expand(n, 2, 2), atol=1e-9):
        raise GroupAxiomError(f"{group.name}: the action matrices are not orthogonal")
    prod = torch.einsum("aij,bjk->abik", mats, mats)
    if not torch.allclose(prod, mats[table], atol=1e-9):
        raise GroupAxiomError(f"{group.name}: matrix(a·b) != matrix(a) @ matrix(b): the action is not a homomorphism")
