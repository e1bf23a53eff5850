"""Speed and memory of G-CNNs against their *floor*: the plain ``nn.Conv2d`` stack of identical shapes.

A regular group convolution is one ``conv2d`` with ``|G|``-fold channels once its filter bank
is gathered, so no backend can beat :func:`gcnnkit.tools.export.floor_model` — the same
convolutions, batch norms, pools and head on the flattened ``[B, C·|G|, H, W]`` layout with
fresh weights. :func:`run_bench` times every backend's model, the floor and the exported
plain module (:func:`gcnnkit.tools.export.export_model`) in one process:

* forward in eval mode (``torch.no_grad``) and forward + backward in train mode;
* whole model and each layer on its own (the floor's modules of the same layer);
* repetitions interleaved (contenders in rotating order, so drift and noise from other
  processes hit all of them alike; :mod:`gcnnkit.tools.timing`); each contender's time is the
  median, each ratio ``time / floor time`` the median of the per-repetition ratios;
* peak memory of one step: on CUDA ``torch.cuda.max_memory_allocated`` above what was
  allocated before the step; on CPU the peak of the bytes of tensors allocated during the
  step and still alive (counted with a dispatch mode, as the CUDA allocator counts them;
  the process RSS would mostly show the allocator's caching);
* model build time (median over a few builds, interleaved).

``gcnnkit bench`` is the command-line front end; ``benchmarks/run_all.py`` runs the presets
on every installed backend.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gcnnkit.core.errors import GcnnkitError, UnsupportedGroupError
from gcnnkit.core.registry import get_group, loadable_backends
from gcnnkit.models.network import EquivariantNet, build_model
from gcnnkit.models.presets import get_preset
from gcnnkit.run import rundir
from gcnnkit.run.resources import check_memory, estimate, model_specs
from gcnnkit.tools import timing
from gcnnkit.tools.export import export_model, flatten_field, floor_model, plain_layers
from gcnnkit.tools.table import format_table
from gcnnkit.tools.timing import CLOCKS

MODES = ("eval", "train")
FLOOR = "floor"
EXPORT = "export"
DEFAULT_BATCH_SIZES = (1, 64, 256)
DEFAULT_SIZES = (28, 64)
DEFAULT_REPEATS = 9
DEFAULT_GROUP = "C4"
#: Presets benchmarked when none are named: gcnnkit's own.
DEFAULT_PRESETS = ("gcnn-small", "gcnn-tiny")


# ---------------------------------------------------------------------------- devices
def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` given as ``--device``; a one-line error when CUDA is not there."""
    return rundir.resolve_device(name, option="--device")


