"""Export an :class:`~gcnnkit.models.network.EquivariantNet` to plain PyTorch, and build its *floor*.

A regular group convolution is one ``conv2d`` with ``|G|``-fold channels once its filter bank
is gathered. Seen on the *flattened layout* — a group feature map ``[B, C, |G|, H, W]`` read as
``[B, C·|G|, H, W]`` (channel ``c·|G| + g``) — every layer of a G-CNN is an ordinary layer:

=============  ===========================================================================
spec layer     plain module on the flattened layout
=============  ===========================================================================
lift, gconv    ``nn.Conv2d(C_in(·|G|), C_out·|G|, k)`` with the expanded filter bank
batchnorm      ``nn.BatchNorm2d(C·|G|)``, each field's statistics and affine repeated ``|G|``×
layernorm      ``nn.GroupNorm(1, C·|G|)`` (one group: all of ``C·|G|, H, W``), affine repeated
act, dropout   the same ``nn`` module
pool           ``nn.MaxPool2d`` / ``nn.AvgPool2d(count_include_pad=False)``
group_pool     :class:`GroupPool2d` (reshape to ``[B, C, |G|, H, W]`` + ``amax``/``mean``)
global_pool    (:class:`GroupPool2d` +) ``nn.AdaptiveMax/AvgPool2d(1)`` + ``nn.Flatten``
orbit_pool     (:class:`GroupPool2d` +) the orbit of each pixel as a fixed ``nn.Linear`` on the
               flattened map (mean: one ``[HW, HW]`` matrix; max: ``|G|`` stacked, then
               ``nn.AdaptiveMaxPool2d``) + ``nn.Flatten``
linear         ``nn.Linear``
=============  ===========================================================================

* :func:`floor_model` builds that plain stack with fresh weights: the *floor* a G-CNN of
  these shapes can run at (see :mod:`gcnnkit.tools.bench`).
* :func:`export_model` builds it with the network's weights, checks it layer by layer against
  the network (relative error ≤ ``tolerance``) and returns an ``nn.Sequential`` that needs
  neither gcnnkit nor a backend plugin. Write it to disk with :func:`save_export` as
  TorchScript, ONNX or a state dict + architecture description (:func:`load_state_export`
  is the reference loader; ``docs/export.md`` has a 30-line version without gcnnkit).

Backend layers are exported through, in order: an optional per-layer hook
``layer.export_plain() -> nn.Module`` (a module on the flattened layout, see
:data:`EXPORT_HOOK`); the layer's ``filter_bank()`` (convolutions), a contained
``nn.BatchNorm3d``/``nn.BatchNorm2d`` (batch norm) or its ``eps`` and per-field
``weight``/``bias`` (layer norm); and, when none is there, the layer's response to impulses
(convolutions and eval-mode batch norms are affine, so their weights can be measured). Every
candidate is checked numerically and the first one that matches is used.
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcnnkit.core.backend import ACTIVATIONS
from gcnnkit.core.errors import GcnnkitError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.models.network import EquivariantNet, resolve_padding
from gcnnkit.models.spec import LayerSpec
from gcnnkit.run.data import normalise
from gcnnkit.run.rundir import load_run

#: Name of the optional method a backend layer implements to export itself: it takes no
#: arguments and returns a plain-PyTorch module (detached copies of the current weights) that
#: computes the layer on the flattened layout.
EXPORT_HOOK = "export_plain"

#: Formats :func:`save_export` writes.
FORMATS = ("torchscript", "onnx", "state")

#: ``format`` tag of a ``state`` file; :data:`STATE_VERSION` is bumped on incompatible changes.
STATE_FORMAT = "gcnnkit-plain"
STATE_VERSION = 1

#: Default largest relative error (``max|a − b| / max|b|``) between a layer and its export.
EXPORT_TOLERANCE = 1e-5


class GroupPool2d(nn.Module):
    """``[B, C·n, H, W] → [B, C, H, W]``: max or mean over the ``n`` group channels of each field.

    The flattened-layout form of group pooling (scriptable, ONNX-exportable).
    """

    def __init__(self, order: int, mode: str = "max") -> None:
        super().__init__()
        if mode not in ("max", "mean"):
            raise ValueError(f"group pooling mode must be 'max' or 'mean', got {mode!r}")
        self.order = order
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, self.order, x.shape[2], x.shape[3])
        if self.mode == "max":
            return x.amax(dim=2)
        return x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"order={self.order}, mode={self.mode}"


# ------------------------------------------------------------------------------ structure
def flat_channels(field_type: FieldType, group: Group) -> int:
    """Channels of ``field_type`` on the flattened layout (``C·|G|`` for group maps)."""
    return field_type.channels * (group.order if field_type.kind == "group" else 1)


def flatten_field(x: torch.Tensor, field_type: FieldType) -> torch.Tensor:
    """``[B, C, |G|, H, W] → [B, C·|G|, H, W]`` for group maps; other kinds unchanged."""
    if field_type.kind == "group":
        return x.reshape(x.shape[0], -1, *x.shape[-2:])
    return x


def _plain_layer(spec: LayerSpec, in_type: FieldType, out_type: FieldType, group: Group) -> list[nn.Module]:
    """Fresh plain modules (default init) computing ``spec`` on the flattened layout."""
    p, t = spec.params, spec.type
    if t in ("lift", "gconv"):
        padding = resolve_padding(p["padding"], p["kernel"], p["dilation"])
        conv = nn.Conv2d(
            flat_channels(in_type, group),
            flat_channels(out_type, group),
            p["kernel"],
            p["stride"],
            padding,
            p["dilation"],
            bias=p["bias"],
        )
        return [conv]
    if t == "batchnorm":
        return [nn.BatchNorm2d(flat_channels(in_type, group))]
    if t == "layernorm":
        return [nn.GroupNorm(1, flat_channels(in_type, group), eps=float(p["eps"]), affine=p["affine"])]
    if t == "act":
        return [ACTIVATIONS[p["fn"]]()]
    if t == "dropout":
        return [nn.Dropout(p["p"])]
    if t == "pool":
        stride = p["stride"] or p["kernel"]
        if p["mode"] == "max":
            return [nn.MaxPool2d(p["kernel"], stride, p["padding"])]
        return [nn.AvgPool2d(p["kernel"], stride, p["padding"], count_include_pad=False)]
    if t == "group_pool":
        return [GroupPool2d(group.order, p["mode"])]
    if t == "global_pool":
        out: list[nn.Module] = []
        if in_type.kind == "group":  # max/mean over the group axis, then over space
            out.append(GroupPool2d(group.order, "max" if p["mode"] == "max" else "mean"))
        out.append(nn.AdaptiveMaxPool2d(1) if p["mode"] == "max" else nn.AdaptiveAvgPool2d(1))
        out.append(nn.Flatten(1))
        return out
    if t == "orbit_pool":
        return _orbit_pool(in_type, out_type, group, p["mode"])
    if t == "linear":
        return [nn.Linear(in_type.channels, out_type.channels, bias=p["bias"])]
    raise GcnnkitError(f"cannot export layer type {t!r}")


def orbit_matrices(group: Group, side: int) -> torch.Tensor:
    """``[|G|, side², side²]``: ``vec(T_g x) = M[g] @ vec(x)`` for a ``side × side`` map (exact
    elements give permutation matrices, others their bilinear interpolation)."""
    from gcnnkit.core.transforms import transform_image

    n = side * side
    basis = torch.eye(n, dtype=torch.float64).reshape(n, side, side)
    return torch.stack([transform_image(basis, group, g).reshape(n, n).T for g in range(group.order)]).float()


def _orbit_pool(in_type: FieldType, out_type: FieldType, group: Group, mode: str) -> list[nn.Module]:
    """``[B, C(·|G|), H, W] → [B, C·H·W]``: pool the group axis, then ``mean``/``max`` over the orbit
    ``{T_g x}`` of the map, as fixed linear maps of the flattened pixels."""
    side = math.isqrt(out_type.channels // in_type.channels)
    n, maps = side * side, orbit_matrices(group, side)
    out: list[nn.Module] = []
    if in_type.kind == "group":
        out.append(GroupPool2d(group.order, "max" if mode == "max" else "mean"))
    out.append(nn.Flatten(2))  # [B, C, H·W]
    if mode == "mean":
        orbit = nn.Linear(n, n, bias=False)
        weight = maps.mean(dim=0)
    else:  # output position p·|G| + g holds (T_g x)[p]; max over the |G| entries of each p
        orbit = nn.Linear(n, n * group.order, bias=False)
        weight = maps.permute(1, 0, 2).reshape(n * group.order, n)
    with torch.no_grad():
        orbit.weight.copy_(weight)
    orbit.weight.requires_grad_(False)  # a fixed map, not a parameter to learn
    out.append(orbit)
    if mode == "max":
        out += [nn.Unflatten(2, (n, group.order)), nn.AdaptiveMaxPool2d((n, 1))]
    out.append(nn.Flatten(1))
    return out


def floor_model(net: EquivariantNet) -> nn.Sequential:
    """The plain stack with the expanded shapes of ``net`` and fresh weights (its speed floor).

    Same convolutions (``C·|G|`` channels), pooling, batch norm (per channel), activations and
    head as ``net`` on the flattened layout; on the same device and dtype as ``net``.
    """
    modules = []
    for spec, t_in, t_out in zip(net.specs, net.in_types, net.out_types, strict=True):
        modules.extend(_plain_layer(spec, t_in, t_out, net.group))
    floor = nn.Sequential(*modules)
    ref = next(iter(net.parameters()), None)
    if ref is not None:
        floor.to(device=ref.device, dtype=ref.dtype)
    return floor


# ------------------------------------------------------------------------ export proper
@dataclass
class LayerExport:
    """How one layer was exported: ``method`` (hook, filter_bank, batchnorm, copy, probe, spec)
    and the relative error of the export on that layer's input."""

    name: str
    method: str
    modules: int
    rel_error: float


