#!/usr/bin/env python3
"""What the results database costs on each engine: 100k lab results stored, then compared.

    python scripts/bench_store.py [--nights 100] [--devices 250] [--jobs 4] [--single 2000]

Writes the same synthetic lab history (NIGHTS runs x DEVICES devices x JOBS jobs =
100k results with their lab job rows, samples, snapshots and builds) into a new SQLite
file and a new database on a throwaway PostgreSQL server (scripts/pg_rig.py, fsync on,
so both engines make every commit durable), through the library, and times:

- insert: every result and its job row, 1,000 per transaction (as `store copy` writes);
- single: SINGLE results, one transaction each (as `bench` and `lab run` write them);
- compare: `lab compare` of the newest night against last-7-nights;
- report: the data of `lab report` over every night (each night judged against its
  own baseline: every one of the 100k results is read and compared);
- copy: `store copy` of the whole history from the SQLite file into PostgreSQL.

It prints each figure for both engines and the ratio (PostgreSQL / SQLite), and checks
that both engines gave the same findings.  ``fill_history`` is also what the store
tests use for a small history.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from edgeshrink.lab import compare  # noqa: E402
from edgeshrink.lab.history import LabHistory  # noqa: E402
from edgeshrink.lab.reporting import build_report  # noqa: E402
from edgeshrink.store import ResultStore, copy_store, insert_result  # noqa: E402

SUITE = 'name = "bench-store"\n[regression]\nbaseline = "last-7-nights"\n'
SHA = "ab" * 32


def fill_history(
    db: str, *, nights: int, devices: int, jobs: int, batch: int = 1000, seed: int = 7
) -> int:
    """A lab history of ``nights`` finished runs, every device running every job each
    night, written through the library; the same arguments give the same rows on any
    engine.  Device 0's first job gets 3x slower on the last night.  Returns the results."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, 2, tzinfo=timezone.utc)
    job_names = [f"job{j}" for j in range(jobs)]
    device_names = [f"dev{d:03d}" for d in range(devices)]
    written = 0
    with LabHistory.open(db, "bench-host") as hist:
        store = hist.store
        for night in range(nights):
            run_id, _joined = hist.open_run(
                suite_name="bench-store", inventory_path="lab.toml", inventory_text="# lab\n",
                inventory_sha256=SHA, suite_path="suite.toml", suite_text=SUITE,
                suite_sha256=f"{night:064x}", edgeshrink_version="bench",
                host_tools={"host": "bench-host"}, join_within_s=None,
            )  # fmt: skip
            when = (start + timedelta(days=night)).isoformat(timespec="milliseconds")
            hist.add_run_devices(run_id, [(d, {"name": d}) for d in device_names])
            hist.add_jobs(
                run_id, [(d, j, "settings", "build") for d in device_names for j in job_names]
            )
            for j in job_names:
                hist.save_build(run_id, j, "build", {"status": "ok", "artifact_sha256": SHA,
                                                      "source_sha256": SHA, "quant": "Q8_0",
                                                      "format": "gguf", "reused": 1})  # fmt: skip
            ids = {
                (r["device"], r["job"]): r["id"]
                for r in store.query(
                    "SELECT id, device, job FROM lab_jobs WHERE run_id = ?", (run_id,)
                )
            }
            pending = [(d, j) for d in device_names for j in job_names]
            for first in range(0, len(pending), batch):
                with store.transaction() as conn:
                    for device, job in pending[first : first + batch]:
                        slow = 3.0 if (night == nights - 1 and device == device_names[0]
                                       and job == job_names[0]) else 1.0  # fmt: skip
                        tg = [round(50.0 / slow * rng.uniform(0.97, 1.03), 3) for _ in range(5)]
                        pp = [round(400.0 / slow * rng.uniform(0.97, 1.03), 3) for _ in range(5)]
                        result_id = insert_result(
                            conn,
                            {"target": device, "target_kind": "ssh", "format": "gguf",
                             "quant": "Q8_0", "model_name": f"{job}.gguf", "artifact_sha256": SHA,
                             "status": "ok", "tg_tok_s": sum(tg) / 5, "pp_tok_s": sum(pp) / 5,
                             "peak_rss_mb": 120.0, "threads": 4, "params_key": "p"},
                            {"schema": "edgeshrink.bench/1", "status": "ok", "tg": tg, "pp": pp},
                        )  # fmt: skip
                        conn.execute(
                            "UPDATE lab_jobs SET status = 'done', result_status = 'ok', attempts = 1,"
                            " started_at = ?, finished_at = ?, seconds = 1.5, result_id = ?,"
                            " samples = ?, metrics = ?, context = ? WHERE id = ?",
                            (when, when, result_id, json.dumps({"tg_tok_s": tg, "pp_tok_s": pp}),
                             json.dumps({"tg_tok_s": sum(tg) / 5, "peak_rss_mb": 120.0}),
                             json.dumps({"artifact_sha256": SHA, "runtime": "llama_cpp",
                                         "threads": 4, "os": "Debian 12"}),
                             ids[(device, job)]),
                        )  # fmt: skip
                        written += 1
            with store.transaction() as conn:
                conn.execute(
                    "UPDATE lab_runs SET status = 'finished', started_at = ?, finished_at = ?,"
                    " summary = ? WHERE id = ?",
                    (when, when, json.dumps({"jobs": len(pending), "ok": len(pending)}), run_id),
                )
    return written


