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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeshrink import __version__
from edgeshrink.bench import BenchResult, install_agent, run_agent_bench
from edgeshrink.errors import EdgeshrinkError, TransportError
from edgeshrink.lab.config import (
    CooldownPolicy,
    Inventory,
    LabConfigError,
    LabDevice,
    LabJob,
    LabLockError,
    Suite,
    load_inventory,
    load_suite,
    match_jobs,
)
from edgeshrink.lab.history import JobRecord, LabHistory, LabRun, this_host
from edgeshrink.lab.stats import median
from edgeshrink.transport.base import helper_argv

HEARTBEAT_S = 5.0
STALE_S = 60.0
INFO_TIMEOUT_S = 120.0
LOCK_POLL_S = 1.0


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
class BuildPlan:
    key: str
    job: LabJob
    source: Path
    source_sha256: str
    quant: str | None  # None: a prebuilt artifact
    profile_id: str | None
    devices: tuple[str, ...]


@dataclass(frozen=True)
class LabPlan:
    inventory: Inventory
    suite: Suite
    jobs: dict[str, tuple[LabJob, ...]]  # device -> its jobs, in suite order
    builds: tuple[BuildPlan, ...]
    build_for: dict[tuple[str, str], str]  # (device, job) -> build key

    def to_dict(self) -> dict[str, Any]:
        return {
            "inventory": str(self.inventory.path),
            "suite": str(self.suite.path),
            "suite_name": self.suite.name,
            "devices": {
                d.name: {"target": d.target.describe(), "tags": list(d.tags),
                         "jobs": [j.name for j in self.jobs[d.name]]}
                for d in self.inventory.devices
            },
            "builds": [
                {"key": b.key, "job": b.job.name, "source": str(b.source), "quant": b.quant,
                 "profile": b.profile_id, "devices": list(b.devices)}
                for b in self.builds
            ],
            "cooldown": self.suite.cooldown.__dict__,
            "retry": self.suite.retry.__dict__,
        }  # fmt: skip


@dataclass(frozen=True)
class Built:
    key: str
    job: str
    ok: bool
    path: Path | None
    sha256: str | None
    format: str | None
    quant: str | None
    source_sha256: str
    tool_versions: dict[str, Any]
    error: str | None = None


@dataclass(frozen=True)
class DeviceOutcome:
    name: str
    status: str  # ok | failed
    seconds: float
    attempts: int
    error: str | None


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


# --------------------------------------------------------------------------- planning


def _sha256_cached(path: Path, cache: dict[Path, str]) -> str:
    from edgeshrink.util import sha256_file

    key = path.resolve()
    if key not in cache:
        cache[key] = sha256_file(path)
    return cache[key]


def plan_lab(inventory: Inventory, suite: Suite) -> LabPlan:
    """Which device runs which job, and the artifacts that needs (nothing is built)."""
    from edgeshrink.formats import detect_and_inspect
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.profiles import get_profile
    from edgeshrink.shrink import plan_model

    jobs = match_jobs(inventory, suite)
    hashes: dict[Path, str] = {}
    infos: dict[Path, Any] = {}
    builds: dict[str, dict[str, Any]] = {}
    build_for: dict[tuple[str, str], str] = {}
    where = f"{suite.path}"
    for device in inventory.devices:
        for job in jobs[device.name]:
            sha = _sha256_cached(job.source, hashes)
            if job.artifact is not None:
                key, quant, profile_id = f"artifact-{sha[:16]}", None, None
            else:
                profile_id = job.profile or device.profile
                quant = job.quant
                if quant is None:
                    if profile_id is None:
                        raise LabConfigError(
                            f"{where}: job[{job.index}] ({job.name}) has no quant and device "
                            f"'{device.name}' has no profile to plan one for",
                            hint='give the job quant = "..." or profile = "...", or the device a profile',
                        )
                    info = infos.get(job.source) or detect_and_inspect(job.source)
                    infos[job.source] = info
                    options = ShrinkOptions(context=job.context, prefer=job.prefer)
                    try:
                        quant = plan_model(info, get_profile(profile_id), options).quant
                    except EdgeshrinkError as exc:
                        raise LabConfigError(
                            f"{where}: job[{job.index}] ({job.name}) on {device.name} "
                            f"({profile_id}): {exc.message}",
                            # plan's own hint names plan's options (--ctx), which lab run
                            # does not have: say it in the suite's words.
                            hint='give the job a smaller quant = "..." or a shorter context = N '
                            "in the suite, or run it on a device with more memory",
                        ) from exc
                # The bytes depend on the source and the type only (context and
                # prefer only choose the type), so jobs that agree share an artifact.
                key = f"{sha[:16]}-{quant.lower()}"
            entry = builds.setdefault(
                (job.name, key),
                {"key": key, "job": job, "source": job.source, "source_sha256": sha,
                 "quant": quant, "profile_id": profile_id, "devices": []},
            )  # fmt: skip
            entry["devices"].append(device.name)
            build_for[(device.name, job.name)] = key
    plans = tuple(BuildPlan(**{**b, "devices": tuple(b["devices"])}) for b in builds.values())
    return LabPlan(inventory, suite, jobs, plans, build_for)


