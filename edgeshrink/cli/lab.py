"""`lab`: nightly runs across a fleet of devices, compared with a baseline, reported.

edgeshrink lab run --inventory targets/lab.toml --suite lab/suite.toml
edgeshrink lab compare --baseline last-7-nights --junit lab.xml
edgeshrink lab report --since 30d -o report.html
edgeshrink lab status
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeshrink.cli.common import DB_OPTION, JSON_OPTION, FiniteFloat, emit_json
from edgeshrink.lab import compare, load_inventory, load_suite, plan_lab, run_lab
from edgeshrink.lab.claims import (
    DEFAULT_LEASE_S,
    board_locks,
    run_alive,
    runners_of,
    unreachable_devices,
)
from edgeshrink.lab.config import LabConfigError
from edgeshrink.lab.history import LabHistory, this_host
from edgeshrink.lab.reporting import build_report
from edgeshrink.lab.stats import median
from edgeshrink.report.html import write_html
from edgeshrink.report.junit import write_junit
from edgeshrink.report.markdown import render_markdown, write_markdown
from edgeshrink.report.table import render_table

DB = DB_OPTION
JSON = JSON_OPTION
BASELINE = click.option(
    "--baseline",
    default=None,
    metavar="SPEC",
    help="last-N-nights (= last-N-runs: the N runs of the suite before the one compared) or "
    "run:ID[,ID...] [default: the suite's [regression] baseline, else last-7-nights].",
)


@click.group("lab")
def lab() -> None:
    """The device lab: the same jobs on many devices every night, and what changed.

    \b
    A nightly cron line:
      edgeshrink lab run --inventory targets/lab.toml --suite lab/suite.toml; \\
      edgeshrink lab compare --junit lab.xml && edgeshrink lab report -o report.html

    \b
    Several lab hosts share one fleet through one PostgreSQL database: each runs
    the same `lab run` with EDGESHRINK_DB=postgresql://USER@HOST/DB; they join
    one run and each device goes to a host that reaches it (reachable_from).
    """


# --------------------------------------------------------------------------- run


def _event_printer(quiet: bool):
    def show(event: Any) -> None:
        if quiet and (
            event.kind not in ("device-failed", "run-finished", "waiting", "interrupted")
            or (event.kind == "waiting" and event.device)  # a board a fellow runner holds
        ):
            return
        where = "/".join(p for p in (event.device, event.job) if p)
        prefix = f"[{where}] " if where else ""
        color = {"device-failed": "red", "job-failed": "red", "claim-lost": "red", "retry": "yellow",
                 "device-left": "yellow"}.get(event.kind)  # fmt: skip
        text = f"· {prefix}{event.message}"
        click.echo(click.style(text, fg=color) if color else click.style(text, dim=True), err=True)

    return show


def _print_plan(plan: Any) -> None:
    doc = plan.to_dict()
    click.echo(f"plan for suite {doc['suite_name']} ({doc['suite']}) on {doc['inventory']}")
    click.echo(
        render_table(
            ["DEVICE", "TARGET", "TAGS", "JOBS"],
            [(name, d["target"], ", ".join(d["tags"]) or "-", ", ".join(d["jobs"]) or "(none)")
             for name, d in doc["devices"].items()],
        )
    )  # fmt: skip
    click.echo("")
    click.echo(
        render_table(
            ["BUILD", "JOB", "FROM", "QUANT", "FOR"],
            [(b["key"], b["job"], Path(b["source"]).name, b["quant"] or "(prebuilt)", ", ".join(b["devices"]))
             for b in doc["builds"]],
        )
    )  # fmt: skip
    cool, retry = doc["cooldown"], doc["retry"]
    click.echo(
        f"\ncool-down before each benchmark: until under {cool['max_temp_c']:g} °C, at most "
        f"{cool['max_wait_s']:g} s; retries per device: {retry['retries']} ({retry['delay_s']:g} s apart)"
    )


def _speed(job: Any, metric: str) -> float | None:
    """The median of a job's repetitions: the figure `lab compare` judges (a mean would
    let one slow repetition move it)."""
    samples = (job.samples or {}).get(metric)
    return round(median(samples), 1) if samples else job.metrics.get(metric)


def _job_rows(jobs: list[Any]) -> list[tuple[Any, ...]]:
    rows = []
    for j in jobs:
        m, cool = j.metrics, j.cooldown or {}
        cooled = cool.get("status") or "-"
        if cooled in ("cool", "timeout"):
            cooled = f"{cooled} {cool.get('temp_c', 0):.0f}°C/{cool.get('waited_s', 0):.0f}s"
        status = j.result_status if j.status == "done" else j.status
        rows.append((j.device, j.job, status, _speed(j, "pp_tok_s"), _speed(j, "tg_tok_s"),
                     m.get("peak_rss_mb"), cooled, j.attempts, j.result_id,
                     (j.error or "")[:70] or None))  # fmt: skip
    return rows


JOB_HEADERS = ["DEVICE", "JOB", "STATUS", "PP TOK/S", "TG TOK/S", "PEAK MB", "COOL-DOWN", "TRIES",
               "RESULT", "ERROR"]  # fmt: skip
JOB_LEGEND = "tok/s: median of the job's repetitions (what `lab compare` judges)"
COMPARE_LEGEND = (
    "speeds and times: NOW is the median of this run's repetitions, BASELINE the median of"
    " the baseline runs' medians; other metrics: one value per run"
)


@lab.command("run")
@click.option("--inventory", "-i", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Inventory TOML: the devices (see targets/lab.toml).")  # fmt: skip
@click.option("--suite", "-s", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Suite TOML: the jobs (see lab/suite.toml).")  # fmt: skip
@DB
@click.option("--resume", type=int, default=None, metavar="RUN_ID",
              help="Finish an interrupted or partly failed run: only its jobs without a stored "
              "measurement run again (with the inventory and suite stored with the run).")  # fmt: skip
@click.option("--run-id", "join_run", type=int, default=None, metavar="RUN_ID",
              help="Join this run (another lab host's) with its stored inventory and suite "
              "[default: join a running run of the same inventory and suite started in the "
              "last 12 h, else start one].")  # fmt: skip
@click.option("--lock-wait", type=FiniteFloat(min=0), default=0.0, show_default=True,
              metavar="SECONDS",
              help="Wait this long for devices another lab run holds, then refuse.")  # fmt: skip
@click.option("--lease", type=FiniteFloat(min=1), default=DEFAULT_LEASE_S, show_default=True,
              metavar="SECONDS",
              help="How long this runner's boards and jobs outlive its last heartbeat: when it "
              "dies, other runners take them over after this.")  # fmt: skip
@click.option("--lab-host", default=None, envvar="EDGESHRINK_LAB_HOST", metavar="NAME",
              help="This lab host's name, as the inventory's reachable_from names it "
              "[default: the host name; env EDGESHRINK_LAB_HOST].")  # fmt: skip
@click.option("--artifacts-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where built artifacts are cached [default: user cache dir/edgeshrink/lab/artifacts].")  # fmt: skip
@click.option(
    "--dry-run", is_flag=True, help="Show which device runs what and what is built; run nothing."
)
@click.option("--quiet", "-q", is_flag=True, help="Only failures and the summary on stderr.")
@JSON
def lab_run(
    inventory: Path | None,
    suite: Path | None,
    db: str | None,
    resume: int | None,
    join_run: int | None,
    lock_wait: float,
    lease: float,
    lab_host: str | None,
    artifacts_dir: Path | None,
    dry_run: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run every job of a suite on every device of an inventory (devices in parallel).

    A run of the same inventory and suite that another runner (on another lab host,
    sharing the database) started in the last 12 h and is still running is joined:
    each job runs once, on one runner, and each board runs one benchmark at a time.
    A runner that dies loses its boards and jobs to the others after its --lease.

    Exit code 0 when every job measured ok (or, when other runners finish the run,
    none failed so far), 1 when some job failed (stored either way; `lab compare`
    tells whether that is new).
    """
    if resume is not None and join_run is not None:
        raise click.UsageError("give --resume RUN_ID or --run-id RUN_ID, not both")
    if resume is None and join_run is None and (inventory is None or suite is None):
        raise click.UsageError("give --inventory and --suite (or --resume / --run-id RUN_ID)")
    inv = load_inventory(inventory) if inventory else None
    sui = load_suite(suite) if suite else None
    if dry_run:
        if inv is None or sui is None:
            raise LabConfigError("--dry-run needs --inventory and --suite")
        plan = plan_lab(inv, sui)
        if as_json:
            emit_json(plan.to_dict())
        else:
            _print_plan(plan)
        return
    outcome = run_lab(
        inv, sui, db=db, resume=resume, run_id=join_run, lock_wait_s=lock_wait, lease_s=lease,
        lab_host=lab_host, artifacts_dir=artifacts_dir,
        progress=None if as_json else _event_printer(quiet),
    )  # fmt: skip
    if as_json:
        emit_json(outcome.to_dict())
    else:
        click.echo(render_table(JOB_HEADERS, _job_rows(list(outcome.jobs)), right=(3, 4, 5, 7, 8)))
        click.echo(JOB_LEGEND)
        failed = [d for d in outcome.devices if d.status == "failed"]
        ok = sum(1 for j in outcome.jobs if j.ok)
        how = " (resumed)" if outcome.resumed else " (joined)" if outcome.joined else ""
        waiting = sorted({j.device for j in outcome.waiting})
        click.echo(
            f"\nrun {outcome.run_id} {outcome.status}{how} in "
            f"{outcome.seconds:.1f} s: {ok} of {len(outcome.jobs)} job(s) ok"
            + (f"; failed device(s): {', '.join(d.name for d in failed)}" if failed else "")
            + (f"; {len(outcome.waiting)} job(s) left to other runners or lab hosts "
               f"({', '.join(waiting)})" if waiting else "")
            + f"; stored in {outcome.db_path}"
        )  # fmt: skip
        click.echo(f"next: edgeshrink lab compare --run {outcome.run_id}")
    if not outcome.ok:
        raise click.exceptions.Exit(1)


