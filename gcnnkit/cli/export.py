"""``gcnnkit export RUN_DIR``: the trained model as plain PyTorch (TorchScript, ONNX or a state dict)."""

from __future__ import annotations

import click

from gcnnkit.cli._common import to_json
from gcnnkit.tools.export import FORMATS

#: File written when --out is not given, inside RUN_DIR.
DEFAULT_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "state": "model.state.pt"}


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="torchscript", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="File to write (default: RUN_DIR/model.ts, model.onnx or model.state.pt).",
)
@click.option(
    "--include-normalisation",
    is_flag=True,
    help="Prepend the run's input normalisation, so the file takes raw images in [0, 1].",
)
@click.option("--no-check", is_flag=True, help="Do not load the file back and compare it with the model.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def command(
    run_dir: str, fmt: str, out: str | None, include_normalisation: bool, no_check: bool, as_json: bool
) -> None:
    """Export RUN_DIR's last checkpoint to a model that needs only PyTorch: nn.Conv2d with the
    expanded filter banks, nn.BatchNorm2d, pooling, a group-pooling reshape, nn.Linear.

    The file is loaded back (ONNX: with onnxruntime, when installed) and its outputs compared with
    the gcnnkit model; exit code 1 when they differ by more than 1e-5 (relative). See docs/export.md.

    \b
    Examples:
      gcnnkit export runs/c4 --format torchscript --out model.ts
      gcnnkit export runs/c4 --format onnx --out model.onnx --include-normalisation
      gcnnkit export runs/c4 --format state --out model.pt   # state dict + architecture
    """
    from pathlib import Path

    from gcnnkit.run.paths import check_output_path
    from gcnnkit.tools.export import EXPORT_TOLERANCE, export_run

    path = str(
        check_output_path(out if out is not None else str(Path(run_dir) / DEFAULT_NAMES[fmt]), "--out", folder=False)
    )
    report = export_run(run_dir, path, fmt, include_normalisation=include_normalisation, check=not no_check)
    failed = report.rel_error is not None and not report.rel_error <= EXPORT_TOLERANCE
    if as_json:
        click.echo(to_json({**report.to_dict(), "passed": not failed}))
    else:
        methods = sorted({layer["method"] for layer in report.layers})
        click.echo(f"wrote {report.path} ({fmt}; layers exported by {', '.join(methods)})")
        if report.rel_error is None:
            click.echo(f"check: {report.checked_with}")
        else:
            click.echo(
                f"check with {report.checked_with}: max relative difference to the gcnnkit model "
                f"{report.rel_error:.2e} (tolerance {EXPORT_TOLERANCE:g}); worst change of the outputs "
                f"under the group's transformations of the input {report.invariance_error:.2e}"
            )
    if failed:
        raise SystemExit(1)