@dataclass
class ExportInfo:
    """Report of :func:`export_model`, also attached to the module as ``gcnnkit_export``."""

    group: str
    backend: str
    image_shape: tuple[int, int, int]
    layers: list[LayerExport] = field(default_factory=list)
    rel_error: float = 0.0  # end to end
    sources: list[str] = field(default_factory=list)  # spec layer name of each plain module

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "backend": self.backend,
            "image_shape": list(self.image_shape),
            "rel_error": self.rel_error,
            "layers": [vars(layer) for layer in self.layers],
        }


def _rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().item() if expected.numel() else 0.0
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def _fits(net: EquivariantNet, size: int) -> bool:
    """Every layer has a non-empty output on a ``size``² input, and every ``orbit_pool`` sees the
    map size its output type was built for."""
    s = size
    for spec, t_in, t_out in zip(net.specs, net.in_types, net.out_types, strict=True):
        p = spec.params
        if spec.type in ("lift", "gconv"):
            pad = resolve_padding(p["padding"], p["kernel"], p["dilation"])
            s = (s + 2 * pad - p["dilation"] * (p["kernel"] - 1) - 1) // p["stride"] + 1
        elif spec.type == "pool":
            s = (s + 2 * p["padding"] - p["kernel"]) // (p["stride"] or p["kernel"]) + 1
        elif spec.type == "orbit_pool" and t_in.channels * s * s != t_out.channels:
            return False
        if s < 1:
            return False
    return True