# --------------------------------------------------------------------------- compare


def _print_comparison(comp: Any, verbose: bool) -> None:
    run = comp.run
    base = ", ".join(map(str, sorted(comp.baseline_runs))) or "none"
    click.echo(
        f"run {run.id} of suite {run.suite_name} ({run.started_at[:16].replace('T', ' ')} UTC, {run.status}) "
        f"against {comp.baseline_spec}: run(s) {base}"
    )
    shown = [f for f in comp.findings if verbose or f.verdict not in ("unchanged",)]
    if shown:
        click.echo(
            render_table(
                ["VERDICT", "DEVICE", "JOB", "METRIC", "BASELINE", "NOW", "CHANGE", "×WORSE", "LIMIT", "P"],
                [(f.verdict, f.device, f.job, f.metric, f.baseline, f.current,
                  f"{f.change:+.1%}" if f.change is not None else None,
                  f"{f.factor:.2f}" if f.factor is not None else None,
                  f"{1 + f.limit:.2f}" if f.limit is not None else None,
                  f"{f.p_value:.2g}" if f.p_value is not None else None) for f in shown],
                right=(4, 5, 6, 7, 8, 9),
            )
        )  # fmt: skip
        click.echo(COMPARE_LEGEND)
    for f in comp.regressions + [f for f in comp.findings if f.verdict == "failing"]:
        click.echo(f"\n{f.verdict}: {f.device} / {f.job} / {f.metric}\n  {f.message}")
        if f.changed and f.verdict == "new-failure":
            click.echo("  changed: " + "; ".join(c.describe() for c in f.changed))
    counts = {
        v: comp.count(v) for v in ("unchanged", "not significant", "short baseline", "no-baseline")
    }
    click.echo(
        f"\n{len(comp.metric_regressions)} regressed, {len(comp.failures)} failed "
        f"({len(comp.new_failures)} new), {len(comp.improvements)} improved; "
        + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    )


