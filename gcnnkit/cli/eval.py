"""``gcnnkit eval RUN_DIR [RUN_DIR ...]``: test accuracy of trained runs under each protocol, or as a
function of the rotation angle (``--rotation-sweep``, optionally drawn with ``--plot``)."""

from __future__ import annotations

import math

import click

from gcnnkit.cli._common import to_json
from gcnnkit.core.errors import GcnnkitError
from gcnnkit.run.data import PROTOCOLS
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--device", default=None, help="Device to evaluate on (default: the run's device setting).")
def command(
    run_dirs: tuple[str, ...],
    protocols: tuple[str, ...],
    rotation_sweep: bool,
    step: float | None,
    plot: str | None,
    test_size: int | None,
    as_json: bool,
    device: str | None,
) -> None:
    """Rebuild each RUN_DIR's model from its config and checkpoint and test it.

    \b
    Examples:
      gcnnkit eval runs/c4                                     # accuracy per protocol
      gcnnkit eval runs/cnn runs/c4 --rotation-sweep --step 10 --plot sweep.png
    """
    from gcnnkit.run.evaluation import evaluate_run, rotation_sweep_run

    if not rotation_sweep:
        if step is not None or plot is not None:
            raise GcnnkitError(f"{'--step' if step is not None else '--plot'} needs --rotation-sweep")
        results = [evaluate_run(d, list(protocols) or None, device=device, test_size=test_size) for d in run_dirs]
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
    if not (math.isfinite(step) and 0 < step <= 360):
        raise GcnnkitError(f"--step {step!r}: expected an angle in degrees > 0 and <= 360, e.g. 5")
    if plot is not None:
        from gcnnkit.run.paths import check_output_path

        check_output_path(plot, "--plot", folder=False)
    results = [rotation_sweep_run(d, step, device=device, test_size=test_size) for d in run_dirs]
    if plot is not None:
        from gcnnkit.tools.plots import plot_rotation_sweep

        plot_rotation_sweep(results, plot)
    if as_json:
        click.echo(to_json({"step": step, "angles": results[0]["angles"], "runs": results, "plot": plot}))
        return
    _print_sweep(results)
    if plot is not None:
        click.echo(f"plot: {plot}")


def _header(result: dict) -> str:
    arch = result["preset"] or "custom layers"
    return (
        f"{result['run_dir']}: {result['group']} {result['backend']} {arch}, {result['params']:,} params, "
        f"epoch {result['epoch']}, {result['num_test']} {result['data']} test images"
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
