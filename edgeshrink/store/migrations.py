"""The numbered migrations of the results database, one list for both engines.

Each step is plain SQL written for SQLite, and PostgreSQL runs the same steps
through :func:`for_postgres`, which only renames types: SQLite's ``INTEGER`` is 64
bits (PostgreSQL's is 32: a model's size in bytes would not fit), its ``REAL`` is a
double (PostgreSQL's is 4 bytes: an epoch timestamp would lose minutes), and
``INTEGER PRIMARY KEY AUTOINCREMENT`` is an identity column there.  Everything else
a step uses (``CREATE TABLE``/``INDEX``, ``ALTER TABLE ... ADD COLUMN``, ``UNIQUE``,
``REFERENCES``) both engines read alike.  A step's number is its position.
"""

from __future__ import annotations

import re

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
    (
        "several runners: who works on a run, job claims and lock leases, unreachable devices",
        """
        CREATE TABLE lab_runners (
            owner TEXT PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES lab_runs (id),
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            status TEXT NOT NULL,
            joined_at TEXT NOT NULL,
            left_at TEXT,
            heartbeat_at REAL NOT NULL,
            lease_s REAL NOT NULL
        );
        CREATE INDEX lab_runners_by_run ON lab_runners (run_id);
        CREATE TABLE lab_unreachable (
            run_id INTEGER NOT NULL REFERENCES lab_runs (id),
            device TEXT NOT NULL,
            host TEXT NOT NULL,
            error TEXT NOT NULL,
            found_at TEXT NOT NULL,
            PRIMARY KEY (run_id, device, host)
        );
        ALTER TABLE lab_jobs ADD COLUMN runner TEXT;
        ALTER TABLE lab_jobs ADD COLUMN lease_until REAL;
        ALTER TABLE lab_locks ADD COLUMN lease_until REAL;
        CREATE INDEX lab_jobs_by_run_device ON lab_jobs (run_id, device, status);
        """,
    ),
    (
        "sweeps: every sweep's whole document, so its page opens again later",
        """
        CREATE TABLE sweeps (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            model_name TEXT NOT NULL,
            profile_id TEXT NOT NULL,
            target TEXT,
            pick TEXT,
            document TEXT NOT NULL
        );
        CREATE INDEX sweeps_by_time ON sweeps (created_at);
        """,
    ),
    (
        "quality measured on a device: which target, and the result of its run",
        """
        ALTER TABLE quality ADD COLUMN target TEXT;
        ALTER TABLE quality ADD COLUMN result_id INTEGER REFERENCES results (id);
        CREATE INDEX quality_by_target ON quality (target, candidate_sha256);
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

_PG_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
)  # fmt: skip


def statements(sql: str) -> list[str]:
    """The statements of one step (no step has a semicolon inside a literal)."""
    return [s.strip() for s in sql.split(";") if s.strip()]


def for_postgres(statement: str) -> str:
    """The PostgreSQL form of a migration statement: the same statement, its types renamed
    (identity columns are BY DEFAULT so that `store copy` can keep every id)."""
    for pattern, replacement in _PG_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement
