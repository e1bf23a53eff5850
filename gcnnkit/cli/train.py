"""``gcnnkit train CONFIG``: train and test a model; everything lands in a run directory."""

from __future__ import annotations

import click

from gcnnkit.cli._common import set_option


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory (default runs/<config-stem>-<YYYYmmdd-HHMMSS>).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last completed epoch; only train.epochs may differ.",
)
def command(config: str, overrides: tuple[str, ...], out: str | None, resume: bool) -> None:
    """Train the model CONFIG describes, testing it every epoch under the eval protocols.

    Writes config.yaml, data.json, metrics.jsonl (one line per epoch), checkpoint.pt and summary.json into
    the run directory. The last printed line summarises the run.
    """
    from gcnnkit.run.config import load_config
    from gcnnkit.run.paths import check_output_path
    from gcnnkit.run.training import train

    if out is not None:
        check_output_path(out, "--out")
    train(load_config(config, overrides), out_dir=out, resume=resume, log=click.echo)
