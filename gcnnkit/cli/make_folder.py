"""``gcnnkit make-folder OUT``: write an image folder (the digits as PNGs, or synthetic RGB tiles)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("make-folder")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--from",
    "source",
    type=click.Choice(["digits", "tiles"]),
    default="digits",
    show_default=True,
    help="digits: scikit-learn's 1,797 digits as grey PNGs; tiles: synthetic 2-class RGB tiles.",
)
@click.option("--count", type=int, default=20_000, show_default=True, help="tiles only: how many.")
@click.option("--size", type=int, default=None, help="Image size in pixels (default: 17 for digits, 96 for tiles).")
@click.option(
    "--split",
    "layout",
    is_flag=True,
    help="digits only: OUT/train/<class>/ and OUT/test/<class>/ (the built-in 80/20 split).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="tiles only: random seed.")
def command(out: str, source: str, count: int, size: int | None, layout: bool, seed: int) -> None:
    """Write an image folder in the OUT/<class>/<image>.png layout that data.name: folder reads.

    \b
    Examples:
      gcnnkit make-folder data/digits-folder
      gcnnkit make-folder runs/tiles --from tiles --count 20000
    """
    from gcnnkit.core.errors import GcnnkitError
    from gcnnkit.tools.images import write_digits_folder, write_tiles

    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise GcnnkitError(f"{out}: exists and is not empty; give a new folder")
    if source == "digits":
        n = write_digits_folder(target, size or 17, "split" if layout else "flat")
    else:
        from tqdm import tqdm

        with tqdm(total=count, unit="tile", disable=None, leave=False) as bar:
            n = write_tiles(target, count, size or 96, seed, progress=lambda k: bar.update(1))
    click.echo(f"wrote {n} {source} images to {out}")
