"""Many writers on one results database, and a writer killed in the middle of its
transaction: real processes on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from edgeshrink.store import ResultStore

WRITERS = 16
ROWS_EACH = 25

# Each writer adds its rows one transaction at a time, as `bench` and the lab do; the
# first users of a new database also race its migrations.
WRITER = textwrap.dedent(
    """
    import sys
    from edgeshrink.store import ResultStore
    db, name, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with ResultStore(db) as store:
        for i in range(rows):
            store.add_result(
                {"target": name, "target_kind": "ssh", "format": "gguf", "model_name": "m.gguf",
                 "status": "ok", "threads": i, "tg_tok_s": 10.0 + i},
                {"writer": name, "row": i},
            )
    """
)

# A writer that opens an immediate transaction (the lab's lock), writes into the results
# and the lab tables, says so and waits there to be killed.
DIES_INSIDE = textwrap.dedent(
    """
    import sys, time
    from edgeshrink.store import ResultStore, insert_result
    with ResultStore(sys.argv[1]) as store, store.transaction(immediate=True) as db:
        for i in range(50):
            insert_result(db, {"target": "doomed", "target_kind": "ssh", "format": "gguf",
                               "model_name": "m.gguf", "status": "ok"}, {"row": i})
        db.execute(
            "INSERT INTO lab_locks (resource, device, owner, host, pid, acquired_at,"
            " heartbeat_at) VALUES ('ssh:doomed:22', 'doomed', 'me', 'h', 1, 'now', 0)"
        )
        print("inside", flush=True)
        time.sleep(120)
    """
)


def test_sixteen_concurrent_writers_lose_no_row(store_db: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store_db, f"w{i:02d}", str(ROWS_EACH)],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(WRITERS)
    ]
    failures = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert all(code == 0 for code, _ in failures), failures
    with ResultStore(store_db) as store:
        rows = store.query("SELECT id, target, threads FROM results")
        assert len(rows) == WRITERS * ROWS_EACH
        assert len({r["id"] for r in rows}) == len(rows)
        by_writer: dict[str, list[int]] = {}
        for r in rows:
            by_writer.setdefault(r["target"], []).append(r["threads"])
        assert sorted(by_writer) == [f"w{i:02d}" for i in range(WRITERS)]
        assert all(sorted(v) == list(range(ROWS_EACH)) for v in by_writer.values())
        # and every row's document is the one its writer wrote
        doc = store.get_document(rows[-1]["id"])
        assert doc == {"writer": rows[-1]["target"], "row": rows[-1]["threads"]}


def test_a_writer_killed_mid_transaction_leaves_the_store_consistent(store_db: str) -> None:
    with ResultStore(store_db) as store:
        kept = store.add_result(
            {"target": "before", "target_kind": "ssh", "format": "gguf", "model_name": "m",
             "status": "ok"}, {"kept": True},
        )  # fmt: skip
    doomed = subprocess.Popen(
        [sys.executable, "-c", DIES_INSIDE, store_db], stdout=subprocess.PIPE, text=True
    )
    try:
        assert doomed.stdout.readline().strip() == "inside"  # type: ignore[union-attr]
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    start = time.monotonic()
    with ResultStore(store_db) as store:
        # Its lock is gone with it: an immediate transaction gets in at once...
        with store.transaction(immediate=True) as db:
            db.execute("SELECT 1")
        assert time.monotonic() - start < 10
        # ...and none of its rows are there, every earlier one is, and writing works.
        assert store.query("SELECT COUNT(*) FROM results WHERE target = 'doomed'")[0][0] == 0
        assert store.query("SELECT COUNT(*) FROM lab_locks")[0][0] == 0
        assert store.get_document(kept) == {"kept": True}
        after = store.add_result(
            {"target": "after", "target_kind": "ssh", "format": "gguf", "model_name": "m",
             "status": "ok"}, {},
        )  # fmt: skip
        assert [r.id for r in store.list_results()] == [after, kept]