def min_image_size(net: EquivariantNet) -> int:
    """Smallest square input size ``net`` accepts (every layer has an output; an ``orbit_pool`` and
    the head after it fix the map size they were built for)."""
    for size in range(1, 4097):
        if _fits(net, size):
            return size
    raise GcnnkitError("the network has no input size up to 4096 for which every layer has an output")


def default_image_size(net: EquivariantNet) -> int:
    """The smallest accepted input size of at least 16 (or the smallest accepted one)."""
    first = min_image_size(net)
    return next((s for s in range(max(first, 16), 4097) if _fits(net, s)), first)


def _hook_candidate(layer: nn.Module) -> nn.Module | None:
    hook = getattr(layer, EXPORT_HOOK, None)
    if not callable(hook):
        return None
    try:
        with torch.no_grad():
            module = hook()
    except Exception:  # a broken hook: the other ways (and the numerical check) still apply
        return None
    return module if isinstance(module, nn.Module) else None


def _conv_from_bank(layer: nn.Module, template: nn.Conv2d, group: Group) -> nn.Conv2d | None:
    """A conv from ``layer.filter_bank()`` (a tensor, or a ``(filter, bias)`` pair) and
    ``layer.expanded_bias()`` or ``layer.bias`` (per field or per channel)."""
    bank_fn = getattr(layer, "filter_bank", None)
    if not callable(bank_fn):
        return None
    with torch.no_grad():
        bank = bank_fn()
    bias: Any = None
    if isinstance(bank, (tuple, list)) and len(bank) == 2:
        bank, bias = bank
    if not isinstance(bank, torch.Tensor) or tuple(bank.shape) != tuple(template.weight.shape):
        return None
    conv = copy.deepcopy(template).to(device=bank.device, dtype=bank.dtype)
    with torch.no_grad():
        conv.weight.copy_(bank)
        if conv.bias is not None:
            if bias is None:
                bias = getattr(layer, "expanded_bias", None)
                bias = bias() if callable(bias) else getattr(layer, "bias", None)
            if not isinstance(bias, torch.Tensor):
                return None
            bias = bias.detach().reshape(-1)
            if bias.numel() * group.order == conv.bias.numel():
                bias = bias.repeat_interleave(group.order)
            if bias.numel() != conv.bias.numel():
                return None
            conv.bias.copy_(bias)
    return conv