@lab.command("compare")
@click.option(
    "--run", "run_id", type=int, default=None, help="The run to judge [default: the newest]."
)
@click.option("--suite", "suite_name", default=None, help="The newest run of this suite (by name).")
@BASELINE
@click.option("--threshold", type=FiniteFloat(min=0, max=10), default=None,
              help="Relative change that matters for speed (0.1 = 1.1× worse) [default: the suite's].")  # fmt: skip
@click.option("--alpha", type=FiniteFloat(min=1e-9, max=0.5), default=None,
              help="Significance level of the Mann–Whitney U test [default: the suite's, else 0.01].")  # fmt: skip
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write JUnit XML here (one test case per device, job and metric).")  # fmt: skip
@click.option("--all", "verbose", is_flag=True, help="List unchanged metrics too.")
@DB
@JSON
def lab_compare(
    run_id: int | None,
    suite_name: str | None,
    baseline: str | None,
    threshold: float | None,
    alpha: float | None,
    junit: Path | None,
    verbose: bool,
    db: str | None,
    as_json: bool,
) -> None:
    """Compare a run with its baseline; exit code 1 when something regressed.

    A regression is a speed metric worse by more than the threshold and the
    noise between nights with Mann–Whitney p < alpha, memory or quality that
    got worse, or a job that was ok in the baseline and failed now.
    """
    comp = compare(
        db, run_id=run_id, suite_name=suite_name, baseline=baseline,
        overrides={"threshold": threshold, "alpha": alpha},
    )  # fmt: skip
    if junit:
        write_junit(comp, junit)
    if as_json:
        emit_json(comp.to_dict())
    else:
        _print_comparison(comp, verbose)
        if junit:
            click.echo(f"wrote {junit}")
    if comp.regressions:
        raise click.exceptions.Exit(1)


