"""``gcnnkit eval RUN_DIR``: test accuracy of a trained run under each protocol."""

from __future__ import annotations

import click

from gcnnkit.cli._common import to_json
from gcnnkit.config import PROTOCOLS


@click.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--protocol",
    "protocols",
    multiple=True,
    type=click.Choice(PROTOCOLS),
    help="Protocol to test (repeatable; default: the run's eval.protocols).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@click.option("--device", default=None, help="Device to evaluate on (default: the run's device setting).")
def command(run_dir: str, protocols: tuple[str, ...], as_json: bool, device: str | None) -> None:
    """Rebuild RUN_DIR's model from its config and checkpoint and test it."""
    from gcnnkit.evaluation import evaluate_run

    result = evaluate_run(run_dir, list(protocols) or None, device=device)
    if as_json:
        click.echo(to_json(result))
        return
    arch = result["preset"] or "custom layers"
    click.echo(
        f"{result['run_dir']}: {result['group']} {result['backend']} {arch}, {result['params']:,} params, "
        f"epoch {result['epoch']}, {result['num_test']} {result['data']} test images"
    )
    width = max(len("protocol"), *(len(p) for p in result["accuracy"]))
    click.echo(f"{'protocol':<{width}}  accuracy")
    for protocol, acc in result["accuracy"].items():
        click.echo(f"{protocol:<{width}}  {100 * acc:7.2f}%")