def findings_of(db: str) -> list[tuple[Any, ...]]:
    comp = compare(db)
    return [(f.device, f.job, f.metric, f.verdict, f.current) for f in comp.findings]


def timed(what: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = what()
    return time.perf_counter() - start, value


def measure(db: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["insert"], out["results"] = timed(
        lambda: fill_history(db, nights=args.nights, devices=args.devices, jobs=args.jobs)
    )

    def singles() -> None:
        with ResultStore(db) as store:
            for i in range(args.single):
                store.add_result({"target": "single", "target_kind": "ssh", "format": "gguf",
                                  "model_name": "m.gguf", "status": "ok", "threads": i}, {"i": i})  # fmt: skip

    out["single"], _ = timed(singles)
    out["compare"], out["findings"] = timed(lambda: findings_of(db))
    out["report"], report = timed(lambda: build_report(db, since=None))
    out["report_runs"] = len(report.view.runs)
    return out


def main(argv: list[str] | None = None) -> int:
    import pg_rig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=100)
    parser.add_argument("--devices", type=int, default=250)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--single", type=int, default=2000, help="results one transaction each")
    args = parser.parse_args(argv)
    problem = pg_rig.postgres_available()
    if problem:
        print(f"bench_store: no PostgreSQL here: {problem}", file=sys.stderr)
        return 1
    total = args.nights * args.devices * args.jobs
    print(f"{total} results: {args.nights} nights x {args.devices} devices x {args.jobs} jobs")
    with (
        tempfile.TemporaryDirectory(prefix="bench-store-") as work,
        pg_rig.postgres_rig(fsync=True) as rig,
    ):
        lite = str(Path(work) / "results.db")
        pg = rig.create_database("bench")
        figures = {}
        for name, db in (("SQLite", lite), ("PostgreSQL", pg)):
            print(f"· {name} ...", file=sys.stderr, flush=True)
            figures[name] = measure(db, args)
        copy_s, report = timed(lambda: copy_store(lite, rig.create_database("copy")))
    a, b = figures["SQLite"], figures["PostgreSQL"]
    rows = [
        ("insert (1,000 per transaction)", a["insert"], b["insert"], f"{total / a['insert']:,.0f}", f"{total / b['insert']:,.0f}", "results/s"),
        (f"{args.single:,} single-row transactions", a["single"], b["single"], f"{args.single / a['single']:,.0f}", f"{args.single / b['single']:,.0f}", "results/s"),
        ("lab compare (newest night)", a["compare"], b["compare"], "", "", ""),
        (f"lab report data ({a['report_runs']} nights judged)", a["report"], b["report"], f"{total / a['report']:,.0f}", f"{total / b['report']:,.0f}", "results/s"),
    ]  # fmt: skip
    print(
        f"{'figure':44} {'SQLite s':>10} {'PostgreSQL s':>13} {'ratio':>7}   rates (SQLite / PostgreSQL)"
    )
    for label, lite_s, pg_s, lite_rate, pg_rate, unit in rows:
        rate = f"   {lite_rate} / {pg_rate} {unit}" if unit else ""
        print(f"{label:44} {lite_s:10.2f} {pg_s:13.2f} {pg_s / lite_s:7.2f}{rate}")
    print(
        f"store copy SQLite -> PostgreSQL: {report.copied:,} rows in {copy_s:.1f} s, verified: {report.verified}"
    )
    same = a["findings"] == b["findings"]
    print(
        f"same findings on both engines: {'yes' if same else 'NO'} ({len(a['findings'])} findings)"
    )
    return 0 if same and report.verified else 1


if __name__ == "__main__":
    sys.exit(main())
