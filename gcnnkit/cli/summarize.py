"""``gcnnkit summarize RUN_DIR...``: finished runs that differ only in their seed, one row each:
mean ± standard deviation of the test accuracy (or error) per protocol."""

from __future__ import annotations

import click

from gcnnkit.cli._common import to_json
from gcnnkit.tools.table import format_table


def _cell(group, protocol: str, error: bool, per_run: bool) -> str:
    """``mean ± std%`` of ``group`` under ``protocol`` in percent (of error: 100 − accuracy)."""
    mean = 100 * (1 - group.mean(protocol) if error else group.mean(protocol))
    text = f"{mean:.2f}"
    if len(group.run_dirs) > 1:
        text += f" ± {100 * group.std(protocol):.2f}"
    text += "%"
    if per_run and len(group.run_dirs) > 1:
        text += " (" + " / ".join(f"{100 * (1 - v if error else v):.2f}" for v in group.accuracy[protocol]) + ")"
    return text


@click.command("summarize")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR...")
@click.option("--error", is_flag=True, help="Report test error (100% - accuracy) instead of accuracy.")
@click.option("--per-run", is_flag=True, help="Also list each run's value, in the order the runs were given.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON (fractions, not percentages).")
def command(run_dirs: tuple[str, ...], error: bool, per_run: bool, as_json: bool) -> None:
    """Gather finished runs into groups of equal config (seeds, devices, paths aside) and print,
    per group, how many seeds and the mean ± sample standard deviation under each protocol.
    Train a config once per seed (--set seed=N) and give all the run directories, e.g.
    runs/p4cnn-s0 runs/p4cnn-s1 runs/p4cnn-s2.

    \b
    Examples:
      gcnnkit summarize runs/c4 runs/d4 --per-run     # one row per config
      gcnnkit summarize runs/c4 --error --json        # test error, as JSON
    """
    from gcnnkit.run.aggregate import summarize_runs

    groups = summarize_runs(list(run_dirs))
    if as_json:
        click.echo(to_json([g.to_dict() for g in groups]))
        return
    protocols = list(dict.fromkeys(p for g in groups for p in g.accuracy))
    header = ("runs", "seeds", "params", "epochs", "precision", *protocols)
    rows = [header]
    for g in groups:
        rows.append(
            (
                g.label,
                ",".join(map(str, g.seeds)),
                f"{g.params:,}",
                "/".join(map(str, sorted(set(g.epochs)))),
                "/".join(sorted(set(g.precision))),
                *(_cell(g, p, error, per_run) if p in g.accuracy else "-" for p in protocols),
            )
        )
    click.echo(f"test {'error' if error else 'accuracy'}: mean ± sample std over the seeds of each group")
    for line in format_table(rows, "<<>><>"):
        click.echo(line)
