"""Cross-validate two backends on one architecture (``gcnnkit compare``).

The config's model is built on both backends (same spec, group and input shape from the config's
data set; no data is loaded) and compared layer by layer and end to end:

* **shapes and parameters** of each layer on each backend;
* **equivariance** of each backend: the worst relative error ``max|f(g·x) − g·f(x)| / max|f(x)|``
  over the *exact* elements (multiples of 90°, reflections; on a standard-normal input, as
  ``gcnnkit check``), and separately over the *non-exact* elements when the group has any (e.g. the
  45° rotations of C8). Non-exact elements act by bilinear interpolation, so they are measured, as by
  ``gcnnkit check``, on smooth images (:func:`gcnnkit.core.equivariance.smooth_images`: standard-normal
  noise blurred by a Gaussian of σ = 1.5 pixels, inside the inscribed disc with a soft edge), so that
  the interpolation error of the input itself does not dominate; reported, not judged;
* **weight transfer** in both directions: the weights of one network (its batch-norm statistics,
  biases and affine parameters randomised first, so that they matter) are loaded into the other,
  then the relative difference of every layer's output (on the same input) and of the logits is
  reported. Transfers go through the *transfer format* of :mod:`gcnnkit.core.backend` (the tied
  state dict of a layer), with the backends' ``export_weights`` / ``import_weights``;
* **speed**: forward (eval mode, no autograd) and forward + backward (train mode) of each backend,
  repetitions interleaved (:mod:`gcnnkit.tools.timing`), medians; the ratio is the median of
  per-repetition ratios.

Backends. Without ``--backends`` the two installed backends are compared, the one that keeps its
weights in the transfer format first (:func:`gcnnkit.core.registry.loadable_backends`).

Verdict: the report fails when an exact-element equivariance error, or the error of a transfer that
is exact by construction, exceeds the tolerance. A transfer is exact by construction when the group
permutes pixels exactly and every layer's projection residual is ≤ 1e-6 (escnn → native always;
native → escnn with ``basis: complete``). Lossy projections and non-exact elements are reported,
not judged.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gcnnkit.core.backend import Backend
from gcnnkit.core.equivariance import DEFAULT_TOLERANCE, check_network, relative_error
from gcnnkit.core.errors import ConfigError
from gcnnkit.core.group import Group
from gcnnkit.core.registry import get_backend, loadable_backends, require_plugins
from gcnnkit.core.residual import transfer_layer_weights
from gcnnkit.models.network import EquivariantNet
from gcnnkit.run.config import Config, load_config
from gcnnkit.run.data import dataset_info
from gcnnkit.run.rundir import build_model_from_config
from gcnnkit.tools import timing
from gcnnkit.tools.table import format_table
from gcnnkit.tools.timing import CLOCKS

#: A transfer whose projection residuals are all at most this is exact by construction.
EXACT_RESIDUAL = 1e-6
DEFAULT_BATCH = 4
DEFAULT_TIMING_BATCH = 32
DEFAULT_REPEATS = 5
END_TO_END = "end-to-end"


# ----------------------------------------------------------------------------- report
@dataclass
class LayerStats:
    """One layer (or the whole network) on one backend."""

    output_shape: list[int]
    params: int
    equivariance_exact: float
    equivariance_nonexact: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_shape": self.output_shape,
            "params": self.params,
            "equivariance_exact": self.equivariance_exact,
            "equivariance_nonexact": self.equivariance_nonexact,
        }


@dataclass
class LayerComparison:
    """One layer on both backends: stats per backend, transfer errors and residuals per direction."""

    name: str
    in_type: str
    out_type: str
    backends: dict[str, LayerStats]
    transfer: dict[str, float] = field(default_factory=dict)
    residual: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_type": self.in_type,
            "out_type": self.out_type,
            "backends": {name: stats.to_dict() for name, stats in self.backends.items()},
            "transfer": dict(self.transfer),
            "projection_residual": dict(self.residual),
        }


@dataclass
class CompareReport:
    """Everything ``gcnnkit compare`` prints (see the module docstring); :meth:`to_dict` is ``--json``."""

    config: str | None
    group: str
    backends: list[str]
    backend_options: dict[str, dict]
    input_shape: tuple[int, int, int]
    tolerance: float
    exact_elements: list[str]
    nonexact_elements: list[str]
    layers: list[LayerComparison]
    exact_transfers: list[str]
    timing: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def end_to_end(self) -> LayerComparison:
        return self.layers[-1]

    def direction(self, source: str, target: str) -> str:
        return f"{source}->{target}"

    @property
    def transfer_max_rel_error(self) -> float:
        """End-to-end relative output difference after loading the second backend's weights into the first
        (escnn → native for ``--backends native,escnn``)."""
        a, b = self.backends
        return self.end_to_end.transfer[self.direction(b, a)]

    def to_dict(self) -> dict[str, Any]:
        e2e = self.end_to_end
        return {
            "config": self.config,
            "group": self.group,
            "backends": list(self.backends),
            "backend_options": self.backend_options,
            "input_shape": list(self.input_shape),
            "tolerance": self.tolerance,
            "exact_elements": self.exact_elements,
            "nonexact_elements": self.nonexact_elements,
            "params": {name: stats.params for name, stats in e2e.backends.items()},
            "equivariance_exact": {
                name: max(layer.backends[name].equivariance_exact for layer in self.layers) for name in self.backends
            },
            "equivariance_nonexact": (
                {
                    name: max(layer.backends[name].equivariance_nonexact or 0.0 for layer in self.layers)
                    for name in self.backends
                }
                if self.nonexact_elements
                else None
            ),
            "transfer": dict(e2e.transfer),
            "transfer_max_rel_error": self.transfer_max_rel_error,
            "exact_transfers": self.exact_transfers,
            "timing": self.timing,
            "layers": [layer.to_dict() for layer in self.layers],
            "failures": list(self.failures),
            "passed": self.passed,
        }


# ----------------------------------------------------------------------------- transfer
def transfer_weights(
    source_backend: Backend, source: EquivariantNet, target_backend: Backend, target: EquivariantNet
) -> list[float]:
    """Copy every layer's weights from ``source`` into ``target`` (same spec); residual per layer
    (a residual block's parts one by one, its worst residual)."""
    if len(source.layers) != len(target.layers):
        raise ConfigError(
            f"the networks have {len(source.layers)} and {len(target.layers)} layers; build the same spec"
        )
    return [
        transfer_layer_weights(source_backend, src, target_backend, dst)
        for src, dst in zip(source.layers, target.layers, strict=True)
    ]


@torch.no_grad()
def randomise_statistics(net: nn.Module, seed: int) -> None:
    """Random batch-norm affine parameters and running statistics, and random biases, so that a
    transfer that forgot them shows (fresh ones are 1, 0 and 0)."""
    gen = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) * (high - low) + low)

    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.affine:
                fill(module.weight, 0.5, 1.5)
                fill(module.bias, -0.2, 0.2)
            if module.track_running_stats:
                fill(module.running_mean, -0.2, 0.2)
                fill(module.running_var, 0.5, 1.5)
        else:
            for name, param in module.named_parameters(recurse=False):
                if name == "bias" and param is not None:
                    fill(param, -0.2, 0.2)


