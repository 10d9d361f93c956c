"""One device's part of a lab run: its jobs one at a time, with bounded retries when the
connection fails; and the events a run reports as it goes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgeshrink.bench import run_agent_bench
from edgeshrink.errors import EdgeshrinkError, TransportError
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

if TYPE_CHECKING:
    from edgeshrink.lab.runner import LabRunner


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
    """One device's jobs, one at a time, with bounded retries on connection failures."""

    def __init__(self, runner: LabRunner, device: LabDevice, jobs: list[JobRecord]) -> None:
        self.runner = runner
        self.device = device
        self.jobs = jobs
        self.profile = runner.profiles.get(device.profile) if device.profile else None

    def emit(self, kind: str, job: str | None = None, message: str = "", **data: Any) -> None:
        self.runner.emit(LabEvent(kind, self.runner.run_id, self.device.name, job, message, data))

    def run(self) -> DeviceOutcome:
        runner, device = self.runner, self.device
        start = time.perf_counter()
        hist = LabHistory.open(runner.db)
        hist.device_started(runner.run_id, device.name)
        self.emit(
            "device-started", message=f"{len(self.jobs)} job(s) on {device.target.describe()}"
        )
        transport = None
        snapshot: dict[str, Any] | None = None
        snapshot_id: int | None = None
        failures = attempts = 0
        status, error = "ok", None
        pending = list(self.jobs)
        try:
            while pending and not runner.stop.is_set():
                record = pending[0]
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
                    pending.pop(0)
                    failures = 0
                except TransportError as exc:
                    with contextlib.suppress(Exception):
                        transport.close()  # type: ignore[union-attr]
                    transport = None
                    failures += 1
                    if failures > runner.suite.retry.retries:
                        status = "failed"
                        error = f"device failed after {failures} attempt(s): {exc.message}"
                        for rest in pending:
                            hist.job_failed(
                                rest.id, error, before_start=reaching and rest is record
                            )
                            self.emit("job-failed", rest.job, error)
                        pending = []
                        self.emit("device-failed", message=error)
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
                    pending.pop(0)
                except Exception as exc:  # noqa: BLE001 - one bad job must not end the device's session
                    message = f"internal error: {type(exc).__name__}: {exc}"
                    hist.job_failed(record.id, message)
                    self.emit("job-failed", record.job, message)
                    pending.pop(0)
            if pending:
                status, error = "failed", "interrupted before its jobs ran"
        finally:
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()
            seconds = time.perf_counter() - start
            with contextlib.suppress(EdgeshrinkError):
                hist.release_locks(runner.owner, [device.lock_key])
                hist.device_finished(runner.run_id, device.name, status, seconds=seconds,
                                     attempts=attempts, error=error)  # fmt: skip
            hist.close()
        self.emit("device-done", message=f"{status} in {seconds:.1f} s")
        return DeviceOutcome(device.name, status, seconds, attempts, error)

    def _run_job(
        self,
        hist: LabHistory,
        transport: Any,
        record: JobRecord,
        snapshot: dict[str, Any] | None,
        snapshot_id: int,
    ) -> None:
        from edgeshrink.deploy import threads_for

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
        result, _run = run_agent_bench(
            transport, pushed.remote, params,
            model_format=built.format or "gguf", timeout_s=job.timeout_s,
        )  # fmt: skip
        profile_id = self.profile.id if self.profile else device.profile
        result_id = hist.store.add_result(
            result_row(device, built, result, job.bench.key(), profile_id), result.document
        )
        figures = job_figures(result, built, snapshot)
        if figures["temp_before_c"] is None and cooldown.get("temp_c") is not None:
            # The agent reads /sys/class/thermal only; the inventory may name other sensors.
            figures["temp_before_c"] = cooldown["temp_c"]
            figures["context"]["temp_c"] = cooldown["temp_c"]
        hist.job_done(
            record.id,
            {"result_id": result_id, "result_status": result.status, "error": result.error_message,
             "cooldown": cooldown, "snapshot_id": snapshot_id,
             "seconds": round(time.perf_counter() - start, 3), **figures},
        )  # fmt: skip
        self.emit("job-done", record.job, describe_result(result), status=result.status,
                  result_id=result_id)  # fmt: skip
