"""The run directory: what a training run writes, and how a run is read back.

A run directory holds::

    config.yaml      the fully resolved config (Config.to_dict())
    metrics.jsonl    one JSON object per completed epoch (see gcnnkit.run.training), rewritten
                     atomically from the checkpoint's history (gcnnkit.run.metrics)
    checkpoint.pt    the state after the last completed epoch (written atomically; state
                     dicts and plain values only, so it loads with weights_only=True)
    best.pt          the selected epoch's weights (train.select: val_acc or val_loss only)
    metrics.csv      the rows of metrics.jsonl as CSV (gcnnkit.run.logs)
    summary.json     written when the run finishes (RunSummary)
    run.lock         locked by the process training in it (gcnnkit.run.lock)

This module owns those names, atomic writes, checkpoints, the model a config describes
(:func:`build_model_from_config`), the device a config or option names (:func:`resolve_device`)
and :func:`load_run`, which rebuilds a trained model for ``gcnnkit eval`` and ``gcnnkit export``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from gcnnkit.core.errors import ConfigError, GcnnkitError, SpecError
from gcnnkit.core.modes import eval_mode
from gcnnkit.core.registry import get_group, require_plugins
from gcnnkit.models.network import EquivariantNet, build_model
from gcnnkit.run.config import Config
from gcnnkit.run.data import DatasetInfo, Split, dataset_info, load_dataset
from gcnnkit.run.divergence import first_nonfinite
from gcnnkit.run.resources import check_model_resources

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
BEST_FILE = "best.pt"
CHECKPOINT_FORMAT = 1

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


# ------------------------------------------------------------------------------ devices
def resolve_device(spec: str, *, option: str = "device", local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` that ``spec`` names, or a one-line :class:`ConfigError` naming ``option``.

    ``auto`` (where ``option`` is a config key) is CUDA when there is a device, else the CPU.
    Under ``torchrun`` (``local_rank`` given) every process uses ``cuda:LOCAL_RANK`` for ``cuda``
    and ``auto``; a config naming one GPU (``cuda:1``) is refused, since every process would use it.
    CUDA devices that are not there are refused, never replaced by the CPU.
    """
    label = f"{option}:" if not option.startswith("--") else option
    allowed = "cpu, cuda, cuda:N" if option.startswith("--") else "auto, cpu, cuda, cuda:N"
    name = spec.strip().lower()
    if name == "auto" and not option.startswith("--"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not _DEVICE.fullmatch(name):
        raise ConfigError(f"{label} {spec!r} is not allowed; allowed: {allowed}")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        built = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        raise ConfigError(
            f"{label} {spec!r} is not available (no CUDA device found; torch {torch.__version__}, {built}); "
            f"use {'--device ' if option.startswith('--') else 'auto or '}cpu"
        )
    count = torch.cuda.device_count()
    if local_rank is not None:
        if device.index is not None:
            raise ConfigError(
                f"{label} {spec!r} names one GPU, but under torchrun process LOCAL_RANK uses cuda:LOCAL_RANK; "
                f"set device: cuda or auto"
            )
        if local_rank >= count:
            raise ConfigError(
                f"LOCAL_RANK {local_rank} has no GPU: this machine has {count} CUDA devices; "
                f"start at most that many processes per node (--nproc_per_node)"
            )
        return torch.device("cuda", local_rank)
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{label} {spec!r} does not exist; this machine has {count} CUDA devices")
    return device


# ------------------------------------------------------------------------------- models
def build_model_from_config(
    config: Config,
    info: DatasetInfo | None = None,
    *,
    backend: str | None = None,
    backend_options: dict | None = None,
    purpose: str = "train",
) -> EquivariantNet:
    """Build ``config.model`` for the input shape and class count of ``config.data``.

    Checks ``config.required_plugins`` first (:class:`~gcnnkit.core.errors.PluginError` names a
    missing one). ``info`` (from :func:`gcnnkit.run.data.dataset_info`) is looked up when not given.
    ``backend`` (with its ``backend_options``) builds the same spec on another backend than the
    config's (``gcnnkit compare``). Weights are initialised from the global torch RNG: seed it first
    for reproducible weights. Before building, the memory (and for ``purpose="check"`` the time) the
    model needs is estimated and refused beyond the limits (:mod:`gcnnkit.run.resources`).
    """
    require_plugins(config.required_plugins)
    info = info or dataset_info(config.data)
    m = config.model
    check_model_resources(config, info, get_group(m.group).order, purpose)
    if backend is None:
        backend, backend_options = m.backend, m.backend_options
    model = build_model(
        backend,
        m.group,
        in_channels=info.in_channels,
        image_size=info.image_size,
        num_classes=info.num_classes,
        preset=m.preset,
        layers=m.layers,
        widths=m.widths,
        backend_options=backend_options,
        allow_non_equivariant=m.allow_non_equivariant,
        width_multiplier=m.width_multiplier,
    )
    _probe(model, info)
    return model


@torch.no_grad()
def _probe(model: EquivariantNet, info: DatasetInfo) -> None:
    """Run a zero batch ``[2, C, H, W]`` through ``model`` (eval mode) so that a spec that does not fit
    the images (a kernel larger than the feature map, pooling to nothing, the wrong number of
    outputs) is a one-line :class:`SpecError` now, not a traceback in the first training step."""
    c, h, w = info.image_shape
    with eval_mode(model):
        try:
            out = model(torch.zeros(2, c, h, w))
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())[:300]
            raise SpecError(
                f"model: the network cannot run on {info.name} images [B, {c}, {h}, {w}]: {reason}"
            ) from None
    if tuple(out.shape) != (2, info.num_classes):
        raise SpecError(
            f"model: the network outputs {list(out.shape[1:])} per image, but {info.name} needs "
            f"{info.num_classes} class scores; end the layers with {{type: linear, out: classes}}"
        )