def _flat4(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(y.shape[0], -1, *y.shape[-2:])


def _as_input(x: torch.Tensor, field_type: FieldType, group: Group) -> torch.Tensor:
    """Flattened-layout tensor → the layer's own layout."""
    if field_type.kind == "group":
        return x.reshape(x.shape[0], field_type.channels, group.order, *x.shape[-2:])
    return x


@torch.no_grad()
def _probe_conv(
    layer: nn.Module, template: nn.Conv2d, in_type: FieldType, group: Group, like: torch.Tensor, chunk: int = 512
) -> nn.Conv2d:
    """Measure a conv layer's filter bank and bias from its response to unit impulses."""
    k, s = template.kernel_size[0], template.stride[0]
    pad, d = template.padding[0], template.dilation[0]
    c_in, c_out = template.in_channels, template.out_channels
    j = -(-pad // s)  # first output pixel whose window lies inside the image
    start = j * s - pad
    n = start + d * (k - 1) + 1 + pad
    zero = torch.zeros(1, c_in, n, n, dtype=like.dtype, device=like.device)
    base = _flat4(layer(_as_input(zero, in_type, group)))[0, :, j, j]
    rows = torch.arange(c_in * k * k, device=like.device)
    chan, ty, tx = rows // (k * k), (rows // k) % k, rows % k
    responses = []
    for lo in range(0, rows.numel(), chunk):
        sl = slice(lo, lo + chunk)
        basis = torch.zeros(rows[sl].numel(), c_in, n, n, dtype=like.dtype, device=like.device)
        basis[torch.arange(basis.shape[0]), chan[sl], start + d * ty[sl], start + d * tx[sl]] = 1.0
        y = _flat4(layer(_as_input(basis, in_type, group)))[:, :, j, j]
        responses.append(y - base)
    weight = torch.cat(responses).T.reshape(c_out, c_in, k, k)
    conv = copy.deepcopy(template).to(device=like.device, dtype=like.dtype)
    conv.weight.copy_(weight)
    if conv.bias is not None:
        conv.bias.copy_(base)
    return conv


def _bn_from_module(layer: nn.Module, template: nn.BatchNorm2d) -> nn.BatchNorm2d | None:
    """``BatchNorm2d`` over ``C·|G|`` channels from a (contained) per-field or per-channel batch norm."""
    norms = [m for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(norms) != 1 or not norms[0].track_running_stats or norms[0].running_mean is None:
        return None
    src = norms[0]
    if template.num_features % src.num_features:
        return None
    repeat = template.num_features // src.num_features
    bn = nn.BatchNorm2d(
        template.num_features, eps=src.eps, momentum=src.momentum, affine=True, track_running_stats=True
    ).to(device=src.running_mean.device, dtype=src.running_mean.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(src.running_mean.repeat_interleave(repeat))
        bn.running_var.copy_(src.running_var.repeat_interleave(repeat))
        if src.num_batches_tracked is not None:
            bn.num_batches_tracked.copy_(src.num_batches_tracked)
        if src.affine:
            bn.weight.copy_(src.weight.repeat_interleave(repeat))
            bn.bias.copy_(src.bias.repeat_interleave(repeat))
    return bn


@torch.no_grad()
def _probe_affine(layer: nn.Module, template: nn.BatchNorm2d, in_type: FieldType, group: Group, like: torch.Tensor):
    """An eval-mode per-channel affine map ``a·x + b``, measured, as a ``BatchNorm2d`` (eps 0)."""
    c = template.num_features
    x = torch.stack([torch.zeros(c, 1, 1), torch.ones(c, 1, 1)]).to(like)
    y = _flat4(layer(_as_input(x, in_type, group)))
    b, a = y[0, :, 0, 0], y[1, :, 0, 0] - y[0, :, 0, 0]
    bn = nn.BatchNorm2d(c, eps=0.0).to(like)
    bn.weight.copy_(a)
    bn.bias.copy_(b)
    return bn


def _groupnorm_from_module(layer: nn.Module, template: nn.GroupNorm) -> nn.GroupNorm | None:
    """``GroupNorm(1, C·|G|)`` from a layer norm with ``eps`` and a per-field (or per-channel) ``weight``/``bias``."""
    eps = getattr(layer, "eps", None)
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    if not isinstance(eps, float) or (weight is None) != (bias is None) or (weight is None) == template.affine:
        return None
    gn = nn.GroupNorm(1, template.num_channels, eps=eps, affine=weight is not None)
    if weight is not None:
        if template.num_channels % weight.numel():
            return None
        repeat = template.num_channels // weight.numel()
        with torch.no_grad():
            gn = gn.to(device=weight.device, dtype=weight.dtype)
            gn.weight.copy_(weight.detach().reshape(-1).repeat_interleave(repeat))
            gn.bias.copy_(bias.detach().reshape(-1).repeat_interleave(repeat))
    return gn


def _linear_from_module(layer: nn.Module, template: nn.Linear) -> nn.Linear | None:
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1 or linears[0].weight.shape != template.weight.shape:
        return None
    if (linears[0].bias is None) != (template.bias is None):
        return None
    return copy.deepcopy(linears[0])


def _candidates(layer, spec, template, t_in, group, x):
    """Yield ``(method, modules)`` candidates for exporting ``layer``, most specific first."""
    hooked = _hook_candidate(layer)
    if hooked is not None:
        yield "hook", _unnest(hooked)
    t = spec.type
    if t in ("lift", "gconv"):
        conv = _conv_from_bank(layer, template[0], group)
        if conv is not None:
            yield "filter_bank", [conv]
        yield "probe", [_probe_conv(layer, template[0], t_in, group, x)]
    elif t == "batchnorm":
        bn = _bn_from_module(layer, template[0])
        if bn is not None:
            yield "batchnorm", [bn]
        yield "probe", [_probe_affine(layer, template[0], t_in, group, x)]
    elif t == "layernorm":
        gn = _groupnorm_from_module(layer, template[0])
        if gn is not None:
            yield "layernorm", [gn]
    elif t == "linear":
        lin = _linear_from_module(layer, template[0])
        if lin is not None:
            yield "copy", [lin]
    elif t in ("act", "dropout") and type(layer) is type(template[0]):
        yield "copy", [copy.deepcopy(layer)]
    if t not in ("lift", "gconv", "batchnorm", "linear") and not (t == "layernorm" and spec.params["affine"]):
        yield "spec", template


def _unnest(module: nn.Module) -> list[nn.Module]:
    if type(module) is nn.Sequential:
        return [m for child in module for m in _unnest(child)]
    return [module]


def _detach(modules: Sequence[nn.Module], like: torch.Tensor) -> list[nn.Module]:
    """Independent copies (no storage shared with the network), on ``like``'s device/dtype."""
    out = []
    for m in modules:
        m = copy.deepcopy(m)
        m.to(device=like.device)
        if like.is_floating_point():
            m.to(dtype=like.dtype)
        out.append(m)
    return out


def export_model(
    net: EquivariantNet,
    *,
    image_size: int | None = None,
    tolerance: float = EXPORT_TOLERANCE,
    batch: int = 2,
    seed: int = 0,
) -> nn.Sequential:
    """A plain-PyTorch ``nn.Sequential`` computing ``net`` (in eval mode) without gcnnkit.

    Built only from ``nn.Conv2d``, ``nn.BatchNorm2d``, pooling, :class:`GroupPool2d`,
    ``nn.Flatten``, ``nn.Linear``, activations and dropout (see the module docstring), on the
    network's device and dtype, in eval mode. Every layer is checked on the activations of a
    random batch (``image_size`` defaults to a small valid size) and the whole module end to
    end; a relative error above ``tolerance`` raises :class:`GcnnkitError`.

    The report (:class:`ExportInfo`) is attached as ``module.gcnnkit_export``.

    Batch norm in the export has one statistic per channel: it reproduces the network's
    inference exactly, but training it further updates each channel of a field separately.
    """
    was_training = net.training
    net.eval()
    try:
        ref = next(iter(net.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None else torch.float32
        size = image_size or default_image_size(net)
        shape = (net.in_type.channels, size, size)
        gen = torch.Generator().manual_seed(seed)
        x0 = torch.randn(batch, *shape, generator=gen).to(device=device, dtype=dtype)
        info = ExportInfo(net.group.name, net.backend_name, shape)
        modules: list[nn.Module] = []
        x = x0
        with torch.no_grad():
            for (name, layer, t_in, t_out), spec in zip(net.typed_layers(), net.specs, strict=True):
                y = layer(x)
                template = _plain_layer(spec, t_in, t_out, net.group)
                flat_x, flat_y = flatten_field(x, t_in), flatten_field(y, t_out)
                best: tuple[float, str, list[nn.Module]] | None = None
                for method, cand in _candidates(layer, spec, template, t_in, net.group, x):
                    cand = _detach(cand, x0)
                    try:
                        out = nn.Sequential(*cand).eval()(flat_x)
                        err = _rel_error(out, flat_y) if out.shape == flat_y.shape else math.inf
                    except RuntimeError:
                        err = math.inf
                    if best is None or err < best[0]:
                        best = (err, method, cand)
                    if err <= tolerance:
                        break
                if best is None or best[0] > tolerance:
                    err = math.inf if best is None else best[0]
                    raise GcnnkitError(
                        f"export: layer {name} ({type(layer).__name__}) could not be exported within relative "
                        f"error {tolerance:g} (best {err:.3g}); implement {type(layer).__name__}.{EXPORT_HOOK}()"
                    )
                modules.extend(best[2])
                info.sources.extend([name] * len(best[2]))
                info.layers.append(LayerExport(name, best[1], len(best[2]), best[0]))
                x = y
            plain = nn.Sequential(*modules).eval()
            info.rel_error = _rel_error(plain(x0), net(x0))
        if info.rel_error > tolerance:
            raise GcnnkitError(f"export: end-to-end relative error {info.rel_error:.3g} exceeds {tolerance:g}")
        plain.gcnnkit_export = info
        return plain
    finally:
        net.train(was_training)


def normalisation_layer(mean: Sequence[float], std: Sequence[float]) -> nn.Conv2d:
    """``(x − mean[c]) / std[c]`` as a depthwise 1×1 ``nn.Conv2d`` (commutes with rotations)."""
    mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    c = mean_t.numel()
    conv = nn.Conv2d(c, c, 1, groups=c, bias=True)
    with torch.no_grad():
        conv.weight.copy_((1.0 / std_t).reshape(c, 1, 1, 1))
        conv.bias.copy_(-mean_t / std_t)
    return conv


# --------------------------------------------------------------------- description & state
_ARG_NAMES: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Conv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine"),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AdaptiveMaxPool2d: ("output_size",),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Unflatten: ("dim", "unflattened_size"),
    nn.Linear: ("in_features", "out_features"),
    nn.Dropout: ("p",),
    nn.ReLU: (),
    nn.ELU: ("alpha",),
    nn.SiLU: (),
    nn.GELU: ("approximate",),
    nn.LeakyReLU: ("negative_slope",),
    nn.Tanh: (),
    nn.Sigmoid: (),
    GroupPool2d: ("order", "mode"),
}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def describe(plain: nn.Sequential) -> list[dict[str, Any]]:
    """Architecture of an exported module: ``[{"type": class name, "args": {...}}, ...]``.

    ``type`` is a ``torch.nn`` class name, or ``GroupPool2d``; ``args`` are constructor
    keyword arguments. :func:`build_from_description` (or the loader in ``docs/export.md``)
    rebuilds the module from it.
    """
    sources = getattr(getattr(plain, "gcnnkit_export", None), "sources", None)
    out = []
    for i, module in enumerate(plain):
        cls = type(module)
        if cls not in _ARG_NAMES:
            raise GcnnkitError(f"export: {cls.__name__} has no architecture description; save as torchscript or onnx")
        args = {name: _jsonable(getattr(module, name)) for name in _ARG_NAMES[cls]}
        if cls in (nn.Conv2d, nn.Linear):
            args["bias"] = module.bias is not None
        entry = {"type": cls.__name__, "args": args}
        if sources is not None:
            entry["source"] = sources[i]
        out.append(entry)
    return out


def build_from_description(architecture: Sequence[dict[str, Any]]) -> nn.Sequential:
    """Rebuild the (untrained) plain module from :func:`describe`'s output."""
    allowed = {cls.__name__: cls for cls in _ARG_NAMES}
    modules = []
    for entry in architecture:
        if entry["type"] not in allowed:
            raise GcnnkitError(f"unknown module type {entry['type']!r} in the architecture description")
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["args"].items()}
        modules.append(allowed[entry["type"]](**args))
    return nn.Sequential(*modules)


def state_payload(plain: nn.Sequential, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a ``state`` file holds (``torch.load(..., weights_only=True)``-safe)."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "architecture": describe(plain),
        "state_dict": {k: v.detach().cpu().clone() for k, v in plain.state_dict().items()},
        "metadata": dict(metadata or {}),
    }


def load_state_export(path: str | Path) -> nn.Sequential:
    """Load a ``state`` file written by :func:`save_export` (eval mode, CPU)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise GcnnkitError(f"{path}: not a gcnnkit plain-PyTorch export (format {STATE_FORMAT})")
    net = build_from_description(saved["architecture"])
    net.load_state_dict(saved["state_dict"])
    return net.eval()


# ---------------------------------------------------------------------------------- files
def _example_input(plain: nn.Sequential, image_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    ref = next(iter(plain.parameters()))
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *image_shape, generator=gen).to(device=ref.device, dtype=ref.dtype)


def save_export(
    plain: nn.Sequential,
    path: str | Path,
    fmt: str,
    image_shape: Sequence[int],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``plain`` (from :func:`export_model`) as ``torchscript``, ``onnx`` or ``state``.

    ``image_shape`` ``(C, H, W)`` is the example input for ONNX (the batch axis is dynamic).
    ``metadata`` (JSON-able) goes into the file: TorchScript ``extra_files['gcnnkit.json']``,
    ONNX ``metadata_props['gcnnkit']``, or the state file's ``metadata``.
    """
    if fmt not in FORMATS:
        raise GcnnkitError(f"export format {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(metadata or {})
    plain = plain.eval()
    if fmt == "state":
        torch.save(state_payload(plain, metadata), path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(plain)
        scripted.save(str(path), _extra_files={"gcnnkit.json": meta})
    else:
        _save_onnx(plain, path, _example_input(plain, image_shape), meta)
    return path


def _save_onnx(plain: nn.Module, path: Path, x: torch.Tensor, meta: str) -> None:
    buffer = io.BytesIO()
    kwargs = {
        "input_names": ["images"],
        "output_names": ["logits"],
        "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}},
        "opset_version": 17,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(plain, (x,), buffer, dynamo=False, **kwargs)
    except TypeError:  # a torch without the TorchScript-based exporter: use torch.export's
        torch.onnx.export(plain, (x,), buffer, dynamo=True, input_names=["images"], output_names=["logits"])
    data = buffer.getvalue()
    try:
        import onnx
    except ImportError:
        path.write_bytes(data)
        return
    model = onnx.load_from_string(data)
    entry = model.metadata_props.add()
    entry.key, entry.value = "gcnnkit", meta
    onnx.save(model, str(path))


def load_export(path: str | Path, fmt: str):
    """Load an exported file: a module (torchscript, state) or an ``onnxruntime`` session (onnx)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 marks torch.jit deprecated
            return torch.jit.load(str(path), map_location="cpu").eval()
    if fmt == "state":
        return load_state_export(path)
    if fmt == "onnx":
        import onnxruntime

        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raise GcnnkitError(f"export format {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")


def run_export(loaded, x: torch.Tensor) -> torch.Tensor:
    """Outputs of a loaded export (:func:`load_export`) on ``x`` (CPU)."""
    if isinstance(loaded, nn.Module) or isinstance(loaded, torch.jit.ScriptModule):
        with torch.no_grad():
            return loaded(x.cpu())
    (out,) = loaded.run(None, {loaded.get_inputs()[0].name: x.detach().cpu().numpy()})
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------ run dirs
@dataclass
class ExportReport:
    """What :func:`export_run` wrote and how well the file reproduces the run's model."""

    path: str
    format: str
    rel_error: float | None  # file's outputs vs the gcnnkit model; None when not checkable
    invariance_error: float | None  # file's outputs under each group element of the input
    checked_with: str
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def invariance_error(module, group: Group, x: torch.Tensor, run=None) -> float:
    """Worst relative change of ``module``'s outputs when the input is acted on by each element."""
    from gcnnkit.core.transforms import transform_image

    run = run or (lambda m, t: m(t))
    with torch.no_grad():
        y = run(module, x)
        return max(_rel_error(run(module, transform_image(x, group, g)), y) for g in range(group.order))


def export_run(
    run_dir: str | Path, out: str | Path, fmt: str, *, include_normalisation: bool = False, check: bool = True
) -> ExportReport:
    """Export the last checkpoint of a run directory (see :mod:`gcnnkit.run.training`) to ``out``.

    With ``include_normalisation`` the file takes raw images in ``[0, 1]``: the run's
    per-channel normalisation is prepended as a depthwise 1×1 convolution. Without it, inputs
    are normalised as in training (``metadata.normalisation`` in the file says how).
    The file is loaded back and compared with the gcnnkit model (ONNX: with ``onnxruntime``
    when it is installed).
    """
    if fmt not in FORMATS:
        raise GcnnkitError(f"--format {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    run = load_run(run_dir, with_data=False)
    run_dir, config, checkpoint, info, net = run.run_dir, run.config, run.checkpoint, run.info, run.model
    mean, std = run.mean, run.std
    plain = export_model(net, image_size=info.image_size)
    layers = [vars(layer) for layer in plain.gcnnkit_export.layers]
    if include_normalisation:
        sources = ["normalisation", *plain.gcnnkit_export.sources]
        report_info = plain.gcnnkit_export
        plain = nn.Sequential(normalisation_layer(mean.tolist(), std.tolist()), *plain).eval()
        report_info.sources = sources
        plain.gcnnkit_export = report_info
    metadata = {
        "gcnnkit_run": str(run_dir),
        "epoch": checkpoint.get("epoch"),
        "backend": config.model.backend,
        "group": config.model.group,
        "preset": config.model.preset,
        "data": info.name,
        "input_shape": ["batch", *info.image_shape],
        "num_classes": info.num_classes,
        "normalisation": {"mean": mean.tolist(), "std": std.tolist(), "included": include_normalisation},
    }
    path = save_export(plain, out, fmt, info.image_shape, metadata)
    report = ExportReport(str(path), fmt, None, None, "not checked", layers)
    if not check:
        return report
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            report.checked_with = "not checked (onnxruntime is not installed)"
            return report
    loaded = load_export(path, fmt)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, *info.image_shape, generator=gen)
    with torch.no_grad():
        expected = net(normalise(x, mean, std)) if include_normalisation else net(x)
    report.rel_error = _rel_error(run_export(loaded, x), expected.cpu())
    report.invariance_error = invariance_error(loaded, net.group, x, run_export)
    report.checked_with = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "state": "load_state_export"}[fmt]
    return report
