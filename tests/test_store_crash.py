"""The results database survives a crash at any statement of its schema creation or
upgrade, and several first users at once: real SQLite files, a real PostgreSQL server,
real processes, real kills."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from edgeshrink.errors import StoreError
from edgeshrink.store import MIGRATIONS, SCHEMA_VERSION, ResultStore, engines

# A child that opens the store and dies (os._exit, as a kill -9 would leave it) when it
# starts its Nth statement; with N = 0 it prints how many statements there were.
CHILD = textwrap.dedent(
    """
    import os, sqlite3, sys
    import edgeshrink.store.migrations as migrations
    from edgeshrink.store import engines, ResultStore

    db, die_at, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if keep:  # an older edgeshrink: only the first `keep` migrations
        migrations.MIGRATIONS = migrations.MIGRATIONS[:keep]
        migrations.SCHEMA_VERSION = keep
    count = [0]

    def tick(*_args):
        count[0] += 1
        if count[0] == die_at:
            os._exit(137)

    if db.startswith("postgresql://"):
        execute = engines.PostgresConnection.execute

        def counting_execute(self, sql, args=()):
            tick()
            return execute(self, sql, args)

        engines.PostgresConnection.execute = counting_execute
    else:
        connect = sqlite3.connect

        def counting_connect(*args, **kwargs):
            conn = connect(*args, **kwargs)
            conn.set_trace_callback(tick)
            return conn

        sqlite3.connect = counting_connect
    ResultStore(db).close()
    print(count[0])
    """
)

ROW = (
    "INSERT INTO results (created_at, target, target_kind, format, model_name, status, document)"
    " VALUES (?, 'dev', 'local', 'gguf', 'm.gguf', 'ok', '{}')"
)


def child(db: str, die_at: int, keep: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, db, str(die_at), str(keep)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def statements(db: str, keep: int = 0) -> int:
    done = child(db, 0, keep)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def old_database(db: str, rows: int = 8) -> str:
    """A database as edgeshrink with one migration fewer left it, holding ``rows`` results."""
    statements(db, keep=SCHEMA_VERSION - 1)
    raw = engines.connect(engines.parse_location(db))  # not a ResultStore: that would upgrade
    for i in range(rows):
        raw.execute(ROW, (f"2026-12-0{1 + i % 3}T00:00:0{i}Z",))
    raw.close()
    return db


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path):
    """A maker of new, empty databases on each engine."""
    if request.param == "sqlite":
        return lambda name: str(tmp_path / f"{name}.db")
    server = request.getfixturevalue("postgres_server")
    tag = uuid.uuid4().hex[:8]  # one server for the session: names of this test's own
    return lambda name: server.create_database(f"{name.replace('-', '_')}_{tag}")


def test_a_kill_at_any_statement_of_a_fresh_database_leaves_it_usable(new_db) -> None:
    total = statements(new_db("count"))
    assert total > len(MIGRATIONS)
    for n in range(1, total + 1):
        db = new_db(f"fresh-{n}")
        died = child(db, n)
        assert died.returncode == 137, (n, died.stderr)
        with ResultStore(db) as store:  # opens, finishes the schema, and works
            assert store.schema_version() == SCHEMA_VERSION, n
            assert store.query("SELECT COUNT(*) FROM results")[0][0] == 0


def test_a_kill_at_any_statement_of_an_upgrade_keeps_every_row(new_db) -> None:
    total = statements(old_database(new_db("count")))
    assert total > 3
    for n in range(1, total + 1):
        db = old_database(new_db(f"old-{n}"))
        died = child(db, n)
        assert died.returncode == 137, (n, died.stderr)
        with ResultStore(db) as store:
            assert store.schema_version() == SCHEMA_VERSION, n
            assert store.query("SELECT COUNT(*) FROM results")[0][0] == 8, n


def test_many_first_users_at_once_all_store_their_result(new_db) -> None:
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
    for attempt in range(4):
        db = new_db(f"first-{attempt}")
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", writer, db, f"p{i}"],
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
