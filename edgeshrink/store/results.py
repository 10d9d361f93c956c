"""The results database: one store on SQLite (WAL mode) or PostgreSQL, with numbered
migrations recorded in a table.

Every benchmark run, ok or not, becomes one row of ``results`` with the figures
people query on as columns and the agent's whole JSON document beside them, so
any number can be traced back to exactly what produced it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from edgeshrink.errors import StoreError
from edgeshrink.store import migrations
from edgeshrink.store.engines import (
    LOCK_WAIT_S,
    Connection,
    Row,
    StoreLocation,
    connect,
    open_failure,
    parse_location,
)

T = TypeVar("T")

RESULT_COLUMNS = (
    "id", "created_at", "target", "target_kind", "profile_id", "format", "quant", "model_name",
    "source_sha256", "artifact_sha256", "artifact_size", "status", "error", "load_s",
    "peak_rss_mb", "rss_anon_mb", "rss_file_mb", "pp_tok_s", "pp_tok_s_stddev", "tg_tok_s",
    "tg_tok_s_stddev", "ttft_ms", "threads", "device_cpu", "device_arch", "runtime",
    "runtime_version", "latency_ms", "latency_p90_ms", "throughput_per_s", "params_key",
)  # fmt: skip
QUALITY_COLUMNS = (
    "method", "base_sha256", "candidate_sha256", "settings", "candidate_name", "quant",
    "kld_mean", "ppl_ratio", "same_top", "agreement", "accuracy", "target", "result_id",
)  # fmt: skip


@dataclass(frozen=True)
class StoredResult:
    id: int
    created_at: str
    target: str
    target_kind: str
    profile_id: str | None
    format: str
    quant: str | None
    model_name: str
    source_sha256: str | None
    artifact_sha256: str | None
    artifact_size: int | None
    status: str
    error: str | None
    load_s: float | None
    peak_rss_mb: float | None
    rss_anon_mb: float | None
    rss_file_mb: float | None
    pp_tok_s: float | None
    pp_tok_s_stddev: float | None
    tg_tok_s: float | None
    tg_tok_s_stddev: float | None
    ttft_ms: float | None
    threads: int | None
    device_cpu: str | None
    device_arch: str | None
    runtime: str | None
    runtime_version: str | None
    latency_ms: float | None
    latency_p90_ms: float | None
    throughput_per_s: float | None
    params_key: str | None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RESULT_COLUMNS}


def default_db_path() -> Path | str:
    """Where results go without --db: EDGESHRINK_DB, else the user data dir's results.db
    (a Path for SQLite, the URL as shown, without its password, for PostgreSQL)."""
    location = parse_location(None)
    return location.path if location.path is not None else location.display


def insert_result(db: Connection, row: dict[str, Any], document: dict[str, Any]) -> int:
    """Add one result inside the caller's transaction (the lab stores a job's result and
    its job row in one); returns its id."""
    unknown = set(row) - set(RESULT_COLUMNS)
    if unknown:
        raise StoreError(f"unknown result columns: {sorted(unknown)}")
    values = {"created_at": _now(), **row, "document": json.dumps(document, sort_keys=True)}
    marks = ", ".join("?" for _ in values)
    cursor = db.execute(
        f"INSERT INTO results ({', '.join(values)}) VALUES ({marks}) RETURNING id",
        tuple(values.values()),
    )
    return int(cursor.fetchone()[0])


class ResultStore:
    """A results database: ``ResultStore(db)`` with a path, ``sqlite:///PATH``, a
    ``postgresql://`` URL or None (EDGESHRINK_DB, else the user data dir).

    One store is one connection: one thread.  Opening it brings the schema up to date.
    """

    LOCK_WAIT_S = LOCK_WAIT_S

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, named_by: str = "--db / EDGESHRINK_DB"
    ) -> None:
        """``named_by``: where the user gave ``path`` (what a hint tells them to change)."""
        self._db: Connection | None = None
        self._depth = 0
        self.location: StoreLocation = parse_location(path, named_by)
        try:
            self._db = connect(self.location)
            self._migrate()
        except BaseException as exc:
            self._close_quietly()
            error = open_failure(self.location, exc)
            if error is None or error is exc:
                raise
            raise error from exc

    @property
    def engine(self) -> str:
        return self.location.engine

    @property
    def path(self) -> Path | str:
        """Where the store is, as shown to people: the file, or the URL without its password."""
        return self.location.path if self.location.path is not None else self.location.display

    @property
    def db(self) -> Connection:
        assert self._db is not None, "the store is closed"
        return self._db

    def _close_quietly(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):  # closing after a failure must not hide it
                self._db.close()
            self._db = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _begun(self, mode: str) -> Iterator[Connection]:
        db = self.db
        if self._depth:  # inside another transaction of this store: one transaction
            self._depth += 1
            try:
                yield db
            finally:
                self._depth -= 1
            return
        self._again_if_lost(lambda db: db.begin(mode))
        self._depth = 1
        try:
            yield db
        except BaseException as exc:
            self._depth = 0
            with contextlib.suppress(*db.errors):  # a lost connection: the server rolled back
                db.rollback()
            if isinstance(exc, db.errors):
                raise db.describe(exc) from exc
            raise
        self._depth = 0
        try:
            db.commit()
        except db.errors as exc:
            raise db.describe(exc) from exc

    @contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[Connection]:
        """One transaction for the block, committed at its end, rolled back on an error.

        ``immediate``: serialised with every other immediate transaction on the
        database, from any host (SQLite's write lock; a PostgreSQL advisory lock).
        Code that reads, decides and then writes (device locks, joining a run) needs it.
        """
        with self._begun("exclusive" if immediate else "write") as db:
            yield db

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """Reads that see one consistent state of the database while others write (a WAL
        read transaction; REPEATABLE READ on PostgreSQL): a report or a comparison never
        mixes a run's rows from before and after a write."""
        with self._begun("snapshot") as db:
            yield db

    def _again_if_lost(self, action: Callable[[Connection], T]) -> T:
        """``action(db)``, and once more on a new connection when the first one turns out
        to be gone (a restarted server, a connection a proxy closed while a device ran):
        only for actions that change nothing, a BEGIN or a read, so running one twice is
        safe.  A connection lost inside a transaction is reported, not retried (the server
        rolled it back); the next transaction connects again here."""
        db = self.db
        try:
            return action(db)
        except db.errors as exc:
            if not db.lost():
                raise db.describe(exc) from exc
        try:
            db.reconnect()
            return action(db)
        except db.errors as exc:
            raise db.describe(exc) from exc

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        """Rows of one read-only statement (the lab's history queries)."""
        return self._again_if_lost(lambda db: db.execute(sql, args).fetchall())

    def now(self) -> float:
        """The database's clock (seconds since the epoch): what leases are measured with."""
        return self._again_if_lost(lambda db: db.now())

    def schema_version(self) -> int:
        return int(self.query("SELECT MAX(version) FROM schema_migrations")[0][0] or 0)

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, all of it in ONE transaction that holds the
        exclusive lock: a crash at any statement leaves the database as it was (both
        engines roll DDL back), and processes opening a fresh database at once wait for
        each other instead of each creating the tables."""
        db = self.db
        target = migrations.SCHEMA_VERSION
        try:  # the common case, without the lock: the schema is up to date
            if self.schema_version() == target:
                return
        except StoreError:
            pass  # no schema_migrations yet
        with self._begun("exclusive"):
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = self.schema_version()  # read under the lock: another opener may have won
            if current > target:
                raise StoreError(
                    f"{self.location.display}: schema version {current} is newer than this "
                    f"edgeshrink knows ({target}): a newer edgeshrink wrote it",
                    hint="upgrade edgeshrink (pip install -U edgeshrink), or change "
                    f"{self.location.named_by}",
                )
            for version, (name, sql) in enumerate(migrations.MIGRATIONS[:target], start=1):
                if version <= current:
                    continue
                for statement in migrations.statements(sql):
                    if db.engine == "postgresql":
                        statement = migrations.for_postgres(statement)
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, _now()),
                )

    def add_result(self, row: dict[str, Any], document: dict[str, Any]) -> int:
        with self.transaction() as db:
            return insert_result(db, row, document)

    def list_results(
        self, *, limit: int = 20, target: str | None = None, status: str | None = None
    ) -> list[StoredResult]:
        where, args = [], []
        if target:
            where.append("target = ?")
            args.append(target)
        if status:
            where.append("status = ?")
            args.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.query(
            f"SELECT {', '.join(RESULT_COLUMNS)} FROM results {clause} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [StoredResult(**row) for row in rows]

    def find_result(
        self, artifact_sha256: str, target: str, params_key: str
    ) -> StoredResult | None:
        """The newest ok result of these bytes on this target with these parameters."""
        rows = self.query(
            f"SELECT {', '.join(RESULT_COLUMNS)} FROM results WHERE artifact_sha256 = ? AND target = ?"
            " AND params_key = ? AND status = 'ok' ORDER BY id DESC LIMIT 1",
            (artifact_sha256, target, params_key),
        )
        return StoredResult(**rows[0]) if rows else None

    def add_quality(self, row: dict[str, Any], report: dict[str, Any]) -> int:
        """Store a quality measurement; the same (method, base, candidate, settings) again
        replaces the earlier one."""
        unknown = set(row) - set(QUALITY_COLUMNS)
        if unknown:
            raise StoreError(f"unknown quality columns: {sorted(unknown)}")
        values = {"created_at": _now(), **row, "report": json.dumps(report, sort_keys=True)}
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{k} = excluded.{k}" for k in values)
        with self.transaction() as db:
            cursor = db.execute(
                f"INSERT INTO quality ({', '.join(values)}) VALUES ({marks})"
                " ON CONFLICT (method, base_sha256, candidate_sha256, settings)"
                f" DO UPDATE SET {updates} RETURNING id",
                tuple(values.values()),
            )
            return int(cursor.fetchone()[0])

    def find_quality(
        self, method: str, base_sha256: str, candidate_sha256: str, settings: str
    ) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT report FROM quality WHERE method = ? AND base_sha256 = ? AND candidate_sha256 = ?"
            " AND settings = ?",
            (method, base_sha256, candidate_sha256, settings),
        )
        return json.loads(rows[0]["report"]) if rows else None

    def add_sweep(self, document: dict[str, Any]) -> int:
        """Store a sweep's whole document (its page is drawn from it); returns its id."""
        values = (_now(), Path(document["model"]).name, document["profile"], document.get("target"),
                  document.get("pick"), json.dumps(document, sort_keys=True))  # fmt: skip
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO sweeps (created_at, model_name, profile_id, target, pick, document)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                values,
            )
            return int(cursor.fetchone()[0])

    def sweeps(self, limit: int = 50) -> list[Row]:
        return self.query(
            "SELECT id, created_at, model_name, profile_id, target, pick FROM sweeps"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )

    def get_sweep(self, sweep_id: int) -> dict[str, Any]:
        rows = self.query("SELECT document FROM sweeps WHERE id = ?", (sweep_id,))
        if not rows:
            raise StoreError(
                f"no sweep with id {sweep_id} in {self.location.display}",
                hint="`edgeshrink results sweeps` lists them",
            )
        return json.loads(rows[0]["document"])

    def get_document(self, result_id: int) -> dict[str, Any]:
        rows = self.query("SELECT document FROM results WHERE id = ?", (result_id,))
        if not rows:
            raise StoreError(
                f"no result with id {result_id} in {self.location.display}",
                hint="see `edgeshrink results`",
            )
        return json.loads(rows[0]["document"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
