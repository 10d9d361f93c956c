"""The results database survives a crash at any statement of its schema creation or
upgrade, and several first users at once: real SQLite files, real processes, real kills."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeshrink.errors import StoreError
from edgeshrink.store import MIGRATIONS, SCHEMA_VERSION, ResultStore

# A child that opens the store and dies (os._exit, as a kill -9 would leave it) when
# SQLite starts its Nth statement; with N = 0 it prints how many statements there were.
CHILD = textwrap.dedent(
    """
    import os, sqlite3, sys
    import edgeshrink.store as store

    path, die_at, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if keep:  # an older edgeshrink: only the first `keep` migrations
        store.MIGRATIONS = store.MIGRATIONS[:keep]
        store.SCHEMA_VERSION = keep
    count = [0]
    connect = sqlite3.connect

    def counting_connect(*args, **kwargs):
        db = connect(*args, **kwargs)

        def trace(statement):
            count[0] += 1
            if count[0] == die_at:
                os._exit(137)

        db.set_trace_callback(trace)
        return db

    store.sqlite3.connect = counting_connect
    store.ResultStore(path).close()
    print(count[0])
    """
)

ROW = (
    "INSERT INTO results (created_at, target, target_kind, format, model_name, status, document)"
    " VALUES (?, 'dev', 'local', 'gguf', 'm.gguf', 'ok', '{}')"
)


def child(path: Path, die_at: int, keep: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(die_at), str(keep)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def statements(path: Path, keep: int = 0) -> int:
    done = child(path, 0, keep)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def old_database(path: Path, rows: int = 8) -> Path:
    """A database as edgeshrink with one migration fewer left it, holding ``rows`` results."""
    statements(path, keep=SCHEMA_VERSION - 1)
    with sqlite3.connect(path) as db:
        for i in range(rows):
            db.execute(ROW, (f"2026-12-0{1 + i % 3}T00:00:0{i}Z",))
    return path


def test_a_kill_at_any_statement_of_a_fresh_database_leaves_it_usable(tmp_path: Path) -> None:
    total = statements(tmp_path / "count.db")
    assert total > len(MIGRATIONS)
    for n in range(1, total + 1):
        db = tmp_path / f"fresh-{n}.db"
        died = child(db, n)
        assert died.returncode == 137, (n, died.stderr)
        with ResultStore(db) as store:  # opens, finishes the schema, and works
            assert store.schema_version() == SCHEMA_VERSION, n
            assert store.query("SELECT COUNT(*) FROM results")[0][0] == 0


def test_a_kill_at_any_statement_of_an_upgrade_keeps_every_row(tmp_path: Path) -> None:
    total = statements(old_database(tmp_path / "count.db"))
    assert total > 3
    for n in range(1, total + 1):
        db = old_database(tmp_path / f"old-{n}.db")
        died = child(db, n)
        assert died.returncode == 137, (n, died.stderr)
        with ResultStore(db) as store:
            assert store.schema_version() == SCHEMA_VERSION, n
            assert store.query("SELECT COUNT(*) FROM results")[0][0] == 8, n


def test_many_first_users_at_once_all_store_their_result(tmp_path: Path) -> None:
    db = tmp_path / "first.db"
    writer = textwrap.dedent(
        """
        import sys
        from edgeshrink.store import ResultStore
        with ResultStore(sys.argv[1]) as store:
            with store.transaction() as conn:
                conn.execute(
                    "INSERT INTO results (created_at, target, target_kind, format, model_name,"
                    " status, document) VALUES ('now', ?, 'local', 'gguf', 'm', 'ok', '{}')",
                    (sys.argv[2],),
                )
        """
    )
    for attempt in range(8):
        db.unlink(missing_ok=True)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", writer, str(db), f"p{i}"],
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(8)
        ]
        errors = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
        assert all(code == 0 for code, _ in errors), (attempt, errors)
        with ResultStore(db) as store:
            targets = sorted(r[0] for r in store.query("SELECT target FROM results"))
        assert targets == [f"p{i}" for i in range(8)], attempt


def test_a_newer_schema_says_upgrade_edgeshrink(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    ResultStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, 'from the future', 'now')",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(StoreError) as err:
        ResultStore(db)
    assert f"version {SCHEMA_VERSION + 1}" in err.value.message
    assert "upgrade edgeshrink" in err.value.hint


@pytest.mark.parametrize("content", [b"\x00" * 10, b"not a database at all" * 500])
def test_a_file_that_is_not_a_results_database_is_one_clear_error(
    tmp_path: Path, content: bytes
) -> None:
    db = tmp_path / "random.db"
    db.write_bytes(content)
    with pytest.raises(StoreError) as err:
        ResultStore(db)
    assert str(db) in err.value.message
    assert "another file" in err.value.hint
    assert db.read_bytes() == content  # never overwritten
