"""The results database: SQLite, WAL mode, numbered migrations recorded in a table.

Every benchmark run, ok or not, becomes one row of ``results`` with the figures
people query on as columns and the agent's whole JSON document beside them, so
any number can be traced back to exactly what produced it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeshrink.errors import StoreError

# Append only: a step, once released, never changes.  Its number is its position.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "create results",
        """
        CREATE TABLE results (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            target TEXT NOT NULL,
            target_kind TEXT NOT NULL,
            profile_id TEXT,
            format TEXT NOT NULL,
            quant TEXT,
            model_name TEXT NOT NULL,
            source_sha256 TEXT,
            artifact_sha256 TEXT,
            artifact_size INTEGER,
            status TEXT NOT NULL,
            error TEXT,
            load_s REAL,
            peak_rss_mb REAL,
            rss_anon_mb REAL,
            rss_file_mb REAL,
            pp_tok_s REAL,
            pp_tok_s_stddev REAL,
            tg_tok_s REAL,
            tg_tok_s_stddev REAL,
            ttft_ms REAL,
            threads INTEGER,
            device_cpu TEXT,
            device_arch TEXT,
            runtime TEXT,
            runtime_version TEXT,
            document TEXT NOT NULL
        );
        CREATE INDEX results_by_time ON results (created_at);
        CREATE INDEX results_by_artifact ON results (artifact_sha256);
        """,
    ),
    (
        "latency columns for models that are not LLMs",
        """
        ALTER TABLE results ADD COLUMN latency_ms REAL;
        ALTER TABLE results ADD COLUMN latency_p90_ms REAL;
        ALTER TABLE results ADD COLUMN throughput_per_s REAL;
        """,
    ),
    (
        "quality measurements, and the bench parameters a result was asked with",
        """
        CREATE TABLE quality (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            method TEXT NOT NULL,
            base_sha256 TEXT NOT NULL,
            candidate_sha256 TEXT NOT NULL,
            settings TEXT NOT NULL,
            candidate_name TEXT NOT NULL,
            quant TEXT,
            kld_mean REAL,
            ppl_ratio REAL,
            same_top REAL,
            agreement REAL,
            accuracy REAL,
            report TEXT NOT NULL,
            UNIQUE (method, base_sha256, candidate_sha256, settings)
        );
        ALTER TABLE results ADD COLUMN params_key TEXT;
        CREATE INDEX results_by_params ON results (artifact_sha256, target, params_key);
        """,
    ),
    (
        "device lab: runs, their devices and jobs, device snapshots, builds, device locks",
        """
        CREATE TABLE lab_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            suite_name TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            heartbeat_at REAL NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            inventory_path TEXT NOT NULL,
            inventory_sha256 TEXT NOT NULL,
            inventory TEXT NOT NULL,
            suite_path TEXT NOT NULL,
            suite_sha256 TEXT NOT NULL,
            suite TEXT NOT NULL,
            edgeshrink_version TEXT NOT NULL,
            host_tools TEXT NOT NULL,
            resumes INTEGER NOT NULL DEFAULT 0,
            summary TEXT
        );
        CREATE INDEX lab_runs_by_suite ON lab_runs (suite_name, id);
        CREATE TABLE lab_run_devices (
            run_id INTEGER NOT NULL REFERENCES lab_runs (id),
            device TEXT NOT NULL,
            target TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            seconds REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            PRIMARY KEY (run_id, device)
        );
        CREATE TABLE lab_snapshots (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES lab_runs (id),
            device TEXT NOT NULL,
            taken_at TEXT NOT NULL,
            hostname TEXT,
            os TEXT,
            kernel TEXT,
            python TEXT,
            cpu TEXT,
            arch TEXT,
            cores INTEGER,
            ram_mb REAL,
            memory_limit_mb REAL,
            board TEXT,
            agent_version TEXT,
            runtimes TEXT,
            cpu_mhz TEXT,
            temps_c TEXT,
            document TEXT NOT NULL
        );
        CREATE INDEX lab_snapshots_by_run ON lab_snapshots (run_id, device);
        CREATE TABLE lab_builds (
            run_id INTEGER NOT NULL REFERENCES lab_runs (id),
            job TEXT NOT NULL,
            build_key TEXT NOT NULL,
            status TEXT NOT NULL,
            source_path TEXT,
            source_sha256 TEXT,
            artifact_path TEXT,
            artifact_sha256 TEXT,
            artifact_size INTEGER,
            format TEXT,
            quant TEXT,
            reused INTEGER,
            seconds REAL,
            error TEXT,
            tool_versions TEXT,
            quality_status TEXT,
            kld_mean REAL,
            ppl_ratio REAL,
            same_top REAL,
            quality TEXT,
            PRIMARY KEY (run_id, job, build_key)
        );
        CREATE TABLE lab_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES lab_runs (id),
            device TEXT NOT NULL,
            job TEXT NOT NULL,
            settings_key TEXT NOT NULL,
            build_key TEXT,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            started_at TEXT,
            finished_at TEXT,
            seconds REAL,
            result_id INTEGER REFERENCES results (id),
            result_status TEXT,
            error TEXT,
            cooldown TEXT,
            temp_before_c REAL,
            temp_after_c REAL,
            cpu_mhz_before REAL,
            cpu_mhz_after REAL,
            throttled TEXT,
            snapshot_id INTEGER REFERENCES lab_snapshots (id),
            samples TEXT,
            metrics TEXT,
            context TEXT,
            UNIQUE (run_id, device, job)
        );
        CREATE INDEX lab_jobs_by_key ON lab_jobs (device, job, settings_key);
        CREATE TABLE lab_locks (
            resource TEXT PRIMARY KEY,
            device TEXT NOT NULL,
            owner TEXT NOT NULL,
            run_id INTEGER,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            acquired_at TEXT NOT NULL,
            heartbeat_at REAL NOT NULL
        );
        """,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

RESULT_COLUMNS = (
    "id", "created_at", "target", "target_kind", "profile_id", "format", "quant", "model_name",
    "source_sha256", "artifact_sha256", "artifact_size", "status", "error", "load_s",
    "peak_rss_mb", "rss_anon_mb", "rss_file_mb", "pp_tok_s", "pp_tok_s_stddev", "tg_tok_s",
    "tg_tok_s_stddev", "ttft_ms", "threads", "device_cpu", "device_arch", "runtime",
    "runtime_version", "latency_ms", "latency_p90_ms", "throughput_per_s", "params_key",
)  # fmt: skip
QUALITY_COLUMNS = (
    "method", "base_sha256", "candidate_sha256", "settings", "candidate_name", "quant",
    "kld_mean", "ppl_ratio", "same_top", "agreement", "accuracy",
)  # fmt: skip


def default_db_path() -> Path:
    env = os.environ.get("EDGESHRINK_DB")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_data_path("edgeshrink") / "results.db"


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


class ResultStore:
    LOCK_WAIT_S = 30.0

    def _enter_wal(self) -> None:
        """Switch a new file to WAL. SQLite answers "database is locked" at once, without
        its busy handler, when another first user is switching it too: wait like a write."""
        deadline = time.monotonic() + self.LOCK_WAIT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=self.LOCK_WAIT_S)
            self._db.row_factory = sqlite3.Row
            self._enter_wal()
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except StoreError:
            self._close_quietly()
            raise  # it says what is wrong already (e.g. a newer schema)
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            text = str(exc)
            if "not a database" in text or "malformed" in text:
                hint = (
                    "it is not a SQLite results database, or it is damaged: point --db / "
                    "EDGESHRINK_DB at another file (edgeshrink leaves this one as it is)"
                )
            elif "locked" in text or "busy" in text:
                hint = "another program holds the database locked: wait for it, or use another --db"
            else:
                hint = StoreError.default_hint
            raise StoreError(
                f"{self.path}: cannot open the results database: {exc}", hint=hint
            ) from exc
        except OSError as exc:
            self._close_quietly()
            raise StoreError(f"{self.path}: cannot create the results database: {exc}") from exc
        except BaseException:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._db:
                yield self._db
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    @contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction for the block; ``immediate`` takes the write lock at the start.

        Code that reads, decides and then writes (the lab's device locks) needs
        ``immediate``: in WAL mode a deferred transaction that read first fails
        instead of waiting when another writer got there in between.
        """
        if not immediate:
            with self._transaction() as db:
                yield db
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        try:
            yield self._db
        except BaseException:
            self._db.rollback()
            raise
        try:
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of one read-only statement (the lab's history queries)."""
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def schema_version(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, all of it in ONE transaction taken with the
        write lock first: a crash at any statement leaves the database as it was, and
        processes opening a fresh database at once wait for each other instead of each
        creating the tables (Python's sqlite3 would otherwise run DDL outside any
        transaction, one statement at a time)."""
        db = self._db
        db.commit()  # nothing of ours may be pending before BEGIN
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = self.schema_version()  # read under the lock: another opener may have won
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {current} is newer than this edgeshrink knows "
                    f"({SCHEMA_VERSION}): a newer edgeshrink wrote it",
                    hint="upgrade edgeshrink (pip install -U edgeshrink), or use another --db",
                )
            for version, (name, sql) in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, _now()),
                )
            db.commit()
        except BaseException:
            db.rollback()
            raise

    def add_result(self, row: dict[str, Any], document: dict[str, Any]) -> int:
        unknown = set(row) - set(RESULT_COLUMNS)
        if unknown:
            raise StoreError(f"unknown result columns: {sorted(unknown)}")
        values = {"created_at": _now(), **row, "document": json.dumps(document, sort_keys=True)}
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._transaction() as db:
            cursor = db.execute(
                f"INSERT INTO results ({names}) VALUES ({marks})", tuple(values.values())
            )
        return int(cursor.lastrowid or 0)

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
        rows = self._db.execute(
            f"SELECT {', '.join(RESULT_COLUMNS)} FROM results {clause} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [StoredResult(**dict(row)) for row in rows]

    def find_result(
        self, artifact_sha256: str, target: str, params_key: str
    ) -> StoredResult | None:
        """The newest ok result of these bytes on this target with these parameters."""
        row = self._db.execute(
            f"SELECT {', '.join(RESULT_COLUMNS)} FROM results WHERE artifact_sha256 = ? AND target = ?"
            " AND params_key = ? AND status = 'ok' ORDER BY id DESC LIMIT 1",
            (artifact_sha256, target, params_key),
        ).fetchone()
        return StoredResult(**dict(row)) if row else None

    def add_quality(self, row: dict[str, Any], report: dict[str, Any]) -> int:
        unknown = set(row) - set(QUALITY_COLUMNS)
        if unknown:
            raise StoreError(f"unknown quality columns: {sorted(unknown)}")
        values = {"created_at": _now(), **row, "report": json.dumps(report, sort_keys=True)}
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._transaction() as db:
            cursor = db.execute(
                f"INSERT OR REPLACE INTO quality ({names}) VALUES ({marks})", tuple(values.values())
            )
        return int(cursor.lastrowid or 0)

    def find_quality(
        self, method: str, base_sha256: str, candidate_sha256: str, settings: str
    ) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT report FROM quality WHERE method = ? AND base_sha256 = ? AND candidate_sha256 = ?"
            " AND settings = ?",
            (method, base_sha256, candidate_sha256, settings),
        ).fetchone()
        return json.loads(row["report"]) if row else None

    def get_document(self, result_id: int) -> dict[str, Any]:
        row = self._db.execute("SELECT document FROM results WHERE id = ?", (result_id,)).fetchone()
        if row is None:
            raise StoreError(
                f"no result with id {result_id} in {self.path}", hint="see `edgeshrink results`"
            )
        return json.loads(row["document"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
