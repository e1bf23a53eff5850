"""``gcnnkit compare CONFIG --backends native,escnn``: cross-validate two backends on one architecture."""

from __future__ import annotations

import click

from gcnnkit.cli._common import require_tolerance, set_option, to_json
from gcnnkit.core.equivariance import DEFAULT_TOLERANCE
from gcnnkit.tools.timing import CLOCKS


@click.command("compare")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--backends",
    default=None,
    help="Two backends, comma-separated (default: the two installed ones, the reference backend first). "
    "The config's backend_options go to the config's own backend.",
)
@set_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON object (transfer_max_rel_error, layers, timing, ...)."
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG bar chart of the equivariance error per layer.",
)
@click.option(
    "--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True, help="Largest relative error judged ok."
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Images in the equivariance and transfer checks.",
)
@click.option(
    "--timing-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Images per timed pass."
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Interleaved timed repetitions."
)
@click.option(
    "--clock",
    type=click.Choice(CLOCKS),
    default="wall",
    show_default=True,
    help="'cpu' times process CPU time, steadier on a machine shared with other jobs.",
)
def command(
    config: str,
    backends: str | None,
    overrides: tuple[str, ...],
    as_json: bool,
    plot: str | None,
    tolerance: float,
    batch: int,
    timing_batch: int,
    repeats: int,
    clock: str,
) -> None:
    """Build CONFIG's model on two backends and compare them layer by layer and end to end: output
    shapes and parameter counts; equivariance error of each backend over the exact elements (90°
    turns, reflections) and, for groups such as C8, over the non-exact ones (on smooth images, as
    gcnnkit check; reported, not judged); weight transfer in both directions (max relative output
    difference after loading one backend's weights into the other, through the native weight
    format); and forward / forward+backward time ratio (interleaved repetitions, medians).

    Exits with 1 when an exact-element equivariance error or an exact-by-construction transfer
    (escnn -> native; native -> escnn with basis: complete) exceeds --tolerance.

    \b
    Examples:
      gcnnkit compare configs/digits_c4_escnn.yaml
      gcnnkit compare configs/digits_d4.yaml --backends native,escnn --json
      gcnnkit compare configs/digits_c8_escnn.yaml --plot equivariance.png
    """
    from gcnnkit.run.config import load_config
    from gcnnkit.run.paths import check_output_path
    from gcnnkit.tools.compare import compare_config, format_report, parse_backends, plot_report

    require_tolerance(tolerance)
    if plot is not None:
        check_output_path(plot, "--plot", folder=False)
    names = parse_backends(backends) if backends is not None else None
    report = compare_config(
        load_config(config, overrides),
        names,
        batch=batch,
        tolerance=tolerance,
        timing_batch=timing_batch,
        repeats=repeats,
        clock=clock,
    )
    if plot:
        plot_report(report, plot)
    if as_json:
        click.echo(to_json(report.to_dict()))
    else:
        for line in format_report(report):
            click.echo(line)
        if plot:
            click.echo(f"plot: {plot}")
    if not report.passed:
        raise SystemExit(1)
