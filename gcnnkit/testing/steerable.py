"""Conformance of a backend's layers on steerable field types (``docs/backend-plugins.md``).

:func:`assert_steerable_conforms` builds every factory of the contract that takes a steerable field
type — ``steerable_conv`` (lifting, steerable → steerable, steerable → regular), ``norm_nonlinearity``,
``gated_nonlinearity``, ``batch_norm`` (train and eval mode), ``group_pool``, ``global_pool``,
``restrict`` to every subgroup — on a field type made of *every* representation the group offers,
and measures each one's equivariance error for every element (``≤ 1e-5`` in float32, ``≤ 1e-10`` in
float64 by default). Any backend and any group with a representation catalog can be checked::

    from gcnnkit.testing.steerable import assert_steerable_conforms
    assert_steerable_conforms(my_backend, get_group("D4"))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gcnnkit.core.backend import Backend
from gcnnkit.core.equivariance import equivariance_errors
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.steerable_layers import gated_output_type, restricted_type

#: Default tolerance on the relative equivariance error per dtype.
TOLERANCES = {torch.float32: 1e-5, torch.float64: 1e-10}


def every_field(group: Group) -> FieldType:
    """One field of every representation ``group`` offers (:meth:`Group.all_representations`)."""
    return FieldType("steerable", reps=tuple(group.all_representations()))


def _randomised(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` in ``dtype`` with random parameters, so no bias or scale hides a broken constraint."""
    module = module.to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def steerable_errors(
    backend: Backend, group: Group, dtype: torch.dtype = torch.float64, size: int = 7
) -> dict[str, float]:
    """``{case: worst relative equivariance error over the group's elements}`` for every case above."""
    full = every_field(group)
    regular = FieldType("group", 2)
    image = FieldType("image", 2)
    gen = torch.Generator().manual_seed(1)

    def sample(ft: FieldType) -> torch.Tensor:
        return torch.randn(ft.shape(group, 3, size, size), generator=gen).to(dtype)

    cases: dict[str, tuple[Callable[[], nn.Module], FieldType, FieldType, str]] = {
        "steerable_conv image→all": (
            lambda: backend.steerable_conv(group, image, full, 3, padding=1),
            image,
            full,
            "eval",
        ),
        "steerable_conv all→all": (lambda: backend.steerable_conv(group, full, full, 3, padding=1), full, full, "eval"),
        "steerable_conv all→regular": (
            lambda: backend.steerable_conv(group, full, regular, 3, padding=1),
            full,
            regular,
            "eval",
        ),
        "norm_nonlinearity": (lambda: backend.norm_nonlinearity(group, full, "relu", True), full, full, "eval"),
        "batch_norm (train)": (lambda: backend.batch_norm(group, full), full, full, "train"),
        "batch_norm (eval)": (lambda: backend.batch_norm(group, full), full, full, "eval"),
        "group_pool max": (
            lambda: backend.group_pool(group, full, "max"),
            full,
            FieldType("image", full.channels),
            "eval",
        ),
        "group_pool mean": (
            lambda: backend.group_pool(group, full, "mean"),
            full,
            FieldType("image", full.channels),
            "eval",
        ),
        "global_pool": (
            lambda: backend.global_pool(group, full, "avg"),
            full,
            FieldType("vector", full.channels),
            "eval",
        ),
    }
    gated_in = FieldType("steerable", reps=(group.trivial(),) * full.channels + full.reps)
    cases["gated_nonlinearity"] = (
        lambda: backend.gated_nonlinearity(group, gated_in),
        gated_in,
        gated_output_type(group, gated_in, "gated"),
        "eval",
    )
    errors: dict[str, float] = {}
    for name, (make, t_in, t_out, mode) in cases.items():
        module = _randomised(make(), dtype)
        module.train(mode == "train")
        errors[name] = equivariance_errors(module, group, t_in, t_out, sample(t_in)).max_error
    for sid in group.subgroups():  # restriction: the subgroup's elements act alike
        sub, inclusion = group.subgroup(sid)
        module = backend.restrict(group, full, sid)
        x = sample(full)
        out_type = restricted_type(group, full, sid)
        worst = 0.0
        y = module(x)
        for h, g in enumerate(inclusion):
            moved = module(full.act(group, g, x))
            expected = out_type.act(sub, h, y)
            worst = max(worst, ((moved - expected).abs().max() / y.abs().max().clamp_min(1e-30)).item())
        errors[f"restrict {sub.name}"] = worst
    return errors


def assert_steerable_conforms(backend: Backend, group: Group, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Every case of :func:`steerable_errors` within :data:`TOLERANCES`; returns the errors.

    Raises:
        AssertionError: naming each case over the tolerance and its error.
    """
    errors = steerable_errors(backend, group, dtype)
    tol = TOLERANCES[dtype]
    bad = [f"{name}: {err:.3g}" for name, err in errors.items() if not err <= tol]
    if bad:
        raise AssertionError(
            f"backend {backend.name!r} on {group.name} ({dtype}): equivariance error over {tol:g} in " + "; ".join(bad)
        )
    return errors
