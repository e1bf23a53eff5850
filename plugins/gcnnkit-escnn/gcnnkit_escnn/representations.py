"""gcnnkit representations and field types as escnn representations and ``FieldType`` s.

A gcnnkit representation is named by its ``kind`` and ``params`` (:mod:`gcnnkit.core.representation`),
with escnn's names, matrices and ordering. Each kind maps to the escnn representation of the same name
on the group's gspace:

============  =====================  ==================================================
kind          params                 escnn
============  =====================  ==================================================
trivial       ``()``                 ``G.trivial_representation``
regular       ``()``                 ``G.regular_representation`` (finite groups only)
irrep         ``(k,)`` / ``(j, k)``  ``G.irrep(k)`` (C_N, SO(2)) / ``G.irrep(j, k)`` (D_N, O(2))
quotient      subgroup id            ``G.quotient_representation(id)`` (C_N: ``M``; D_N: ``(axis, M)``)
sum           (constituents)         ``directsum(constituents)``
tensor        (constituents a, b)    ``a.tensor(b)``
restricted    ``(subgroup id,)``     ``G.restrict_representation(id, parent)`` on the parent's gspace
============  =====================  ==================================================

A representation is gcnnkit's ``Representation`` (``kind``, ``params``, ``constituents``) or, for
the kinds without constituents, a ``(kind, params)`` tuple. :func:`check_matrices` compares a gcnnkit
representation's matrices with escnn's, element by element (the two backends must move a tensor of
a field type the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gcnnkit_escnn._compat import enn

#: The kinds :func:`escnn_representation` maps.
KINDS = ("trivial", "regular", "irrep", "quotient", "sum", "tensor", "restricted")
#: Kinds whose matrices are permutations: pointwise nonlinearities, max pooling and escnn's
#: ``InnerBatchNorm`` keep their equivariance.
PERMUTATION_KINDS = ("trivial", "regular", "quotient")


class RepresentationError(ValueError):
    """A representation that escnn cannot build on the group; the message is the one-line reason."""


def rep_key(rep: Any) -> tuple[str, tuple]:
    """``(kind, params)`` of a gcnnkit representation or of a ``(kind, params)`` tuple."""
    if isinstance(rep, tuple) and len(rep) == 2 and isinstance(rep[0], str):
        kind, params = rep
    else:
        kind, params = getattr(rep, "kind", None), getattr(rep, "params", ())
    if kind not in KINDS:
        raise RepresentationError(f"representation kind {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    return kind, tuple(params) if isinstance(params, (tuple, list)) else (params,)


def is_permutation(rep: Any) -> bool:
    """True when ``rep`` acts by permutation matrices (trivial, regular, quotient, ``irrep(0)``, ...): gcnnkit's
    ``Representation.is_permutation`` (from its matrices), else by kind for a ``(kind, params)`` tuple."""
    known = getattr(rep, "is_permutation", None)
    if isinstance(known, bool):
        return known
    return rep_key(rep)[0] in PERMUTATION_KINDS


def escnn_representation(gspace, rep: Any):
    """The escnn representation of the gcnnkit representation ``rep`` on ``gspace``'s fibre group."""
    from escnn.group import directsum

    G = gspace.fibergroup
    if getattr(rep, "kind", None) == "custom":
        raise RepresentationError(f"escnn has no representation {rep.name!r} (a group plugin's own representation)")
    kind, params = rep_key(rep)
    constituents = tuple(getattr(rep, "constituents", ()))
    if kind in ("sum", "tensor", "restricted") and constituents:
        params = constituents if kind != "restricted" else params
    try:
        if kind == "restricted":
            from gcnnkit_escnn.spaces import escnn_group

            (parent,) = constituents
            parent_gspace = escnn_group(parent.group).gspace
            restricted = parent_gspace.fibergroup.restrict_representation(
                params[0], escnn_representation(parent_gspace, parent)
            )
            if restricted.group != G:
                raise RepresentationError(f"{restricted.name} is a representation of {restricted.group}, not of {G}")
            return restricted
        if kind == "trivial":
            return G.trivial_representation
        if kind == "regular":
            if not G.order() > 0:
                raise RepresentationError(
                    f"{G} is continuous and has no regular representation; use irreps (band-limited) instead"
                )
            return G.regular_representation
        if kind == "irrep":
            return G.irrep(*params)
        if kind == "quotient":
            subgroup = params[0] if len(params) == 1 else params
            return G.quotient_representation(subgroup)
        if kind == "sum":
            return directsum([escnn_representation(gspace, p) for p in params])
        a, b = params  # tensor
        return escnn_representation(gspace, a).tensor(escnn_representation(gspace, b))
    except RepresentationError:
        raise
    except Exception as exc:  # escnn asserts / raises on params it does not know
        raise RepresentationError(f"{G} has no representation {kind}{params!r} ({type(exc).__name__}: {exc})") from None


def escnn_field_type(gspace, reps: Sequence[Any]):
    """escnn ``FieldType`` with one field per entry of ``reps``, in order."""
    return enn.FieldType(gspace, [escnn_representation(gspace, r) for r in reps])


def field_sizes(gspace, reps: Sequence[Any]) -> list[int]:
    """Channels of each field of ``reps``."""
    return [escnn_representation(gspace, r).size for r in reps]


def check_matrices(gspace, rep: Any, matrices: torch.Tensor, elements: Sequence, atol: float = 1e-6) -> float:
    """Largest entry-wise difference between ``matrices[g]`` (``[|G|, d, d]``, gcnnkit) and escnn's
    ``ρ(elements[g])``; raises :class:`RepresentationError` when it exceeds ``atol``."""
    ours = np.asarray(matrices, dtype=np.float64)
    theirs = escnn_representation(gspace, rep)
    worst = 0.0
    for g, element in enumerate(elements):
        m = np.asarray(theirs(element), dtype=np.float64)
        if m.shape != ours[g].shape:
            raise RepresentationError(f"{theirs.name}: escnn's size is {m.shape[0]}, gcnnkit's {ours[g].shape[0]}")
        worst = max(worst, float(np.abs(m - ours[g]).max()))
    if worst > atol:
        raise RepresentationError(f"{theirs.name}: gcnnkit's matrices differ from escnn's by {worst:.2e}")
    return worst
