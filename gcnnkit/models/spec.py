"""Architecture specs: a declarative, YAML-able list of layers.

A spec is a list whose entries are either a bare layer type (``"batchnorm"``, ``"relu"``) or a
mapping ``{type: ..., **params}``::

    layers:
      - {type: lift, out: 16, kernel: 5}
      - batchnorm
      - relu
      - {type: gconv, out: 32, kernel: 3}
      - {type: pool, mode: max, kernel: 2}
      - {type: group_pool, mode: max}
      - {type: global_pool, mode: avg}
      - {type: linear, out: classes}

Steerable field types (``out: {regular: 8, irrep(1): 4, trivial: 2}``, see :mod:`gcnnkit.core.fields`)
add ``norm_act`` (norm nonlinearity, ``fn: relu|sigmoid|softplus|squash``, learned bias), ``gated``
(the first half of the fields gate the second half) and ``restrict`` (``subgroup: C4``: the
network after it is equivariant to the subgroup only); ``batchnorm``, ``group_pool`` and
``global_pool`` take any field type.

Besides these, ``layernorm`` (per-sample normalisation with a per-field affine map),
``orbit_pool`` (pool over the group and its action on the map, then flatten: an invariant
vector that keeps the spatial layout) and ``lift``/``gconv`` with ``out: classes`` (one field per
class) serve the published networks of :mod:`gcnnkit.models.presets`.

A ``residual`` block has a layer list of its own (its body) and computes ``act(body(x) + shortcut(x))``::

      - {type: residual, shortcut: projection, layers: [{type: gconv, out: 32, stride: 2}, batchnorm, relu,
                                                       {type: gconv, out: 32}, batchnorm]}

``shortcut: identity`` (default) needs a body that keeps the field type and map size;
``projection`` is a 1×1 convolution without bias, strided like the body, then batch norm
(``shortcut_norm: false``: none). ``act`` (default ``relu``, or ``none``) follows the sum.

The same spec builds on any backend and any group; on the trivial group ``C1`` it is a plain
CNN. :func:`parse_layers` validates a spec and returns :class:`LayerSpec` objects with every
default filled in, so the resolved spec written next to a run says exactly what was built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gcnnkit.core.backend import ACTIVATIONS
from gcnnkit.core.errors import SpecError

REQUIRED = object()

#: the largest ``model.width_multiplier``: beyond it a typo (100 for 1.00) would build a giant network
MAX_WIDTH_MULTIPLIER = 16.0

_CONV_PARAMS: dict[str, tuple[tuple[type, ...], Any]] = {
    # an int (regular fields), "classes" (one field per class, whatever the width mode), or an ordered
    # mapping of representation names to field counts, {regular: 8, irrep(1): 4, trivial: 2}
    "out": ((int, str, dict), REQUIRED),
    "kernel": ((int,), 3),
    "stride": ((int,), 1),
    "padding": ((int, str), "same"),
    "dilation": ((int,), 1),
    "bias": ((bool,), True),
}

#: layer type -> {param: (allowed python types, default)}
LAYER_PARAMS: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "lift": _CONV_PARAMS,
    "gconv": _CONV_PARAMS,
    "batchnorm": {},
    "layernorm": {"affine": ((bool,), True), "eps": ((float, int), 1e-5)},
    "act": {"fn": ((str,), "relu")},
    "dropout": {"p": ((float, int), 0.5)},
    "pool": {
        "mode": ((str,), "max"),
        "kernel": ((int,), 2),
        "stride": ((int, type(None)), None),
        "padding": ((int,), 0),
    },
    "group_pool": {"mode": ((str,), "max")},
    "global_pool": {"mode": ((str,), "avg")},
    "orbit_pool": {"mode": ((str,), "mean")},
    "linear": {"out": ((int, str), "classes"), "bias": ((bool,), True)},
    # steerable field types (gcnnkit.core.steerable_layers)
    "norm_act": {"fn": ((str,), "relu"), "bias": ((bool,), True)},
    "gated": {},
    "restrict": {"subgroup": ((str, int, list), REQUIRED)},
    # residual blocks (gcnnkit.core.residual)
    "residual": {
        "layers": ((list, tuple), REQUIRED),
        "shortcut": ((str,), "identity"),
        "shortcut_norm": ((bool,), True),
        "act": ((str,), "relu"),
    },
}

#: allowed values of string-valued params
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("act", "fn"): tuple(ACTIVATIONS),
    ("pool", "mode"): ("max", "avg"),
    ("group_pool", "mode"): ("max", "mean"),
    ("global_pool", "mode"): ("max", "avg"),
    ("orbit_pool", "mode"): ("mean", "max"),
    ("norm_act", "fn"): ("relu", "sigmoid", "softplus", "squash"),
    ("residual", "shortcut"): ("identity", "projection"),
    ("residual", "act"): ("none", *ACTIVATIONS),
}

LAYER_TYPES: tuple[str, ...] = tuple(LAYER_PARAMS) + tuple(ACTIVATIONS)


@dataclass(frozen=True)
class LayerSpec:
    """One validated layer: its type and every parameter, defaults filled in."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """YAML-able form, ``{"type": ..., **params}``."""
        return {"type": self.type, **self.params}


def _type_name(types: tuple[type, ...]) -> str:
    names = {
        int: "int",
        float: "number",
        str: "string",
        bool: "bool",
        type(None): "null",
        dict: "mapping",
        list: "list",
        tuple: "list",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def parse_layer(entry: Any, where: str) -> LayerSpec:
    """Validate one spec entry; ``where`` (e.g. ``model.layers[2]``) prefixes error messages."""
    if isinstance(entry, str):
        entry = {"type": entry}
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: expected a layer type or a mapping with 'type', got {entry!r}")
    entry = dict(entry)
    layer_type = entry.pop("type", None)
    if layer_type in ACTIVATIONS:  # shorthand: `relu` == {type: act, fn: relu}
        if "fn" in entry:
            raise SpecError(f"{where}: '{layer_type}' takes no 'fn'; use {{type: act, fn: ...}}")
        entry["fn"] = layer_type
        layer_type = "act"
    if layer_type not in LAYER_PARAMS:
        raise SpecError(f"{where}: unknown layer type {layer_type!r}; allowed: {', '.join(LAYER_TYPES)}")
    schema = LAYER_PARAMS[layer_type]
    unknown = sorted(set(entry) - set(schema))
    if unknown:
        allowed = ", ".join(schema) or "none"
        raise SpecError(f"{where}: unknown parameter {unknown[0]!r} for layer '{layer_type}'; allowed: {allowed}")
    params: dict[str, Any] = {}
    for name, (types, default) in schema.items():
        if name not in entry:
            if default is REQUIRED:
                raise SpecError(f"{where}: layer '{layer_type}' needs parameter {name!r}")
            params[name] = default
            continue
        value = entry[name]
        if isinstance(value, Mapping) and dict in types:
            value = dict(value)  # an ordered plain dict (YAML mappings keep their order)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise SpecError(f"{where}.{name}: expected {_type_name(types)}, got {value!r}")
        params[name] = value
    _check_values(layer_type, params, where)
    if layer_type == "residual":  # the body is a spec of its own, stored resolved (YAML-able)
        params["layers"] = [spec.to_dict() for spec in parse_layers(params["layers"], f"{where}.layers")]
    return LayerSpec(layer_type, params)


def _check_values(layer_type: str, params: dict[str, Any], where: str) -> None:
    for (t, name), choices in _CHOICES.items():
        if t == layer_type and params[name] not in choices:
            raise SpecError(f"{where}.{name}: {params[name]!r} is not allowed; allowed: {', '.join(choices)}")
    if layer_type in ("lift", "gconv"):
        out = params["out"]
        if isinstance(out, str) and out != "classes":
            raise SpecError(
                f"{where}.out: {out!r} is not allowed; allowed: an int >= 1, 'classes' or a mapping "
                f"{{representation: count}}"
            )
        if isinstance(out, dict):
            _check_field_counts(out, where)
            out = 1
        if (isinstance(out, int) and out < 1) or params["kernel"] < 1 or params["stride"] < 1 or params["dilation"] < 1:
            raise SpecError(f"{where}: out, kernel, stride and dilation must be >= 1, got {params}")
        pad = params["padding"]
        if isinstance(pad, str) and pad != "same":
            raise SpecError(f"{where}.padding: {pad!r} is not allowed; allowed: 'same' or an int >= 0")
        if isinstance(pad, int) and pad < 0:
            raise SpecError(f"{where}.padding: must be >= 0, got {pad}")
    if layer_type == "norm_act" and params["fn"] == "squash" and params["bias"]:
        raise SpecError(f"{where}: norm_act fn 'squash' takes no bias; set bias: false")
    if layer_type == "layernorm" and not 0 < params["eps"] < float("inf"):
        raise SpecError(f"{where}.eps: must be a finite number > 0, got {params['eps']}")
    if layer_type == "linear":
        out = params["out"]
        if (isinstance(out, str) and out != "classes") or (isinstance(out, int) and out < 1):
            raise SpecError(f"{where}.out: {out!r} is not allowed; allowed: 'classes' or an int >= 1")
    if layer_type == "dropout" and not 0.0 <= params["p"] < 1.0:
        raise SpecError(f"{where}.p: dropout probability must be in [0, 1), got {params['p']}")
    if layer_type == "pool":
        if params["kernel"] < 1 or (params["stride"] is not None and params["stride"] < 1) or params["padding"] < 0:
            raise SpecError(f"{where}: pool kernel/stride must be >= 1 and padding >= 0, got {params}")
        if params["padding"] * 2 > params["kernel"]:
            raise SpecError(
                f"{where}.padding: must be at most half the kernel ({params['kernel']}), got {params['padding']}"
            )


def _check_field_counts(out: dict, where: str) -> None:
    """A field-type mapping: non-empty, string keys (representation names), counts >= 1."""
    if not out:
        raise SpecError(f"{where}.out: an empty mapping has no fields; e.g. {{regular: 8, irrep(1): 4}}")
    for name, count in out.items():
        if not isinstance(name, str):
            raise SpecError(f"{where}.out: representation names are strings, got {name!r}")
        if name.count("(") != name.count(")") or name.count("[") != name.count("]"):
            raise SpecError(
                f"{where}.out: representation name {name!r} was cut at a comma (a YAML flow mapping "
                f"{{...}} splits there); quote it, e.g. {{'irrep(1,1)': 2}}, or write the mapping in block style"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SpecError(f"{where}.out[{name!r}]: expected a field count >= 1, got {count!r}")


def parse_layers(layers: Sequence[Any], where: str = "model.layers") -> list[LayerSpec]:
    """Validate a whole spec (see the module docstring); raises :class:`SpecError`."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
        raise SpecError(f"{where}: expected a non-empty list of layers, got {layers!r}")
    return [parse_layer(entry, f"{where}[{i}]") for i, entry in enumerate(layers)]
