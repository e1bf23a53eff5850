"""Assertions for plugin authors' and our own test suites.

A group plugin's tests can be a few lines::

    from gcnnkit.testing import assert_group_axioms, assert_equivariant
    assert_group_axioms(my_group)
    assert_equivariant(layer, my_group, FieldType("image", 1), FieldType("group", 8), x)

and a backend plugin's one (:mod:`gcnnkit.testing.conformance`)::

    from gcnnkit.testing import assert_backend_conforms
    assert_backend_conforms(MyBackend())
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gcnnkit.core.equivariance import DEFAULT_TOLERANCE, EquivarianceResult, check_network, equivariance_errors
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group, check_group_axioms
from gcnnkit.core.representation import regular_representation
from gcnnkit.core.transforms import transform_image
from gcnnkit.testing.conformance import ConformanceError, ConformanceReport, assert_backend_conforms

__all__ = [
    "assert_group_axioms",
    "assert_representations",
    "assert_equivariant",
    "assert_network_equivariant",
    "assert_backend_conforms",
    "ConformanceError",
    "ConformanceReport",
]


def assert_group_axioms(group: Group) -> None:
    """Group axioms, the matrix homomorphism, the pixel action's homomorphism on a test image
    (exact elements compose exactly) and the regular representation."""
    check_group_axioms(group)
    x = torch.randn(2, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = [g for g in range(group.order) if group.is_exact(g)]
    for a in exact:
        for b in exact:
            left = transform_image(transform_image(x, group, b), group, a)
            right = transform_image(x, group, group.product(a, b))
            if not torch.equal(left, right):
                names = group.element_names
                raise AssertionError(f"{group.name}: T({names[a]}) T({names[b]}) != T({names[a]}·{names[b]}) on images")
    if not regular_representation(group).is_homomorphism():
        raise AssertionError(f"{group.name}: the regular representation is not a homomorphism")
    assert_representations(group)


def assert_representations(group: Group) -> None:
    """Every representation the group's catalog offers (:meth:`Group.all_representations`) is a
    homomorphism with ``ρ(e) = I``; irrep params are unique; every subgroup is closed, starts at the
    identity, and its group's matrices are the parent's."""
    for rep in group.all_representations():
        if not rep.is_homomorphism(atol=1e-9):
            raise AssertionError(f"{group.name}: representation {rep.name} is not a homomorphism")
        if not torch.allclose(rep.matrix(0), torch.eye(rep.size, dtype=rep.matrices.dtype), atol=1e-12):
            raise AssertionError(f"{group.name}: representation {rep.name} does not map the identity to I")
    if group.representations is None:
        return
    params = [r.params for r in group.irreps()]
    if len(set(params)) != len(params):
        raise AssertionError(f"{group.name}: two irreps share params: {params}")
    table = group.cayley_table
    for sid, members in group.subgroups().items():
        idx = torch.tensor(members)
        if members[0] != group.identity or not set(table[idx][:, idx].flatten().tolist()) <= set(members):
            raise AssertionError(f"{group.name}: subgroup {sid!r} ({members}) is not closed or does not start at e")
        sub, _ = group.subgroup(sid)
        if not torch.allclose(sub.matrices, group.matrices[idx], atol=1e-12):
            raise AssertionError(f"{group.name}: subgroup {sid!r} has other matrices than its elements in the group")


def assert_equivariant(
    module: nn.Module,
    group: Group,
    in_type: FieldType,
    out_type: FieldType,
    x: torch.Tensor,
    tolerance: float = DEFAULT_TOLERANCE,
    elements: Iterable[int | str] | None = None,
) -> EquivarianceResult:
    """Assert ``module(g·x) ≈ g·module(x)`` (relative error ≤ ``tolerance``) for every element."""
    result = equivariance_errors(module, group, in_type, out_type, x, elements)
    if result.max_error > tolerance:
        raise AssertionError(
            f"not {group.name}-equivariant: relative error {result.max_error:.3g} at element "
            f"{result.worst_element} exceeds {tolerance:g} (all: {result.errors})"
        )
    return result


def assert_network_equivariant(
    net: nn.Module,
    image_shape: tuple[int, int, int],
    tolerance: float = DEFAULT_TOLERANCE,
    batch: int = 2,
    elements: Iterable[int | str] | None = None,
) -> list[EquivarianceResult]:
    """Assert every layer and the whole :class:`~gcnnkit.models.network.EquivariantNet` are equivariant.

    ``elements`` defaults to the group's exact elements (all of them for C4/D4; the multiples of
    90° and the reflections for e.g. C8, whose other elements are interpolated).
    """
    group = net.group
    if elements is None:
        elements = [g for g in range(group.order) if group.is_exact(g)]
    results = check_network(net, image_shape, batch=batch, elements=elements)
    bad = [r for r in results if r.max_error > tolerance]
    if bad:
        msg = ", ".join(f"{r.name}: {r.max_error:.3g} at {r.worst_element}" for r in bad)
        raise AssertionError(f"not equivariant within {tolerance:g}: {msg}")
    return results