# --------------------------------------------------------------------------- report


@lab.command("report")
@click.option("--since", default="30d", show_default=True,
              help="The window: a duration (30d, 12h, 2w) or a date (2026-11-01).")  # fmt: skip
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here [default: lab-report.html; Markdown goes to stdout].")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["html", "markdown"]), default=None,
              help="html (one self-contained page) or markdown [default: from -o's suffix, else html].")  # fmt: skip
@click.option("--suite", "suite_name", default=None, help="Only runs of this suite.")
@BASELINE
@DB
@JSON
def lab_report(
    since: str,
    output: Path | None,
    fmt: str | None,
    suite_name: str | None,
    baseline: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Write the lab report: newest run vs baseline on top, trends per metric and device, tables."""
    report = build_report(db, since=since, suite_name=suite_name, baseline=baseline)
    if as_json:
        emit_json(report.to_dict())
        return
    if fmt is None:
        fmt = (
            "markdown"
            if output is not None and output.suffix.lower() in (".md", ".markdown")
            else "html"
        )
    comp = report.comparison
    if fmt == "markdown":
        if output is None:
            click.echo(render_markdown(report), nl=False)
            return
        write_markdown(report, output)
    else:
        output = output or Path("lab-report.html")
        write_html(report, output)
    summary = (
        f"{len(comp.metric_regressions)} regressed, {len(comp.failures)} failed "
        f"({len(comp.new_failures)} new), {len(comp.improvements)} improved "
        f"in run {comp.run.id}" if comp else "no runs in the window"
    )  # fmt: skip
    click.echo(
        f"wrote {output} ({len(report.view.runs)} run(s), {len(report.series)} trend plot(s); {summary})"
    )


# --------------------------------------------------------------------------- status


@lab.command("status")
@click.argument("run_id", type=int, required=False)
@click.option("--limit", "-n", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="How many runs, newest first.")  # fmt: skip
@DB
@JSON
def lab_status(run_id: int | None, limit: int, db: str | None, as_json: bool) -> None:
    """Recent lab runs, their runners and the devices they hold; with RUN_ID, that run's
    runners, devices and jobs."""
    host = this_host()
    with LabHistory.open(db, host) as hist, hist.store.snapshot():
        now = hist.store.now()
        if run_id is not None:
            run = hist.get_run(run_id)
            if run is None:
                raise LabConfigError(f"no lab run {run_id} in {hist.store.path}")
            devices, jobs = hist.run_devices(run_id), hist.jobs(run_id)
            runners = runners_of(hist.store, [run_id])
            unreachable = unreachable_devices(hist.store, run_id)
            alive = run_alive(hist.store, run, host=host, now=now)
        else:
            runs = hist.list_runs(limit=limit)
            runners = runners_of(hist.store, [r.id for r in runs])
            alive_runs = {r.id for r in runs if run_alive(hist.store, r, host=host, now=now)}
            locks = board_locks(hist.store)
    if run_id is not None:
        if as_json:
            emit_json({"run": run.to_dict(), "runners": [r.to_dict() for r in runners],
                       "unreachable": unreachable, "devices": devices,
                       "jobs": [j.to_dict() for j in jobs]})  # fmt: skip
            return
        stale = (" (no runner works on it now: `edgeshrink lab run --run-id "
                 f"{run.id}` on a lab host that reaches its devices joins it; "
                 f"`edgeshrink lab run --resume {run.id}` runs what failed again)") if (
            run.status == "running" and not alive) else ""  # fmt: skip
        click.echo(f"run {run.id} of suite {run.suite_name}: {run.status}{stale}, started "
                   f"{run.started_at[:19].replace('T', ' ')} UTC on {run.host}, resumed {run.resumes}×")  # fmt: skip
        if runners:
            done = {r.owner: sum(1 for j in jobs if j.runner == r.owner and j.status == "done")
                    for r in runners}  # fmt: skip
            click.echo(render_table(
                ["RUNNER HOST", "PID", "STATUS", "JOINED (UTC)", "HEARTBEAT", "JOBS DONE"],
                [(r.host, r.pid, r.status + ("" if r.status != "running" or r.alive(host, now)
                                             else " (lease passed)"),
                  r.joined_at[:19].replace("T", " "), f"{now - r.heartbeat_at:.0f} s ago",
                  done[r.owner]) for r in runners],
                right=(1, 5),
            ))  # fmt: skip
            click.echo("")
        click.echo(render_table(
            ["DEVICE", "STATUS", "SECONDS", "CONNECTS", "ERROR"],
            [(d["device"], d["status"], d["seconds"], d["attempts"], d["error"]) for d in devices],
            right=(2, 3),
        ))  # fmt: skip
        for device, hosts in sorted(unreachable.items()):
            click.echo(f"{device}: not reachable from {', '.join(sorted(hosts))}")
        click.echo("")
        click.echo(render_table(JOB_HEADERS, _job_rows(jobs), right=(3, 4, 5, 7, 8)))
        click.echo(JOB_LEGEND)
        return
    if as_json:
        emit_json({"runs": [{**r.to_dict(), "alive": r.id in alive_runs,
                             "runners": [x.to_dict() for x in runners if x.run_id == r.id]}
                            for r in runs],
                   "locks": [lk.__dict__ for lk in locks]})  # fmt: skip
        return
    if not runs:
        click.echo(
            "no lab runs yet; start one with `edgeshrink lab run --inventory ... --suite ...`"
        )
    else:
        hosts = {
            r.id: sorted({x.host for x in runners if x.run_id == r.id}) or [r.host] for r in runs
        }
        click.echo(render_table(
            ["RUN", "SUITE", "STATUS", "STARTED (UTC)", "FINISHED", "HOSTS", "OK", "FAILED", "DEVICES FAILED"],
            [(r.id, r.suite_name,
              r.status + (" (stale)" if r.status == "running" and r.id not in alive_runs else ""),
              r.started_at[:19].replace("T", " "), (r.finished_at or "-")[:19].replace("T", " "),
              ", ".join(hosts[r.id]),
              (r.summary or {}).get("ok"), (r.summary or {}).get("failed"),
              ", ".join((r.summary or {}).get("devices_failed", [])) or None) for r in runs],
            right=(0, 6, 7),
        ))  # fmt: skip
    if locks:
        click.echo("\nheld devices:")
        click.echo("\n".join(f"  {lk.describe(now)}" for lk in locks))


COMMANDS = (lab,)
