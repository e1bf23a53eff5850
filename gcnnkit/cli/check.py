"""``gcnnkit check CONFIG``: is the configured network equivariant, layer by layer?"""

from __future__ import annotations

import click

from gcnnkit.cli._common import set_option, to_json
from gcnnkit.equivariance import DEFAULT_TOLERANCE


@click.command("check")
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option(
    "--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True, help="Largest relative error accepted."
)
@click.option(
    "--elements",
    type=click.Choice(["all", "exact"]),
    default="all",
    show_default=True,
    help="Check every group element, or only those that permute pixels exactly (90° turns, reflections).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (max_rel_error, layers, ...).")
def command(config: str, overrides: tuple[str, ...], tolerance: float, elements: str, as_json: bool) -> None:
    """Measure max|f(g·x) − g·f(x)| / max|f(x)| over all group elements g, per layer and end to end,
    for CONFIG's model at random initialisation. Exits with 1 if any error exceeds --tolerance.
    """
    from gcnnkit.config import load_config
    from gcnnkit.evaluation import check_equivariance

    report = check_equivariance(load_config(config, overrides), tolerance=tolerance, elements=elements)
    if as_json:
        click.echo(to_json(report.to_dict()))
    else:
        _print_table(report)
    if not report.passed:
        raise SystemExit(1)


def _print_table(report) -> None:
    c, h, w = report.image_shape
    which = "" if report.elements == "all" else ", exact elements only"
    click.echo(
        f"{report.group} on backend {report.backend}, input [B, {c}, {h}, {w}], tolerance {report.tolerance:g}{which}"
    )
    rows = [
        (
            r.name,
            f"{r.in_type} -> {r.out_type}",
            f"{r.max_error:.2e}",
            (r.max_error and r.worst_element) or "-",
            "ok" if r.max_error <= report.tolerance else "FAIL",
        )
        for r in report.results
    ]
    header = ("layer", "types", "max rel err", "worst at", "")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    worst = report.worst
    verdict = "equivariant" if report.passed else "NOT equivariant"
    click.echo(
        f"{verdict}: worst relative error {worst.max_error:.2e} in {worst.name} at element {worst.worst_element}"
    )
