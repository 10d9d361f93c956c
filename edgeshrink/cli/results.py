"""`results`: what the results database holds."""

from __future__ import annotations

from pathlib import Path

import click

from edgeshrink.cli.common import DB_OPTION, JSON_OPTION, emit_json
from edgeshrink.report.sweep_page import write_page
from edgeshrink.report.table import render_table
from edgeshrink.store import ResultStore

DB = DB_OPTION


@click.group(invoke_without_command=True)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 100000),
    default=20,
    show_default=True,
    help="How many, newest first.",
)
@click.option("--target", "-t", default=None, help="Only this target.")
@click.option(
    "--status",
    type=click.Choice(["ok", "error", "timeout", "oom"]),
    default=None,
    help="Only this status.",
)
@DB
@JSON_OPTION
@click.pass_context
def results(
    ctx: click.Context,
    limit: int,
    target: str | None,
    status: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """List stored benchmark results, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    with ResultStore(db) as store:
        rows = store.list_results(limit=limit, target=target, status=status)
        path = store.path
    if as_json:
        emit_json([r.to_dict() for r in rows])
        return
    if not rows:
        click.echo(f"no results in {path} yet; run `edgeshrink demo`")
        return
    click.echo(render_table(
        ["ID", "WHEN (UTC)", "TARGET", "PROFILE", "MODEL", "QUANT", "STATUS", "PP TOK/S", "TG TOK/S",
         "TTFT MS", "LAT P50/P90 MS", "PEAK MB"],
        [(r.id, r.created_at[:19].replace("T", " "), r.target, r.profile_id, r.model_name, r.quant, r.status,
          r.pp_tok_s, r.tg_tok_s, r.ttft_ms, _latency(r), r.peak_rss_mb) for r in rows],
        right=(0, 7, 8, 9, 10, 11),
    ))  # fmt: skip


def _latency(r) -> str | None:
    if r.latency_ms is None:
        return None
    p90 = f"{r.latency_p90_ms:.3g}" if r.latency_p90_ms is not None else "-"
    return f"{r.latency_ms:.3g}/{p90}"


@results.command("show")
@click.argument("result_id", type=int)
@DB
def results_show(result_id: int, db: str | None) -> None:
    """Print the agent's whole JSON document of one result."""
    with ResultStore(db) as store:
        emit_json(store.get_document(result_id))


@results.command("sweeps")
@DB
@JSON_OPTION
def results_sweeps(db: str | None, as_json: bool) -> None:
    """List stored sweeps, newest first."""
    with ResultStore(db) as store:
        rows = [dict(r) for r in store.sweeps()]
    if as_json:
        emit_json(rows)
        return
    click.echo(render_table(
        ["ID", "WHEN", "MODEL", "PROFILE", "TARGET", "PICK"],
        [[r["id"], r["created_at"], r["model_name"], r["profile_id"], r["target"] or "-", r["pick"] or "-"]
         for r in rows],
        right=(0,),
    ))  # fmt: skip


@results.command("sweep")
@click.argument("sweep_id", type=int)
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the sweep's page again: HTML, or Markdown for a path ending in .md.")  # fmt: skip
@DB
@JSON_OPTION
def results_sweep(sweep_id: int, report_path: Path | None, db: str | None, as_json: bool) -> None:
    """One stored sweep: its pick and reason, or its whole page with --report."""
    with ResultStore(db) as store:
        doc = store.get_sweep(sweep_id)
    if report_path:
        write_page(doc, report_path)
    if as_json:
        emit_json(doc)
        return
    click.echo(f"sweep #{sweep_id} of {Path(doc['model']).name} on {doc['profile']}: pick "
               f"{doc.get('pick') or 'none'}")  # fmt: skip
    click.echo(doc["reason"])
    if report_path:
        click.echo(f"report: {report_path}")


COMMANDS = (results,)
