"""What a device is and what a job measured there: the snapshot (the agent's ``info`` and the
doctor's facts), temperatures and the cool-down, and the stored row and figures of a job."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from edgeshrink.bench import BenchResult, install_agent
from edgeshrink.doctor import FACTS_SCRIPT
from edgeshrink.lab.builds import Built
from edgeshrink.lab.config import CooldownPolicy, LabDevice
from edgeshrink.lab.stats import median
from edgeshrink.transport.base import helper_argv

INFO_TIMEOUT_S = 120.0


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


def device_quality_metrics(quality: dict[str, Any] | None) -> dict[str, float]:
    """The quality the device measured (a job with a quality check), as metrics: a driver or
    runtime update that changes them is a regression like a slower kernel."""
    if not quality or "kld_mean" not in quality:
        return {}
    return {
        "device_kld_mean": quality["kld_mean"]["value"],
        "device_ppl_ratio": quality["ppl_ratio"]["value"],
        "device_same_top": quality["same_top"]["value"],
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
        **device_quality_metrics(result.quality),
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


def describe_snapshot(fields: dict[str, Any]) -> str:
    runtimes = ", ".join(
        f"{k} {v}" for k, v in (fields.get("runtimes") or {}).items() if k != "numpy"
    )
    limit = (
        f", memory limit {fields['memory_limit_mb']:.0f} MB"
        if fields.get("memory_limit_mb")
        else ""
    )
    return f"{fields.get('os') or '?'}, {fields.get('cpu') or '?'} x{fields.get('cores') or '?'}{limit}; {runtimes or 'no runtimes'}"


def describe_cooldown(doc: dict[str, Any]) -> str:
    if doc["status"] == "not readable":
        return "cool-down: temperature not readable (no thermal zone), not waited"
    return (
        f"cool-down: {doc['status']} at {doc['temp_c']:.1f} °C after {doc['waited_s']:.1f} s "
        f"(threshold {doc['threshold_c']:g} °C)"
    )


def describe_result(result: BenchResult) -> str:
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
