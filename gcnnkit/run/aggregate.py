"""Finished runs that differ only in their seed, gathered into one row: mean ± std per protocol.

Published results are a mean over seeds; ``gcnnkit summarize RUN_DIR...`` makes ours the same
way, from the ``summary.json`` (test accuracy of the selected epoch per protocol) and
``config.yaml`` each finished run writes. Runs fall into one group when their configs are equal
once the seed and the settings that only say *where* or *how fast* a run goes
(:data:`BOOKKEEPING`) are left out, so a table over ``runs/*`` never averages two protocols.
The spread is the sample standard deviation (``n - 1``; 0 for one run), as papers quote it.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gcnnkit.core.errors import GcnnkitError
from gcnnkit.run.rundir import CONFIG_FILE, SUMMARY_FILE

#: config keys that do not change what a run computes, only where or how fast (left out when grouping)
BOOKKEEPING: tuple[str, ...] = (
    "seed",
    "device",
    "required_plugins",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.in_memory",
    "data.memory_budget_gb",
    "train.tensorboard",
    "eval.batch_size",
    "eval.test_each_epoch",
)


@dataclass
class SeedGroup:
    """Runs of one config (bookkeeping aside), one per seed; ``accuracy`` maps a protocol to the
    per-run test accuracies (fractions, in the order of ``run_dirs``)."""

    label: str
    config: dict[str, Any]
    run_dirs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    params: int = 0
    epochs: list[int] = field(default_factory=list)
    precision: list[str] = field(default_factory=list)
    accuracy: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, protocol: str) -> float:
        return statistics.fmean(self.accuracy[protocol])

    def std(self, protocol: str) -> float:
        """Sample standard deviation over the runs (0 for a single run)."""
        values = self.accuracy[protocol]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "runs": len(self.run_dirs),
            "run_dirs": self.run_dirs,
            "seeds": self.seeds,
            "params": self.params,
            "epochs": self.epochs,
            "precision": self.precision,
            "accuracy": {
                p: {"mean": self.mean(p), "std": self.std(p), "per_run": list(v)} for p, v in self.accuracy.items()
            },
        }


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise GcnnkitError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GcnnkitError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_finished_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(summary, flat config)`` of a finished run, or a one-line :class:`GcnnkitError` saying
    what is missing (an unfinished run has no ``summary.json``: resume it first)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise GcnnkitError(f"{run_dir}: no such run directory")
    summary_path, config_path = folder / SUMMARY_FILE, folder / CONFIG_FILE
    if not config_path.is_file():
        raise GcnnkitError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    if not summary_path.is_file():
        raise GcnnkitError(
            f"{run_dir}: the run has not finished (no {SUMMARY_FILE}); "
            f"finish it with: gcnnkit train {config_path} --out {run_dir} --resume"
        )
    summary = _read_json(summary_path)
    accuracy = summary.get("accuracy")
    if not isinstance(accuracy, dict) or not all(isinstance(v, (int, float)) for v in accuracy.values()):
        raise GcnnkitError(f"{summary_path}: no 'accuracy' mapping of protocol to a number")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise GcnnkitError(f"{config_path}: not YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(config, dict):
        raise GcnnkitError(f"{config_path}: expected a mapping of config sections")
    return summary, _flatten(config)


def _labels(groups: list[SeedGroup]) -> None:
    """``preset (group, backend)``, plus the config values that tell two groups of it apart."""
    for group in groups:
        c = group.config
        group.label = f"{c.get('model.preset') or 'custom layers'} ({c.get('model.group')}, {c.get('model.backend')})"
    by_label: dict[str, list[SeedGroup]] = {}
    for group in groups:
        by_label.setdefault(group.label, []).append(group)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = sorted({k for g in same for k in g.config})
        differing = [k for k in keys if len({json.dumps(g.config.get(k), default=str) for g in same}) > 1]
        for group in same:
            parts = [f"{k}={group.config.get(k)}" for k in differing]
            group.label += " " + " ".join(parts)


def summarize_runs(run_dirs: list[str | Path]) -> list[SeedGroup]:
    """Group finished runs by their config (seed and :data:`BOOKKEEPING` left out), in the order
    each group's first run was given."""
    if not run_dirs:
        raise GcnnkitError("no run directories given")
    groups: dict[str, SeedGroup] = {}
    seen: set[Path] = set()
    for run_dir in run_dirs:
        resolved = Path(run_dir).resolve()
        if resolved in seen:
            raise GcnnkitError(f"{run_dir}: given twice; each run counts once")
        seen.add(resolved)
        summary, flat = read_finished_run(run_dir)
        kept = {k: v for k, v in flat.items() if k not in BOOKKEEPING}
        key = json.dumps(kept, sort_keys=True, default=str)
        group = groups.get(key)
        if group is None:
            group = groups[key] = SeedGroup(label="", config=kept)
            group.params = int(summary.get("params", 0))
        group.run_dirs.append(str(run_dir))
        group.seeds.append(int(flat.get("seed", summary.get("seed", 0))))
        group.epochs.append(int(summary.get("epochs_trained") or summary.get("epochs", 0)))
        group.precision.append(str(summary.get("precision", "fp32")))
        for protocol, value in summary["accuracy"].items():
            if not math.isfinite(float(value)):
                raise GcnnkitError(f"{run_dir}/{SUMMARY_FILE}: accuracy under {protocol!r} is {value}")
            group.accuracy.setdefault(protocol, []).append(float(value))
    result = list(groups.values())
    for group in result:
        counts = {p: len(v) for p, v in group.accuracy.items()}
        if any(n != len(group.run_dirs) for n in counts.values()):  # same config, so same protocols: a hand-edited file
            raise GcnnkitError(
                f"runs {', '.join(group.run_dirs)} share a config but their {SUMMARY_FILE} files name different "
                f"protocols ({counts}); was one edited by hand?"
            )
    _labels(result)
    return result


__all__ = ["BOOKKEEPING", "SeedGroup", "read_finished_run", "summarize_runs"]