# -------------------------------------------------------------------------- files
def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: ``<path>.tmp`` in the same folder, fsync, ``os.replace``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: ``<path>.tmp`` in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


#: What every checkpoint holds (resuming needs more: optimizer, scheduler, rng, elapsed_s).
_CHECKPOINT_KEYS = {"epoch": int, "model": dict, "config": dict}
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER = re.compile(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    A file that would need arbitrary objects unpickled (a malicious or foreign pickle) is refused
    without running any of it; a file missing a checkpoint's entries is refused by name.
    """
    path = Path(path)
    if not path.is_file():
        raise GcnnkitError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on an unusual pickle protocol: one line only
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused it; torch's advice to bypass that is not ours
        found = _GLOBAL.search(str(exc))
        if found:
            raise GcnnkitError(
                f"{path}: holds objects other than tensors and plain values (it names {found.group(1)}), "
                f"so it is not a gcnnkit checkpoint and will not be loaded"
            ) from None
        stop = _UNPICKLER.search(" ".join(str(exc).split()))
        where = f" (the safe unpickler stopped at: {stop.group(1)})" if stop else ""
        raise GcnnkitError(
            f"{path}: not a readable gcnnkit checkpoint{where}; it is not a file of tensors and plain values "
            f"and will not be loaded"
        ) from None
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise GcnnkitError(f"{path}: not a readable gcnnkit checkpoint ({type(exc).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise GcnnkitError(f"{path}: not a gcnnkit checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def check_checkpoint(state: dict[str, Any], path: Path) -> None:
    """A one-line :class:`GcnnkitError` when ``state`` lacks an entry a run's checkpoint always has."""
    for key, kind in _CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind):
            problem = "has no" if key not in state else f"has a {type(state[key]).__name__} as its"
            raise GcnnkitError(f"{path}: an incomplete gcnnkit checkpoint: it {problem} {key!r} entry")


def checkpoint_error(path: Path, what: str, exc: BaseException) -> GcnnkitError:
    """A one-line error about the checkpoint at ``path``: ``what`` went wrong, and why (``exc``)."""
    reason = " ".join(str(exc).split())[:200]
    return GcnnkitError(f"{path}: {what} ({type(exc).__name__}: {reason})")


def load_weights(model: torch.nn.Module, checkpoint: dict[str, Any], path: Path) -> None:
    """Load ``checkpoint["model"]`` into ``model``, or a one-line :class:`GcnnkitError` naming the first
    missing, unexpected, misshapen or non-finite tensor."""
    weights, expected = checkpoint["model"], model.state_dict()
    fits = "the weights do not fit the model its config describes"
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    for names, how in ((missing, "has no"), (extra, "has an unexpected")):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise GcnnkitError(f"{path}: {fits}: the checkpoint {how} tensor {names[0]}{more}")
    for key, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise GcnnkitError(f"{path}: {fits}: {key} is a {type(tensor).__name__}, not a tensor")
        if tensor.shape != expected[key].shape:
            raise GcnnkitError(
                f"{path}: {fits}: {key} has shape {list(tensor.shape)} in the checkpoint, "
                f"{list(expected[key].shape)} in the model"
            )
    bad = first_nonfinite(weights)
    if bad is not None:
        raise GcnnkitError(f"{path}: the weights hold {bad[1]} ({bad[0]}); a gcnnkit run never saves such weights")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise checkpoint_error(path, fits, exc) from None


def new_run_dir(config: Config, out_dir: str | Path | None = None) -> Path:
    """``out_dir`` (must not hold a run yet), or ``runs/<config-stem>-<YYYYmmdd-HHMMSS>``; not created yet."""
    if out_dir is not None:
        run_dir = Path(out_dir)
        if (run_dir / CHECKPOINT_FILE).exists():  # a run stopped before its first epoch may start afresh
            raise ConfigError(
                f"--out {run_dir}: already holds a run; add --resume to continue it or choose a new folder"
            )
    else:
        stem = Path("runs") / f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir, n = stem, 1
        while run_dir.exists():  # two runs started in the same second
            run_dir, n = stem.with_name(f"{stem.name}-{n}"), n + 1
    return run_dir


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (empty when there is none); a line that is not JSON is a
    one-line :class:`GcnnkitError` (gcnnkit writes the file atomically; ``--resume`` rewrites it)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise GcnnkitError(f"{path}: line {number} is not JSON ({exc}); --resume rewrites the file") from None
    return records


