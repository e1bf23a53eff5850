"""``gcnnkit reps GROUP``: the representations a group offers, with their kind and size."""

from __future__ import annotations

import click

from gcnnkit.cli._common import to_json
from gcnnkit.tools.table import format_table


def _spec_name(rep) -> str:
    """How a spec's ``out`` mapping asks for ``rep``."""
    if rep.kind == "irrep":
        return f"irrep({','.join(map(str, rep.params))})"
    if rep.kind == "quotient":
        sid = rep.params[0]
        return f"quotient({','.join(map(str, sid)) if isinstance(sid, tuple) else sid})"
    return rep.name


@click.command("reps")
@click.argument("group")
@click.option("--json", "as_json", is_flag=True, help="Print [{name, spec, kind, params, size, permutation}] as JSON.")
def command(group: str, as_json: bool) -> None:
    """List what GROUP offers for field types: name (escnn's), how a spec names it, kind, size.

    \b
    Examples:
      gcnnkit reps D4
    A spec asks for fields by the 'spec' column: out: {regular: 8, irrep(1,1): 4, trivial: 2}.
    """
    from gcnnkit.core.registry import get_group

    g = get_group(group)
    reps = g.all_representations()
    rows = [
        {
            "name": r.name,
            "spec": _spec_name(r),
            "kind": r.kind,
            "params": [list(p) if isinstance(p, tuple) else p for p in r.params],
            "size": r.size,
            "permutation": r.is_permutation,
        }
        for r in reps
    ]
    if as_json:
        click.echo(to_json({"group": g.name, "order": g.order, "continuous": g.continuous, "representations": rows}))
        return
    if g.continuous:  # its order is the number of rotations that stand for it in checks, not its size
        click.echo(f"{g.name}: continuous, band-limited irreps; checks act with {g.order} sampled elements")
    else:
        click.echo(f"{g.name}: {g.order} elements")
    table = [("name", "spec", "kind", "size", "permutation")]
    table += [(r["name"], r["spec"], r["kind"], r["size"], "yes" if r["permutation"] else "no") for r in rows]
    for line in format_table(table, align="<<<><"):
        click.echo(line)
