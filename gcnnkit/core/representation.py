"""Representations of finite groups: ``ρ: G → O(d)`` given as one orthogonal matrix per element.

A :class:`Representation` is a group, a name, a kind and one ``[d, d]`` matrix per element (rows of
``matrices`` follow the group's element order). Every group offers ``trivial`` and ``regular``
(:func:`trivial_representation`, :func:`regular_representation`); a group that declares a
:class:`RepresentationCatalog` (``C_N`` and ``D_N`` do, see :mod:`gcnnkit.core.irreps`) adds its
real irreducible representations, its subgroups — hence quotient and restricted representations —
and any extra named representation. Direct sums and tensor products are built here for any group.

Names follow escnn (``"irrep_1"``, ``"irrep_1,2"``, ``"quotient[2]"``, ``"[a]_[b]"`` for a sum), so
a field type written with gcnnkit's names is the same escnn field type. :func:`parse_rep_name`
reads the names a spec may use: ``trivial``, ``regular``, ``irrep(1)`` / ``irrep_1``,
``irrep(1,2)`` / ``irrep_1,2``, ``quotient(2)`` / ``quotient(None,2)``, and a catalog's extra names.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import torch

from gcnnkit.core.errors import GcnnkitError


class RepresentedGroup(Protocol):
    """What a representation uses of its group: :class:`gcnnkit.core.group.Group` (which imports this
    module for ``Group.trivial()``, ``.irrep()``, …, so this one names it structurally)."""

    name: str
    element_names: tuple[str, ...]
    matrices: torch.Tensor
    api_version: int
    cayley_table: torch.Tensor

    @property
    def order(self) -> int: ...

    def index(self, element: int | str) -> int: ...

    def subgroup(self, subgroup_id: Any) -> tuple[RepresentedGroup, tuple[int, ...]]: ...


#: What a representation is; ``custom`` is one a plugin adds under its own name, ``restricted`` one
#: re-read on a subgroup (:meth:`Representation.restrict`).
REP_KINDS: tuple[str, ...] = ("trivial", "regular", "irrep", "quotient", "sum", "tensor", "restricted", "custom")
#: Kinds whose every matrix is a permutation (they keep the one-gather fast path of convolutions).
PERMUTATION_KINDS: tuple[str, ...] = ("trivial", "regular", "quotient")

_ORTHO_TOL = 1e-6


class RepresentationError(GcnnkitError, ValueError):
    """A representation that does not exist or is malformed; the message is one line."""


@dataclass(frozen=True, eq=False)
class Representation:
    """A representation of ``group`` on ``R^d`` by orthogonal matrices.

    Attributes:
        group: the group represented.
        name: escnn's name, e.g. ``"regular"``, ``"irrep_1"``, ``"irrep_1,2"``, ``"quotient[2]"``.
        matrices: ``[|G|, d, d]`` float64, ``matrices[g] = ρ(g)`` in the group's element order.
        kind: one of :data:`REP_KINDS`.
        params: ``(k,)`` for a ``C_N`` irrep, ``(j, k)`` for a ``D_N`` irrep, ``(subgroup_id,)`` for
            a quotient or restricted representation, ``()`` otherwise.
        constituents: the summands of a sum, the factors of a tensor product, the parent
            representation of a restricted one; ``()`` otherwise.
    """

    group: RepresentedGroup
    name: str
    matrices: torch.Tensor
    kind: str = "custom"
    params: tuple = ()
    constituents: tuple[Representation, ...] = ()

    def __post_init__(self) -> None:
        m = torch.as_tensor(self.matrices, dtype=torch.float64)
        if m.ndim != 3 or m.shape[0] != self.group.order or m.shape[1] != m.shape[2]:
            raise RepresentationError(
                f"representation {self.name}: matrices must be [|G|, n, n] with |G| = {self.group.order}, "
                f"got {list(m.shape)}"
            )
        if self.kind not in REP_KINDS:
            raise RepresentationError(
                f"representation {self.name}: kind {self.kind!r} is not allowed; allowed: {', '.join(REP_KINDS)}"
            )
        eye = torch.eye(m.shape[1], dtype=m.dtype)
        if not torch.allclose(m @ m.transpose(1, 2), eye.expand_as(m), atol=_ORTHO_TOL):
            raise RepresentationError(f"representation {self.name}: the matrices are not orthogonal")
        object.__setattr__(self, "matrices", m)
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "constituents", tuple(self.constituents))

    # ------------------------------------------------------------------ basics
    @property
    def size(self) -> int:
        """Dimension ``d`` of the representation space."""
        return self.matrices.shape[1]

    def matrix(self, g: int | str) -> torch.Tensor:
        """``ρ(g)`` as a ``[d, d]`` tensor."""
        return self.matrices[self.group.index(g)]

    @cached_property
    def character(self) -> torch.Tensor:
        """``[|G|]`` float64: ``χ(g) = trace ρ(g)``."""
        return self.matrices.diagonal(dim1=1, dim2=2).sum(-1)

    @cached_property
    def is_permutation(self) -> bool:
        """True when every ``ρ(g)`` is a permutation matrix (trivial, regular, quotient, and sums of them)."""
        m = self.matrices
        binary = bool(((m == 0) | (m == 1)).all())
        return binary and bool((m.sum(dim=1) == 1).all()) and bool((m.sum(dim=2) == 1).all())

    @cached_property
    def permutations(self) -> torch.Tensor:
        """``[|G|, d]`` long, ``perm[g, i] = j`` where ``ρ(g) e_i = e_j`` (only for permutation representations)."""
        if not self.is_permutation:
            raise RepresentationError(f"representation {self.name} of {self.group.name} is not a permutation")
        return self.matrices.argmax(dim=1)

    def is_homomorphism(self, atol: float = 1e-6) -> bool:
        """True when ``ρ(a·b) = ρ(a) ρ(b)`` for all ``a, b``."""
        table = self.group.cayley_table
        prod = torch.einsum("aij,bjk->abik", self.matrices, self.matrices)
        return bool(torch.allclose(prod, self.matrices[table], atol=atol))

    def multiplicity(self, irrep: Representation) -> int:
        """How often the irreducible ``irrep`` occurs in this representation (character inner product,
        for real irreps of real type: ``⟨χ, χ_irr⟩ / ⟨χ_irr, χ_irr⟩``)."""
        num = float((self.character * irrep.character).sum())
        den = float((irrep.character * irrep.character).sum())
        return round(num / den)

    # -------------------------------------------------------- subgroups
    def restrict(self, subgroup_id: Any) -> Representation:
        """This representation re-read on the subgroup ``subgroup_id`` of the group's catalog: the
        matrices of the subgroup's elements, in the subgroup's element order; named ``"irrep_1,1|C4"``."""
        sub, inclusion = self.group.subgroup(subgroup_id)
        if self.kind == "trivial":
            return trivial_representation(sub)
        return Representation(
            sub,
            f"{self.name}|{sub.name}",
            self.matrices[torch.as_tensor(inclusion)],
            "restricted",
            (subgroup_id,),
            (self,),
        )

    # ------------------------------------------------------------ identity
    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Representation)
            and self.name == other.name
            and self.group == other.group
            and torch.equal(self.matrices, other.matrices)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.group, self.size))

    def __repr__(self) -> str:
        return f"Representation({self.group.name}, {self.name}, size={self.size})"

    def __str__(self) -> str:
        return self.name


def _id_text(subgroup_id: Any) -> str:
    if isinstance(subgroup_id, tuple):
        return f"({', '.join(str(p) for p in subgroup_id)})"
    return str(subgroup_id)


# ---------------------------------------------------------------- constructions
def trivial_representation(group: RepresentedGroup) -> Representation:
    """``ρ(g) = [1]`` for every ``g``: a scalar field (an image channel)."""
    return Representation(group, "trivial", torch.ones(group.order, 1, 1, dtype=torch.float64), "trivial")


def regular_representation(group: RepresentedGroup) -> Representation:
    """Permutation matrices with ``ρ(g) e_h = e_{g·h}``: one channel per group element.

    This is how a group feature map ``[B, C, |G|, H, W]`` transforms along its group axis.
    """
    n = group.order
    mats = torch.zeros(n, n, n, dtype=torch.float64)
    table = group.cayley_table
    for g in range(n):
        mats[g, table[g], torch.arange(n)] = 1.0
    return Representation(group, "regular", mats, "regular")


def quotient_representation(group: RepresentedGroup, subgroup_id: Any) -> Representation:
    """The permutation action of ``G`` on the cosets ``G/H`` of the subgroup ``H = subgroup_id``:
    ``ρ(g) e_{cH} = e_{gcH}``, cosets ordered by their first element in the group's element order
    (escnn's order; ``quotient`` of the trivial subgroup is ``regular``)."""
    _, inclusion = group.subgroup(subgroup_id)
    members = set(int(i) for i in inclusion)
    table = group.cayley_table
    cosets: list[frozenset[int]] = []
    for c in range(group.order):
        if not any(c in coset for coset in cosets):
            cosets.append(frozenset(int(table[c, h]) for h in members))
    where = {e: i for i, coset in enumerate(cosets) for e in coset}
    n = len(cosets)
    mats = torch.zeros(group.order, n, n, dtype=torch.float64)
    for g in range(group.order):
        for i, coset in enumerate(cosets):
            mats[g, where[int(table[g, min(coset)])], i] = 1.0
    return Representation(group, f"quotient[{_id_text(subgroup_id)}]", mats, "quotient", (subgroup_id,))


def direct_sum(*reps: Representation, name: str | None = None) -> Representation:
    """``ρ_1 ⊕ … ⊕ ρ_n``: block-diagonal matrices, blocks in the given order (escnn's ``directsum``)."""
    if not reps:
        raise RepresentationError("a direct sum needs at least one representation")
    group = reps[0].group
    if any(r.group != group for r in reps):
        raise RepresentationError(f"a direct sum needs representations of one group, got {[repr(r) for r in reps]}")
    mats = torch.stack([torch.block_diag(*(r.matrices[g] for r in reps)) for g in range(group.order)])
    return Representation(group, name or "_".join(f"[{r.name}]" for r in reps), mats, "sum", (), tuple(reps))


def tensor_product(a: Representation, b: Representation, name: str | None = None) -> Representation:
    """``ρ_a ⊗ ρ_b``: the Kronecker product of the matrices, index ``i·d_b + j``."""
    if a.group != b.group:
        raise RepresentationError(f"a tensor product needs representations of one group, got {a!r} and {b!r}")
    mats = torch.stack([torch.kron(a.matrices[g], b.matrices[g]) for g in range(a.group.order)])
    return Representation(a.group, name or f"tensor[{a.name},{b.name}]", mats, "tensor", (), (a, b))


# ----------------------------------------------------------------- catalogs
class RepresentationCatalog(abc.ABC):
    """What a group offers beyond ``trivial`` and ``regular``; passed as ``Group(..., representations=)``.

    Part of the group plugin API (``docs/group-plugins.md``). ``C_N`` and ``D_N`` use the catalogs of
    :mod:`gcnnkit.core.irreps`; a plugin subclasses this for its own groups.
    """

    @abc.abstractmethod
    def irreps(self, group: RepresentedGroup) -> Sequence[Representation]:
        """The real irreducible representations (kind ``irrep``, ``params`` unique), trivial first."""

    def subgroups(self, group: RepresentedGroup) -> Mapping[Any, Sequence[int]]:
        """``{subgroup_id: element indices of the subgroup in the subgroup's element order}``."""
        return {}

    def subgroup_group(self, group: RepresentedGroup, subgroup_id: Any) -> RepresentedGroup:
        """The subgroup ``subgroup_id`` as a :class:`Group` (its elements: the parent's, in the order of
        :meth:`subgroups`). Default: the parent's names and matrices of those elements."""
        idx = list(self.subgroups(group)[subgroup_id])
        return type(group)(  # this module never imports gcnnkit.core.group: that one imports this one
            f"{group.name}[{_id_text(subgroup_id)}]",
            [group.element_names[i] for i in idx],
            group.matrices[idx],
            api_version=group.api_version,
            cayley_table=_sub_table(group, idx),
        )

    def extra(self, group: RepresentedGroup) -> Sequence[Representation]:
        """Further named representations (kind ``custom``); a spec asks for them by name."""
        return ()


def _sub_table(group: RepresentedGroup, idx: Sequence[int]) -> torch.Tensor:
    where = {e: i for i, e in enumerate(idx)}
    table = group.cayley_table
    return torch.tensor([[where[int(table[a, b])] for b in idx] for a in idx], dtype=torch.long)


# ------------------------------------------------------------------- names
_NAME = re.compile(
    r"^\s*(?P<kind>[a-z_]+?)\s*(?:\(\s*(?P<args>[^()]*)\)|_(?P<escnn>[0-9,]+)|\[(?P<sq>[^\[\]]*)\])?\s*$"
)


def _arg(text: str) -> Any:
    text = text.strip()
    if text in ("None", "none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise RepresentationError(f"representation argument {text!r} is not an integer or None") from None


def parse_rep_name(text: str) -> tuple[str, tuple]:
    """``"irrep(1, 2)"`` / ``"irrep_1,2"`` → ``("irrep", (1, 2))``; ``"quotient(None, 2)"`` →
    ``("quotient", ((None, 2),))``; ``"regular"`` → ``("regular", ())``; any other bare name → ``(name, ())``."""
    m = _NAME.match(text) if isinstance(text, str) else None
    if m is None:
        raise RepresentationError(
            f"representation name {text!r} is not understood; use trivial, regular, irrep(k), irrep(j,k), "
            f"quotient(id) or a name from 'gcnnkit reps GROUP'"
        )
    kind = m.group("kind")
    raw = m.group("args") if m.group("args") is not None else (m.group("escnn") or m.group("sq"))
    raw = raw.replace("(", "").replace(")", "") if raw else raw  # escnn's "quotient[(None, 2)]"
    args = tuple(_arg(a) for a in raw.split(",")) if raw else ()
    if kind == "quotient":
        if not args:
            raise RepresentationError(f"representation {text!r}: quotient needs a subgroup id, e.g. quotient(2)")
        return kind, (args[0] if len(args) == 1 else args,)
    return kind, args
