"""``gcnnkit plugins``: installed backends, groups and data sets, and why any failed to load."""

from __future__ import annotations

import click

from gcnnkit.cli._common import to_json
from gcnnkit.tools.table import format_table


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print {backends, groups, datasets: [...]} as JSON.")
def command(as_json: bool) -> None:
    """List backend, group and data-set plugins with their distribution and version; failed ones with the reason."""
    from gcnnkit.core.registry import discovery_note, plugin_allow_list, plugin_report

    infos = plugin_report()
    if as_json:
        click.echo(
            to_json(
                {
                    "backends": [i.to_dict() for i in infos if i.kind == "backend"],
                    "groups": [i.to_dict() for i in infos if i.kind == "group"],
                    "datasets": [i.to_dict() for i in infos if i.kind == "dataset"],
                }
            )
        )
        return
    note, allow = discovery_note(), plugin_allow_list()
    if not infos:
        if note is None:
            click.echo("no plugins installed (pip install gcnnkit-native)")
        elif allow is None:
            click.echo(f"{note} and nothing is registered in-process")
        else:
            click.echo(f"{note}: no installed plugin matches and nothing is registered in-process")
        return
    if note is not None:
        shown = "in-process registrations only" if allow is None else "the plugins it allows and in-process ones"
        click.echo(f"{note}: showing {shown}")
    rows = [(i.kind, i.name, i.origin, _status(i)) for i in infos]
    for line in format_table([("kind", "name", "from", "status"), *rows]):
        click.echo(line)


def _status(info) -> str:
    if info.error:
        return f"FAILED: {info.error}"
    return "ok (family)" if info.is_family else "ok"
