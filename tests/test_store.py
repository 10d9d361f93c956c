"""The results database on both engines: real SQLite files and a real PostgreSQL server
(tests/conftest.py's ``store_db`` runs each test on each)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from support import run_cli

from edgeshrink.errors import StoreError
from edgeshrink.store import (
    SCHEMA_VERSION,
    ResultStore,
    mask_password,
    parse_location,
)
from edgeshrink.store.copy import COPIED_TABLES


def row(**extra):
    base = {
        "target": "local", "target_kind": "local", "profile_id": "raspberry-pi-5-8gb",
        "format": "gguf", "quant": "Q4_0", "model_name": "m.gguf", "status": "ok", "tg_tok_s": 12.5,
    }  # fmt: skip
    return {**base, **extra}


def test_new_database_is_migrated(store_db: str) -> None:
    with ResultStore(store_db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        names = [
            r["name"] for r in store.query("SELECT name FROM schema_migrations ORDER BY version")
        ]
        assert names[0] == "create results" and len(names) == SCHEMA_VERSION


def test_a_new_sqlite_database_is_in_wal_mode(tmp_path: Path) -> None:
    ResultStore(tmp_path / "r.db").close()
    con = sqlite3.connect(tmp_path / "r.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_both_engines_make_the_same_tables(tmp_path: Path, postgres_url: str) -> None:
    with ResultStore(tmp_path / "r.db") as lite, ResultStore(postgres_url) as pg:
        for table in ("results", "quality", "lab_locks", *(t for t, _keys in COPIED_TABLES)):
            assert lite.db.columns(table) == pg.db.columns(table), table


def test_results_round_trip_with_their_document(store_db: str) -> None:
    with ResultStore(store_db) as store:
        first = store.add_result(
            row(artifact_size=5 << 30),
            {"schema": "edgeshrink.bench/1", "status": "ok", "x": [1, 2]},
        )
        second = store.add_result(
            row(target="pi", status="error", error="boom"), {"status": "error"}
        )
        listed = store.list_results()
        assert [r.id for r in listed] == [second, first]
        assert store.list_results(target="pi")[0].error == "boom"
        assert store.list_results(status="ok")[0].tg_tok_s == 12.5
        assert listed[1].artifact_size == 5 << 30  # a 5 GiB model: more than 32 bits
        assert store.get_document(first)["x"] == [1, 2]
        with pytest.raises(StoreError, match="no result with id 999"):
            store.get_document(999)
    # reopening does not migrate twice
    with ResultStore(store_db) as store:
        assert len(store.list_results()) == 2


def test_quality_is_replaced_by_a_new_measurement_of_the_same_thing(store_db: str) -> None:
    key = {"method": "llm-kld", "base_sha256": "b", "candidate_sha256": "c", "settings": "{}"}
    with ResultStore(store_db) as store:
        store.add_quality({**key, "candidate_name": "c.gguf", "kld_mean": 0.5}, {"kld": 0.5})
        store.add_quality({**key, "candidate_name": "c.gguf", "kld_mean": 0.25}, {"kld": 0.25})
        assert store.find_quality(*key.values()) == {"kld": 0.25}
        assert store.query("SELECT COUNT(*) FROM quality")[0][0] == 1


def test_unknown_columns_are_refused(store_db: str) -> None:
    with ResultStore(store_db) as store, pytest.raises(StoreError, match="unknown result columns"):
        store.add_result(row(bogus=1), {})


def test_a_database_from_a_newer_edgeshrink_is_refused(store_db: str) -> None:
    with ResultStore(store_db) as store, store.transaction() as db:
        db.execute(
            "INSERT INTO schema_migrations VALUES (?, 'from the future', 'now')",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(StoreError) as err:
        ResultStore(store_db)
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in err.value.message
    assert "upgrade edgeshrink" in err.value.hint


def test_a_failed_transaction_leaves_nothing(store_db: str) -> None:
    with ResultStore(store_db) as store:
        with pytest.raises(ZeroDivisionError), store.transaction() as db:
            db.execute(
                "INSERT INTO results (created_at, target, target_kind, format, model_name, status,"
                " document) VALUES ('now', 'x', 'local', 'gguf', 'm', 'ok', '{}')"
            )
            _ = 1 / 0
        assert store.query("SELECT COUNT(*) FROM results")[0][0] == 0
        store.add_result(row(), {})  # and the connection still works
        assert store.query("SELECT COUNT(*) FROM results")[0][0] == 1


def test_a_reader_sees_one_snapshot_while_a_writer_writes(store_db: str) -> None:
    """compare, report and status read inside store.snapshot(): a write that commits in
    between is not half-seen (a WAL read transaction; REPEATABLE READ on PostgreSQL)."""
    with ResultStore(store_db) as reader:
        reader.add_result(row(), {})
        wrote = threading.Event()

        def write() -> None:
            with ResultStore(store_db) as writer:
                for _ in range(5):
                    writer.add_result(row(target="other"), {})
            wrote.set()

        with reader.snapshot():
            before = reader.query("SELECT COUNT(*) FROM results")[0][0]
            thread = threading.Thread(target=write)
            thread.start()
            assert wrote.wait(30), "the writer was blocked by a reader"
            during = reader.query("SELECT COUNT(*) FROM results")[0][0]
            listed = len(reader.list_results(limit=100))
        thread.join()
        after = reader.query("SELECT COUNT(*) FROM results")[0][0]
    assert (before, during, listed, after) == (1, 1, 1, 6)


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "r.db"
    bad.write_text("not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open the results database"):
        ResultStore(bad)


# --------------------------------------------------------------------------- where it is


def test_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_location("r.db").path == Path("r.db")
    assert parse_location("sqlite:///r.db").path == Path("r.db")
    assert parse_location("sqlite:////srv/lab/r.db").path == Path("/srv/lab/r.db")
    assert parse_location("sqlite:///~/r.db").path == Path.home() / "r.db"
    pg = parse_location("postgresql://lab:s3cret@db.lab.example:5433/edgeshrink")
    assert pg.engine == "postgresql" and pg.password == "s3cret"
    assert pg.display == "postgresql://lab:***@db.lab.example:5433/edgeshrink"
    assert mask_password("postgres://lab@db/e") == "postgres://lab@db/e"
    monkeypatch.setenv("EDGESHRINK_DB", "postgresql://lab:pw@db/e")
    assert parse_location(None).engine == "postgresql"
    for bad in ("mysql://lab@db/e", "sqlite://r.db"):
        with pytest.raises(StoreError):
            parse_location(bad)


def test_postgresql_failures_are_one_line_without_the_password(
    postgres_server, postgres_url: str
) -> None:
    wrong = postgres_url.replace(postgres_server.password, "not-the-password")
    port = closed_port()
    cases = {
        wrong: "check the user and password",
        f"postgresql://lab:hunter2@127.0.0.1:{port}/edgeshrink": "is the PostgreSQL server running",
        postgres_server.url("no_such_db"): "create the database first",
    }
    for url, hint in cases.items():
        with pytest.raises(StoreError) as err:
            ResultStore(url)
        assert hint in err.value.hint, (url, err.value.hint)
        assert "\n" not in err.value.message
        secret = url.split(":")[2].split("@")[0]
        assert secret not in err.value.message and "***" in err.value.message
        out = run_cli("results", "--db", url)
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr and secret not in out.stdout + out.stderr
        lines = out.stderr.strip().splitlines()
        assert [line.split(":")[0] for line in lines] == ["error", "hint"], lines


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def _drop_edgeshrink_connections(url: str) -> int:
    """What a server restart does to a client: every edgeshrink connection is cut."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'edgeshrink' AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_a_dropped_postgresql_connection_is_made_again(postgres_url: str) -> None:
    """A lab night outlives a restarted server: the next transaction or read connects
    again instead of failing every write that is left."""
    with ResultStore(postgres_url) as store:
        store.add_result(row(), {})
        assert _drop_edgeshrink_connections(postgres_url) == 1
        assert store.query("SELECT COUNT(*) FROM results")[0][0] == 1  # a read
        assert _drop_edgeshrink_connections(postgres_url) == 1
        store.add_result(row(target="pi"), {})  # a transaction
        assert _drop_edgeshrink_connections(postgres_url) == 1
        assert store.now() > 0
        assert [r.target for r in store.list_results()] == ["pi", "local"]


def test_a_connection_lost_inside_a_transaction_is_one_line_and_keeps_nothing(
    postgres_url: str,
) -> None:
    with ResultStore(postgres_url) as store:
        with pytest.raises(StoreError) as err, store.transaction() as db:
            db.execute(
                "INSERT INTO results (created_at, target, target_kind, format, model_name,"
                " status, document) VALUES ('now', 'x', 'local', 'gguf', 'm', 'ok', '{}')"
            )
            _drop_edgeshrink_connections(postgres_url)
            db.execute("SELECT 1")
        assert "\n" not in err.value.message and "rolled back" in err.value.hint
        assert store.query("SELECT COUNT(*) FROM results")[0][0] == 0