# ----------------------------------------------------------------------------- reading
@dataclass
class LoadedRun:
    """A run's stored config and checkpoint, and its model with the checkpoint's weights (eval mode).

    ``test`` (the run's test split) is ``None`` when the run was loaded without its data.
    ``mean``/``std`` ``[C]`` are the input normalisation the model was trained with.
    """

    run_dir: Path
    config: Config
    checkpoint: dict[str, Any]
    model: EquivariantNet
    info: DatasetInfo
    mean: torch.Tensor
    std: torch.Tensor
    test: Split | None = None
    checkpoint_file: str = CHECKPOINT_FILE  # which file the weights came from: checkpoint.pt or best.pt

    def describe(self) -> dict[str, Any]:
        """``run_dir``, ``epoch``, ``backend``, ``group``, ``preset``, ``data``, ``params``, ``num_test``."""
        return {
            "run_dir": str(self.run_dir),
            "epoch": self.checkpoint["epoch"],
            "checkpoint": self.checkpoint_file,
            "backend": self.config.model.backend,
            "group": self.config.model.group,
            "preset": self.config.model.preset,
            "data": self.info.name,
            "params": self.model.num_parameters(),
            "num_test": None if self.test is None else len(self.test),
        }


#: ``load_run(weights=...)``: ``selected`` is ``best`` where the run kept a best.pt, else ``last``
WEIGHTS = ("selected", "best", "last")


def load_run(
    run_dir: str | Path,
    *,
    device: str | None = None,
    with_data: bool = True,
    test_size: int | None = None,
    weights: str = "selected",
) -> LoadedRun:
    """Rebuild a run's model from its stored config and its selected (or last) checkpoint.

    Args:
        run_dir: a directory written by :func:`gcnnkit.run.training.train`.
        device: where the model goes (default: the run's ``device`` setting); ``None`` keeps the CPU
            when ``with_data`` is false.
        with_data: also load the run's test split (:attr:`LoadedRun.test`).
        test_size: test on this many images instead of the run's ``data.test_size``.
        weights: ``best`` (``best.pt``, kept with ``train.select: val_acc|val_loss``), ``last``
            (``checkpoint.pt``; with ``train.ema`` its averaged weights) or ``selected`` (``best``
            where there is a ``best.pt``, else ``last``).
    """
    run_dir = Path(run_dir)
    if weights not in WEIGHTS:
        raise GcnnkitError(f"--checkpoint: {weights!r} is not allowed; allowed: {', '.join(WEIGHTS)}")
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise GcnnkitError(f"{run_dir}: not a run directory with a {CHECKPOINT_FILE} (train one with gcnnkit train)")
    has_best = (run_dir / BEST_FILE).is_file()
    if weights == "best" and not has_best:
        raise GcnnkitError(
            f"--checkpoint best: {run_dir} has no {BEST_FILE} (it is kept only with train.select: val_acc or val_loss)"
        )
    name = BEST_FILE if has_best and weights != "last" else CHECKPOINT_FILE
    checkpoint = load_checkpoint(run_dir / name)
    check_checkpoint(checkpoint, run_dir / name)
    config = Config.from_dict(checkpoint["config"])
    # reading a run never downloads or writes data, whatever its stored config says
    data_cfg = dataclasses.replace(config.data, download=False)
    if test_size is not None:
        if test_size < 1:
            raise GcnnkitError(f"--test-size: expected a positive number of images, got {test_size}")
        data_cfg = dataclasses.replace(data_cfg, test_size=test_size)
    stored = checkpoint.get("data")  # what the run saw; file sources need not be on this machine
    info = _stored_info(stored) if stored and not with_data else dataset_info(data_cfg)
    test = load_dataset(data_cfg, seed=config.seed).test if with_data else None
    model = build_model_from_config(config, info, purpose="eval")
    if checkpoint.get("ema"):  # train.ema: the averaged weights are the ones evaluated
        load_weights(model, {**checkpoint, "model": checkpoint["ema"]}, run_dir / name)
    else:
        load_weights(model, checkpoint, run_dir / name)
    model.eval()
    if with_data or device is not None:
        model.to(resolve_device(device or config.device))
    stats = checkpoint.get("normalisation") or {}
    mean = torch.tensor(stats.get("mean", [0.0] * info.in_channels))
    std = torch.tensor(stats.get("std", [1.0] * info.in_channels))
    return LoadedRun(run_dir, config, checkpoint, model, info, mean, std, test, name)


def _stored_info(stored: dict[str, Any]) -> DatasetInfo:
    return DatasetInfo(stored["name"], stored["in_channels"], stored["image_size"], stored["num_classes"])
