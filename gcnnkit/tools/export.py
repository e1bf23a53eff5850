"""Export an :class:`~gcnnkit.models.network.EquivariantNet` to plain PyTorch, and build its *floor*.

A regular group convolution is one ``conv2d`` with ``|G|``-fold channels once its filter bank
is gathered. Seen on the *flattened layout* — a group feature map ``[B, C, |G|, H, W]`` read as
``[B, C·|G|, H, W]`` (channel ``c·|G| + g``) — every layer of a G-CNN is an ordinary layer, and the
backend contract makes each layer say which (:meth:`~gcnnkit.core.layers.EquivariantLayer.export_plain`;
plain torch layers such as activations and the linear head are copied):

=============  ===========================================================================
spec layer     plain module on the flattened layout
=============  ===========================================================================
lift, gconv    ``nn.Conv2d(C_in(·|G|), C_out·|G|, k)`` with the expanded filter bank
batchnorm      ``nn.BatchNorm2d(C·|G|)``, each field's statistics and affine repeated ``|G|``×
layernorm      ``nn.GroupNorm(1, C·|G|)`` (one group: all of ``C·|G|, H, W``), affine repeated
act, dropout   the same ``nn`` module
pool           ``nn.MaxPool2d`` / ``nn.AvgPool2d(count_include_pad=False)``
group_pool     :class:`~gcnnkit.core.layers.GroupPool2d` (reshape to ``[B, C, |G|, H, W]`` + ``amax``/``mean``)
global_pool    (``GroupPool2d`` +) ``nn.AdaptiveMax/AvgPool2d(1)`` + ``nn.Flatten``
orbit_pool     (``GroupPool2d`` +) the orbit of each pixel as a fixed ``nn.Linear`` on the
               flattened map (mean: one ``[HW, HW]`` matrix; max: ``|G|`` stacked, then
               ``nn.AdaptiveMaxPool2d``) + ``nn.Flatten``
linear         ``nn.Linear``
=============  ===========================================================================

* :func:`floor_model` is that plain stack: the *floor* a G-CNN of these shapes can run at (see
  :mod:`gcnnkit.tools.bench`).
* :func:`export_model` checks it layer by layer against the network (relative error ≤
  ``tolerance``) and returns an ``nn.Sequential`` that needs neither gcnnkit nor a backend plugin.
  Write it to disk with :func:`save_export` as TorchScript, ONNX or a state dict + architecture
  description (:func:`load_state_export` is the reference loader; ``docs/export.md`` has a 30-line
  version without gcnnkit). The state format is home-made rather than ``torch.export``'s ``.pt2``
  because it loads with ``torch.load(weights_only=True)``: ``torch.export.load`` falls back to
  unpickling arbitrary objects when that fails.
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

from gcnnkit.core.equivariance import relative_error
from gcnnkit.core.errors import GcnnkitError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantLayer, GroupPool2d
from gcnnkit.core.modes import eval_mode
from gcnnkit.core.transforms import transform_image
from gcnnkit.models.network import EquivariantNet, conv_output_size, resolve_padding
from gcnnkit.run.data import normalise
from gcnnkit.run.rundir import load_run

#: Formats :func:`save_export` writes.
FORMATS = ("torchscript", "onnx", "state")

#: ``format`` tag of a ``state`` file; :data:`STATE_VERSION` is bumped on incompatible changes.
STATE_FORMAT = "gcnnkit-plain"
STATE_VERSION = 1

#: Default largest relative error (``max|a − b| / max|b|``) between a layer and its export.
EXPORT_TOLERANCE = 1e-5


# ------------------------------------------------------------------------------ structure
def flatten_field(x: torch.Tensor, field_type: FieldType) -> torch.Tensor:
    """``[B, C, |G|, H, W] → [B, C·|G|, H, W]`` for group maps; other kinds unchanged."""
    if field_type.kind == "group":
        return x.reshape(x.shape[0], -1, *x.shape[-2:])
    return x


def _unnest(module: nn.Module) -> list[nn.Module]:
    if type(module) is nn.Sequential:
        return [m for child in module for m in _unnest(child)]
    return [module]


def plain_layer(layer: nn.Module) -> list[nn.Module]:
    """The plain modules computing ``layer`` on the flattened layout: its
    :meth:`~gcnnkit.core.layers.EquivariantLayer.export_plain`, or a copy of a plain torch layer."""
    with torch.no_grad():
        module = layer.export_plain() if isinstance(layer, EquivariantLayer) else copy.deepcopy(layer)
    return _unnest(module)


def plain_layers(net: EquivariantNet) -> list[list[nn.Module]]:
    """:func:`plain_layer` of every layer of ``net``, on its device and dtype, in eval mode."""
    ref = next(iter(net.parameters()), None)
    out = []
    with eval_mode(net):
        for layer in net.layers:
            modules = plain_layer(layer)
            for m in modules:
                if ref is not None:
                    m.to(device=ref.device, dtype=ref.dtype)
                m.eval()
            out.append(modules)
    return out


def floor_model(net: EquivariantNet) -> nn.Sequential:
    """The plain stack of ``net``'s layers on the flattened layout (its speed floor): the same
    convolutions (``C·|G|`` channels), pooling, batch norm (per channel), activations and head, on
    the same device and dtype, with a copy of the weights (their values do not change the speed)."""
    return nn.Sequential(*[m for modules in plain_layers(net) for m in modules])


# ------------------------------------------------------------------------ export proper
@dataclass
class LayerExport:
    """How one layer was exported: ``method`` (``export_plain``, or ``copy`` for a plain torch layer),
    the number of plain modules, and the relative error of the export on that layer's input."""

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


