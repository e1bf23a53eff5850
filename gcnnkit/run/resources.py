"""Resource estimates: refuse a model that cannot fit in memory or a check that would take hours,
before anything is built.

:func:`estimate` walks the layer spec from the image size (no tensors are made) and counts, for a
group-convolution network on the regular representation (an upper bound for every backend):

* parameters: ``F_out·C_in·k²`` for a lift, ``F_out·F_in·|G|·k²`` for a group convolution, plus
  biases, batch-norm and linear parameters (exactly the native backend's count for regular
  fields; steerable fields ``{representation: count}`` are counted as regular ones, an upper bound);
* filter banks: the expanded ``[F_out·|G|, C_in(·|G|), k, k]`` kernels a convolution builds;
* activations: every layer's output for one image, ``channels·H·W``;
* forward FLOPs per image, ``2·C_out·C_in·k²·H_out·W_out`` per convolution plus building its bank.

:func:`check_memory` compares the memory of training (weights, gradients, two Adam moments,
banks and their gradients, three copies of one batch's activations) or of inference with
``GCNNKIT_MAX_MEMORY_GB``; :func:`check_time` compares the time ``gcnnkit check`` needs
(``|G| + 1`` forward passes per layer and end to end) with ``GCNNKIT_MAX_CHECK_SECONDS``.
Each refusal is one line naming the estimate, the limit and how to raise it
(:mod:`gcnnkit.core.limits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

from gcnnkit.core.errors import ConfigError
from gcnnkit.core.limits import CHECK_SECONDS_ENV, MEMORY_ENV, max_check_seconds, max_memory_gb
from gcnnkit.models.grid import Window, map_sizes
from gcnnkit.models.network import field_count, scaled_counts
from gcnnkit.models.presets import get_preset
from gcnnkit.models.spec import LayerSpec, parse_layers
from gcnnkit.run.config import Config
from gcnnkit.run.data import DatasetInfo

BYTES_PER_VALUE = 4  # float32
#: Time model of ``gcnnkit check`` per group element: a fixed cost per layer (acting on the layer's
#: input and output, building its filter bank) plus the convolutions at this rate. Fitted to
#: ``gcnnkit check configs/digits_c4.yaml --set model.group=C16`` / ``C64`` (22 s / 121 s, native
#: backend, 2 shared CPU cores, load 3.5): the estimate is 23 s / 123 s.
CHECK_SECONDS_PER_LAYER = 0.07
CHECK_FLOPS_PER_SECOND = 4e9


@dataclass(frozen=True)
class Estimate:
    """Counts for one network (values, not bytes); ``activations`` and ``flops`` per image."""

    parameters: int
    filter_banks: int
    activations: int
    flops: int
    group_order: int
    layers: int

    def memory_bytes(self, batch: int, training: bool) -> int:
        """Bytes to train (or, ``training=False``, to run) on a batch of ``batch`` images."""
        if training:
            values = 4 * self.parameters + 2 * self.filter_banks + 3 * batch * self.activations
        else:
            values = self.parameters + self.filter_banks + 2 * batch * self.activations
        return values * BYTES_PER_VALUE

    def check_seconds(self, batch: int = 2) -> float:
        """Estimated time of ``gcnnkit check``: ``|G| + 1`` passes per layer and end to end."""
        per_element = self.layers * CHECK_SECONDS_PER_LAYER + 2 * batch * self.flops / CHECK_FLOPS_PER_SECOND
        return (self.group_order + 1) * per_element


def model_specs(preset: str | None, layers: list | None, image_size: int, in_channels: int) -> list[LayerSpec]:
    """The validated layers a preset (or a layer list) builds for ``[in_channels, image_size, image_size]`` images."""
    if preset is not None:
        return parse_layers(get_preset(preset).layers(image_size, in_channels), where=f"preset {preset}")
    return parse_layers(layers)


def estimate(
    specs: list[LayerSpec],
    group_order: int,
    in_channels: int,
    image_size: int,
    num_classes: int,
    widths: str,
    width_multiplier: float = 1.0,
) -> Estimate:
    """Walk ``specs`` from a ``[in_channels, image_size, image_size]`` image (see the module docstring)."""
    group = SimpleNamespace(order=group_order)  # all field_count needs
    total = {"params": 0, "banks": 0, "acts": 0, "flops": 0}

    def walk(specs: list[LayerSpec], size: int, fields: int, kind: str) -> tuple[int, int, str]:
        for spec, size_in in zip(specs, map_sizes(specs, size), strict=True):
            p = spec.params
            if spec.type == "residual":  # the body, then the sum with the shortcut (a projection is small)
                size, fields, kind = walk(parse_layers(p["layers"]), size_in, fields, kind)
                total["acts"] += fields * (group_order if kind == "group" else 1) * size * size
                continue
            window = Window.of(spec)
            size = max(window.output_size(size_in), 0) if window is not None else size_in
            if spec.type in ("lift", "gconv"):
                out = p["out"]
                if out == "classes":
                    out_fields = num_classes
                elif isinstance(out, Mapping):  # {representation: fields}: each field has at most |G| values
                    out_fields = sum(scaled_counts(out, width_multiplier).values())
                else:
                    out_fields = field_count(out, group, widths, width_multiplier)
                k2 = p["kernel"] ** 2
                in_values = fields if kind == "image" else fields * group_order
                bank = out_fields * group_order * in_values * k2
                total["params"] += out_fields * in_values * k2 + (out_fields if p["bias"] else 0)
                total["banks"] += bank
                total["flops"] += 2 * bank * size * size + 2 * bank * k2
                fields, kind = out_fields, "group"
            elif spec.type == "group_pool":
                kind = "image"
            elif spec.type == "global_pool":
                kind = "vector"
            elif spec.type == "orbit_pool":
                fields, kind = fields * size * size, "vector"
            elif spec.type == "linear":
                out = num_classes if p["out"] == "classes" else p["out"]
                total["params"] += fields * out + (out if p["bias"] else 0)
                total["flops"] += 2 * fields * out
                fields = out
            elif spec.type in ("batchnorm", "layernorm"):
                total["params"] += 2 * fields
            values = fields * (group_order if kind == "group" else 1) * (size * size if kind != "vector" else 1)
            total["acts"] += values
            total["flops"] += values
        return size, fields, kind

    walk(list(specs), image_size, in_channels, "image")
    params, banks, acts, flops = total["params"], total["banks"], total["acts"], total["flops"]
    return Estimate(params, banks, acts, flops, group_order, len(specs))


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.3g} GB"


def check_memory(est: Estimate, *, batch: int, training: bool, what: str) -> None:
    """Refuse, in one line, a model whose estimated memory exceeds ``GCNNKIT_MAX_MEMORY_GB``."""
    need = est.memory_bytes(batch, training)
    limit = max_memory_gb()
    if need <= limit * 1e9:
        return
    parts = (
        f"{est.parameters:.3g} parameters, {est.filter_banks:.3g} filter-bank values, "
        f"{est.activations:.3g} activation values per image × batch {batch}"
    )
    raise ConfigError(
        f"model: {what} needs about {_gb(need)} ({parts}), more than the limit of {limit:g} GB; shrink the "
        f"layers, data.image_size or the batch size, or set {MEMORY_ENV}={need / 1e9 * 1.2:.3g} to try anyway"
    )


def check_time(est: Estimate, *, batch: int = 2) -> None:
    """Refuse, in one line, a ``gcnnkit check`` estimated to run longer than ``GCNNKIT_MAX_CHECK_SECONDS``."""
    seconds = est.check_seconds(batch)
    limit = max_check_seconds()
    if seconds <= limit:
        return
    raise ConfigError(
        f"check: measuring {est.group_order} group elements on this model takes about {seconds:.3g} s "
        f"({est.flops * batch:.3g} FLOPs per pass of {est.layers} layers, {est.group_order + 1} passes per layer "
        f"and end to end), "
        f"more than the limit of {limit:g} s; use a smaller group or model, "
        f"or set {CHECK_SECONDS_ENV}={seconds * 1.2:.3g}"
    )


def config_estimate(config: Config, info: DatasetInfo, group_order: int) -> Estimate:
    """:func:`estimate` for ``config.model`` on ``info``'s images."""
    m = config.model
    specs = model_specs(m.preset, m.layers, info.image_size, info.in_channels)
    return estimate(
        specs,
        group_order,
        info.in_channels,
        info.image_size,
        info.num_classes,
        m.widths or "fields",
        m.width_multiplier,
    )


#: what :func:`check_model_resources` judges: training on ``train.batch_size`` images, inference on
#: ``eval.batch_size``, or ``gcnnkit check`` (batch 2, also its time)
PURPOSES = ("train", "eval", "check")


def check_model_resources(config: Config, info: DatasetInfo, group_order: int, purpose: str = "train") -> Estimate:
    """Refuse ``config.model`` before it is built when it would not fit (or ``check`` would not finish)."""
    est = config_estimate(config, info, group_order)
    if purpose == "train":
        check_memory(est, batch=config.train.batch_size, training=True, what="training")
    elif purpose == "eval":
        check_memory(est, batch=config.eval.batch_size, training=False, what="evaluation")
    else:
        check_memory(est, batch=2, training=False, what="the equivariance check")
        check_time(est)
    return est
