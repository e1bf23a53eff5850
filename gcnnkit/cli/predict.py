"""``gcnnkit predict RUN_DIR IMAGES...``: class and probabilities of new images."""

from __future__ import annotations

from pathlib import Path

import click

from gcnnkit.cli._common import to_json


@click.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option(
    "--tta",
    type=click.Choice(["none", "rot90", "d4"]),
    default="none",
    show_default=True,
    help="Average the probabilities over the 4 quarter turns (rot90) or those and their mirrors (d4).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the predictions to a .csv or .json file (default: a table on stdout).",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=64, show_default=True)
def command(run_dir: str, images: tuple[str, ...], tta: str, out: str | None, device: str, batch_size: int) -> None:
    """Predict the class of each image (files, or folders searched recursively) with the model in RUN_DIR.

    Images are decoded as in training: converted to the model's channels, resized to its image
    size, normalised with the run's statistics.

    \b
    Examples:
      gcnnkit predict runs/folder data/digits-folder/3 --tta rot90
      gcnnkit predict runs/folder data/digits-folder --out preds.csv
    """
    from tqdm import tqdm

    from gcnnkit.core.errors import GcnnkitError
    from gcnnkit.run.predict import image_files, predict, predictions_csv, predictions_json
    from gcnnkit.tools.table import format_table

    suffix = Path(out).suffix.lower() if out else None
    if suffix not in (None, ".csv", ".json"):
        raise GcnnkitError(f"--out: {out!r} must end in .csv or .json")
    if batch_size < 1:
        raise GcnnkitError(f"--batch-size: expected a positive number, got {batch_size}")
    total = len(image_files(images))
    with tqdm(total=total, unit="image", disable=None, leave=False) as bar:
        classes, preds = predict(
            run_dir, images, tta=tta, device=device, batch_size=batch_size, progress=lambda n: bar.update(n - bar.n)
        )
    if out is None:
        rows = [(p.path, p.name, f"{max(p.probabilities):.4f}") for p in preds]
        for line in format_table([("image", "class", "probability"), *rows]):
            click.echo(line)
        return
    text = predictions_csv(classes, preds) if suffix == ".csv" else to_json(predictions_json(classes, preds)) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")
    click.echo(f"wrote {len(preds)} predictions to {out}")
