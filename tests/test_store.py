"""The results database on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgeshrink.errors import StoreError
from edgeshrink.store import SCHEMA_VERSION, ResultStore


def row(**extra):
    base = {
        "target": "local", "target_kind": "local", "profile_id": "raspberry-pi-5-8gb",
        "format": "gguf", "quant": "Q4_0", "model_name": "m.gguf", "status": "ok", "tg_tok_s": 12.5,
    }  # fmt: skip
    return {**base, **extra}


def test_new_database_is_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY version")]
    assert names[0] == "create results" and len(names) == SCHEMA_VERSION


def test_results_round_trip_with_their_document(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:
        first = store.add_result(
            row(), {"schema": "edgeshrink.bench/1", "status": "ok", "x": [1, 2]}
        )
        second = store.add_result(
            row(target="pi", status="error", error="boom"), {"status": "error"}
        )
        listed = store.list_results()
        assert [r.id for r in listed] == [second, first]
        assert store.list_results(target="pi")[0].error == "boom"
        assert store.list_results(status="ok")[0].tg_tok_s == 12.5
        assert store.get_document(first)["x"] == [1, 2]
        with pytest.raises(StoreError, match="no result with id 999"):
            store.get_document(999)
    # reopening does not migrate twice
    with ResultStore(tmp_path / "r.db") as store:
        assert len(store.list_results()) == 2


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    with (
        ResultStore(tmp_path / "r.db") as store,
        pytest.raises(StoreError, match="unknown result columns"),
    ):
        store.add_result(row(bogus=1), {})


def test_a_database_from_a_newer_edgeshrink_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    ResultStore(db).close()
    con = sqlite3.connect(db)
    con.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'now')")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer than this edgeshrink"):
        ResultStore(db)


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "r.db"
    bad.write_text("not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open the results database"):
        ResultStore(bad)