def default_artifacts_dir() -> Path:
    import platformdirs

    return platformdirs.user_cache_path("edgeshrink") / "lab" / "artifacts"


def _build(plan: BuildPlan, out_dir: Path, say: Callable[[str], None]) -> tuple[Built, bool, float]:
    """The artifact for ``plan`` (built, or found in the cache); returns (built, reused, seconds)."""
    from edgeshrink.artifacts import load_artifact, tool_versions
    from edgeshrink.formats import detect_and_inspect
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.profiles import get_profile
    from edgeshrink.shrink import shrink_model

    start = time.perf_counter()
    job = plan.job
    if plan.quant is None:
        info = detect_and_inspect(plan.source)
        try:
            versions = load_artifact(plan.source, verify=False).tool_versions
        except EdgeshrinkError:
            versions = {}
        built = Built(plan.key, job.name, True, plan.source, plan.source_sha256, info.format, None,
                      plan.source_sha256, versions)  # fmt: skip
        return built, True, time.perf_counter() - start
    profile = get_profile(plan.profile_id or "x86-64-host")
    suffix = ".gguf" if plan.source.is_dir() else plan.source.suffix
    stem = plan.source.name if plan.source.is_dir() else plan.source.stem
    output = out_dir / plan.key / f"{stem}-{plan.quant.lower()}{suffix}"
    options = ShrinkOptions(
        quant=plan.quant, context=job.context, prefer=job.prefer, check_fit=False
    )
    shrunk = shrink_model(plan.source, profile, options, output=output)
    art = shrunk.artifact
    versions = art.tool_versions or tool_versions()
    built = Built(plan.key, job.name, True, art.path, art.sha256, art.format, art.quant,
                  plan.source_sha256, versions)  # fmt: skip
    return built, shrunk.reused, time.perf_counter() - start


# --------------------------------------------------------------------------- device work


