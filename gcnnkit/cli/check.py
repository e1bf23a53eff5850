"""``gcnnkit check CONFIG``: is the configured network equivariant, layer by layer?"""

from __future__ import annotations

import click

from gcnnkit.cli._common import require_tolerance, set_option, to_json
from gcnnkit.core.equivariance import DEFAULT_TOLERANCE
from gcnnkit.tools.table import format_table


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
    help="Also measure interpolated elements (e.g. 45° in C8; on smooth input, reported, not judged), "
    "or only the exact ones (90° turns, reflections).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (max_rel_error, layers, ...).")
def command(config: str, overrides: tuple[str, ...], tolerance: float, elements: str, as_json: bool) -> None:
    """Measure max|f(g·x) − g·f(x)| / max|f(x)| over the group elements g, per layer and end to end,
    for CONFIG's model at random initialisation. Exits with 1 if an error at an exact element
    (multiple of 90°, reflection) exceeds --tolerance.
    """
    from gcnnkit.run.check import check_equivariance
    from gcnnkit.run.config import load_config

    require_tolerance(tolerance)
    report = check_equivariance(load_config(config, overrides), tolerance=tolerance, elements=elements)
    if as_json:
        click.echo(to_json(report.to_dict()))
    else:
        _print_table(report)
    if not report.passed:
        raise SystemExit(1)


def _print_table(report) -> None:
    c, h, w = report.image_shape
    click.echo(
        f"{report.group} on backend {report.backend}: {report.num_parameters:,} parameters, "
        f"input [B, {c}, {h}, {w}], tolerance {report.tolerance:g}"
    )
    show_interp = report.max_interpolated_error is not None
    rows = []
    for r in report.results:
        exact = {g: e for g, e in r.errors.items() if r.exact.get(g, True)}
        worst_at = max(exact, key=exact.get) if exact and r.max_exact_error else "-"
        row = [r.name, f"{r.in_type} -> {r.out_type}", f"{r.max_exact_error:.2e}", worst_at]
        if show_interp:
            row.append(f"{r.max_interpolated_error:.2e}")
        row.append("ok" if r.max_exact_error <= report.tolerance else "FAIL")
        rows.append(tuple(row))
    header = ["layer", "types", "max rel err", "worst at"]
    if show_interp:
        header.append("interpolated (smooth input)")
    for line in format_table([(*header, ""), *rows]):
        click.echo(line)
    d = report.to_dict()
    exact = ", ".join(report.exact_elements)
    if report.passed:
        verdict = "equivariant" if not report.interpolated_elements else f"exactly equivariant at {exact}"
    else:
        verdict = "NOT equivariant"
    click.echo(
        f"{verdict}: worst relative error {report.max_error:.2e} in {d['worst_layer']} at element {d['worst_element']}"
    )
    if report.interpolated_elements:
        approx = ", ".join(report.interpolated_elements)
        if show_interp:
            click.echo(
                f"only approximately equivariant at {approx} (rotations off the pixel grid, interpolated): "
                f"up to {report.max_interpolated_error:.2e} on smooth input (not judged)"
            )
        else:
            click.echo(f"not measured (--elements exact): {approx}, only approximately equivariant (interpolated)")
    if report.continuous:
        exact = report.results[-1].exact
        click.echo(
            f"{report.group} is continuous; end-to-end error per sampled angle (* judged: exact on the pixel grid):"
        )
        for line in format_table(
            [
                ("angle", "rel err", ""),
                *((g, f"{e:.2e}", "*" if exact.get(g) else "") for g, e in report.per_angle().items()),
            ]
        ):
            click.echo(line)
