"""`store copy`: a whole history from one results database to another, either engine to
either, verified and resumable.

Rows keep their ids (every reference between tables stays true), are read from one
consistent snapshot of the source while it may still be written, and go in batches of
one transaction each with ``ON CONFLICT DO NOTHING``: a copy that is interrupted and
run again skips what it already copied and finishes without duplicates.  At the end
every table is compared: its row count and a checksum of its rows (an order-free
digest of each row's values, so the two engines' sort orders do not matter).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeshrink.errors import StoreError
from edgeshrink.store.engines import Connection
from edgeshrink.store.results import ResultStore

# Parents before children (results before the lab jobs that point at them).
COPIED_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("results", ("id",)),
    ("quality", ("id",)),
    ("lab_runs", ("id",)),
    ("lab_run_devices", ("run_id", "device")),
    ("lab_snapshots", ("id",)),
    ("lab_builds", ("run_id", "job", "build_key")),
    ("lab_jobs", ("id",)),
    ("lab_runners", ("owner",)),
    ("lab_unreachable", ("run_id", "device", "host")),
    ("sweeps", ("id",)),
)
NOT_COPIED = {
    "schema_migrations": "each database records its own migrations",
    "lab_locks": "live board locks of running lab runs, not history",
}
BATCH_ROWS = 1000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TableCopy:
    table: str
    source_rows: int
    destination_rows_before: int
    copied: int
    destination_rows: int
    source_checksum: str | None
    destination_checksum: str | None

    @property
    def verified(self) -> bool:
        return (
            self.source_rows == self.destination_rows
            and self.source_checksum is not None
            and self.source_checksum == self.destination_checksum
        )


@dataclass(frozen=True)
class CopyReport:
    source: str
    destination: str
    dry_run: bool
    seconds: float
    tables: tuple[TableCopy, ...]
    not_copied: dict[str, str] = field(default_factory=lambda: dict(NOT_COPIED))

    @property
    def verified(self) -> bool:
        return not self.dry_run and all(t.verified for t in self.tables)

    @property
    def copied(self) -> int:
        return sum(t.copied for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "destination": self.destination, "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3), "copied": self.copied, "verified": self.verified,
            "tables": [{**asdict(t), "verified": t.verified} for t in self.tables],
            "not_copied": self.not_copied,
        }  # fmt: skip


def _count(db: Connection, table: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def table_checksum(db: Connection, table: str, columns: list[str]) -> tuple[int, str]:
    """(rows, checksum) of a table: sha256 over the sorted sha256 of each row's values as
    JSON, so it does not depend on the order an engine returns rows in."""
    digests = []
    for rows in db.stream(f"SELECT {', '.join(columns)} FROM {table}"):
        for row in rows:
            text = json.dumps(list(row.values()), separators=(",", ":"), default=str)
            digests.append(hashlib.sha256(text.encode()).digest())
    digests.sort()
    return len(digests), hashlib.sha256(b"".join(digests)).hexdigest()


def table_checksums(store: ResultStore) -> dict[str, tuple[int, str]]:
    """(rows, checksum) of every copied table, from one snapshot of ``store``."""
    with store.snapshot() as db:
        return {
            table: table_checksum(db, table, db.columns(table)) for table, _keys in COPIED_TABLES
        }


def _same(a: ResultStore, b: ResultStore) -> bool:
    if a.location.path is not None and b.location.path is not None:
        return os.path.realpath(a.location.path) == os.path.realpath(b.location.path)
    return a.location.url is not None and a.location.url == b.location.url


def copy_store(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every history table of ``source`` into ``destination`` (each a path,
    sqlite:///PATH or postgresql:// URL), then verify them; ``dry_run`` only counts.

    The destination is created and migrated when new.  It may already hold a part of
    this copy (an interrupted one), but not rows of its own: those would be refused
    by the verification, so a destination with more rows than the source is refused
    before anything is written.
    """
    say = progress or (lambda _message: None)
    start = time.perf_counter()
    with (
        ResultStore(source, named_by="SRC") as src,
        ResultStore(destination, named_by="DST") as dst,
    ):
        if _same(src, dst):
            raise StoreError(
                f"{src.location.display} is both the source and the destination",
                hint="give two different databases: store copy SRC DST",
            )
        with src.snapshot() as sdb:
            plan = []
            for table, keys in COPIED_TABLES:
                columns = sdb.columns(table)
                missing = set(columns) - set(dst.db.columns(table))
                if missing:
                    raise StoreError(
                        f"{dst.location.display}: table {table} has no column(s) {sorted(missing)}",
                        hint="both databases must be at the same schema version: open the "
                        "destination with this edgeshrink first",
                    )
                plan.append((table, keys, columns, _count(sdb, table), _count(dst.db, table)))
            extra = [(t, s, d) for t, _k, _c, s, d in plan if d > s]
            if extra:
                table, s, d = extra[0]
                raise StoreError(
                    f"{dst.location.display}: table {table} has {d} row(s), the source {s}: "
                    "the destination holds a history of its own",
                    hint="copy into a new, empty database (store copy never merges histories)",
                )
            if dry_run:
                tables = tuple(TableCopy(t, s, d, 0, d, None, None) for t, _k, _c, s, d in plan)
                return CopyReport(src.location.display, dst.location.display, True,
                                  time.perf_counter() - start, tables)  # fmt: skip
            copied: list[TableCopy] = []
            for table, keys, columns, source_rows, before in plan:
                say(f"{table}: {source_rows} row(s), {before} already there")
                _copy_table(sdb, dst, table, keys, columns, batch_rows)
                rows, source_sum = table_checksum(sdb, table, columns)
                with dst.snapshot() as ddb:
                    after, dest_sum = table_checksum(ddb, table, columns)
                copied.append(TableCopy(table, rows, before, after - before, after, source_sum,
                                        dest_sum))  # fmt: skip
        report = CopyReport(src.location.display, dst.location.display, False,
                            time.perf_counter() - start, tuple(copied))  # fmt: skip
    wrong = [t for t in report.tables if not t.verified]
    if wrong:
        first = wrong[0]
        raise StoreError(
            f"copy not verified: {first.table} has {first.destination_rows} row(s) in "
            f"{report.destination} and {first.source_rows} in {report.source}"
            + ("" if first.destination_rows != first.source_rows else ", with different values"),
            hint="the destination held other rows under the same ids: copy into a new, empty database",
        )
    return report


def _copy_table(
    sdb: Connection,
    dst: ResultStore,
    table: str,
    keys: tuple[str, ...],
    columns: list[str],
    batch_rows: int,
) -> None:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    insert = f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING"
    for rows in sdb.stream(
        f"SELECT {names} FROM {table} ORDER BY {', '.join(keys)}", size=batch_rows
    ):
        with dst.transaction() as ddb:
            ddb.executemany(insert, [tuple(r.values()) for r in rows])
    if keys == ("id",):
        with dst.transaction() as ddb:
            ddb.after_explicit_ids(table)