def device_description(device: torch.device) -> str:
    """A human name of the device, e.g. ``NVIDIA H100 80GB HBM3`` or ``cpu x86_64, 2 threads``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} torch threads"


# ----------------------------------------------------------------------------- memory
class _LiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of tensor storages created while active and still alive (CPU peak memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``fn`` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with _LiveTensorBytes() as tracker:
        fn()
    return int(tracker.peak)


# ------------------------------------------------------------------------------ cases
@dataclass
class BenchCase:
    """One architecture to benchmark on one or more backends.

    ``image_size`` is the case's own input size (a config's data, a published preset's input),
    used when :func:`run_bench` is given no sizes; ``None``: :data:`DEFAULT_SIZES`.
    """

    name: str
    group: str
    in_channels: int
    num_classes: int
    backends: list[str]
    preset: str | None = None
    layers: list | None = None
    widths: str | None = None
    image_size: int | None = None
    backend_options: dict[str, dict] = field(default_factory=dict)
    #: a config's ``model.allow_non_equivariant``: build off-centre strides and pools too
    allow_non_equivariant: bool = False
    #: a config's ``model.width_multiplier``
    width_multiplier: float = 1.0

    def build(self, backend: str, image_size: int) -> EquivariantNet:
        return build_model(
            backend,
            self.group,
            in_channels=self.in_channels,
            image_size=image_size,
            num_classes=self.num_classes,
            preset=self.preset,
            layers=self.layers,
            widths=self.widths,
            backend_options=self.backend_options.get(backend),
            allow_non_equivariant=self.allow_non_equivariant,
            width_multiplier=self.width_multiplier,
        )


def preset_cases(
    presets: Sequence[str] | None = None,
    group: str | None = None,
    backends: Sequence[str] | None = None,
    in_channels: int = 1,
    num_classes: int = 10,
) -> list[BenchCase]:
    """Cases for ``presets`` (default: :data:`DEFAULT_PRESETS`; ``["all"]``: every registered one)
    on ``backends`` (default: the installed ones, :func:`~gcnnkit.core.registry.loadable_backends`).

    A preset runs on ``group``, else on the group it was published for, else on
    :data:`DEFAULT_GROUP`; at the image size it was published for, unless sizes are given to
    :func:`run_bench`.
    """
    from gcnnkit.models.presets import PRESETS, get_preset

    names = list(presets) if presets else list(DEFAULT_PRESETS)
    if names == ["all"]:
        names = list(PRESETS)
    chosen = list(backends) if backends else loadable_backends()
    cases = []
    for name in names:
        preset = get_preset(name)  # one-line error for unknown names
        g = group or getattr(preset, "group", None) or DEFAULT_GROUP
        size = getattr(preset, "image_size", None)
        cases.append(BenchCase(name, g, in_channels, num_classes, chosen, preset=name, image_size=size))
    return cases


def config_cases(paths: Sequence[str], overrides: Sequence[str] = (), backends: Sequence[str] | None = None):
    """One case per config file: its model on its data's input shape (``backends`` replace its backend)."""
    from gcnnkit.run.config import load_config
    from gcnnkit.run.data import dataset_info

    cases = []
    for path in paths:
        config = load_config(path, overrides)
        info = dataset_info(config.data)
        m = config.model
        cases.append(
            BenchCase(
                config.name,
                m.group,
                info.in_channels,
                info.num_classes,
                list(backends) if backends else [m.backend],
                preset=m.preset,
                layers=m.layers,
                widths=m.widths,
                image_size=info.image_size,
                backend_options={m.backend: dict(m.backend_options)},
                allow_non_equivariant=m.allow_non_equivariant,
                width_multiplier=m.width_multiplier,
            )
        )
    return cases


