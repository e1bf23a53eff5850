"""``gcnnkit eval RUN_DIR [RUN_DIR ...]``: test accuracy of trained runs under each protocol, with
per-class accuracy and confusion matrices (``--report``), or as a function of the rotation angle
(``--rotation-sweep``, optionally drawn with ``--plot``)."""

from __future__ import annotations

import click

from gcnnkit.cli._common import to_json
from gcnnkit.core.errors import GcnnkitError
from gcnnkit.run.data import PROTOCOLS
from gcnnkit.run.rundir import WEIGHTS
from gcnnkit.tools.table import format_table


@click.command("eval")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR...")
@click.option(
    "--protocol",
    "protocols",
    multiple=True,
    type=click.Choice(PROTOCOLS),
    help="Protocol to test (repeatable; default: the run's eval.protocols).",
)
@click.option(
    "--rotation-sweep",
    is_flag=True,
    help="Test every run with its test images turned by 0°, STEP, 2·STEP, ... below 360° (exact quarter turns, "
    "bilinear in between) and print accuracy per angle.",
)
@click.option("--step", type=float, default=None, help="Angle step of --rotation-sweep in degrees [default: 5].")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="With --rotation-sweep: also draw all runs into this PNG file.",
)
@click.option(
    "--test-size",
    type=click.IntRange(min=1),
    default=None,
    help="Test on this many images of the test set (same fixed subset seed) instead of the run's data.test_size.",
)
@click.option(
    "--report",
    is_flag=True,
    help="Also print per-class accuracy and the confusion matrix under each protocol (ROC AUC for two classes) "
    "and draw the matrices into RUN_DIR/confusion.png (or --out).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="With --report and one RUN_DIR: the PNG of the confusion matrices [default: RUN_DIR/confusion.png].",
)
@click.option(
    "--checkpoint",
    "weights",
    type=click.Choice(WEIGHTS),
    default="selected",
    show_default=True,
    help="Weights to test: best.pt (kept with train.select: val_acc|val_loss), the last epoch's checkpoint.pt, "
    "or selected: best where there is one, else last.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--device", default=None, help="Device to evaluate on (default: the run's device setting).")
def command(
    run_dirs: tuple[str, ...],
    protocols: tuple[str, ...],
    rotation_sweep: bool,
    step: float | None,
    plot: str | None,
    test_size: int | None,
    report: bool,
    out: str | None,
    weights: str,
    as_json: bool,
    device: str | None,
) -> None:
    """Rebuild each RUN_DIR's model from its config and checkpoint and test it.

    \b
    Examples:
      gcnnkit eval runs/c4                                     # accuracy per protocol
      gcnnkit eval runs/c4 --report                            # + per class, confusion matrix
      gcnnkit eval runs/cnn runs/c4 --rotation-sweep --step 10 --plot sweep.png
    """
    from gcnnkit.run.evaluation import evaluate_run, rotation_sweep_run, sweep_angles

    if out is not None and not report:
        raise GcnnkitError("--out needs --report")
    if report:
        if rotation_sweep:
            raise GcnnkitError("--report and --rotation-sweep do not go together; run them one after the other")
        if out is not None and len(run_dirs) > 1:
            raise GcnnkitError(
                f"--out names one PNG, but {len(run_dirs)} runs were given; "
                f"leave it out to write RUN_DIR/confusion.png each"
            )
        if out is not None:
            from gcnnkit.run.paths import check_output_path

            check_output_path(out, "--out", folder=False)
        _report(run_dirs, list(protocols) or None, out, weights, as_json, device, test_size)
        return
    if not rotation_sweep:
        if step is not None or plot is not None:
            raise GcnnkitError(f"{'--step' if step is not None else '--plot'} needs --rotation-sweep")
        results = [
            evaluate_run(d, list(protocols) or None, device=device, test_size=test_size, weights=weights)
            for d in run_dirs
        ]
        if as_json:
            click.echo(to_json(results[0] if len(results) == 1 else results))
            return
        for i, result in enumerate(results):
            if i:
                click.echo()
            _print_protocols(result)
        return

    if protocols:
        raise GcnnkitError("--protocol and --rotation-sweep do not go together: the sweep turns the upright test set")
    step = 5.0 if step is None else step
    sweep_angles(step)  # refuse a bad --step before any work
    if plot is not None:
        from gcnnkit.run.paths import check_output_path

        check_output_path(plot, "--plot", folder=False)
    results = [rotation_sweep_run(d, step, device=device, test_size=test_size, weights=weights) for d in run_dirs]
    if plot is not None:
        from gcnnkit.tools.plots import plot_rotation_sweep

        plot_rotation_sweep(results, plot)
    if as_json:
        click.echo(to_json({"step": step, "angles": results[0]["angles"], "runs": results, "plot": plot}))
        return
    _print_sweep(results)
    if plot is not None:
        click.echo(f"plot: {plot}")