def _fits(net: EquivariantNet, size: int) -> bool:
    """Every layer has a non-empty output on a ``size``² input, and every ``orbit_pool`` sees the
    map size its output type was built for."""
    s = size
    for spec, t_in, t_out in zip(net.specs, net.in_types, net.out_types, strict=True):
        p = spec.params
        if spec.type in ("lift", "gconv"):
            pad = resolve_padding(p["padding"], p["kernel"], p["dilation"])
            s = conv_output_size(s, p["kernel"], p["stride"], pad, p["dilation"])
        elif spec.type == "pool":
            s = conv_output_size(s, p["kernel"], p["stride"] or p["kernel"], p["padding"])
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


def export_model(
    net: EquivariantNet,
    *,
    image_size: int | None = None,
    tolerance: float = EXPORT_TOLERANCE,
    batch: int = 2,
    seed: int = 0,
) -> nn.Sequential:
    """A plain-PyTorch ``nn.Sequential`` computing ``net`` (in eval mode) without gcnnkit.

    Built only from ``nn.Conv2d``, ``nn.BatchNorm2d``, pooling, :class:`~gcnnkit.core.layers.GroupPool2d`,
    ``nn.Flatten``, ``nn.Linear``, activations and dropout (see the module docstring), on the
    network's device and dtype, in eval mode. Every layer is checked on the activations of a
    random batch (``image_size`` defaults to a small valid size) and the whole module end to
    end; a relative error above ``tolerance`` raises :class:`GcnnkitError` naming the layer.

    The report (:class:`ExportInfo`) is attached as ``module.gcnnkit_export``.

    Batch norm in the export has one statistic per channel: it reproduces the network's
    inference exactly, but training it further updates each channel of a field separately.
    """
    ref = next(iter(net.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    size = image_size or default_image_size(net)
    shape = (net.in_type.channels, size, size)
    x0 = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)
    info = ExportInfo(net.group.name, net.backend_name, shape)
    per_layer = plain_layers(net)
    with eval_mode(net), torch.no_grad():
        x = x0
        for (name, layer, t_in, t_out), modules in zip(net.typed_layers(), per_layer, strict=True):
            y = layer(x)
            try:
                out = nn.Sequential(*modules)(flatten_field(x, t_in))
                expected = flatten_field(y, t_out)
                err = relative_error(out, expected) if out.shape == expected.shape else math.inf
            except RuntimeError:
                err = math.inf
            if not err <= tolerance:
                raise GcnnkitError(
                    f"export: layer {name} ({type(layer).__name__}) differs from its plain export by relative "
                    f"error {err:.3g} > {tolerance:g}; its export_plain() (or, for a plain torch layer, the layer "
                    f"itself on the flattened layout) does not compute the layer"
                )
            method = "export_plain" if isinstance(layer, EquivariantLayer) else "copy"
            info.layers.append(LayerExport(name, method, len(modules), err))
            info.sources.extend([name] * len(modules))
            x = y
        plain = nn.Sequential(*[m for modules in per_layer for m in modules]).eval()
        info.rel_error = relative_error(plain(x0), net(x0))
    if not info.rel_error <= tolerance:
        raise GcnnkitError(f"export: end-to-end relative error {info.rel_error:.3g} exceeds {tolerance:g}")
    plain.gcnnkit_export = info
    return plain


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
    run = run or (lambda m, t: m(t))
    with torch.no_grad():
        y = run(module, x)
        return max(relative_error(run(module, transform_image(x, group, g)), y) for g in range(group.order))


def export_run(
    run_dir: str | Path, out: str | Path, fmt: str, *, include_normalisation: bool = False, check: bool = True
) -> ExportReport:
    """Export the selected weights of a run directory (``best.pt`` where kept, else the last checkpoint,
    see :func:`gcnnkit.run.rundir.load_run`) to ``out``.

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
    report.rel_error = relative_error(run_export(loaded, x), expected.cpu())
    report.invariance_error = invariance_error(loaded, net.group, x, run_export)
    report.checked_with = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "state": "load_state_export"}[fmt]
    return report
