"""`targets`: the devices edgeshrink can reach."""

from __future__ import annotations

import click

from edgeshrink.cli.main import emit_json
from edgeshrink.report.table import render_pairs, render_table


@click.group()
def targets() -> None:
    """Targets: the devices edgeshrink can reach (built-in: local)."""


@targets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def targets_list(as_json: bool) -> None:
    """List the known targets."""
    from edgeshrink.targets import list_targets

    found = list_targets()
    if as_json:
        emit_json([t.to_dict() for t in found])
        return
    rows = [(t.name, t.kind, t.describe(), t.profile or "-", t.work_dir, t.source) for t in found]
    click.echo(render_table(["NAME", "KIND", "WHERE", "PROFILE", "WORK DIR", "FROM"], rows))


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def targets_show(name: str, as_json: bool) -> None:
    """Show one target."""
    from edgeshrink.targets import get_target

    target = get_target(name)
    if as_json:
        emit_json(target.to_dict())
        return
    click.echo(render_pairs(list(target.to_dict().items())))


COMMANDS = (targets,)
