"""Plots of evaluation results, written as PNG files with matplotlib's Agg renderer.

Only the object-oriented API is used (no ``pyplot``), so plotting never touches a display or the
global matplotlib state of the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gcnnkit.core.errors import GcnnkitError


def sweep_label(result: Mapping[str, Any]) -> str:
    """``"gcnn-uva C4 (native)"`` for a :func:`gcnnkit.run.evaluation.rotation_sweep_run` result."""
    arch = result.get("preset") or "custom layers"
    return f"{arch} {result.get('group', '?')} ({result.get('backend', '?')})"


def sweep_labels(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """One label per run; runs that would share a label get their run directory's name appended."""
    labels = [sweep_label(r) for r in results]
    return [
        f"{label} {Path(str(result.get('run_dir', i))).name}" if labels.count(label) > 1 else label
        for i, (label, result) in enumerate(zip(labels, results, strict=True))
    ]


def plot_rotation_sweep(
    results: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Draw test accuracy against rotation angle, one line per run, into the PNG ``path``.

    Args:
        results: :func:`gcnnkit.run.evaluation.rotation_sweep_run` results (``angles`` in degrees and
            ``accuracy`` in ``[0, 1]``, plus the run's ``preset``/``group``/``backend``/``params``).
        path: the PNG file to write (its folder must exist).
        title: default: "Test accuracy under rotation (<data>, <n> test images)".

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise GcnnkitError("plot_rotation_sweep: no sweep results to plot")
    path = Path(path)
    if not path.parent.is_dir():
        raise GcnnkitError(f"--plot: folder {str(path.parent)!r} does not exist")
    fig = Figure(figsize=(8, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for quarter in (90, 180, 270):
        ax.axvline(quarter, color="0.85", linewidth=1, zorder=0)
    for result, label in zip(results, sweep_labels(results), strict=True):
        angles = list(result["angles"])
        accuracy = [100.0 * a for a in result["accuracy"]]
        params = result.get("params")
        legend = f"{label}, {params:,} params" if isinstance(params, int) else label
        ax.plot(angles + [360.0], accuracy + accuracy[:1], marker="o", markersize=2.5, linewidth=1.4, label=legend)
    first = results[0]
    if title is None:
        title = f"Test accuracy under rotation ({first.get('data', '?')}, {first.get('num_test', '?')} test images)"
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("rotation of the test images (degrees, counter-clockwise)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(0, 360)
    ax.set_xticks(range(0, 361, 45))
    ax.set_ylim(0, 100)
    ax.grid(True, axis="y", color="0.92")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise GcnnkitError(f"--plot: cannot write {str(path)!r}: {exc}") from None
    return path


def plot_confusion(result: Mapping[str, Any], path: str | Path) -> Path:
    """Draw one confusion matrix per protocol of a :func:`gcnnkit.run.report.report_run` result into
    the PNG ``path``: rows are true classes, columns predicted ones, each cell its count, shaded by
    the fraction of its row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    reports = result["report"]
    path = Path(path)
    if not path.parent.is_dir():
        raise GcnnkitError(f"--out: folder {str(path.parent)!r} does not exist")
    k = len(next(iter(reports.values()))["classes"])
    side = max(3.2, 0.42 * k + 1.4)
    fig = Figure(figsize=(side * len(reports), side + 0.4), dpi=110)
    FigureCanvasAgg(fig)
    for i, (protocol, report) in enumerate(reports.items()):
        ax = fig.add_subplot(1, len(reports), i + 1)
        counts = report["confusion"]
        rows = [max(1, sum(row)) for row in counts]
        shade = [[c / n for c in row] for row, n in zip(counts, rows, strict=True)]
        ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
        for r, row in enumerate(counts):
            for c, count in enumerate(row):
                colour = "white" if shade[r][c] > 0.5 else "black"
                ax.text(c, r, str(count), ha="center", va="center", fontsize=7, color=colour)
        names = report["classes"]
        ax.set_xticks(range(k), names, fontsize=7, rotation=90 if max(map(len, names)) > 2 else 0)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{protocol}: {100 * report['accuracy']:.2f}%", fontsize=10)
    fig.suptitle(
        f"{result.get('run_dir', '')} ({result.get('checkpoint', '')}, epoch {result.get('epoch', '?')})", fontsize=9
    )
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise GcnnkitError(f"--out: cannot write {str(path)!r}: {exc}") from None
    return path


__all__ = ["plot_confusion", "plot_rotation_sweep", "sweep_label", "sweep_labels"]
