"""`results`: what the results database holds."""

from __future__ import annotations

import click

from edgeshrink.cli.common import DB_OPTION, JSON_OPTION, emit_json
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


COMMANDS = (results,)
