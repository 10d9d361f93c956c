"""The lab's history in the results database: runs, devices, jobs, snapshots, builds.

Every figure of a lab job is a row of ``results`` (the agent's whole document
beside it); the lab tables say which run, device and job produced it, with
what artifact, on which device snapshot, after what cool-down, measured by which
runner.  So any number can be traced: ``lab_jobs.result_id -> results``,
``lab_jobs.snapshot_id -> lab_snapshots``, ``(run_id, job, build_key) -> lab_builds``.
Who holds which board and job while a run goes on is claims.py's.

Each thread of a lab run opens its own connection (a connection is not shared
between threads); SQLite's WAL mode or PostgreSQL let them write while others read.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edgeshrink.errors import LabLockError
from edgeshrink.store import ResultStore, insert_result

RUN_STATUSES = ("running", "finished", "interrupted")
JOB_STATUSES = ("pending", "running", "done", "failed")
DEVICE_STATUSES = ("pending", "running", "ok", "failed")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def this_host() -> str:
    """This lab host's name, as inventories' ``reachable_from`` name it: $EDGESHRINK_LAB_HOST
    (or `lab run --lab-host`), else the machine's host name."""
    return os.environ.get("EDGESHRINK_LAB_HOST") or socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def json_value(value: str | None) -> Any:
    return None if value is None else json.loads(value)


@dataclass(frozen=True)
class LabRun:
    id: int
    suite_name: str
    status: str
    started_at: str
    finished_at: str | None
    heartbeat_at: float
    host: str
    pid: int
    inventory_path: str
    inventory_sha256: str
    inventory: str
    suite_path: str
    suite_sha256: str
    suite: str
    edgeshrink_version: str
    host_tools: dict[str, Any]
    resumes: int
    summary: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Any) -> LabRun:
        doc = dict(row)
        doc["host_tools"] = json_value(doc["host_tools"]) or {}
        doc["summary"] = json_value(doc["summary"])
        return cls(**doc)

    def is_alive(
        self, lease_s: float, *, host: str | None = None, now: float | None = None
    ) -> bool:
        """Whether the process that started this run still works on it, judged by the run's
        own heartbeat (the runs of an edgeshrink before several runners; claims.py judges
        each runner of a newer run)."""
        if self.status != "running":
            return False
        if self.host == (host or this_host()) and not pid_alive(self.pid):
            return False
        return (time.time() if now is None else now) - self.heartbeat_at < lease_s

    def to_dict(self, *, texts: bool = False) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if texts or k not in ("inventory", "suite")}
        return doc


