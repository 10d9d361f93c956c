"""Several runners, one fleet: who works on a lab run, which board each one holds, which
job each has claimed, and for how long without a heartbeat.

- **Runners.** Each `lab run` process joins a run as a row of ``lab_runners`` (host,
  pid, heartbeat, lease).  Two hosts started with the same inventory and suite share
  one run; each device is left to the hosts that reach it.
- **Boards.** One row per board in ``lab_locks`` (the board's lock key), held by one
  runner, whichever run it is for: two benchmarks never run on one board at once.
- **Jobs.** A runner claims one job at a time of a board it holds: ``status =
  'running'``, ``runner`` = its id, ``lease_until``.  The claim reads with ``FOR UPDATE
  SKIP LOCKED`` on PostgreSQL (another claimer skips the row instead of waiting for it)
  and under the write lock on SQLite.
- **Leases.** A heartbeat every few seconds moves the lease of everything a runner
  holds forward.  A runner that dies (kill -9, a host that loses power) stops moving
  them; once its lease has passed, the others take its boards and jobs over.  On the
  same host a holder whose process is gone loses them at once.  Leases are measured
  on the database's clock, so hosts whose clocks disagree still agree on them.
- **Fence.** Storing a job's result checks, in the same transaction, that the claim is
  still this runner's: a runner presumed dead that comes back cannot store a second
  measurement of the job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeshrink.lab.history import JobRecord, LabRun, json_text, now_iso, pid_alive
from edgeshrink.store import ResultStore

DEFAULT_LEASE_S = 180.0
OPEN = ("pending", "running")


def holder_alive(
    host: str, pid: int, lease_until: float | None, *, my_host: str, now: float
) -> bool:
    """Whether a holder (of a board or a run) still counts: its lease has not passed, and
    when it is on this host, its process is still there."""
    if host == my_host and not pid_alive(pid):
        return False
    return lease_until is not None and lease_until > now


@dataclass(frozen=True)
class LockHolder:
    resource: str
    device: str
    owner: str
    run_id: int | None
    host: str
    pid: int
    acquired_at: str
    heartbeat_at: float
    lease_until: float | None

    @property
    def expires(self) -> float:
        # a lock written before leases existed lasts a default lease past its heartbeat
        return (
            self.lease_until
            if self.lease_until is not None
            else self.heartbeat_at + DEFAULT_LEASE_S
        )

    def alive(self, my_host: str, now: float) -> bool:
        return holder_alive(self.host, self.pid, self.expires, my_host=my_host, now=now)

    def describe(self, now: float | None = None) -> str:
        run = f"run {self.run_id}" if self.run_id else "a starting run"
        age = (time.time() if now is None else now) - self.heartbeat_at
        return f"{self.device} ({self.resource}) is held by {run} on {self.host} pid {self.pid}, heartbeat {age:.0f} s ago"


@dataclass(frozen=True)
class RunnerRecord:
    owner: str
    run_id: int
    host: str
    pid: int
    status: str  # running | left | interrupted | gone
    joined_at: str
    left_at: str | None
    heartbeat_at: float
    lease_s: float

    def alive(self, my_host: str, now: float) -> bool:
        return self.status == "running" and holder_alive(
            self.host, self.pid, self.heartbeat_at + self.lease_s, my_host=my_host, now=now
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def runners_of(store: ResultStore, run_ids: list[int]) -> list[RunnerRecord]:
    if not run_ids:
        return []
    marks = ", ".join("?" for _ in run_ids)
    rows = store.query(
        f"SELECT * FROM lab_runners WHERE run_id IN ({marks}) ORDER BY joined_at, owner",
        tuple(run_ids),
    )
    return [RunnerRecord(**r) for r in rows]


def board_locks(store: ResultStore) -> list[LockHolder]:
    """Every board held now (or until its holder's lease passes), by device."""
    return [LockHolder(**r) for r in store.query("SELECT * FROM lab_locks ORDER BY device")]


def unreachable_devices(store: ResultStore, run_id: int) -> dict[str, dict[str, str]]:
    """device -> {lab host: why} for the devices runners of a run could not reach."""
    out: dict[str, dict[str, str]] = {}
    for r in store.query(
        "SELECT device, host, error FROM lab_unreachable WHERE run_id = ? ORDER BY device, host",
        (run_id,),
    ):
        out.setdefault(r["device"], {})[r["host"]] = r["error"]
    return out


def run_alive(store: ResultStore, run: LabRun, *, host: str, now: float | None = None) -> bool:
    """Whether some runner still works on a run (for resume and status): a live runner of
    it, or, for a run of an edgeshrink before several runners, its own heartbeat."""
    if run.status != "running":
        return False
    now = store.now() if now is None else now
    runners = runners_of(store, [run.id])
    if runners:
        return any(r.alive(host, now) for r in runners)
    return run.is_alive(DEFAULT_LEASE_S, host=host, now=now)


class Fleet:
    """One runner's claims in the results database (one connection: one thread)."""

    def __init__(self, store: ResultStore, *, owner: str, host: str, lease_s: float) -> None:
        self.store = store
        self.owner = owner
        self.host = host
        self.lease_s = lease_s

    # ------------------------------------------------------------------ runners

    def join(self, run_id: int, pid: int) -> None:
        now = self.store.now()
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO lab_runners (owner, run_id, host, pid, status, joined_at, heartbeat_at,"
                " lease_s) VALUES (?, ?, ?, ?, 'running', ?, ?, ?) ON CONFLICT (owner) DO UPDATE"
                " SET status = 'running', left_at = NULL, heartbeat_at = excluded.heartbeat_at",
                (self.owner, run_id, self.host, pid, now_iso(), now, self.lease_s),
            )
            db.execute(
                "UPDATE lab_runs SET status = 'running', finished_at = NULL, heartbeat_at = ?"
                " WHERE id = ?",
                (now, run_id),
            )

    def runners(self, run_ids: list[int]) -> list[RunnerRecord]:
        return runners_of(self.store, run_ids)

    def live_runners(self, run_id: int) -> list[RunnerRecord]:
        now = self.store.now()
        return [r for r in self.runners([run_id]) if r.alive(self.host, now)]

    def reap(self, run_id: int) -> list[str]:
        """Runners of this run on this host whose process is gone: their claims end now,
        not when their lease passes.  Returns their ids."""
        gone = [
            r.owner
            for r in self.runners([run_id])
            if r.status == "running" and r.host == self.host and not pid_alive(r.pid)
        ]
        if gone:
            with self.store.transaction() as db:
                for owner in gone:
                    db.execute("UPDATE lab_runners SET status = 'gone' WHERE owner = ?", (owner,))
                    db.execute(
                        "UPDATE lab_jobs SET lease_until = 0"
                        " WHERE run_id = ? AND runner = ? AND status = 'running'",
                        (run_id, owner),
                    )
                    db.execute("UPDATE lab_locks SET lease_until = 0 WHERE owner = ?", (owner,))
        return gone

    def heartbeat(self, run_id: int) -> None:
        """Move every lease of this runner forward (its boards, its claimed jobs, itself)."""
        now = self.store.now()
        until = now + self.lease_s
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lab_locks SET heartbeat_at = ?, lease_until = ? WHERE owner = ?",
                (now, until, self.owner),
            )
            db.execute(  # by run first: lab_jobs holds every night's jobs
                "UPDATE lab_jobs SET lease_until = ?"
                " WHERE run_id = ? AND runner = ? AND status = 'running'",
                (until, run_id, self.owner),
            )
            db.execute("UPDATE lab_runners SET heartbeat_at = ? WHERE owner = ?", (now, self.owner))
            db.execute("UPDATE lab_runs SET heartbeat_at = ? WHERE id = ?", (now, run_id))

    def leave(
        self,
        run_id: int,
        *,
        interrupted: bool,
        summarize: Callable[[list[JobRecord]], dict[str, Any]],
    ) -> str:
        """Give back every claim and board and leave the run; returns the run's status.

        The last runner to leave finishes the run (``finished`` when no job is open,
        ``interrupted`` when it was stopped).  While another live runner works on it,
        or jobs wait for a host that reaches their device, it stays ``running``.
        """
        now = self.store.now()
        with self.store.transaction(immediate=True) as db:
            db.execute(
                "UPDATE lab_jobs SET status = 'pending', runner = NULL, lease_until = NULL"
                " WHERE run_id = ? AND runner = ? AND status = 'running'",
                (run_id, self.owner),
            )
            db.execute("DELETE FROM lab_locks WHERE owner = ?", (self.owner,))
            db.execute(
                "UPDATE lab_runners SET status = ?, left_at = ? WHERE owner = ?",
                ("interrupted" if interrupted else "left", now_iso(), self.owner),
            )
            rows = db.execute("SELECT * FROM lab_jobs WHERE run_id = ? ORDER BY id", (run_id,))
            jobs = [JobRecord.from_row(r) for r in rows.fetchall()]
            others = [
                RunnerRecord(**r)
                for r in db.execute(
                    "SELECT * FROM lab_runners WHERE run_id = ? AND owner != ?",
                    (run_id, self.owner),
                ).fetchall()
            ]
            if not any(j.status in OPEN for j in jobs):
                status = "finished"
            elif any(r.alive(self.host, now) for r in others) or not interrupted:
                return "running"
            else:
                status = "interrupted"
            db.execute(
                "UPDATE lab_runs SET status = ?, finished_at = ?, summary = ? WHERE id = ?",
                (status, now_iso(), json_text(summarize(jobs)), run_id),
            )
            return status

    # ------------------------------------------------------------------ boards

    def try_lock(self, resources: dict[str, str], run_id: int | None) -> list[LockHolder]:
        """Take every free board (lock key -> device name), or none when a live runner of
        ANOTHER run holds one: returns those holders.  Boards that a live runner of this
        same run holds are left to it.  A holder whose lease has passed, or whose process
        is gone from this host, is taken over."""
        now = self.store.now()
        with self.store.transaction(immediate=True) as db:
            conflicts, free = [], []
            for resource, device in resources.items():
                row = db.execute(
                    "SELECT * FROM lab_locks WHERE resource = ?", (resource,)
                ).fetchone()
                holder = LockHolder(**row) if row else None
                if holder is None or not holder.alive(self.host, now):
                    free.append((resource, device))
                elif holder.owner != self.owner and (run_id is None or holder.run_id != run_id):
                    conflicts.append(holder)
            if conflicts:
                return conflicts
            for resource, device in free:
                self._hold(db, resource, device, run_id, now)
        return []

    def take_board(self, resource: str, device: str, run_id: int) -> LockHolder | None:
        """Hold one board; None when it is this runner's now, else the live holder."""
        now = self.store.now()
        with self.store.transaction(immediate=True) as db:
            row = db.execute("SELECT * FROM lab_locks WHERE resource = ?", (resource,)).fetchone()
            holder = LockHolder(**row) if row else None
            if holder is not None and holder.owner != self.owner and holder.alive(self.host, now):
                return holder
            if holder is None or holder.owner != self.owner:
                self._hold(db, resource, device, run_id, now)
        return None

    def _hold(self, db: Any, resource: str, device: str, run_id: int | None, now: float) -> None:
        db.execute(
            "INSERT INTO lab_locks (resource, device, owner, run_id, host, pid, acquired_at,"
            " heartbeat_at, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (resource)"
            " DO UPDATE SET device = excluded.device, owner = excluded.owner,"
            " run_id = excluded.run_id, host = excluded.host, pid = excluded.pid,"
            " acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at,"
            " lease_until = excluded.lease_until",
            (resource, device, self.owner, run_id, self.host, os.getpid(), now_iso(), now,
             now + self.lease_s),
        )  # fmt: skip

    def release(self, resources: list[str] | None = None) -> None:
        with self.store.transaction() as db:
            if resources is None:
                db.execute("DELETE FROM lab_locks WHERE owner = ?", (self.owner,))
            else:
                db.executemany(
                    "DELETE FROM lab_locks WHERE owner = ? AND resource = ?",
                    [(self.owner, r) for r in resources],
                )

    # ------------------------------------------------------------------ jobs

    def claim_job(self, run_id: int, device: str) -> JobRecord | None:
        """The device's next job for this runner: pending, or claimed by a runner whose
        lease has passed.  None when there is none to claim now."""
        now = self.store.now()
        with self.store.transaction() as db:
            row = db.execute(
                "SELECT id FROM lab_jobs WHERE run_id = ? AND device = ? AND (status = 'pending'"
                " OR (status = 'running' AND (lease_until IS NULL OR lease_until < ?)))"
                " ORDER BY id LIMIT 1" + db.skip_locked,
                (run_id, device, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE lab_jobs SET status = 'running', runner = ?, lease_until = ? WHERE id = ?",
                (self.owner, now + self.lease_s, row["id"]),
            )
            claimed = db.execute("SELECT * FROM lab_jobs WHERE id = ?", (row["id"],)).fetchone()
        return JobRecord.from_row(claimed)

    def release_job(self, job_id: int) -> None:
        """Give a claimed job back (pending again) for another runner to take."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lab_jobs SET status = 'pending', runner = NULL, lease_until = NULL"
                " WHERE id = ? AND runner = ? AND status = 'running'",
                (job_id, self.owner),
            )

    def open_jobs(self, run_id: int, device: str) -> int:
        """Jobs of the device that nobody has finished (pending or claimed)."""
        rows = self.store.query(
            "SELECT COUNT(*) FROM lab_jobs WHERE run_id = ? AND device = ?"
            " AND status IN ('pending', 'running')",
            (run_id, device),
        )
        return int(rows[0][0])

    # ------------------------------------------------------------------ reach

    def mark_unreachable(self, run_id: int, device: str, error: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO lab_unreachable (run_id, device, host, error, found_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, device, host)"
                " DO UPDATE SET error = excluded.error, found_at = excluded.found_at",
                (run_id, device, self.host, error, now_iso()),
            )

    def unreachable(self, run_id: int) -> dict[str, dict[str, str]]:
        return unreachable_devices(self.store, run_id)

    def others_may_reach(self, run_id: int, device: str, allowed: Callable[[str], bool]) -> bool:
        """Whether another live runner of the run may still reach the device: its host is
        allowed (reachable_from) and has not found the device unreachable."""
        tried = self.unreachable(run_id).get(device, {})
        return any(
            r.owner != self.owner and allowed(r.host) and r.host not in tried
            for r in self.live_runners(run_id)
        )