def _report(
    run_dirs: tuple[str, ...],
    protocols: list[str] | None,
    out: str | None,
    weights: str,
    as_json: bool,
    device: str | None,
    test_size: int | None,
) -> None:
    from pathlib import Path

    from gcnnkit.run.report import report_run
    from gcnnkit.tools.plots import plot_confusion

    results = []
    for run_dir in run_dirs:
        result = report_run(run_dir, protocols, device=device, test_size=test_size, weights=weights)
        result["png"] = str(plot_confusion(result, out or Path(run_dir) / "confusion.png"))
        results.append(result)
    if as_json:
        click.echo(to_json(results[0] if len(results) == 1 else results))
        return
    for i, result in enumerate(results):
        if i:
            click.echo()
        _print_report(result)


def _print_report(result: dict) -> None:
    click.echo(_header(result))
    for protocol, report in result["report"].items():
        auc = report.get("roc_auc", False)
        auc_note = "" if auc is False else f", ROC AUC {'n/a (one class)' if auc is None else f'{auc:.4f}'}"
        click.echo(f"\n{protocol}: accuracy {100 * report['accuracy']:.2f}%{auc_note}")
        rows = [("class", "images", "accuracy")]
        for name, cls in report["per_class"].items():
            rows.append((name, cls["images"], "-" if cls["accuracy"] is None else f"{100 * cls['accuracy']:.2f}%"))
        for line in format_table(rows, "<>"):
            click.echo(line)
        click.echo("confusion matrix (rows: true class, columns: predicted class)")
        names = report["classes"]
        grid = [("", *names), *((name, *row) for name, row in zip(names, report["confusion"], strict=True))]
        for line in format_table(grid, "<>"):
            click.echo(line)
    click.echo(f"confusion matrices: {result['png']}")


def _header(result: dict) -> str:
    arch = result["preset"] or "custom layers"
    return (
        f"{result['run_dir']}: {result['group']} {result['backend']} {arch}, {result['params']:,} params, "
        f"epoch {result['epoch']} ({result['checkpoint']}), {result['num_test']} {result['data']} test images"
    )


def _print_protocols(result: dict) -> None:
    click.echo(_header(result))
    rows = [(protocol, f"{100 * acc:.2f}%") for protocol, acc in result["accuracy"].items()]
    for line in format_table([("protocol", "accuracy"), *rows], "<>"):
        click.echo(line)


def _print_sweep(results: list[dict]) -> None:
    from gcnnkit.tools.plots import sweep_labels

    labels = sweep_labels(results)
    for i, result in enumerate(results):
        click.echo(f"[{i + 1}] {_header(result)}")
    # a grid of 8-character cells: "angle" over the angles (right-aligned, then a space), a column per run
    rows = [("angle".ljust(8), *(f"[{i + 1}]" for i in range(len(results))))]
    for row, angle in enumerate(results[0]["angles"]):
        rows.append((f"{angle:g}° ", *(f"{100 * r['accuracy'][row]:.2f}%" for r in results)))
    rows.append(("mean ", *(f"{100 * sum(r['accuracy']) / len(r['accuracy']):.2f}%" for r in results)))
    rows.append(("min ", *(f"{100 * min(r['accuracy']):.2f}%" for r in results)))
    for line in format_table(rows, ">", sep="", min_width=8):
        click.echo(line)
    for i, label in enumerate(labels):
        click.echo(f"[{i + 1}] = {label}")