@dataclass(frozen=True)
class JobRecord:
    """One lab job of one run on one device, with what regression detection needs."""

    id: int
    run_id: int
    device: str
    job: str
    settings_key: str
    build_key: str | None
    status: str  # pending | running | done | failed
    attempts: int
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    result_id: int | None
    result_status: str | None  # the agent's: ok | error | timeout | oom
    error: str | None
    cooldown: dict[str, Any] | None
    temp_before_c: float | None
    temp_after_c: float | None
    cpu_mhz_before: float | None
    cpu_mhz_after: float | None
    throttled: str | None
    snapshot_id: int | None
    samples: dict[str, list[float]]
    metrics: dict[str, float | None]
    context: dict[str, Any]
    runner: str | None = None  # the runner that claimed it (and, when done, measured it)
    lease_until: float | None = None

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        doc = dict(row)
        doc["cooldown"] = json_value(doc["cooldown"])
        doc["samples"] = json_value(doc["samples"]) or {}
        doc["metrics"] = json_value(doc["metrics"]) or {}
        doc["context"] = json_value(doc["context"]) or {}
        return cls(**doc)

    @property
    def ok(self) -> bool:
        return self.status == "done" and self.result_status == "ok"

    @property
    def failed(self) -> bool:
        """Ended without a good measurement: no result, or the agent's error/timeout/oom."""
        return self.status == "failed" or (self.status == "done" and self.result_status != "ok")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BuildRecord:
    run_id: int
    job: str
    build_key: str
    status: str
    source_path: str | None
    source_sha256: str | None
    artifact_path: str | None
    artifact_sha256: str | None
    artifact_size: int | None
    format: str | None
    quant: str | None
    reused: int | None
    seconds: float | None
    error: str | None
    tool_versions: dict[str, Any] | None
    quality_status: str | None
    kld_mean: float | None
    ppl_ratio: float | None
    same_top: float | None
    quality: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Any) -> BuildRecord:
        doc = dict(row)
        doc["tool_versions"] = json_value(doc["tool_versions"])
        doc["quality"] = json_value(doc["quality"])
        return cls(**doc)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LabHistory:
    """The lab tables of one results database (one connection: one thread)."""

    def __init__(self, store: ResultStore, host: str | None = None) -> None:
        self.store = store
        self.host = host or this_host()

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None, host: str | None = None) -> LabHistory:
        return cls(ResultStore(db), host)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> LabHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ runs

    def joinable_run(
        self, inventory_sha256: str, suite_sha256: str, within_s: float | None
    ) -> int | None:
        """The newest ``running`` run of these inventory and suite bytes started within
        ``within_s`` (None: no run is joinable)."""
        if within_s is None:
            return None
        since = datetime.fromtimestamp(self.store.now() - within_s, timezone.utc)
        rows = self.store.query(
            "SELECT id FROM lab_runs WHERE status = 'running' AND inventory_sha256 = ?"
            " AND suite_sha256 = ? AND started_at >= ? ORDER BY id DESC LIMIT 1",
            (inventory_sha256, suite_sha256, since.isoformat(timespec="milliseconds")),
        )
        return int(rows[0]["id"]) if rows else None

    def open_run(
        self,
        *,
        suite_name: str,
        inventory_path: str,
        inventory_text: str,
        inventory_sha256: str,
        suite_path: str,
        suite_text: str,
        suite_sha256: str,
        edgeshrink_version: str,
        host_tools: dict[str, Any],
        join_within_s: float | None,
    ) -> tuple[int, bool]:
        """The run to work on and whether it was joined: the newest ``running`` run of the
        same inventory and suite bytes started within ``join_within_s`` (the same night,
        maybe started by another lab host), else a new one.  Both in one exclusive
        transaction, so two hosts starting at once make one run, not two."""
        with self.store.transaction(immediate=True) as db:
            joinable = self.joinable_run(inventory_sha256, suite_sha256, join_within_s)
            if joinable is not None:
                return joinable, True
            cursor = db.execute(
                "INSERT INTO lab_runs (suite_name, status, started_at, heartbeat_at, host, pid,"
                " inventory_path, inventory_sha256, inventory, suite_path, suite_sha256, suite,"
                " edgeshrink_version, host_tools) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (suite_name, now_iso(), self.store.now(), self.host, os.getpid(), inventory_path,
                 inventory_sha256, inventory_text, suite_path, suite_sha256, suite_text,
                 edgeshrink_version, json_text(host_tools)),
            )  # fmt: skip
            return int(cursor.fetchone()[0]), False

    def get_run(self, run_id: int) -> LabRun | None:
        rows = self.store.query("SELECT * FROM lab_runs WHERE id = ?", (run_id,))
        return LabRun.from_row(rows[0]) if rows else None

    def latest_run(self, suite_name: str | None = None) -> LabRun | None:
        runs = self.list_runs(suite_name=suite_name, limit=1)
        return runs[0] if runs else None

    def list_runs(
        self,
        *,
        suite_name: str | None = None,
        since: str | None = None,
        before_id: int | None = None,
        statuses: tuple[str, ...] | None = None,
        limit: int | None = None,
    ) -> list[LabRun]:
        """Runs, newest first."""
        where, args = [], []
        if suite_name:
            where.append("suite_name = ?")
            args.append(suite_name)
        if since:
            where.append("started_at >= ?")
            args.append(since)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args.extend(statuses)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        tail = " LIMIT ?" if limit else ""
        rows = self.store.query(
            f"SELECT * FROM lab_runs {clause} ORDER BY id DESC{tail}",
            (*args, *((limit,) if limit else ())),
        )
        return [LabRun.from_row(r) for r in rows]

    def claim_run(self, run_id: int) -> None:
        """This process now works on the run (a resume)."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lab_runs SET status = 'running', host = ?, pid = ?, heartbeat_at = ?,"
                " finished_at = NULL, resumes = resumes + 1 WHERE id = ?",
                (self.host, os.getpid(), self.store.now(), run_id),
            )

    # ------------------------------------------------------------------ devices of a run

    def add_run_devices(self, run_id: int, devices: list[tuple[str, dict[str, Any]]]) -> None:
        with self.store.transaction() as db:
            db.executemany(
                "INSERT INTO lab_run_devices (run_id, device, target, status)"
                " VALUES (?, ?, ?, 'pending') ON CONFLICT DO NOTHING",
                [(run_id, name, json_text(target)) for name, target in devices],
            )

    def device_started(self, run_id: int, device: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lab_run_devices SET status = 'running', started_at = ?, error = NULL"
                " WHERE run_id = ? AND device = ?",
                (now_iso(), run_id, device),
            )

    def device_finished(
        self,
        run_id: int,
        device: str,
        status: str,
        *,
        seconds: float,
        attempts: int,
        error: str | None,
    ) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lab_run_devices SET status = ?, finished_at = ?, seconds = ?,"
                " attempts = attempts + ?, error = ? WHERE run_id = ? AND device = ?",
                (status, now_iso(), seconds, attempts, error, run_id, device),
            )

    def run_devices(self, run_id: int) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT * FROM lab_run_devices WHERE run_id = ? ORDER BY device", (run_id,)
        )
        out = []
        for row in rows:
            doc = dict(row)
            doc["target"] = json_value(doc["target"])
            out.append(doc)
        return out

    # ------------------------------------------------------------------ jobs

    def add_jobs(self, run_id: int, jobs: list[tuple[str, str, str, str | None]]) -> None:
        """(device, job, settings_key, build_key) rows, pending; existing rows are kept."""
        with self.store.transaction() as db:
            db.executemany(
                "INSERT INTO lab_jobs (run_id, device, job, settings_key, build_key, status)"
                " VALUES (?, ?, ?, ?, ?, 'pending') ON CONFLICT DO NOTHING",
                [(run_id, *job) for job in jobs],
            )

    def reset_unfinished(self, run_id: int) -> int:
        """Jobs that have no stored measurement go back to pending (a resume: no live
        runner holds any of them)."""
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE lab_jobs SET status = 'pending', error = NULL, runner = NULL,"
                " lease_until = NULL WHERE run_id = ? AND status IN ('pending', 'running', 'failed')",
                (run_id,),
            )
            db.execute(
                "UPDATE lab_run_devices SET status = 'pending' WHERE run_id = ? AND device IN"
                " (SELECT device FROM lab_jobs WHERE run_id = ? AND status = 'pending')",
                (run_id, run_id),
            )
            db.execute("DELETE FROM lab_unreachable WHERE run_id = ?", (run_id,))
        return cursor.rowcount

    def jobs(self, run_id: int) -> list[JobRecord]:
        rows = self.store.query("SELECT * FROM lab_jobs WHERE run_id = ? ORDER BY id", (run_id,))
        return [JobRecord.from_row(r) for r in rows]

    def jobs_of_runs(self, run_ids: list[int]) -> list[JobRecord]:
        if not run_ids:
            return []
        marks = ", ".join("?" for _ in run_ids)
        rows = self.store.query(
            f"SELECT * FROM lab_jobs WHERE run_id IN ({marks}) ORDER BY run_id, id", tuple(run_ids)
        )
        return [JobRecord.from_row(r) for r in rows]

    def set_job_build(self, job_id: int, build_key: str | None) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE lab_jobs SET build_key = ? WHERE id = ?", (build_key, job_id))

    def job_started(self, job_id: int) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lab_jobs SET status = 'running', started_at = ?, attempts = attempts + 1"
                " WHERE id = ?",
                (now_iso(), job_id),
            )

    def job_attempt_failed(self, job_id: int, error: str, *, before_start: bool = False) -> None:
        """One try of the job failed and it will be tried again (the claim stays);
        ``before_start``: while reaching the device, so the try was not counted by
        job_started (a device that never answers still had tries)."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lab_jobs SET error = ?, attempts = attempts + ? WHERE id = ?",
                (error, int(before_start), job_id),
            )

    def job_failed(self, job_id: int, error: str, *, before_start: bool = False) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lab_jobs SET status = 'failed', error = ?, finished_at = ?,"
                " attempts = attempts + ?, lease_until = NULL WHERE id = ?",
                (error, now_iso(), int(before_start), job_id),
            )

    def fail_open_jobs(
        self, run_id: int, device: str, error: str, *, current: int | None, before_start: bool
    ) -> list[str]:
        """Every job of the device that nobody finished fails with ``error`` (a device that
        no runner can reach); ``current``/``before_start`` as in job_failed.  Returns the
        jobs' names."""
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT id, job FROM lab_jobs WHERE run_id = ? AND device = ?"
                " AND status IN ('pending', 'running') ORDER BY id",
                (run_id, device),
            ).fetchall()
            db.executemany(
                "UPDATE lab_jobs SET status = 'failed', error = ?, finished_at = ?,"
                " attempts = attempts + ?, lease_until = NULL WHERE id = ?",
                [
                    (error, now_iso(), int(before_start and r["id"] == current), r["id"])
                    for r in rows
                ],
            )
        return [r["job"] for r in rows]

    def job_done(
        self,
        job_id: int,
        fields: dict[str, Any],
        *,
        result: tuple[dict[str, Any], dict[str, Any]] | None = None,
        runner: str | None = None,
    ) -> int | None:
        """The job measured: its figures and, in the same transaction, its result row
        (``result``: the row and the agent's document).  With ``runner``, only while the
        job is still that runner's claim: otherwise nothing is stored and LabLockError
        says why.  Returns the result's id."""
        values = dict(fields)
        for key in ("cooldown", "samples", "metrics", "context"):
            if key in values:
                values[key] = json_text(values[key])
        values.update(status="done", finished_at=now_iso(), lease_until=None)
        with self.store.transaction() as db:
            result_id = None
            if result is not None:
                result_id = values["result_id"] = insert_result(db, *result)
            sets = ", ".join(f"{k} = ?" for k in values)
            fence = "" if runner is None else " AND runner = ? AND status = 'running'"
            cursor = db.execute(
                f"UPDATE lab_jobs SET {sets} WHERE id = ?{fence}",
                (*values.values(), job_id, *(() if runner is None else (runner,))),
            )
            if cursor.rowcount != 1:
                raise LabLockError(
                    f"lab job {job_id} is no longer this runner's claim: another runner took it "
                    "over when this one's lease passed; its measurement is not stored",
                    hint="a runner must reach the database within its lease: give a longer --lease",
                )
        return result_id

    # ------------------------------------------------------------------ snapshots

    def add_snapshot(self, run_id: int, device: str, fields: dict[str, Any], document: Any) -> int:
        values = {"run_id": run_id, "device": device, "taken_at": now_iso(), **fields}
        for key in ("runtimes", "cpu_mhz", "temps_c"):
            values[key] = json_text(values.get(key))
        values["document"] = json_text(document)
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self.store.transaction() as db:
            cursor = db.execute(
                f"INSERT INTO lab_snapshots ({names}) VALUES ({marks}) RETURNING id",
                tuple(values.values()),
            )
            return int(cursor.fetchone()[0])

    def snapshots(self, run_ids: list[int]) -> list[dict[str, Any]]:
        if not run_ids:
            return []
        marks = ", ".join("?" for _ in run_ids)
        rows = self.store.query(
            "SELECT id, run_id, device, taken_at, hostname, os, kernel, python, cpu, arch, cores,"
            " ram_mb, memory_limit_mb, board, agent_version, runtimes, cpu_mhz, temps_c"
            f" FROM lab_snapshots WHERE run_id IN ({marks}) ORDER BY id",
            tuple(run_ids),
        )
        out = []
        for row in rows:
            doc = dict(row)
            for key in ("runtimes", "cpu_mhz", "temps_c"):
                doc[key] = json_value(doc[key])
            out.append(doc)
        return out

    # ------------------------------------------------------------------ builds

    def save_build(self, run_id: int, job: str, build_key: str, fields: dict[str, Any]) -> None:
        values = {"run_id": run_id, "job": job, "build_key": build_key, **fields}
        for key in ("tool_versions", "quality"):
            if key in values:
                values[key] = json_text(values[key])
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        # every runner of a run builds what it may run: the same key, the same bytes
        updates = ", ".join(f"{k} = excluded.{k}" for k in values)
        with self.store.transaction() as db:
            db.execute(
                f"INSERT INTO lab_builds ({names}) VALUES ({marks})"
                f" ON CONFLICT (run_id, job, build_key) DO UPDATE SET {updates}",
                tuple(values.values()),
            )

    def set_build_quality(
        self, run_id: int, job: str, build_key: str, fields: dict[str, Any]
    ) -> None:
        values = dict(fields)
        if "quality" in values:
            values["quality"] = json_text(values["quality"])
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.store.transaction() as db:
            db.execute(
                f"UPDATE lab_builds SET {sets} WHERE run_id = ? AND job = ? AND build_key = ?",
                (*values.values(), run_id, job, build_key),
            )

    def builds(self, run_ids: list[int]) -> list[BuildRecord]:
        if not run_ids:
            return []
        marks = ", ".join("?" for _ in run_ids)
        rows = self.store.query(
            f"SELECT * FROM lab_builds WHERE run_id IN ({marks}) ORDER BY run_id, job",
            tuple(run_ids),
        )
        return [BuildRecord.from_row(r) for r in rows]