def _parse_json(text: str) -> dict[str, Any] | None:
    for candidate in (text.strip(), *reversed(text.strip().splitlines())):
        try:
            doc = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def take_snapshot(transport: Any, device: LabDevice) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the device is right now: the agent's ``info`` plus the doctor's facts script."""
    from edgeshrink.doctor import FACTS_SCRIPT

    python = device.target.python
    agent = install_agent(transport)
    info_run = transport.run([python, agent, "info"], timeout_s=INFO_TIMEOUT_S)
    info = _parse_json(info_run.stdout)
    facts_run = transport.run([python, "-c", FACTS_SCRIPT, transport.work_dir], timeout_s=60)
    facts = _parse_json(facts_run.stdout)
    dev = (info or {}).get("device") or {}
    runtimes = {
        name: r.get("version")
        for name, r in ((info or {}).get("runtimes") or {}).items()
        if isinstance(r, dict) and r.get("available")
    }
    limit = (facts or {}).get("cgroup_memory_limit")
    fields = {
        "hostname": dev.get("hostname"), "os": dev.get("os"), "kernel": dev.get("kernel"),
        "python": dev.get("python"), "cpu": dev.get("cpu"), "arch": dev.get("arch"),
        "cores": dev.get("cores"), "ram_mb": dev.get("ram_mb"),
        "memory_limit_mb": round(limit / 2**20, 1) if limit else None,
        "board": dev.get("board"), "agent_version": (info or {}).get("agent_version"),
        "runtimes": runtimes, "cpu_mhz": (dev.get("cpu_mhz") or {}).get("before"),
        "temps_c": (dev.get("temps_c") or {}).get("before"),
    }  # fmt: skip
    document = {
        "info": info,
        "facts": facts,
        "info_error": None
        if info
        else (info_run.stderr.strip()[-500:] or f"exit {info_run.returncode}"),
    }
    return fields, document


def read_temperatures(transport: Any, device: LabDevice) -> dict[str, float]:
    run = transport.run(helper_argv(device.target.python, ["temps", *device.thermal]), timeout_s=30)
    doc = _parse_json(run.stdout) or {}
    return {str(k): float(v) for k, v in doc.items() if isinstance(v, (int, float))}


def cool_down(
    transport: Any, device: LabDevice, policy: CooldownPolicy, stop: threading.Event
) -> dict[str, Any]:
    """Wait until the hottest thermal zone is under the threshold, or the time limit passes."""
    start = time.monotonic()
    if policy.rest_s:
        stop.wait(policy.rest_s)
    readings: list[float] = []
    while True:
        temps = read_temperatures(transport, device)
        waited = round(time.monotonic() - start, 2)
        if not temps:
            return {"status": "not readable", "waited_s": waited, "threshold_c": policy.max_temp_c,
                    "paths": list(device.thermal)}  # fmt: skip
        hottest = max(temps.values())
        readings.append(round(hottest, 1))
        doc = {"waited_s": waited, "threshold_c": policy.max_temp_c, "start_c": readings[0],
               "temp_c": round(hottest, 1), "readings": readings[-20:]}  # fmt: skip
        if hottest < policy.max_temp_c:
            return {"status": "cool", **doc}
        if waited >= policy.max_wait_s or stop.is_set():
            return {"status": "timeout", **doc}
        stop.wait(min(policy.poll_s, max(0.0, policy.max_wait_s - waited)))


def _hottest(temps: Any) -> float | None:
    values = [v for v in (temps or {}).values() if isinstance(v, (int, float))]
    return round(max(values), 1) if values else None


def _median_clock(mhz: Any) -> float | None:
    values = [v for v in (mhz or {}).values() if isinstance(v, (int, float))]
    return round(median(values), 1) if values else None


def result_row(
    device: LabDevice, built: Built, result: BenchResult, params_key: str, profile_id: str | None
) -> dict[str, Any]:
    """The ``results`` row of a lab job: the same columns `bench` and `deploy` fill."""
    return {
        "target": device.name,
        "target_kind": device.target.kind,
        "profile_id": profile_id,
        "format": built.format or "gguf",
        "quant": built.quant,
        "model_name": built.path.name if built.path else built.job,
        "source_sha256": built.source_sha256,
        "artifact_sha256": built.sha256,
        "artifact_size": built.path.stat().st_size if built.path and built.path.is_file() else None,
        **result.store_columns(),
        "params_key": params_key,
    }


def job_figures(
    result: BenchResult, built: Built, snapshot: dict[str, Any] | None
) -> dict[str, Any]:
    """samples / metrics / context of a lab job: what regression detection reads."""
    doc = result.document
    dev = doc.get("device") or {}
    samples = {
        name: [float(v) for v in stat.samples]
        for name, stat in (("pp_tok_s", result.pp_tok_s), ("tg_tok_s", result.tg_tok_s),
                           ("ttft_ms", result.ttft_ms))
        if stat is not None and stat.samples
    }  # fmt: skip
    metrics = {
        "pp_tok_s": result.pp_tok_s.mean if result.pp_tok_s else None,
        "tg_tok_s": result.tg_tok_s.mean if result.tg_tok_s else None,
        "ttft_ms": result.ttft_ms.mean if result.ttft_ms else None,
        "peak_rss_mb": result.peak_rss_mb,
        "load_s": result.load_s,
        "latency_p50_ms": result.latency_ms.p50 if result.latency_ms else None,
        "throughput_per_s": result.throughput_per_s,
    }
    temps = dev.get("temps_c") or {}
    mhz = dev.get("cpu_mhz") or {}
    throttled = dev.get("throttled") or {}
    params = doc.get("params") or {}
    context = {
        "artifact_sha256": built.sha256, "source_sha256": built.source_sha256,
        "quant": built.quant, "format": built.format,
        "quantizer": (built.tool_versions or {}).get("llama-cpp-python"),
        "runtime": result.runtime, "runtime_version": result.runtime_version,
        "agent_version": doc.get("agent_version"),
        "os": dev.get("os"), "kernel": dev.get("kernel"), "python": dev.get("python"),
        "cpu": dev.get("cpu"), "board": dev.get("board"), "threads": result.threads,
        "flash_attn": (params.get("resolved") or {}).get("flash_attn", params.get("flash_attn")),
        "cpu_mhz": _median_clock(mhz.get("before")), "temp_c": _hottest(temps.get("before")),
        "throttled": throttled.get("after") if isinstance(throttled, dict) else throttled,
        "memory_limit_mb": (snapshot or {}).get("memory_limit_mb"),
    }  # fmt: skip
    return {
        "samples": samples,
        "metrics": metrics,
        "context": context,
        "temp_before_c": _hottest(temps.get("before")),
        "temp_after_c": _hottest(temps.get("after")),
        "cpu_mhz_before": _median_clock(mhz.get("before")),
        "cpu_mhz_after": _median_clock(mhz.get("after")),
        "throttled": json.dumps(throttled) if throttled else None,
    }


class _DeviceSession:
    """One device's jobs, one at a time, with bounded retries on connection failures."""

    def __init__(self, runner: _LabRunner, device: LabDevice, jobs: list[JobRecord]) -> None:
        self.runner = runner
        self.device = device
        self.jobs = jobs
        self.profile = runner.profiles.get(device.profile) if device.profile else None

    def emit(self, kind: str, job: str | None = None, message: str = "", **data: Any) -> None:
        self.runner.emit(LabEvent(kind, self.runner.run_id, self.device.name, job, message, data))

    def run(self) -> DeviceOutcome:
        from edgeshrink.transport import open_transport

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
                        self.emit("snapshot", message=_describe_snapshot(fields), snapshot=fields)
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
        from edgeshrink.deploy import _threads_for

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
        self.emit("cooldown", record.job, _describe_cooldown(cooldown), cooldown=cooldown)
        params = replace(
            job.bench, threads=_threads_for(device.target, self.profile, job.bench.threads)
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
        self.emit("job-done", record.job, _describe_result(result), status=result.status,
                  result_id=result_id)  # fmt: skip


def _describe_snapshot(fields: dict[str, Any]) -> str:
    runtimes = ", ".join(
        f"{k} {v}" for k, v in (fields.get("runtimes") or {}).items() if k != "numpy"
    )
    limit = (
        f", memory limit {fields['memory_limit_mb']:.0f} MB"
        if fields.get("memory_limit_mb")
        else ""
    )
    return f"{fields.get('os') or '?'}, {fields.get('cpu') or '?'} x{fields.get('cores') or '?'}{limit}; {runtimes or 'no runtimes'}"


def _describe_cooldown(doc: dict[str, Any]) -> str:
    if doc["status"] == "not readable":
        return "cool-down: temperature not readable (no thermal zone), not waited"
    return (
        f"cool-down: {doc['status']} at {doc['temp_c']:.1f} °C after {doc['waited_s']:.1f} s "
        f"(threshold {doc['threshold_c']:g} °C)"
    )


def _describe_result(result: BenchResult) -> str:
    if not result.ok:
        return f"{result.status}: {result.error_message}"
    parts = []
    if result.pp_tok_s:
        parts.append(f"pp {result.pp_tok_s.mean:,.0f} tok/s")
    if result.tg_tok_s:
        parts.append(f"tg {result.tg_tok_s.mean:,.0f} tok/s")
    if result.latency_ms:
        parts.append(f"latency p50 {result.latency_ms.p50:.3f} ms")
    if result.peak_rss_mb:
        parts.append(f"peak {result.peak_rss_mb:.0f} MB")
    return "ok: " + ", ".join(parts)


# --------------------------------------------------------------------------- the run


class _LabRunner:
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
                built, reused, seconds = _build(plan, self.artifacts_dir, say)
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
        from edgeshrink.llm_quality import default_eval_text, evaluate_llm
        from edgeshrink.sweep import QUALITY_METHOD

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
                    pool.submit(_DeviceSession(self, device, pending[device.name]).run)
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
        from edgeshrink.profiles import get_profile

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
        runner = _LabRunner(
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
                from edgeshrink.artifacts import tool_versions

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


def _summary(jobs: list[JobRecord], runner: _LabRunner) -> dict[str, Any]:
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