# ------------------------------------------------------------------------------ steps
#: Precisions ``--precisions`` accepts: float32, and the forward pass under bf16/fp16 autocast.
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _forward(module: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """``module(x)``, under autocast for ``bf16``/``fp16`` (as ``gcnnkit train`` runs its forward pass)."""
    dtype = _AUTOCAST.get(precision)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        return module(x)


def _eval_step(module: nn.Module, x: torch.Tensor, precision: str = "fp32") -> Callable[[], Any]:
    def step():
        with torch.no_grad():
            return _forward(module, x, precision)

    return step


def _train_step(
    module: nn.Module, x: torch.Tensor, grad: torch.Tensor | None = None, precision: str = "fp32"
) -> Callable[[], Any]:
    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        if x.requires_grad:
            x.grad = None
        out = _forward(module, x, precision).float()
        if grad is None:
            out.sum().backward()
        else:
            out.backward(grad)

    return step


def _set_mode(modules: Iterable[nn.Module], mode: str) -> None:
    for m in modules:
        m.train(mode == "train")


@dataclass
class _Contender:
    name: str
    module: nn.Module
    x: torch.Tensor  # input for this contender (model or layer)
    modes: tuple[str, ...] = MODES
    grad: torch.Tensor | None = None  # output gradient for layer-level train steps
    precision: str = "fp32"

    def step(self, mode: str) -> Callable[[], Any]:
        if mode == "eval":
            return _eval_step(self.module, self.x, self.precision)
        return _train_step(self.module, self.x, self.grad, self.precision)


@dataclass
class _Settings:
    device: torch.device
    batch_sizes: Sequence[int]
    repeats: int
    per_layer: bool
    export: bool
    memory: bool
    warmup: int
    min_time: float
    build_repeats: int
    seed: int
    clock: str
    log: Callable[[str], None]
    channels_last: bool = False
    precisions: Sequence[str] = ("fp32",)


def _quartiles(values: Sequence[float]) -> list[float]:
    """First and third quartile (both the value itself for one sample)."""
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def _interleaved(
    contenders: Sequence[_Contender], mode: str, st: _Settings
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """Median time per contender, median per-repetition ratio to the floor (first contender) and
    the quartiles of those ratios (their spread shows how noisy the machine was)."""
    active = [c for c in contenders if mode in c.modes]
    _set_mode((c.module for c in active), mode)
    steps = {c.name: c.step(mode) for c in active}
    samples = timing.interleaved(steps, st.device, st.repeats, warmup=st.warmup, min_time=st.min_time, clock=st.clock)
    per_rep = timing.ratios(samples, FLOOR)
    return timing.medians(samples), timing.medians(per_rep), {name: _quartiles(r) for name, r in per_rep.items()}


def _build_times(builders: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median wall seconds of each builder (interleaved) and what each built last."""
    built: dict[str, Any] = {}

    def build(name: str) -> Callable[[], None]:
        def step() -> None:
            built[name] = builders[name]()

        return step

    samples = timing.interleaved({name: build(name) for name in builders}, torch.device("cpu"), max(1, repeats))
    return timing.medians(samples), built


def _layer_modules(floor: nn.Sequential, net: EquivariantNet) -> list[nn.Module]:
    """The floor's module(s) of each layer of ``net`` (an ``nn.Sequential`` where there are several)."""
    out, i = [], 0
    for modules in plain_layers(net):
        n = len(modules)
        out.append(floor[i] if n == 1 else nn.Sequential(*floor[i : i + n]))  # no wrapper overhead
        i += n
    return out


# -------------------------------------------------------------------------------- bench
def run_bench(
    cases: Sequence[BenchCase],
    *,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    sizes: Sequence[int] | None = DEFAULT_SIZES,
    repeats: int = DEFAULT_REPEATS,
    per_layer: bool = True,
    export: bool = True,
    memory: bool = True,
    warmup: int = 2,
    min_time: float = 0.02,
    build_repeats: int = 3,
    seed: int = 0,
    clock: str = "wall",
    log: Callable[[str], None] | None = None,
    channels_last: bool = False,
    precisions: Sequence[str] = ("fp32",),
) -> dict[str, Any]:
    """Benchmark ``cases`` against their floor; returns a JSON-able report.

    Every case runs at each of ``sizes`` (when ``None``: the case's own ``image_size``, else
    :data:`DEFAULT_SIZES`) and ``batch_sizes``, on every backend of the case that is installed and supports
    its group (the others are listed under ``skipped``). Each result carries
    ``ratio_to_floor[contender][mode]`` (contender: a backend name or ``export``, the plain
    export of the first backend's model, timed in eval mode only) and the same per layer
    under ``layers`` (backends only).

    Args:
        repeats: timed repetitions per contender (interleaved); at least 1.
        min_time: each timed sample runs the step enough times to last about this long.
        clock: ``wall`` or ``cpu`` (process CPU time, CPU device only; see :data:`CLOCKS`).
        channels_last: every contender in ``torch.channels_last`` (NHWC): the models through
            :meth:`~gcnnkit.models.network.EquivariantNet.set_channels_last`, the floor and the export with
            NHWC weights, and the input batch NHWC.
        precisions: ``fp32`` and/or ``bf16``/``fp16`` (the forward pass under autocast, as in training).
            Every contender runs in each, named ``<contender>@bf16`` beyond fp32 (``floor@bf16``,
            ``native@bf16``, ``export@bf16``), and every ratio is to the fp32 floor, so the ratios of
            one precision to another read off directly. Per-layer times are fp32 only.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions or len(set(precisions)) != len(precisions):
        raise GcnnkitError(
            f"--precisions: {','.join(precisions)!r} is not allowed; allowed: distinct values of "
            f"{', '.join(PRECISIONS)}"
        )
    if "fp32" not in precisions:
        precisions = ("fp32", *precisions)  # the floor every ratio refers to
    if "fp16" in precisions and dev.type != "cuda":
        raise GcnnkitError("--precisions fp16 needs a CUDA device (autocast float16 on the CPU is not a speed path)")
    if repeats < 1:
        raise GcnnkitError(f"--repeats must be >= 1, got {repeats}")
    if not (min_time >= 0 and min_time < float("inf")):
        raise GcnnkitError(f"--min-time must be a finite number of seconds >= 0, got {min_time}")
    if any(b < 1 for b in batch_sizes) or not batch_sizes:
        raise GcnnkitError(f"--batch-sizes: every batch size must be >= 1, got {list(batch_sizes)}")
    if clock not in CLOCKS:
        raise GcnnkitError(f"--clock {clock!r} is not allowed; allowed: {', '.join(CLOCKS)}")
    if clock == "cpu" and dev.type == "cuda":
        raise GcnnkitError("--clock cpu measures CPU time and cannot time a CUDA device; use --clock wall")
    st = _Settings(
        dev, list(batch_sizes), repeats, per_layer, export, memory, warmup, min_time, build_repeats, seed, clock,
        log or (lambda _msg: None), channels_last, tuple(precisions),
    )  # fmt: skip
    report: dict[str, Any] = {
        "device": str(dev),
        "device_name": device_description(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {
            "batch_sizes": list(batch_sizes),
            "sizes": None if sizes is None else list(sizes),
            "repeats": repeats,
            "warmup": warmup,
            "min_time_s": min_time,
            "clock": "cuda events" if dev.type == "cuda" else clock,
            "per_layer": per_layer,
            "channels_last": channels_last,
            "precisions": list(precisions),
        },
        "memory_method": None,
        "results": [],
        "skipped": [],
    }
    if memory:
        report["memory_method"] = (
            "torch.cuda.max_memory_allocated above the allocation before the step"
            if dev.type == "cuda"
            else "peak bytes of tensors allocated during the step and alive (dispatch-mode count)"
        )
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for case in cases:
        case_sizes = list(sizes) if sizes else [case.image_size] if case.image_size else list(DEFAULT_SIZES)
        for size in case_sizes:
            if size is None or size < 1:
                raise GcnnkitError(f"{case.name}: no valid image size ({size}); give --sizes")
            report["results"].extend(_bench_case(case, size, st, report["skipped"]))
    return report


def _require_memory(case: BenchCase, size: int, st: _Settings) -> None:
    """Refuse a case whose training step on the largest batch would not fit (:mod:`gcnnkit.run.resources`)."""
    specs = model_specs(case.preset, case.layers, size, case.in_channels)
    widths = case.widths or (get_preset(case.preset).widths if case.preset else "fields")
    est = estimate(
        specs, get_group(case.group).order, case.in_channels, size, case.num_classes, widths, case.width_multiplier
    )
    check_memory(est, batch=max(st.batch_sizes), training=True, what=f"{case.name} at {size}×{size}")


@torch.no_grad()
def _require_runs(net: nn.Module, case: BenchCase, backend: str, size: int, batch: int) -> None:
    """A one-line error now, not a traceback mid-benchmark, when the model cannot take a
    ``[batch, C, size, size]`` input in training mode (a map pooled to nothing, batch norm on 1 value)."""
    x = torch.zeros(batch, case.in_channels, size, size)
    try:
        net.train()(x)
    except (RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise GcnnkitError(
            f"{case.name} on {backend} cannot run on [{batch}, {case.in_channels}, {size}, {size}] input in training "
            f"mode ({reason}); give larger --sizes or --batch-sizes"
        ) from None


def _bench_case(case: BenchCase, size: int, st: _Settings, skipped: list) -> list[dict[str, Any]]:
    backends, first_build = [], {}
    _require_memory(case, size, st)
    for backend in case.backends:
        try:
            t0 = time.perf_counter()
            net = case.build(backend, size)
            first_build[backend] = time.perf_counter() - t0
            _require_runs(net, case, backend, size, min(st.batch_sizes))
        except UnsupportedGroupError as exc:
            skipped.append({"model": case.name, "backend": backend, "image_size": size, "reason": str(exc)})
            st.log(f"skipped {case.name} on {backend}: {exc}")
            continue
        backends.append(backend)
    if not backends:
        return []
    torch.manual_seed(st.seed)
    builders: dict[str, Callable[[], Any]] = {b: (lambda b=b: case.build(b, size)) for b in backends}
    build_time, nets = _build_times(builders, st.build_repeats)
    nets = {b: net.to(st.device) for b, net in nets.items()}
    first = nets[backends[0]]
    t0 = time.perf_counter()
    floor = floor_model(first)
    build_time[FLOOR] = time.perf_counter() - t0
    _require_runs(floor, case, FLOOR, size, min(st.batch_sizes))
    plain = None
    if st.export:
        t0 = time.perf_counter()
        plain = export_model(first, image_size=size)
        build_time[EXPORT] = time.perf_counter() - t0
    if st.channels_last:
        for net in nets.values():
            net.set_channels_last()
        for plain_module in (floor, plain):
            if plain_module is not None:
                plain_module.to(memory_format=torch.channels_last)
    params = {b: net.num_parameters() for b, net in nets.items()}
    params[FLOOR] = sum(p.numel() for p in floor.parameters())
    results = []
    for batch in st.batch_sizes:
        st.log(f"{case.name} {case.group} {size}x{size} batch {batch}: floor, {', '.join(backends)}")
        gen = torch.Generator().manual_seed(st.seed)
        x = torch.randn(batch, case.in_channels, size, size, generator=gen).to(st.device)
        if st.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        contenders = []
        for precision in st.precisions:  # every contender in every precision, against the one fp32 floor
            tag = "" if precision == "fp32" else f"@{precision}"
            contenders.append(_Contender(FLOOR + tag, floor, x, precision=precision))
            contenders += [_Contender(b + tag, nets[b], x, precision=precision) for b in backends]
            if plain is not None:
                contenders.append(_Contender(EXPORT + tag, plain, x, modes=("eval",), precision=precision))
        entry: dict[str, Any] = {
            "model": case.name,
            "group": case.group,
            "image_size": size,
            "batch_size": batch,
            "backends": backends,
            "precisions": list(st.precisions),
            "export_of": backends[0] if plain is not None else None,
            "params": params,
            "build_time_s": build_time,
            "build_time_first_s": first_build,
            "time_s": {},
            "ratio_to_floor": {c.name: {} for c in contenders if c.name != FLOOR},
            "ratio_quartiles": {c.name: {} for c in contenders if c.name != FLOOR},
        }
        for mode in MODES:
            times, ratios, spread = _interleaved(contenders, mode, st)
            entry["time_s"][mode] = times
            for name, r in ratios.items():
                entry["ratio_to_floor"][name][mode] = r
                entry["ratio_quartiles"][name][mode] = spread[name]
        if st.memory:
            entry["peak_memory_bytes"] = _memory(contenders, st.device)
        if st.per_layer:
            entry["layers"] = _bench_layers(first, nets, backends, floor, x, st)
        results.append(entry)
    return results


def _memory(contenders: Sequence[_Contender], dev: torch.device) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for mode in MODES:
        out[mode] = {}
        for c in contenders:
            if mode not in c.modes:
                continue
            c.module.train(mode == "train")
            step = c.step(mode)
            step()  # caches (eval filter banks, cudnn plans) are built before measuring
            out[mode][c.name] = peak_memory(step, dev)
    return out


def _bench_layers(first, nets, backends, floor, x, st: _Settings) -> list[dict[str, Any]]:
    floor_layers = _layer_modules(floor, first)
    first.eval()
    inputs = []
    with torch.no_grad():
        h = x
        for layer in first.layers:
            inputs.append(h)
            h = layer(h)
    out = []
    for i, (name, _, t_in, t_out) in enumerate(first.typed_layers()):
        xi = inputs[i].detach().clone().requires_grad_(i > 0)
        with torch.no_grad():
            grad = torch.randn_like(first.layers[i](xi))
        flat_x = flatten_field(xi.detach(), t_in).clone().requires_grad_(i > 0)
        contenders = [_Contender(FLOOR, floor_layers[i], flat_x, grad=flatten_field(grad, t_out))]
        contenders += [_Contender(b, nets[b].layers[i], xi, grad=grad) for b in backends]
        trainable = i > 0 or any(p.requires_grad for c in contenders for p in c.module.parameters())
        entry: dict[str, Any] = {
            "name": name,
            "time_s": {},
            "ratio_to_floor": {b: {} for b in backends},
            "ratio_quartiles": {b: {} for b in backends},
        }
        for mode in MODES:
            if mode == "train" and not trainable:
                continue
            times, ratios, spread = _interleaved(contenders, mode, st)
            entry["time_s"][mode] = times
            for b, r in ratios.items():
                entry["ratio_to_floor"][b][mode] = r
                entry["ratio_quartiles"][b][mode] = spread[b]
        out.append(entry)
    for net in nets.values():
        net.eval()
    return out


# ------------------------------------------------------------------------------ output
def _ms(t: float | None) -> str:
    return "-" if t is None else f"{1000 * t:.2f}"


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}"


def _spread(entry: dict[str, Any], name: str, mode: str, digits: int = 3) -> str:
    """``"1.004 (0.991-1.012)"``: median ratio and the quartiles of the per-repetition ratios."""
    r = entry["ratio_to_floor"].get(name, {}).get(mode)
    q = entry.get("ratio_quartiles", {}).get(name, {}).get(mode)
    if r is None or not q:
        return _ratio(r)
    return f"{r:.3f} ({q[0]:.{digits}f}-{q[1]:.{digits}f})"


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def format_report(report: dict[str, Any], layers: bool = True) -> str:
    """The human-readable tables of a :func:`run_bench` report."""
    s = report["settings"]
    lines = [
        f"device {report['device']} ({report['device_name']}), torch {report['torch']}; medians of "
        f"{s['repeats']} interleaved repetitions ({s.get('clock', 'wall')} clock); x floor = median of the "
        "per-repetition time / floor time (quartiles in brackets); floor = plain nn.Conv2d stack, same shapes"
    ]
    for entry in report["results"]:
        lines.append("")
        lines.append(
            f"{entry['model']} on {entry['group']}, {entry['image_size']}x{entry['image_size']}, "
            f"batch {entry['batch_size']}"
        )
        base = [FLOOR, *entry["backends"]] + ([EXPORT] if entry.get("export_of") else [])
        names = [n + ("" if p == "fp32" else f"@{p}") for p in entry.get("precisions", ["fp32"]) for n in base]
        mem = entry.get("peak_memory_bytes") or {}
        header = ("", "eval ms", "x floor", "train ms", "x floor", "peak MiB eval", "peak MiB train", "build s")
        rows = []
        for n in names:
            kind, _, precision = n.partition("@")
            label = f"export ({entry['export_of']})" if kind == EXPORT else kind
            label += f" {precision}" if precision else ""
            rows.append(
                (
                    label,
                    _ms(entry["time_s"]["eval"].get(n)),
                    "1.000" if n == FLOOR else _spread(entry, n, "eval"),
                    _ms(entry["time_s"]["train"].get(n)),
                    "1.000" if n == FLOOR else _spread(entry, n, "train"),
                    _mib(mem.get("eval", {}).get(n)),
                    _mib(mem.get("train", {}).get(n)),
                    f"{entry['build_time_s'].get(kind, float('nan')):.3f}",
                )
            )
        lines += format_table([header, *rows], "<>")
        if layers and entry.get("layers"):
            lines.append("  per layer, x floor (eval / train):")
            lheader = ("  layer", *entry["backends"])
            lrows = []
            for layer in entry["layers"]:
                cells = []
                for b in entry["backends"]:
                    r = layer["ratio_to_floor"].get(b, {})
                    cells.append(f"{_ratio(r.get('eval'))} / {_ratio(r.get('train'))}")
                lrows.append((f"  {layer['name']}", *cells))
            lines += format_table([lheader, *lrows], "<>")
    for skip in report.get("skipped", []):
        lines.append(f"skipped {skip['model']} on {skip['backend']}: {skip['reason']}")
    return "\n".join(lines)


def summary_table(report: dict[str, Any]) -> str:
    """A Markdown table of the ratios to the floor, one row per model, size and batch size (the
    one in ``docs/benchmarks.md``): median (quartiles) per backend and mode, the export in eval
    mode, and each backend's peak memory of a train step relative to the floor's."""
    backends: list[str] = []
    for e in report["results"]:
        backends += [b for b in e["backends"] if b not in backends]
    has_export = any(e.get("export_of") for e in report["results"])
    header = ["model", "group", "size", "batch"]
    for b in backends:
        header += [f"{b} eval", f"{b} train"]
    header += ["export eval"] if has_export else []
    header += [f"{b} memory (train)" for b in backends]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in report["results"]:
        row = [e["model"], e["group"], str(e["image_size"]), str(e["batch_size"])]
        for b in backends:
            row += [_spread(e, b, "eval", 2), _spread(e, b, "train", 2)]
        if has_export:
            row.append(_spread(e, EXPORT, "eval", 2))
        mem = (e.get("peak_memory_bytes") or {}).get("train", {})
        for b in backends:
            m, f = mem.get(b), mem.get(FLOOR)
            row.append(f"{m / f:.2f}" if m is not None and f else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_int_list(text: str, what: str) -> list[int]:
    """``"1,64,256"`` → ``[1, 64, 256]``; a one-line error naming ``what`` otherwise."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GcnnkitError(f"{what}: expected comma-separated integers like 1,64,256, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise GcnnkitError(f"{what}: expected positive integers like 1,64,256, got {text!r}")
    return values
