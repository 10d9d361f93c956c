"""`lab run`: every job of a suite on every device of an inventory, and all of it recorded,
by one runner or by several on several lab hosts sharing one database.

The order of things:

1. **Plan.**  Which jobs each device runs (by tags), and which artifacts that
   takes: one per (model bytes, quantization, shrink settings), shared by every
   device that needs it.
2. **Join or start.**  A runner joins the newest ``running`` run of the same
   inventory and suite bytes started in the last ``join_within_s`` (the same night,
   maybe started on another lab host), or the run named by ``run_id``; else it
   starts one.  It works only on devices it may reach (an inventory's
   ``reachable_from`` names the lab hosts a board hangs off).
3. **Lock.**  Every free board this runner may reach is locked in the results
   database (``lab_locks``, with a lease its heartbeat extends).  A board held by
   a live runner of ANOTHER run makes this one wait (``lock_wait_s``) or refuse,
   so two runs never interleave benchmarks on one board; boards a runner of the
   same run holds are left to it (and taken over when its lease passes).
4. **Build** on the host, once per artifact (shrink_model; an artifact already
   in the cache is reused, it is content-addressed by source hash and settings).
5. **Devices run concurrently**, one thread each; a device's jobs run one at a
   time, each claimed in the database first (claims.py).  A device session:
   connect, snapshot (the agent's ``info`` and the doctor's facts: OS, runtimes,
   CPU, clocks, memory limit), then per job: push (skipped when the device has
   the bytes), cool down, benchmark, store.  Quality checks run meanwhile in a
   host thread.  A runner stays until every job it may do is finished by someone:
   if another runner dies, its boards and jobs come free after its lease.
6. **Failures.**  A connection failure is retried ``retries`` times (with
   ``delay_s`` between); then the device is left to another live runner that may
   reach it, or, when there is none, marked failed with the reason and its
   remaining jobs fail, while the other devices finish.  An agent that errors,
   times out or is OOM-killed is a measurement (stored with its status), not a
   device failure.
7. **Resume.**  Every job is a row; ``resume`` re-runs only the jobs of the run
   that have no stored measurement (pending, interrupted or failed).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshrink import __version__
from edgeshrink.artifacts import tool_versions
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.lab.builds import (
    BuildPlan,
    Built,
    LabPlan,
    default_artifacts_dir,
    plan_lab,
)
from edgeshrink.lab.claims import DEFAULT_LEASE_S, Fleet, LockHolder, run_alive
from edgeshrink.lab.config import (
    Inventory,
    LabConfigError,
    LabDevice,
    LabLockError,
    Suite,
    load_inventory,
    load_suite,
)
from edgeshrink.lab.history import JobRecord, LabHistory, LabRun, this_host
from edgeshrink.lab.host_work import build_all, check_quality
from edgeshrink.lab.session import DeviceOutcome, DeviceSession, LabEvent, Progress
from edgeshrink.profiles import get_profile

__all__ = [
    "DEFAULT_LEASE_S",
    "HEARTBEAT_S",
    "JOIN_WITHIN_S",
    "LOCK_POLL_S",
    "BuildPlan",
    "Built",
    "DeviceOutcome",
    "LabEvent",
    "LabPlan",
    "LabRunOutcome",
    "Progress",
    "default_artifacts_dir",
    "plan_lab",
    "run_lab",
]

HEARTBEAT_S = 5.0  # at most; a short lease (tests) beats four times per lease
LOCK_POLL_S = 1.0
JOIN_WITHIN_S = 12 * 3600.0  # "the same night": a running run this recent is joined


@dataclass(frozen=True)
class LabRunOutcome:
    run_id: int
    status: (
        str  # the run's when this runner left: finished | running (others finish it) | interrupted
    )
    resumed: bool
    seconds: float
    build_seconds: float
    devices: tuple[DeviceOutcome, ...]
    jobs: tuple[JobRecord, ...]
    db_path: Path | str
    joined: bool = False
    host: str = ""
    owner: str = ""

    @property
    def ok(self) -> bool:
        """Every job measured ok, or, when others finish the run, none failed so far."""
        if self.status == "running":
            return not any(j.failed for j in self.jobs)
        return self.status == "finished" and all(j.ok for j in self.jobs)

    @property
    def waiting(self) -> list[JobRecord]:
        """Jobs nobody has finished: other runners are on them, or no runner reaches them yet."""
        return [j for j in self.jobs if j.status in ("pending", "running")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "resumed": self.resumed,
            "joined": self.joined, "host": self.host, "runner": self.owner,
            "seconds": round(self.seconds, 3), "build_seconds": round(self.build_seconds, 3),
            "ok": self.ok, "db": str(self.db_path),
            "devices": [d.__dict__ for d in self.devices],
            "jobs": [j.to_dict() for j in self.jobs],
        }  # fmt: skip


# --------------------------------------------------------------------------- the run


class LabRunner:
    def __init__(
        self,
        plan: LabPlan,
        *,
        db: str | os.PathLike[str] | None,
        progress: Progress | None,
        artifacts_dir: Path,
        host: str,
        lease_s: float,
    ) -> None:
        self.plan = plan
        self.suite = plan.suite
        self.inventory = plan.inventory
        self.db = db
        self.progress = progress
        self.artifacts_dir = artifacts_dir
        self.host = host
        self.lease_s = lease_s
        self.owner = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.run_id: int | None = None
        self.stop = threading.Event()
        self.built: dict[tuple[str, str], Built] = {}
        # Per job with a quality check: the reference its devices score it against.
        self.references: dict[str, Path] = {}
        self.profiles: dict[str, Any] = {}
        self.unreachable: set[str] = set()  # devices this runner found it cannot reach
        self.build_seconds = 0.0
        self.joined = False
        self._emit_lock = threading.Lock()
        self._beat_stop = threading.Event()

    def emit(self, event: LabEvent) -> None:
        if self.progress is not None:
            with self._emit_lock:
                self.progress(event)

    def fleet(self, hist: LabHistory) -> Fleet:
        """This runner's claims, through one thread's own connection."""
        return Fleet(hist.store, owner=self.owner, host=self.host, lease_s=self.lease_s)

    def history(self) -> LabHistory:
        return LabHistory.open(self.db, self.host)

    def lock(
        self, hist: LabHistory, attempt: Callable[[], list[LockHolder]], *, wait_s: float
    ) -> None:
        """Try ``attempt`` (take the boards: Fleet.try_lock) until no board is held by
        another run; wait up to ``wait_s`` for those, then refuse."""
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            holders = attempt()
            if not holders:
                return
            now = hist.store.now()
            if time.monotonic() >= deadline:
                raise LabLockError(
                    f"{holders[0].describe(now)}"
                    + (f" (and {len(holders) - 1} more device(s))" if len(holders) > 1 else "")
                    + (f"; waited {wait_s:.0f} s" if wait_s else ""),
                    hint="two lab runs never share a board: wait for that run, pass --lock-wait SECONDS, "
                    "or see `edgeshrink lab status`",
                )
            if not said:
                self.emit(LabEvent("waiting", self.run_id, message=(
                    f"waiting up to {wait_s:.0f} s for another run: "
                    + "; ".join(h.describe(now) for h in holders))))  # fmt: skip
                said = True
            time.sleep(LOCK_POLL_S)

    def open_and_lock(
        self, hist: LabHistory, mine: list[LabDevice], join_within_s: float | None
    ) -> list[LockHolder]:
        """One try at joining (or starting) the run and taking its free boards, in ONE
        exclusive transaction: two hosts starting at once make one run, and a run that
        must wait for another run's boards leaves nothing behind.  Sets ``run_id`` and
        ``joined``; returns the other runs' holders in the way."""
        inventory, suite = self.inventory, self.suite
        try:
            with hist.store.transaction(immediate=True):
                run_id, joined = hist.open_run(
                    suite_name=suite.name, inventory_path=str(inventory.path.resolve()),
                    inventory_text=inventory.text, inventory_sha256=inventory.sha256,
                    suite_path=str(suite.path.resolve()), suite_text=suite.text,
                    suite_sha256=suite.sha256, edgeshrink_version=__version__,
                    host_tools={"host": self.host, **tool_versions()}, join_within_s=join_within_s,
                )  # fmt: skip
                devices = _with_open_jobs(hist, run_id, mine) if joined else mine
                holders = self.fleet(hist).try_lock({d.lock_key: d.name for d in devices}, run_id)
                if holders:
                    raise _Refused(holders)
        except _Refused as refused:
            return refused.holders
        self.run_id, self.joined = run_id, joined
        return []

    def heartbeat_loop(self) -> None:
        hist = self.history()
        fleet = self.fleet(hist)
        try:
            while not self._beat_stop.wait(min(HEARTBEAT_S, self.lease_s / 4)):
                with contextlib.suppress(EdgeshrinkError):  # a lost beat: the next one may do
                    fleet.heartbeat(self.run_id)  # type: ignore[arg-type]
        finally:
            hist.close()

    def execute(self, hist: LabHistory, devices: list[LabDevice]) -> list[DeviceOutcome]:
        """Build what ``devices``' open jobs need, then one session per device until every
        job this runner may do is finished (by it or by another runner)."""
        beat = threading.Thread(target=self.heartbeat_loop, name="lab-heartbeat", daemon=True)
        beat.start()
        try:
            names = {d.name for d in devices}
            open_jobs = [
                r for r in hist.jobs(self.run_id) if r.device in names and r.status != "done"
            ]  # type: ignore[arg-type]
            for r in open_jobs:
                self.profiles.update(self._profile_for(r.device))
            self.build_seconds = build_all(
                self, hist, {(r.job, r.build_key or "") for r in open_jobs}
            )
            quality = threading.Thread(
                target=check_quality, args=(self,), name="lab-quality", daemon=True
            )
            quality.start()
            outcomes: list[DeviceOutcome] = []
            with ThreadPoolExecutor(
                max_workers=max(1, len(devices)), thread_name_prefix="lab-device"
            ) as pool:
                futures = [pool.submit(DeviceSession(self, device).run) for device in devices]
                try:
                    while True:
                        done, running = wait(futures, timeout=0.5)
                        if not running:
                            break
                except KeyboardInterrupt:
                    self.stop.set()
                    self.emit(LabEvent("interrupted", self.run_id,
                                       message="stopping after the benchmarks that are running"))  # fmt: skip
                    wait(futures)
                    raise
                finally:
                    for future in futures:
                        if future.done() and future.exception() is None and future.result():
                            outcomes.append(future.result())
            quality.join()
            return outcomes
        finally:
            self._beat_stop.set()
            beat.join(timeout=HEARTBEAT_S + 1)

    def _profile_for(self, device_name: str) -> dict[str, Any]:
        device = self.inventory.device(device_name)
        if device.profile and device.profile not in self.profiles:
            return {device.profile: get_profile(device.profile)}
        return {}


