"""`lab run`: every job of a suite on every device of an inventory, and all of it recorded.

The order of things:

1. **Plan.**  Which jobs each device runs (by tags), and which artifacts that
   takes: one per (model bytes, quantization, shrink settings), shared by every
   device that needs it.
2. **Lock.**  Every board of the run is locked in the results database
   (``lab_locks``: one row per board, with a heartbeat).  A board held by another
   live run makes this run wait (``lock_wait_s``) or refuse, so two runs never
   interleave benchmarks on one board.  A holder whose process is gone from
   this host, or whose heartbeat is older than ``stale_s``, is taken over.
3. **Build** on the host, once per artifact (shrink_model; an artifact already
   in the cache is reused, it is content-addressed by source hash and settings).
4. **Devices run concurrently**, one thread each; a device's jobs run one at a
   time.  A device session: connect, snapshot (the agent's ``info`` and the
   doctor's facts: OS, runtimes, CPU, clocks, memory limit), then per job:
   push (skipped when the device has the bytes), cool down, benchmark, store.
   Quality checks run meanwhile in a host thread.
5. **Failures.**  A connection failure is retried ``retries`` times (with
   ``delay_s`` between); then the device is marked failed with the reason and its
   remaining jobs fail, while the other devices finish.  An agent that errors,
   times out or is OOM-killed is a measurement (stored with its status), not a
   device failure.
6. **Resume.**  Every job is a row; ``resume`` re-runs only the jobs of the run
   that have no stored measurement (pending, interrupted or failed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshrink import __version__
from edgeshrink.artifacts import tool_versions
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats.gguf.quality import default_eval_text, evaluate_llm
from edgeshrink.lab.builds import (
    BuildPlan,
    Built,
    LabPlan,
    build_artifact,
    default_artifacts_dir,
    plan_lab,
)
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
from edgeshrink.lab.session import DeviceOutcome, DeviceSession, LabEvent, Progress
from edgeshrink.profiles import get_profile
from edgeshrink.sweep import QUALITY_METHOD

__all__ = [
    "HEARTBEAT_S",
    "LOCK_POLL_S",
    "STALE_S",
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

HEARTBEAT_S = 5.0
STALE_S = 60.0
LOCK_POLL_S = 1.0


@dataclass(frozen=True)
class LabRunOutcome:
    run_id: int
    status: str
    resumed: bool
    seconds: float
    build_seconds: float
    devices: tuple[DeviceOutcome, ...]
    jobs: tuple[JobRecord, ...]
    db_path: Path

    @property
    def ok(self) -> bool:
        return self.status == "finished" and all(j.ok for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "resumed": self.resumed,
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
    ) -> None:
        self.plan = plan
        self.suite = plan.suite
        self.inventory = plan.inventory
        self.db = db
        self.progress = progress
        self.artifacts_dir = artifacts_dir
        self.owner = f"{this_host()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.run_id: int | None = None
        self.stop = threading.Event()
        self.built: dict[tuple[str, str], Built] = {}
        self.profiles: dict[str, Any] = {}
        self._emit_lock = threading.Lock()

    def emit(self, event: LabEvent) -> None:
        if self.progress is not None:
            with self._emit_lock:
                self.progress(event)

    def lock(
        self, hist: LabHistory, devices: list[LabDevice], *, wait_s: float, stale_s: float
    ) -> None:
        resources = {d.lock_key: d.name for d in devices}
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            holders = hist.try_lock(resources, self.owner, run_id=self.run_id, stale_s=stale_s)
            if not holders:
                return
            if time.monotonic() >= deadline:
                first = holders[0]
                raise LabLockError(
                    f"{first.describe()}"
                    + (f" (and {len(holders) - 1} more device(s))" if len(holders) > 1 else "")
                    + (f"; waited {wait_s:.0f} s" if wait_s else ""),
                    hint="two lab runs never share a board: wait for that run, pass --lock-wait SECONDS, "
                    "or see `edgeshrink lab status`",
                )
            if not said:
                self.emit(LabEvent("waiting", self.run_id, message=(
                    f"waiting up to {wait_s:.0f} s for another run: "
                    + "; ".join(h.describe() for h in holders))))  # fmt: skip
                said = True
            time.sleep(LOCK_POLL_S)

    def heartbeat_loop(self) -> None:
        hist = LabHistory.open(self.db)
        try:
            while not self._beat_stop.wait(HEARTBEAT_S):
                with contextlib.suppress(EdgeshrinkError):
                    hist.heartbeat(self.run_id, self.owner)
        finally:
            hist.close()

    def build_all(self, hist: LabHistory, needed: set[tuple[str, str]]) -> float:
        start = time.perf_counter()
        for plan in self.plan.builds:
            if (plan.job.name, plan.key) not in needed:
                continue

            def say(message: str, plan: BuildPlan = plan) -> None:
                self.emit(LabEvent("build", self.run_id, job=plan.job.name, message=message))

            try:
                built, reused, seconds = build_artifact(plan, self.artifacts_dir, say)
            except EdgeshrinkError as exc:
                built = Built(plan.key, plan.job.name, False, None, None, None, plan.quant,
                              plan.source_sha256, {}, exc.message)  # fmt: skip
                reused, seconds = False, 0.0
                say(f"build failed: {exc.message}")
            self.built[(plan.job.name, plan.key)] = built
            hist.save_build(
                self.run_id, plan.job.name, plan.key,  # type: ignore[arg-type]
                {"status": "ok" if built.ok else "failed", "source_path": str(plan.source),
                 "source_sha256": plan.source_sha256,
                 "artifact_path": str(built.path) if built.path else None,
                 "artifact_sha256": built.sha256,
                 "artifact_size": built.path.stat().st_size if built.path and built.path.is_file() else None,
                 "format": built.format, "quant": built.quant, "reused": int(reused),
                 "seconds": round(seconds, 3), "error": built.error,
                 "tool_versions": built.tool_versions,
                 "quality_status": "pending" if plan.job.quality and built.ok else None},
            )  # fmt: skip
            if built.ok:
                say(
                    ("reused " if reused else f"built in {seconds:.1f} s: ")
                    + f"{built.path.name} ({built.quant or built.format}, sha256 {(built.sha256 or '')[:12]}…)"
                    + f" for {', '.join(plan.devices)}"
                )
        return time.perf_counter() - start

    def quality_all(self) -> None:
        """Quality checks on the host, once per artifact (reused from the store when measured)."""
        hist = LabHistory.open(self.db)
        try:
            for plan in self.plan.builds:
                built = self.built.get((plan.job.name, plan.key))
                check = plan.job.quality
                if check is None or built is None or not built.ok or self.stop.is_set():
                    continue
                text = check.text.read_text(encoding="utf-8") if check.text else default_eval_text()
                settings = json.dumps(
                    {"text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                     "n_ctx": check.eval_ctx, "chunks": check.eval_chunks},
                    sort_keys=True,
                )  # fmt: skip
                try:
                    report = hist.store.find_quality(
                        QUALITY_METHOD, plan.source_sha256, built.sha256 or "", settings
                    )
                    if report is None:
                        self.emit(LabEvent("quality", self.run_id, job=plan.job.name,
                                           message=f"measuring quality of {built.path.name} on the host"))  # type: ignore[union-attr]  # fmt: skip
                        measured = evaluate_llm(plan.source, built.path, text=text,  # type: ignore[arg-type]
                                                n_ctx=check.eval_ctx, max_chunks=check.eval_chunks)  # fmt: skip
                        report = measured.to_dict()
                        hist.store.add_quality(
                            {"method": QUALITY_METHOD, "base_sha256": plan.source_sha256,
                             "candidate_sha256": built.sha256, "settings": settings,
                             "candidate_name": built.path.name, "quant": built.quant,  # type: ignore[union-attr]
                             "kld_mean": measured.kld_mean.value, "ppl_ratio": measured.ppl_ratio.value,
                             "same_top": measured.same_top.value},
                            report,
                        )  # fmt: skip
                    failures = check.budget.failures(report)
                    fields = {
                        "quality_status": "failed-budget" if failures else "ok",
                        "kld_mean": report["kld_mean"]["value"],
                        "ppl_ratio": report["ppl_ratio"]["value"],
                        "same_top": report["same_top"]["value"],
                        "quality": {"failures": failures, "budget": check.budget.describe(),
                                    "settings": json.loads(settings)},
                    }  # fmt: skip
                    message = "quality: " + (
                        "; ".join(failures)
                        if failures
                        else f"KLD {fields['kld_mean']:.3g} within {check.budget.describe()}"
                    )
                except EdgeshrinkError as exc:
                    fields = {"quality_status": "error", "quality": {"error": exc.message}}
                    message = f"quality check failed: {exc.message}"
                hist.set_build_quality(self.run_id, plan.job.name, plan.key, fields)  # type: ignore[arg-type]
                self.emit(LabEvent("quality", self.run_id, job=plan.job.name, message=message))
        finally:
            hist.close()

    def execute(self, hist: LabHistory, pending: dict[str, list[JobRecord]]) -> list[DeviceOutcome]:
        self._beat_stop = threading.Event()
        beat = threading.Thread(target=self.heartbeat_loop, name="lab-heartbeat", daemon=True)
        beat.start()
        try:
            needed = {(r.job, r.build_key or "") for records in pending.values() for r in records}
            for records in pending.values():
                for r in records:
                    self.profiles.update(self._profile_for(r.device))
            self.build_seconds = self.build_all(hist, needed)
            quality = threading.Thread(target=self.quality_all, name="lab-quality", daemon=True)
            quality.start()
            devices = [self.inventory.device(name) for name in pending]
            outcomes: list[DeviceOutcome] = []
            with ThreadPoolExecutor(
                max_workers=max(1, len(devices)), thread_name_prefix="lab-device"
            ) as pool:
                futures = [
                    pool.submit(DeviceSession(self, device, pending[device.name]).run)
                    for device in devices
                ]
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
                        if future.done() and future.exception() is None:
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
    lock_wait_s: float = 0.0,
    stale_s: float = STALE_S,
    artifacts_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> LabRunOutcome:
    """Run (or, with ``resume``, finish) a lab run; returns what happened, all of it stored.

    With ``resume`` the run's own stored inventory and suite are used; files
    given as well must be the same bytes.
    """
    start = time.perf_counter()
    hist = LabHistory.open(db)
    try:
        run: LabRun | None = None
        if resume is not None:
            run = hist.get_run(resume)
            if run is None:
                raise LabConfigError(
                    f"no lab run {resume} in {hist.store.path}",
                    hint="`edgeshrink lab status` lists the runs",
                )
            inventory, suite = _stored_config(run, inventory, suite)
            if run.is_alive(stale_s):
                raise LabLockError(
                    f"lab run {run.id} is still running on {run.host} pid {run.pid} "
                    f"(heartbeat {time.time() - run.heartbeat_at:.0f} s ago)",
                    hint="wait for it to finish; a run can be resumed once its process is gone",
                )
        if inventory is None or suite is None:
            raise LabConfigError("lab run needs an inventory and a suite (or --resume RUN_ID)")
        plan = plan_lab(inventory, suite)
        runner = LabRunner(
            plan, db=db, progress=progress,
            artifacts_dir=Path(artifacts_dir) if artifacts_dir else default_artifacts_dir(),
        )  # fmt: skip
        runner.build_seconds = 0.0
        if run is not None:
            runner.run_id = run.id
            _ensure_rows(hist, run.id, plan)
            todo = {r.device for r in hist.jobs(run.id) if r.status != "done"}
            runner.lock(hist, [inventory.device(n) for n in sorted(todo)], wait_s=lock_wait_s,
                        stale_s=stale_s)  # fmt: skip
            hist.claim_run(run.id)
            reset = hist.reset_unfinished(run.id)
            pending = _pending(hist, run.id)
            runner.emit(
                LabEvent(
                    "run-started", run.id, message=f"resuming run {run.id}: {reset} job(s) to do"
                )
            )
        else:
            devices = [d for d in inventory.devices if plan.jobs[d.name]]
            runner.lock(hist, devices, wait_s=lock_wait_s, stale_s=stale_s)
            try:
                run_id = hist.create_run(
                    suite_name=suite.name, inventory_path=str(inventory.path.resolve()),
                    inventory_text=inventory.text, inventory_sha256=inventory.sha256,
                    suite_path=str(suite.path.resolve()), suite_text=suite.text,
                    suite_sha256=suite.sha256, edgeshrink_version=__version__,
                    host_tools={"host": this_host(), **tool_versions()},
                )  # fmt: skip
            except BaseException:
                hist.release_locks(runner.owner)
                raise
            runner.run_id = run_id
            hist.attach_locks(runner.owner, run_id)
            _ensure_rows(hist, run_id, plan)
            pending = _pending(hist, run_id)
            runner.emit(LabEvent("run-started", run_id, message=(
                f"run {run_id} of suite {suite.name}: {sum(len(v) for v in pending.values())} job(s) "
                f"on {len(pending)} device(s)")))  # fmt: skip
        run_id = runner.run_id
        assert run_id is not None
        status = "finished"
        try:
            outcomes = runner.execute(hist, pending) if pending else []
        except BaseException:
            # Ctrl-C, or a failure of the host itself: what is stored stays, and
            # `lab run --resume` finishes the rest.
            status = "interrupted"
            raise
        finally:
            jobs = hist.jobs(run_id)
            summary = _summary(jobs, runner)
            hist.finish_run(run_id, status, summary)
            hist.release_locks(runner.owner)
        runner.emit(LabEvent("run-finished", run_id, message=(
            f"run {run_id} {status}: {summary['ok']} ok, {summary['failed']} failed "
            f"of {summary['jobs']} job(s)"), data=summary))  # fmt: skip
        return LabRunOutcome(
            run_id=run_id, status=status, resumed=resume is not None,
            seconds=time.perf_counter() - start, build_seconds=runner.build_seconds,
            devices=tuple(outcomes), jobs=tuple(jobs), db_path=hist.store.path,
        )  # fmt: skip
    finally:
        hist.close()


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