# ----------------------------------------------------------------------------- comparison
@torch.no_grad()
def _outputs(net: EquivariantNet, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for layer in net.layers:
        x = layer(x)
        outs.append(x)
    return outs


@torch.no_grad()
def _transfer_errors(source: EquivariantNet, target: EquivariantNet, x0: torch.Tensor) -> list[float]:
    """Relative difference of each target layer's output from the source layer's, on the source's
    activations, then end to end."""
    errors = []
    x = x0
    for src, dst in zip(source.layers, target.layers, strict=True):
        expected = src(x)
        errors.append(relative_error(dst(x), expected))
        x = expected
    errors.append(relative_error(target(x0), source(x0)))
    return errors


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _time_backends(
    nets: Mapping[str, EquivariantNet], x: torch.Tensor, repeats: int, clock: str = "wall"
) -> dict[str, Any]:
    """Interleaved forward / forward+backward timings (ms, medians) and ratios second/first."""

    def forward(net: EquivariantNet) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                net(x)

        return run

    def forward_backward(net: EquivariantNet) -> Callable[[], Any]:
        def run() -> None:
            net.zero_grad(set_to_none=True)
            net(x).float().sum().backward()

        return run

    a, b = names = list(nets)
    result: dict[str, Any] = {
        "batch": int(x.shape[0]),
        "repeats": repeats,
        "clock": clock,
        "threads": torch.get_num_threads(),
        **{name: {} for name in names},
    }
    try:
        for mode, make, training in (("forward", forward, False), ("forward_backward", forward_backward, True)):
            for name in names:
                nets[name].train(training)  # once per mode: switching modes may drop cached filters
            samples = timing.interleaved({n: make(nets[n]) for n in names}, x.device, repeats, warmup=1, clock=clock)
            for name, seconds in timing.medians(samples).items():
                result[name][f"{mode}_ms"] = 1e3 * seconds
            result[f"{mode}_ratio"] = statistics.median(timing.ratios(samples, a)[b])
    finally:
        for net in nets.values():
            net.eval()
            net.zero_grad(set_to_none=True)
    result["ratio"] = f"{b} / {a}"
    return result


def compare_networks(
    nets: Mapping[str, EquivariantNet],
    backends: Mapping[str, Backend],
    image_shape: Sequence[int],
    *,
    batch: int = DEFAULT_BATCH,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    timing_batch: int = DEFAULT_TIMING_BATCH,
    repeats: int = DEFAULT_REPEATS,
    clock: str = "wall",
    config: str | None = None,
    backend_options: Mapping[str, dict] | None = None,
) -> CompareReport:
    """Compare two networks built from the same spec on two backends (see the module docstring).

    The networks are put in eval mode; their batch-norm statistics and biases are randomised.
    """
    if clock not in CLOCKS:
        raise ConfigError(f"clock: {clock!r} is not allowed; allowed: {', '.join(CLOCKS)}")
    names = list(nets)
    if len(names) != 2:
        raise ConfigError(f"compare needs exactly two backends, got {len(names)}: {', '.join(names)}")
    a, b = names
    net_a, net_b = nets[a], nets[b]
    if net_a.layer_names() != net_b.layer_names():
        raise ConfigError(f"the networks differ: {net_a.layer_names()} vs {net_b.layer_names()}")
    group: Group = net_a.group
    c, h, w = image_shape
    for i, name in enumerate(names):
        randomise_statistics(nets[name], seed + 1 + i)
        nets[name].eval()
    exact = [g for g in range(group.order) if group.is_exact(g)]
    nonexact = [g for g in range(group.order) if not group.is_exact(g)]

    # equivariance and shapes, per backend
    stats: dict[str, list[LayerStats]] = {}
    x_rand = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))
    for name in names:
        net = nets[name]
        exact_results = check_network(net, (c, h, w), batch=batch, seed=seed, elements=exact)
        if nonexact:  # interpolated elements, on smooth images (as `gcnnkit check`)
            smooth = check_network(net, (c, h, w), batch=batch, seed=seed, elements=nonexact, smooth=True)
            nonexact_results = [r.max_error for r in smooth]
        else:
            nonexact_results = [None] * len(exact_results)
        shapes = [list(t.shape) for t in _outputs(net, x_rand)]
        shapes.append(shapes[-1])
        layer_params = [_params(layer) for layer in net.layers] + [_params(net)]
        stats[name] = [
            LayerStats(shape, params, res.max_error, ne)
            for shape, params, res, ne in zip(shapes, layer_params, exact_results, nonexact_results, strict=True)
        ]

    # weight transfer in both directions
    transfers: dict[str, list[float]] = {}
    residuals: dict[str, list[float]] = {}
    for source, target in ((a, b), (b, a)):
        direction = f"{source}->{target}"
        receiver = copy.deepcopy(nets[target]).eval()
        residuals[direction] = transfer_weights(backends[source], nets[source], backends[target], receiver)
        transfers[direction] = _transfer_errors(nets[source], receiver, x_rand)

    layer_names = net_a.layer_names() + [END_TO_END]
    types = list(zip(net_a.in_types, net_a.out_types, strict=True)) + [(net_a.in_type, net_a.out_type)]
    layers = []
    for i, lname in enumerate(layer_names):
        residual = (
            {d: r[i] for d, r in residuals.items()}
            if i < len(net_a.layers)
            else {d: max(r, default=0.0) for d, r in residuals.items()}
        )
        layers.append(
            LayerComparison(
                lname,
                str(types[i][0]),
                str(types[i][1]),
                {name: stats[name][i] for name in names},
                {d: t[i] for d, t in transfers.items()},
                residual,
            )
        )

    exact_transfers = [d for d, r in residuals.items() if max(r, default=0.0) <= EXACT_RESIDUAL] if group.exact else []
    failures = []
    for layer in layers:
        for name in names:
            err = layer.backends[name].equivariance_exact
            if not err <= tolerance:
                failures.append(f"{name} {layer.name}: exact-element equivariance error {err:.2e} > {tolerance:g}")
        for direction in exact_transfers:
            err = layer.transfer[direction]
            if not err <= tolerance:
                failures.append(f"transfer {direction} {layer.name}: relative difference {err:.2e} > {tolerance:g}")

    timing = _time_backends(
        nets, torch.randn(timing_batch, c, h, w, generator=torch.Generator().manual_seed(seed + 7)), repeats, clock
    )
    return CompareReport(
        config=config,
        group=group.name,
        backends=names,
        backend_options={name: dict((backend_options or {}).get(name, {})) for name in names},
        input_shape=(c, h, w),
        tolerance=tolerance,
        exact_elements=[group.element_names[g] for g in exact],
        nonexact_elements=[group.element_names[g] for g in nonexact],
        layers=layers,
        exact_transfers=exact_transfers,
        timing=timing,
        failures=failures,
    )


