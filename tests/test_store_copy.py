"""`store copy`: a whole history between SQLite and PostgreSQL, verified, resumable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import load_script, run_cli

from edgeshrink.errors import StoreError
from edgeshrink.lab import compare
from edgeshrink.store import ResultStore, copy_store, table_checksums

bench_store = load_script("bench_store")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite lab history: 8 nights x 6 devices x 3 jobs, results and lab rows."""
    db = str(tmp_path_factory.mktemp("history") / "results.db")
    bench_store.fill_history(db, nights=8, devices=6, jobs=3)
    with ResultStore(db) as store:
        store.add_quality(
            {"method": "llm-kld", "base_sha256": "b", "candidate_sha256": "c", "settings": "{}",
             "candidate_name": "c.gguf", "kld_mean": 0.0123}, {"kld_mean": {"value": 0.0123}},
        )  # fmt: skip
    return db


@pytest.fixture(scope="module")
def long_history(tmp_path_factory: pytest.TempPathFactory) -> str:
    """1,600 results: a copy in small batches takes long enough to be killed midway."""
    db = str(tmp_path_factory.mktemp("long") / "results.db")
    bench_store.fill_history(db, nights=40, devices=10, jobs=4)
    return db


def counts(db: str) -> dict[str, int]:
    return {table: rows for table, (rows, _sum) in checksums(db).items()}


def checksums(db: str) -> dict[str, tuple[int, str]]:
    with ResultStore(db) as store:
        return table_checksums(store)


def test_a_history_goes_to_postgresql_and_back_verified(history, postgres_url, tmp_path):
    there = run_cli("store", "copy", history, postgres_url, "--json")
    assert there.returncode == 0, there.stderr
    doc = json.loads(there.stdout)
    assert doc["verified"] and not doc["dry_run"]
    assert doc["copied"] == sum(t["source_rows"] for t in doc["tables"]) > 8 * 6 * 3 * 2
    assert "lab_locks" in doc["not_copied"]
    assert postgres_url.split(":")[2].split("@")[0] not in there.stdout  # no password
    back = tmp_path / "back.db"
    again = run_cli("store", "copy", postgres_url, f"sqlite:///{back}")
    assert again.returncode == 0, again.stderr
    assert "every table verified" in again.stdout and "results" in again.stdout
    assert checksums(history) == checksums(postgres_url) == checksums(str(back))
    # the same history reads the same: ids, references and findings
    assert [f.to_dict() for f in compare(postgres_url).findings] == [
        f.to_dict() for f in compare(history).findings
    ]
    with ResultStore(postgres_url) as store:
        newest = store.query("SELECT MAX(id) FROM results")[0][0]
        assert store.add_result(
            {"target": "t", "target_kind": "ssh", "format": "gguf", "model_name": "m",
             "status": "ok"}, {},
        ) == newest + 1  # fmt: skip


def test_dry_run_counts_and_writes_nothing(history, postgres_url):
    out = run_cli("store", "copy", history, postgres_url, "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["dry_run"] and doc["copied"] == 0 and not doc["verified"]
    assert {t["table"]: t["source_rows"] for t in doc["tables"]} == counts(history)
    assert set(counts(postgres_url).values()) == {0}
    shown = run_cli("store", "copy", history, postgres_url, "--dry-run")
    assert "dry run: " in shown.stdout and "would be copied" in shown.stdout


COPY_CHILD = textwrap.dedent(
    """
    import sys
    from edgeshrink.store import copy_store
    copy_store(sys.argv[1], sys.argv[2], batch_rows=5)
    """
)


@pytest.mark.parametrize("direction", ["to-postgresql", "to-sqlite"])
def test_a_copy_killed_midway_finishes_when_run_again_without_duplicates(
    long_history, postgres_url, tmp_path, direction
):
    if direction == "to-postgresql":
        source, destination = long_history, postgres_url
    else:
        source = postgres_url
        assert copy_store(long_history, source).verified
        destination = str(tmp_path / "copy.db")
    total = counts(source)["results"]
    child = subprocess.Popen([sys.executable, "-c", COPY_CHILD, source, destination])
    try:
        deadline = time.monotonic() + 60
        partial = 0
        while partial == 0 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
            try:
                with ResultStore(destination) as store:
                    partial = store.query("SELECT COUNT(*) FROM results")[0][0]
            except StoreError:
                partial = 0  # not created yet
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    with ResultStore(destination) as store:
        partial = store.query("SELECT COUNT(*) FROM results")[0][0]
    assert 0 < partial < total, (partial, total)  # it really died midway
    report = copy_store(source, destination)
    assert report.verified
    copied = {t.table: t for t in report.tables}
    assert copied["results"].destination_rows_before == partial
    assert copied["results"].copied == total - partial
    assert checksums(source) == checksums(destination)


def test_a_destination_with_a_history_of_its_own_is_refused(history, postgres_url, tmp_path):
    with ResultStore(postgres_url) as store:
        for i in range(2000):
            store.add_result(
                {"target": f"other{i}", "target_kind": "ssh", "format": "gguf", "model_name": "m",
                 "status": "ok"}, {},
            )  # fmt: skip
    before = counts(postgres_url)
    with pytest.raises(StoreError) as err:
        copy_store(history, postgres_url)
    assert "holds a history of its own" in err.value.message and "new, empty" in err.value.hint
    assert counts(postgres_url) == before
    # fewer rows of its own: copied around them, and then the checksums tell
    small = tmp_path / "small.db"
    with ResultStore(small) as store:
        store.add_result({"target": "mine", "target_kind": "ssh", "format": "gguf",
                          "model_name": "m", "status": "ok"}, {})  # fmt: skip
    out = run_cli("store", "copy", history, str(small))
    assert out.returncode == 1 and "copy not verified: results" in out.stderr
    assert "Traceback" not in out.stderr and "hint: " in out.stderr


def test_the_same_database_twice_is_refused(history):
    out = run_cli("store", "copy", history, f"sqlite:///{Path(history)}")
    assert out.returncode == 1
    assert "is both the source and the destination" in out.stderr