def run_lab(
    inventory: Inventory | None,
    suite: Suite | None,
    *,
    db: str | os.PathLike[str] | None = None,
    resume: int | None = None,
    run_id: int | None = None,
    lock_wait_s: float = 0.0,
    lease_s: float = DEFAULT_LEASE_S,
    lab_host: str | None = None,
    join_within_s: float | None = JOIN_WITHIN_S,
    artifacts_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> LabRunOutcome:
    """Run a lab run, join one (another lab host's, the same night), or with ``resume``
    finish one; returns what happened, all of it stored.

    A run of the same inventory and suite bytes that is ``running`` and started within
    ``join_within_s`` is joined (None: never); ``run_id`` joins that run.  With
    ``resume`` or ``run_id`` the run's own stored inventory and suite are used; files
    given as well must be the same bytes.  ``lab_host`` names this host as inventories'
    ``reachable_from`` do (default: $EDGESHRINK_LAB_HOST, else the host name);
    ``lease_s``: how long this runner's boards and jobs outlive its last heartbeat.
    """
    start = time.perf_counter()
    host = lab_host or this_host()
    hist = LabHistory.open(db, host)
    try:
        run: LabRun | None = None
        if resume is not None or run_id is not None:
            wanted = resume if resume is not None else run_id
            run = hist.get_run(wanted)  # type: ignore[arg-type]
            if run is None:
                raise LabConfigError(
                    f"no lab run {wanted} in {hist.store.path}",
                    hint="`edgeshrink lab status` lists the runs",
                )
            inventory, suite = _stored_config(run, inventory, suite)
            if resume is not None and run_alive(hist.store, run, host=host):
                raise LabLockError(
                    f"lab run {run.id} is still running on {run.host} pid {run.pid} "
                    f"(heartbeat {hist.store.now() - run.heartbeat_at:.0f} s ago)",
                    hint=f"join it instead: `edgeshrink lab run --run-id {run.id}`; a run can be "
                    "resumed once no runner works on it",
                )
        if inventory is None or suite is None:
            raise LabConfigError("lab run needs an inventory and a suite (or --resume RUN_ID)")
        plan = plan_lab(inventory, suite)
        runner = LabRunner(
            plan, db=db, progress=progress, host=host, lease_s=lease_s,
            artifacts_dir=Path(artifacts_dir) if artifacts_dir else default_artifacts_dir(),
        )  # fmt: skip
        mine = [d for d in inventory.devices if plan.jobs[d.name] and d.reachable_by(host)]
        if run is not None:
            resources = {
                d.lock_key: d.name
                for d in _with_open_jobs(hist, run.id, mine, failed=resume is not None)
            }
            given = run
            runner.lock(
                hist, lambda: runner.fleet(hist).try_lock(resources, given.id), wait_s=lock_wait_s
            )
            runner.run_id = run.id
            _ensure_rows(hist, run.id, plan)
            if resume is not None:
                hist.claim_run(run.id)
                todo = hist.reset_unfinished(run.id)
                message = f"resuming run {run.id}: {todo} job(s) to do"
            else:
                runner.joined = True
                message = f"joining run {run.id} (started {run.started_at[:16]} on {run.host})"
        else:
            runner.lock(
                hist, lambda: runner.open_and_lock(hist, mine, join_within_s), wait_s=lock_wait_s
            )
            assert runner.run_id is not None
            _ensure_rows(hist, runner.run_id, plan)
            first = hist.get_run(runner.run_id)
            assert first is not None
            message = (
                f"joining run {first.id} of suite {suite.name} (started {first.started_at[:16]} "
                f"on {first.host})" if runner.joined else f"run {first.id} of suite {suite.name}"
            )  # fmt: skip
        run_id = runner.run_id
        assert run_id is not None
        fleet = runner.fleet(hist)
        interrupted = False
        outcomes: list[DeviceOutcome] = []
        try:
            fleet.join(run_id, os.getpid())
            devices = _with_open_jobs(hist, run_id, mine)
            names = {d.name for d in devices}
            todo = [j for j in hist.jobs(run_id) if j.status in ("pending", "running")
                    and j.device in names]  # fmt: skip
            elsewhere = sorted(
                {d.name for d in inventory.devices if plan.jobs[d.name]} - {d.name for d in mine}
            )
            runner.emit(LabEvent("run-started", run_id, message=(
                f"{message}: {len(todo)} job(s) to do on {len(devices)} device(s) that {host} may reach"
                + (f"; left to other lab hosts: {', '.join(elsewhere)}" if elsewhere else ""))))  # fmt: skip
            outcomes = runner.execute(hist, devices) if devices else []
        except BaseException:
            # Ctrl-C, or a failure of the host itself: what is stored stays, another runner
            # (or `lab run --resume`) finishes the rest.
            interrupted = True
            raise
        finally:
            # Its boards and claims go back at once, not when its lease passes.
            status = fleet.leave(run_id, interrupted=interrupted,
                                 summarize=lambda jobs: _summary(jobs, runner))  # fmt: skip
            jobs = hist.jobs(run_id)
        summary = _summary(jobs, runner)
        waiting = sorted({j.device for j in jobs if j.status in ("pending", "running")})
        runner.emit(LabEvent("run-finished", run_id, message=(
            f"run {run_id} {status}: {summary['ok']} ok, {summary['failed']} failed "
            f"of {summary['jobs']} job(s)"
            + (f"; {summary['pending']} job(s) left to other runners or lab hosts, on "
               f"{', '.join(waiting)}" if status == "running" else "")), data=summary))  # fmt: skip
        return LabRunOutcome(
            run_id=run_id, status=status, resumed=resume is not None,
            seconds=time.perf_counter() - start, build_seconds=runner.build_seconds,
            devices=tuple(outcomes), jobs=tuple(jobs), db_path=hist.store.path,
            joined=runner.joined, host=host, owner=runner.owner,
        )  # fmt: skip
    finally:
        hist.close()


class _Refused(Exception):
    """Rolls back a try at starting a run whose boards another run holds."""

    def __init__(self, holders: list[LockHolder]) -> None:
        super().__init__(f"{len(holders)} board(s) held by another run")
        self.holders = holders


def _with_open_jobs(
    hist: LabHistory, run_id: int | None, devices: list[LabDevice], *, failed: bool = False
) -> list[LabDevice]:
    """The devices with a job that nobody has finished in the run (``failed``: or that
    failed, which a resume runs again)."""
    if run_id is None:
        return list(devices)
    statuses = ("pending", "running", "failed") if failed else ("pending", "running")
    open_on = {j.device for j in hist.jobs(run_id) if j.status in statuses}
    return [d for d in devices if d.name in open_on]


def _stored_config(
    run: LabRun, inventory: Inventory | None, suite: Suite | None
) -> tuple[Inventory, Suite]:
    """The inventory and suite a run was started with; given files must match them."""
    for given, stored_sha, what in (
        (inventory, run.inventory_sha256, "inventory"),
        (suite, run.suite_sha256, "suite"),
    ):
        if given is not None and given.sha256 != stored_sha:
            raise LabConfigError(
                f"{given.path}: this {what} is not the one run {run.id} was started with",
                hint=f"resume without --{what} (the stored copy is used), or start a new run",
            )
    return (
        load_inventory(run.inventory_path, text=run.inventory),
        load_suite(run.suite_path, text=run.suite),
    )


def _ensure_rows(hist: LabHistory, run_id: int, plan: LabPlan) -> None:
    hist.add_run_devices(
        run_id, [(d.name, d.to_dict()) for d in plan.inventory.devices if plan.jobs[d.name]]
    )
    hist.add_jobs(
        run_id,
        [
            (device, job.name, job.settings_key(), plan.build_for[(device, job.name)])
            for device, jobs in plan.jobs.items()
            for job in jobs
        ],
    )
    # A resumed run may plan a different artifact (the cache was cleared, a model changed).
    for record in hist.jobs(run_id):
        key = plan.build_for.get((record.device, record.job))
        if record.status != "done" and key and key != record.build_key:
            hist.set_job_build(record.id, key)


def _pending(hist: LabHistory, run_id: int) -> dict[str, list[JobRecord]]:
    pending: dict[str, list[JobRecord]] = {}
    for record in hist.jobs(run_id):
        if record.status == "pending":
            pending.setdefault(record.device, []).append(record)
    return pending


def _summary(jobs: list[JobRecord], runner: LabRunner) -> dict[str, Any]:
    failed_devices = sorted({j.device for j in jobs if j.status == "failed" and j.error
                             and j.error.startswith("device failed")})  # fmt: skip
    return {
        "jobs": len(jobs),
        "ok": sum(1 for j in jobs if j.ok),
        "failed": sum(1 for j in jobs if j.failed),
        "pending": sum(1 for j in jobs if j.status in ("pending", "running")),
        "devices_failed": failed_devices,
        "build_seconds": round(getattr(runner, "build_seconds", 0.0), 3),
    }
