"""gcnnkit groups as escnn gspaces, and the order of escnn's regular-representation channels.

A gcnnkit :class:`~gcnnkit.core.group.Group` names its escnn equivalent in ``group.escnn``
(``{"gspace": "rot2dOnR2", "N": 4}``, ``{"gspace": "flipRot2dOnR2", "N": 4}``,
``{"gspace": "trivialOnR2"}``). The gspace is built once per process and shared, so escnn's
own caches of kernel bases are reused by every layer.

Nothing about the element order is assumed. Each gcnnkit element is matched to the escnn element
with the same 2×2 action on the plane (both in Cartesian coordinates, x right, y up, and both
act on pixel grids with the last axis = x and rows going down), and its regular-representation
channel is read off escnn's own representation: channel ``ρ(h)·e₀`` belongs to ``h``, with
channel 0 the identity's. That labelling is then checked against gcnnkit's Cayley table
(``ρ(g) e_{P[h]} = e_{P[g·h]}`` for all ``g, h``). For ``flipRot2dOnR2`` with escnn's default
flip axis (π/2, the vertical axis: ``x ↦ −x``, gcnnkit's ``f``) and escnn's element order
``(+, r⁰…r^{N−1}), (−, r⁰…r^{N−1})`` the permutation is the identity for every ``C_N``/``D_N``
built by :func:`gcnnkit.core.group.cyclic_group` / :func:`~gcnnkit.core.group.dihedral_group`; a group with
its elements listed in another order gets the permutation that puts escnn's channels in its order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gcnnkit.core.group import Group
from gcnnkit_escnn._compat import enn, gspaces

#: escnn gspace factories a group may name, and the keyword arguments each accepts.
GSPACES: dict[str, tuple[str, ...]] = {
    "rot2dOnR2": ("N", "maximum_frequency"),
    "flipRot2dOnR2": ("N", "axis", "maximum_frequency"),
    "flip2dOnR2": ("axis",),
    "trivialOnR2": (),
}

_MATCH_TOL = 1e-6
_GSPACE_CACHE: dict[tuple, Any] = {}
_GROUP_CACHE: dict[tuple, EscnnGroup] = {}


class EscnnGroupError(ValueError):
    """``group`` has no escnn equivalent; the message is the one-line reason."""


@dataclass(frozen=True, eq=False)
class EscnnGroup:
    """A gcnnkit group together with its escnn gspace.

    Attributes:
        group: the gcnnkit group.
        gspace: the escnn ``GSpace2D``.
        elements: the escnn element matched to each gcnnkit element (gcnnkit order).
        perm: ``[|G|]`` long tensor, ``perm[h]`` = escnn regular-rep channel of gcnnkit element ``h``;
            ``None`` when it is the identity (then no channel is ever permuted).
    """

    group: Group
    gspace: Any
    elements: tuple
    perm: torch.Tensor | None

    @property
    def regular_repr(self):
        return self.gspace.regular_repr

    @property
    def trivial_repr(self):
        return self.gspace.trivial_repr

    def field_type(self, kind: str, channels: int):
        """escnn ``FieldType`` of a gcnnkit field type: ``group`` → regular fields, ``image`` → trivial ones."""
        if kind == "group":
            return enn.FieldType(self.gspace, [self.gspace.regular_repr] * channels)
        if kind == "image":
            return enn.FieldType(self.gspace, [self.gspace.trivial_repr] * channels)
        raise ValueError(f"escnn field types exist for image and group features, not {kind!r}")

    def channel_index(self, fields: int) -> torch.Tensor | None:
        """Index ``idx`` with ``escnn_tensor[:, idx] = gcnnkit channel order`` for ``fields`` regular fields
        (channel ``o·|G| + h`` ← escnn channel ``o·|G| + perm[h]``); ``None`` when no permutation is needed."""
        if self.perm is None:
            return None
        n = self.group.order
        return (torch.arange(fields)[:, None] * n + self.perm[None, :]).reshape(-1)


def _gspace(name: str, kwargs: dict[str, Any]):
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _GSPACE_CACHE:
        _GSPACE_CACHE[key] = getattr(gspaces, name)(**kwargs)
    return _GSPACE_CACHE[key]


def _describe(group: Group) -> tuple[str, dict[str, Any]]:
    spec = group.escnn
    if spec is None:
        raise EscnnGroupError("it declares no escnn equivalent (Group(..., escnn={'gspace': ..., 'N': ...}))")
    spec = dict(spec)
    name = spec.pop("gspace", None)
    if name not in GSPACES:
        raise EscnnGroupError(f"escnn gspace {name!r} is not supported; supported: {', '.join(GSPACES)}")
    unknown = sorted(set(spec) - set(GSPACES[name]))
    if unknown:
        raise EscnnGroupError(
            f"escnn gspace {name} takes no {unknown[0]!r}; it takes: {', '.join(GSPACES[name]) or 'nothing'}"
        )
    if "N" in GSPACES[name]:
        n = spec.get("N")
        if isinstance(n, bool) or not isinstance(n, int) or not (n >= 1 or n == -1):
            raise EscnnGroupError(
                f"escnn gspace {name} needs an integer N >= 1 (a finite group) or -1 (SO(2)/O(2)), got {n!r}"
            )
        freq = spec.get("maximum_frequency")
        if n == -1 and (isinstance(freq, bool) or not isinstance(freq, int) or freq < 1):
            raise EscnnGroupError(
                f"escnn gspace {name} with N=-1 needs an integer maximum_frequency >= 1, got {freq!r}"
            )
    if "axis" in spec:
        spec["axis"] = float(spec["axis"])
    return name, spec


def _match_continuous(group: Group, gspace) -> tuple[tuple, None]:
    """SO(2)/O(2): the escnn element of each sampled gcnnkit element (its angle, and its flip for O(2))."""
    fiber = gspace.fibergroup
    action = gspace.basespace_action
    elements = []
    # escnn's element (1, θ) acts as R(θ)·F, F = its own reflection (1, 0); gcnnkit gives the matrix m
    flip_matrix = None if fiber.name.startswith("SO") else np.asarray(action(fiber.element((1, 0.0))), dtype=np.float64)
    for h in range(group.order):
        m = group.matrix(h).numpy()
        flip = int(np.linalg.det(m) < 0)
        if flip and flip_matrix is None:
            raise EscnnGroupError(f"element {group.element_names[h]} is a reflection, which {fiber} does not have")
        rotation = m @ flip_matrix.reshape(2, 2).T if flip else m
        theta = float(np.arctan2(rotation[1, 0], rotation[0, 0])) % (2 * np.pi)
        element = fiber.element(theta) if flip_matrix is None else fiber.element((flip, theta))
        if np.abs(np.asarray(action(element), dtype=np.float64).reshape(2, 2) - m).max() > _MATCH_TOL:
            raise EscnnGroupError(
                f"element {group.element_names[h]} (matrix {m.tolist()}) acts like no element of {fiber}"
            )
        elements.append(element)
    return tuple(elements), None


def _match(group: Group, gspace) -> tuple[tuple, torch.Tensor | None]:
    fiber = gspace.fibergroup
    if fiber.continuous:
        return _match_continuous(group, gspace)
    escnn_elements = list(fiber.elements)
    if len(escnn_elements) != group.order:
        raise EscnnGroupError(f"escnn's {fiber} has {len(escnn_elements)} elements, {group.name} has {group.order}")
    action = gspace.basespace_action
    escnn_mats = np.stack([np.asarray(action(e), dtype=np.float64).reshape(2, 2) for e in escnn_elements])
    matched = []
    for h in range(group.order):
        dist = np.abs(escnn_mats - group.matrix(h).numpy()[None]).reshape(len(escnn_elements), -1).max(axis=1)
        best = int(dist.argmin())
        if dist[best] > _MATCH_TOL:
            raise EscnnGroupError(
                f"element {group.element_names[h]} (matrix {group.matrix(h).tolist()}) acts like no element of "
                f"escnn's {fiber}"
            )
        matched.append(best)
    if len(set(matched)) != group.order:
        raise EscnnGroupError(f"two elements of {group.name} match the same element of escnn's {fiber}")
    elements = tuple(escnn_elements[i] for i in matched)
    # channel of element h in escnn's regular representation: rho(h) e_0 (channel 0 = identity)
    regular = gspace.regular_repr
    rho = [np.asarray(regular(e), dtype=np.float64) for e in elements]
    size = regular.size
    for h, r in enumerate(rho):
        if (
            r.shape != (size, size)
            or not np.allclose(np.sort(r, axis=0)[-1], 1.0, atol=1e-6)
            or not np.allclose(np.abs(r).sum(axis=0), 1.0, atol=1e-6)
        ):
            raise EscnnGroupError(f"escnn's regular representation of {group.element_names[h]} is not a permutation")
    if not np.allclose(rho[group.identity], np.eye(size), atol=1e-6):
        raise EscnnGroupError(f"the identity of {group.name} does not match escnn's identity")
    perm = torch.tensor([int(np.argmax(r[:, 0])) for r in rho], dtype=torch.long)
    table = group.cayley_table
    for g in range(group.order):
        moved = rho[g][:, perm.numpy()]  # columns: rho(g) e_{P[h]}
        if not np.array_equal(np.argmax(moved, axis=0), perm[table[g]].numpy()):
            raise EscnnGroupError(f"escnn's regular representation does not follow {group.name}'s Cayley table")
    if torch.equal(perm, torch.arange(group.order)):
        return elements, None
    return elements, perm


def escnn_group(group: Group) -> EscnnGroup:
    """The escnn gspace of ``group`` and its channel permutation (cached per process).

    Raises:
        EscnnGroupError: ``group`` has no escnn equivalent (the message says why, one line).
    """
    key = (tuple(sorted((group.escnn or {}).items())), group.element_names, group.matrices.numpy().tobytes())
    if key not in _GROUP_CACHE:
        name, kwargs = _describe(group)
        gspace = _gspace(name, kwargs)
        elements, perm = _match(group, gspace)
        _GROUP_CACHE[key] = EscnnGroup(group, gspace, elements, perm)
    return _GROUP_CACHE[key]
