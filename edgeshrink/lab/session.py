"""One device's part of a lab run: its jobs one at a time, each claimed in the results
database first, with bounded retries when the connection fails; and the events a run
reports as it goes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgeshrink.bench import run_agent_bench
from edgeshrink.deploy import threads_for
from edgeshrink.errors import EdgeshrinkError, LabLockError, TransportError
from edgeshrink.lab.claims import Fleet
from edgeshrink.lab.config import LabDevice
from edgeshrink.lab.history import JobRecord, LabHistory
from edgeshrink.lab.measure import (
    cool_down,
    describe_cooldown,
    describe_result,
    describe_snapshot,
    job_figures,
    result_row,
    take_snapshot,
)
from edgeshrink.transport import open_transport
from edgeshrink.util import sha256_file

if TYPE_CHECKING:
    from edgeshrink.lab.runner import LabRunner

LOCK_POLL_S = 1.0  # how often a session waiting for a board or a claim looks again


@dataclass(frozen=True)
class LabEvent:
    """What a run is doing, for progress lines (``kind`` names the step)."""

    kind: str
    run_id: int | None
    device: str | None = None
    job: str | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[LabEvent], None]


@dataclass(frozen=True)
class DeviceOutcome:
    name: str
    status: str  # ok | failed
    seconds: float
    attempts: int
    error: str | None


class DeviceSession:
    """One device's jobs, one at a time, each claimed first, with bounded retries on
    connection failures; it waits while another runner holds the board and takes it over
    when that runner's lease passes."""

    def __init__(self, runner: LabRunner, device: LabDevice) -> None:
        self.runner = runner
        self.device = device
        self.profile = runner.profiles.get(device.profile) if device.profile else None
        self.settled = False  # nothing left on this device for this runner, ever
        self.told_waiting = False

    def emit(self, kind: str, job: str | None = None, message: str = "", **data: Any) -> None:
        self.runner.emit(LabEvent(kind, self.runner.run_id, self.device.name, job, message, data))

    def next_job(self, hist: LabHistory, fleet: Fleet) -> JobRecord | None:
        """The device's next job, claimed; None when there is none for now (another
        runner's board or claim: poll again) or ever (``settled``)."""
        runner, device, run_id = self.runner, self.device, self.runner.run_id
        assert run_id is not None
        if not fleet.open_jobs(run_id, device.name) or device.name in runner.unreachable:
            self.settled = True
            return None
        fleet.reap(run_id)
        holder = fleet.take_board(device.lock_key, device.name, run_id)
        if holder is not None:
            if not self.told_waiting:
                self.emit("waiting", message=f"{holder.describe(hist.store.now())}: waiting for it")
                self.told_waiting = True
            return None
        record = fleet.claim_job(run_id, device.name)
        if record is None:  # claimed by a runner whose lease lasts: its board once more
            fleet.release([device.lock_key])
        return record

    def run(self) -> DeviceOutcome | None:
        """Work on the device until nothing is left for this runner; None when it never
        ran a job here (another runner did them all)."""
        runner, device = self.runner, self.device
        start = time.perf_counter()
        hist = runner.history()
        fleet = runner.fleet(hist)
        transport = None
        snapshot: dict[str, Any] | None = None
        snapshot_id: int | None = None
        failures = attempts = 0
        status, error = "ok", None
        worked = False
        record: JobRecord | None = None
        try:
            while not runner.stop.is_set():
                if record is None:
                    record = self.next_job(hist, fleet)
                    if record is None:
                        if self.settled:
                            break
                        runner.stop.wait(LOCK_POLL_S)
                        continue
                    if not worked:
                        worked = True
                        start = time.perf_counter()  # its time: not the wait for the board
                        hist.device_started(runner.run_id, device.name)
                        self.emit("device-started", message=f"on {device.target.describe()}")
                reaching = True  # until the job itself starts, a failure is the device's
                try:
                    if transport is None:
                        attempts += 1
                        transport = open_transport(device.target)
                    if snapshot_id is None:
                        fields, document = take_snapshot(transport, device)
                        snapshot = fields
                        snapshot_id = hist.add_snapshot(
                            runner.run_id, device.name, fields, document
                        )
                        self.emit("snapshot", message=describe_snapshot(fields), snapshot=fields)
                    reaching = False
                    self._run_job(hist, transport, record, snapshot, snapshot_id)
                    record = None
                    failures = 0
                except LabLockError as exc:  # another runner took the job over: its board too
                    self.emit("claim-lost", record.job, exc.message)
                    record = None
                    break
                except TransportError as exc:
                    with contextlib.suppress(Exception):
                        transport.close()  # type: ignore[union-attr]
                    transport = None
                    failures += 1
                    if failures > runner.suite.retry.retries:
                        status, error = self.give_up(hist, fleet, record, exc, failures, reaching)
                        record = None
                        break
                    hist.job_attempt_failed(record.id, exc.message, before_start=reaching)
                    self.emit(
                        "retry", record.job,
                        f"{exc.message}; retry {failures}/{runner.suite.retry.retries} "
                        f"in {runner.suite.retry.delay_s:g} s",
                    )  # fmt: skip
                    runner.stop.wait(runner.suite.retry.delay_s)
                except EdgeshrinkError as exc:
                    hist.job_failed(record.id, exc.message)
                    self.emit("job-failed", record.job, exc.message)
                    record = None
                except Exception as exc:  # noqa: BLE001 - one bad job must not end the device's session
                    message = f"internal error: {type(exc).__name__}: {exc}"
                    hist.job_failed(record.id, message)
                    self.emit("job-failed", record.job, message)
                    record = None
            if record is not None:  # stopped while it held a job: the job waits for a resume
                fleet.release_job(record.id)
                status, error = "failed", "interrupted before its jobs ran"
        finally:
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()
            seconds = time.perf_counter() - start
            with contextlib.suppress(EdgeshrinkError):
                fleet.release([device.lock_key])
                if worked:
                    hist.device_finished(runner.run_id, device.name, status, seconds=seconds,
                                         attempts=attempts, error=error)  # fmt: skip
            hist.close()
        if not worked:
            return None
        self.emit("device-done", message=f"{status} in {seconds:.1f} s")
        return DeviceOutcome(device.name, status, seconds, attempts, error)

    def give_up(
        self,
        hist: LabHistory,
        fleet: Fleet,
        record: JobRecord,
        exc: TransportError,
        failures: int,
        reaching: bool,
    ) -> tuple[str, str]:
        """The device did not answer ``failures`` times: leave it to another live runner
        that may reach it, or, when there is none, fail its open jobs.  Returns the
        device's status and error for this session."""
        runner, device, run_id = self.runner, self.device, self.runner.run_id
        assert run_id is not None
        error = f"device failed after {failures} attempt(s): {exc.message}"
        runner.unreachable.add(device.name)
        fleet.mark_unreachable(run_id, device.name, error)
        if fleet.others_may_reach(run_id, device.name, device.reachable_by):
            hist.job_attempt_failed(record.id, exc.message, before_start=reaching)
            fleet.release_job(record.id)
            message = f"{runner.host} cannot reach it ({exc.message}): left to the other runner(s)"
            self.emit("device-left", message=message)
            return "pending", message
        for job in hist.fail_open_jobs(
            run_id, device.name, error, current=record.id, before_start=reaching
        ):
            self.emit("job-failed", job, error)
        self.emit("device-failed", message=error)
        return "failed", error

    def _run_job(
        self,
        hist: LabHistory,
        transport: Any,
        record: JobRecord,
        snapshot: dict[str, Any] | None,
        snapshot_id: int,
    ) -> None:
        runner, device = self.runner, self.device
        job = runner.suite.job(record.job)
        built = runner.built.get((record.job, record.build_key or ""))
        if built is None or not built.ok or built.path is None or built.sha256 is None:
            raise EdgeshrinkError(
                f"no artifact: {built.error if built else 'the build did not run'}"
            )
        start = time.perf_counter()
        hist.job_started(record.id)
        pushed = transport.push_artifact(built.path, built.sha256)
        self.emit("push", record.job, (
            f"{built.path.name} already on the device (same sha256)" if pushed.skipped
            else f"pushed {built.path.name}: {pushed.bytes_sent / 2**20:.1f} MiB in {pushed.seconds:.2f} s"
        ))  # fmt: skip
        cooldown = cool_down(transport, device, runner.suite.cooldown, runner.stop)
        self.emit("cooldown", record.job, describe_cooldown(cooldown), cooldown=cooldown)
        params = replace(
            job.bench, threads=threads_for(device.target, self.profile, job.bench.threads)
        )
        self.emit(
            "bench", record.job,
            f"{params.reps} reps of pp{params.prompt_tokens} + tg{params.gen_tokens}",
        )  # fmt: skip
        reference = runner.references.get(record.job)
        remote_reference = None
        if reference is not None:
            remote_reference = transport.push_artifact(reference, sha256_file(reference)).remote
        result, _run = run_agent_bench(
            transport, pushed.remote, params, model_format=built.format or "gguf",
            remote_reference=remote_reference, timeout_s=job.timeout_s,
        )  # fmt: skip
        profile_id = self.profile.id if self.profile else device.profile
        figures = job_figures(result, built, snapshot)
        if figures["temp_before_c"] is None and cooldown.get("temp_c") is not None:
            # The agent reads /sys/class/thermal only; the inventory may name other sensors.
            figures["temp_before_c"] = cooldown["temp_c"]
            figures["context"]["temp_c"] = cooldown["temp_c"]
        # The result and the job's row in one transaction, while the claim is still ours:
        # a runner that dies in between leaves neither, and one whose claim was taken
        # over stores neither (LabLockError).
        result_id = hist.job_done(
            record.id,
            {"result_status": result.status, "error": result.error_message,
             "cooldown": cooldown, "snapshot_id": snapshot_id,
             "seconds": round(time.perf_counter() - start, 3), **figures},
            result=(result_row(device, built, result, job.bench.key(), profile_id), result.document),
            runner=runner.owner,
        )  # fmt: skip
        self.emit("job-done", record.job, describe_result(result), status=result.status,
                  result_id=result_id)  # fmt: skip