def parse_backends(text: str) -> list[str]:
    """``"native,escnn"`` → ``["native", "escnn"]``; exactly two distinct names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) != 2 or names[0] == names[1]:
        raise ConfigError(f"--backends: expected two different backends like native,escnn, got {text!r}")
    return names


def compare_config(
    config,
    backends: Sequence[str] | None = None,
    *,
    batch: int = DEFAULT_BATCH,
    tolerance: float = DEFAULT_TOLERANCE,
    timing_batch: int = DEFAULT_TIMING_BATCH,
    repeats: int = DEFAULT_REPEATS,
    clock: str = "wall",
) -> CompareReport:
    """Build ``config``'s model on both ``backends`` and compare them (:func:`compare_networks`).

    ``config`` is a :class:`~gcnnkit.run.config.Config` or a path; ``backends`` default to the two
    installed ones (:func:`~gcnnkit.core.registry.loadable_backends`). ``model.backend_options`` go to
    the config's own backend; the other backend gets none. The input shape and class count come from
    the data set's metadata (nothing is loaded). Weights are initialised from the config's seed.
    """
    config = config if isinstance(config, Config) else load_config(config)
    if backends is None:
        backends = loadable_backends()
        if len(backends) != 2:
            raise ConfigError(
                f"--backends: {len(backends)} backends are installed ({', '.join(backends) or 'none'}); "
                f"name the two to compare, e.g. --backends {','.join(backends[:2]) or 'native,escnn'}"
            )
    if len(backends) != 2 or backends[0] == backends[1]:
        raise ConfigError(f"--backends: expected two different backends, got {', '.join(backends)}")
    require_plugins(config.required_plugins)
    info = dataset_info(config.data)
    m = config.model
    options = {name: dict(m.backend_options) if name == m.backend else {} for name in backends}
    nets, backend_objs = {}, {}
    for name in backends:
        backend_objs[name] = get_backend(name).with_options(**options[name])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            nets[name] = build_model_from_config(config, info, backend=name, backend_options=options[name])
    source = str(config.source) if config.source is not None else None
    with torch.random.fork_rng(devices=[]):
        return compare_networks(
            nets,
            backend_objs,
            info.image_shape,
            batch=batch,
            seed=config.seed,
            tolerance=tolerance,
            timing_batch=timing_batch,
            repeats=repeats,
            clock=clock,
            config=source,
            backend_options=options,
        )


# ----------------------------------------------------------------------------- output
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def format_report(report: CompareReport) -> list[str]:
    """The table ``gcnnkit compare`` prints."""
    a, b = report.backends
    c, h, w = report.input_shape
    opts = "; ".join(
        f"{name}: " + ", ".join(f"{k}={v}" for k, v in o.items()) for name, o in report.backend_options.items() if o
    )
    lines = [
        f"{report.group}: {a} vs {b}{f' ({opts})' if opts else ''}, input [B, {c}, {h}, {w}], "
        f"tolerance {report.tolerance:g}"
    ]
    ab, ba = f"{a}->{b}", f"{b}->{a}"
    nonexact = report.nonexact_elements
    header = ["layer", "types", "output shape", f"params {a}/{b}", f"equiv exact {a}/{b}"]
    if nonexact:
        header.append(f"equiv non-exact {a}/{b}")
    header += [f"transfer {ba}", f"transfer {ab}", f"residual {ab}"]
    rows = []
    for layer in report.layers:
        sa, sb = layer.backends[a], layer.backends[b]
        shape = str(sa.output_shape) if sa.output_shape == sb.output_shape else f"{sa.output_shape}/{sb.output_shape}"
        row = [
            layer.name,
            f"{layer.in_type} -> {layer.out_type}",
            shape.replace(" ", ""),
            f"{sa.params}/{sb.params}",
            f"{_fmt(sa.equivariance_exact)}/{_fmt(sb.equivariance_exact)}",
        ]
        if nonexact:
            row.append(f"{_fmt(sa.equivariance_nonexact)}/{_fmt(sb.equivariance_nonexact)}")
        row += [_fmt(layer.transfer[ba]), _fmt(layer.transfer[ab]), _fmt(layer.residual[ab])]
        rows.append(row)
    lines += format_table([header, *rows])
    if nonexact:
        lines.append(f"non-exact elements: {', '.join(nonexact)} (interpolated, on smooth images; not judged)")
    t = report.timing
    lines.append(
        f"time {b}/{a} (batch {t['batch']}, {t['clock']} clock, median of {t['repeats']}): "
        f"forward {t['forward_ratio']:.2f}x "
        f"({b} {t[b]['forward_ms']:.1f} ms, {a} {t[a]['forward_ms']:.1f} ms), forward+backward "
        f"{t['forward_backward_ratio']:.2f}x "
        f"({b} {t[b]['forward_backward_ms']:.1f} ms, {a} {t[a]['forward_backward_ms']:.1f} ms)"
    )
    exact = ", ".join(report.exact_transfers) or "none"
    lines.append(f"transfers exact by construction (judged): {exact}")
    if report.passed:
        lines.append(
            f"ok: exact-element equivariance and exact transfers within {report.tolerance:g}; "
            f"transfer_max_rel_error ({ba}, end to end) {report.transfer_max_rel_error:.2e}"
        )
    else:
        lines.append(f"FAILED ({len(report.failures)}): {report.failures[0]}")
        lines.extend(f"  {f}" for f in report.failures[1:])
    return lines


def plot_report(report: CompareReport, path) -> None:
    """A PNG bar chart of the equivariance error per layer and backend (exact elements; non-exact
    in a second panel when the group has any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("equivariance_exact", f"exact elements ({', '.join(report.exact_elements)})")]
    if report.nonexact_elements:
        panels.append(("equivariance_nonexact", f"non-exact elements ({', '.join(report.nonexact_elements)})"))
    names = [layer.name for layer in report.layers]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.55 * len(names)), 3.6 * len(panels)), squeeze=False)
    width = 0.8 / len(report.backends)
    floor = 1e-12
    for ax, (key, title) in zip(axes[:, 0], panels, strict=True):
        for j, backend in enumerate(report.backends):
            values = [max(getattr(layer.backends[backend], key) or 0.0, floor) for layer in report.layers]
            ax.bar(
                [i + (j - (len(report.backends) - 1) / 2) * width for i in range(len(names))],
                values,
                width,
                label=backend,
            )
        if key == "equivariance_exact":
            ax.axhline(
                report.tolerance, color="k", linestyle="--", linewidth=0.8, label=f"tolerance {report.tolerance:g}"
            )
        ax.set_yscale("log")
        ax.set_ylabel("max relative error")
        ax.set_title(f"{report.group}: equivariance error per layer, {title}")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
