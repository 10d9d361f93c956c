"""`store`: the results database itself.

edgeshrink store copy ~/.local/share/edgeshrink/results.db postgresql://lab@db.lab.example/edgeshrink
"""

from __future__ import annotations

import click

from edgeshrink.cli.common import JSON_OPTION, emit_json, progress_printer
from edgeshrink.report.table import render_table
from edgeshrink.store.copy import copy_store


@click.group("store")
def store() -> None:
    """The results database: move a whole history between SQLite and PostgreSQL.

    \b
    A database is a SQLite file (a path or sqlite:///PATH) or a PostgreSQL URL
    (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE); --db and EDGESHRINK_DB
    of every command take the same.
    """


@store.command("copy")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@click.option(
    "--dry-run", is_flag=True, help="Count what would be copied; write nothing (DST is created)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@JSON_OPTION
def store_copy(source: str, destination: str, dry_run: bool, quiet: bool, as_json: bool) -> None:
    """Copy every result, quality measurement and lab run from SRC to DST, then verify.

    Either may be SQLite or PostgreSQL.  Ids are kept, so everything that points at
    a row still does.  Every table is verified: its row count and a checksum of its
    rows must be the same in both.  Interrupted, the same command again finishes
    the copy without duplicates.  DST must be new (or a copy of SRC in progress).
    """
    say = (lambda _message: None) if quiet else progress_printer(as_json)
    report = copy_store(source, destination, dry_run=dry_run, progress=say)
    if as_json:
        emit_json(report.to_dict())
        return
    click.echo(
        render_table(
            ["TABLE", "IN SRC", "IN DST BEFORE", "COPIED" if not dry_run else "TO COPY",
             "IN DST", "VERIFIED"],
            [(t.table, t.source_rows, t.destination_rows_before,
              t.copied if not dry_run else t.source_rows - t.destination_rows_before,
              t.destination_rows if not dry_run else None,
              ("yes" if t.verified else "NO") if not dry_run else None) for t in report.tables],
            right=(1, 2, 3, 4),
        )
    )  # fmt: skip
    skipped = "; ".join(f"{name}: {why}" for name, why in report.not_copied.items())
    click.echo(f"not copied: {skipped}")
    if dry_run:
        total = sum(t.source_rows - t.destination_rows_before for t in report.tables)
        click.echo(
            f"dry run: {total} row(s) would be copied from {report.source} to {report.destination}"
        )
        return
    click.echo(
        f"copied {report.copied} row(s) from {report.source} to {report.destination} in "
        f"{report.seconds:.1f} s; every table verified (row count and sha256 of its rows)"
    )


COMMANDS = (store,)
