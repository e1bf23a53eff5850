"""The ``gcnnkit`` command line (``gcnnkit --help`` lists the commands in :data:`COMMANDS`).

Each command is a module of this package defining a click command named ``command``; it is
imported only when used. To add one, write ``gcnnkit/cli/<name>.py`` and add a line to
:data:`COMMANDS`.
"""

from __future__ import annotations

import click

from gcnnkit.cli._common import CommandGroup

#: command name -> module defining ``command``
COMMANDS: dict[str, str] = {
    "train": "gcnnkit.cli.train",
    "eval": "gcnnkit.cli.eval",
    "check": "gcnnkit.cli.check",
    "plugins": "gcnnkit.cli.plugins",
    "reps": "gcnnkit.cli.reps",
    "bench": "gcnnkit.cli.bench",
    "export": "gcnnkit.cli.export",
    "compare": "gcnnkit.cli.compare",
    "predict": "gcnnkit.cli.predict",
    "summarize": "gcnnkit.cli.summarize",
    "make-folder": "gcnnkit.cli.make_folder",
}


@click.group(cls=CommandGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gcnnkit", message="gcnnkit %(version)s")
def main() -> None:
    """gcnnkit: group-equivariant CNNs (G-CNNs) with pluggable backends and groups.

    \b
    Quick start:
      gcnnkit check configs/digits_c4.yaml                 # is the network equivariant?
      gcnnkit train configs/digits_c4.yaml --out runs/c4   # train and test (upright, rotated, rot90)
      gcnnkit eval runs/c4                                 # re-evaluate the run
      gcnnkit summarize runs/c4-s0 runs/c4-s1 runs/c4-s2   # mean ± std over seeds
      gcnnkit plugins                                      # installed backends and groups
      gcnnkit reps D4                                      # representations a group offers

    Errors in configs or inputs print one line "error: ..." and exit with code 2.
    """


__all__ = ["main", "COMMANDS"]
