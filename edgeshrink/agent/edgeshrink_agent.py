#!/usr/bin/env python3
"""edgeshrink on-device benchmark agent.

The host copies this one file to a device and runs it with the device's own
Python (3.9 or newer).  It loads a model with whatever runtime the device has,
warms up, measures, and prints exactly one JSON document on stdout
(schema ``edgeshrink.bench/1``) whatever happens.  Progress goes to stderr.

    python3 edgeshrink_agent.py bench --model PATH [options]
    python3 edgeshrink_agent.py info

Exit codes: 0 ok, 1 error, 2 bad arguments, 3 out of memory, 124 timeout (SIGTERM).

Only the standard library is imported at module level; runtimes (llama_cpp,
onnxruntime with numpy, ai-edge-litert / tflite-runtime / tensorflow.lite) are
imported inside the runner that needs them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import functools
import hashlib
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

AGENT_VERSION = "1.4.0"
SCHEMA = "edgeshrink.bench/1"

EXIT_CODES = {"ok": 0, "error": 1, "oom": 3, "timeout": 124}
EXIT_BAD_ARGS = 2

# ARM "CPU part" ids (implementer 0x41) of the cores small devices ship with.
ARM_CORE_NAMES = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2",
    "0xd4d": "Cortex-A715",
    "0xd4e": "Cortex-X3",
    "0xd80": "Cortex-A520",
    "0xd81": "Cortex-A720",
    "0xd82": "Cortex-X4",
}
CPU_IMPLEMENTERS = {
    "0x41": "ARM",
    "0x42": "Broadcom",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x51": "Qualcomm",
    "0x53": "Samsung",
    "0x61": "Apple",
}

FORMAT_BY_EXTENSION = {".gguf": "gguf", ".onnx": "onnx", ".tflite": "tflite"}

# Substrings of llama.cpp / libc messages that mean an allocation failed.
OOM_MARKERS = (
    "failed to allocate",
    "unable to allocate",
    "out of memory",
    "cannot allocate memory",
    "insufficient memory",
    "bad_alloc",
)
TRUNCATION_MARKERS = (
    "not within the file bounds",
    "failed to read",
    "unexpectedly reached end of file",
    "end of file",
)


# --------------------------------------------------------------------------- errors


class AgentError(Exception):
    """A failure the agent reports as a status "error" document."""

    status = "error"

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint


class AgentOutOfMemory(AgentError):
    """An allocation failed (Python MemoryError or llama.cpp)."""

    status = "oom"


class BadArguments(Exception):
    """The command line could not be parsed; exit code 2."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT.

    A BaseException so that the best-effort ``except Exception`` blocks around
    fact collection cannot swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------- process state


class _Process:
    """Process-wide state: the saved stdout fd and signal bookkeeping."""

    json_fd = None  # type: int | None
    signalled = None  # type: int | None
    emitting = False


def _log(message: str) -> None:
    try:
        sys.stderr.write(f"edgeshrink-agent: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _protect_stdout() -> None:
    """Keep fd 1 for the JSON document only.

    Native code (llama.cpp, ggml) writes to fd 1 with printf; pointing fd 1 at
    stderr means nothing it prints can corrupt the one JSON document, which
    goes to a private duplicate of the original stdout.
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        _Process.json_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    except OSError:
        _Process.json_fd = None


def _emit(document: dict) -> None:
    _Process.emitting = True
    try:
        text = json.dumps(_json_safe(document), allow_nan=False, sort_keys=False)
    except (TypeError, ValueError) as exc:
        text = json.dumps(
            {
                "schema": SCHEMA,
                "agent_version": AGENT_VERSION,
                "status": "error",
                "error": {
                    "type": "internal",
                    "message": f"result could not be encoded as JSON: {exc}",
                    "hint": "report this as an edgeshrink agent bug",
                },
            }
        )
    data = (text + "\n").encode("utf-8")
    try:
        if _Process.json_fd is None:
            sys.__stdout__.write(data.decode("utf-8"))
            sys.__stdout__.flush()
            return
        view = memoryview(data)
        while view:
            written = os.write(_Process.json_fd, view)
            view = view[written:]
    except (OSError, AttributeError, ValueError) as exc:
        # The reader is gone (host disconnected); nothing else can carry the result.
        _log(f"could not write the result: {exc}")


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _on_signal(signum, frame) -> None:
    # Only the first signal interrupts; later ones must not break the emit path.
    if _Process.emitting or _Process.signalled is not None:
        return
    _Process.signalled = signum
    raise Interrupted(signum)


def _check_signal() -> None:
    """Re-raise a signal whose Interrupted was swallowed (e.g. inside a ctypes log callback)."""
    if _Process.signalled is not None and not _Process.emitting:
        raise Interrupted(_Process.signalled)


def _install_signal_handlers() -> None:
    for name in ("SIGTERM", "SIGINT"):
        signum = getattr(signal, name, None)
        if signum is not None:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, _on_signal)


# --------------------------------------------------------------------------- helpers


def _round(value, digits: int = 4):
    if value is None:
        return None
    return round(float(value), digits)


def _stats(samples, digits: int = 4) -> dict:
    values = [float(s) for s in samples]
    if not values:
        return {"mean": None, "stddev": None, "samples": []}
    stddev = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "mean": _round(statistics.mean(values), digits),
        "stddev": _round(stddev, digits),
        "samples": [_round(v, digits) for v in values],
    }


def _percentile(ordered, fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    if len(ordered) == 1:
        return float(ordered[0])
    position = fraction * (len(ordered) - 1)
    low = int(math.floor(position))
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _latency_stats(seconds) -> dict:
    """latency_ms {mean, stddev, min, p50, p90, p99, max, count} of per-run seconds."""
    values = [1000.0 * s for s in seconds]
    if not values:
        return {
            "mean": None,
            "stddev": None,
            "min": None,
            "p50": None,
            "p90": None,
            "p99": None,
            "max": None,
            "count": 0,
        }
    ordered = sorted(values)
    return {
        "mean": _round(statistics.mean(values), 6),
        "stddev": _round(statistics.stdev(values) if len(values) > 1 else 0.0, 6),
        "min": _round(ordered[0], 6),
        "p50": _round(_percentile(ordered, 0.50), 6),
        "p90": _round(_percentile(ordered, 0.90), 6),
        "p99": _round(_percentile(ordered, 0.99), 6),
        "max": _round(ordered[-1], 6),
        "count": len(values),
    }


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _utc_now_iso() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Report:
    """Everything a run has learned so far; turned into the JSON document at the end."""

    def __init__(self) -> None:
        self.started_at = _utc_now_iso()
        self.t_start = time.perf_counter()
        self.params = None  # type: dict | None
        self.model = None  # type: dict | None
        self.device = None  # type: dict | None
        self.runtime = None  # type: dict | None
        self.load_s = None  # type: float | None
        self.memory = None  # type: dict | None
        self.llm = None  # type: dict | None
        self.rss_after_load_mb = None  # type: float | None
        # (pp, tg, ttft) sample lists, filled while measuring so an interrupt keeps them.
        self.llm_partial = None  # type: tuple | None
        # Models that are not LLMs: seconds per run, filled the same way.
        self.latency_partial = None  # type: list | None
        self.latency_ms = None  # type: dict | None
        self.throughput_per_s = None  # type: float | None
        # --check-output: are the outputs finite and the same on a second identical run?
        self.output_check = None  # type: dict | None
        # Embedding models (GGUF encoders): what one timed run embeds.
        self.embedding = None  # type: dict | None
        # --reference: the model's quality measured here (device_quality.py's figures).
        self.quality = None  # type: dict | None
        self.unmeasured = []  # type: list
        self.warnings = []  # type: list

    def not_measured(self, what: str, why: str) -> None:
        if not any(item["what"] == what for item in self.unmeasured):
            self.unmeasured.append({"what": what, "why": why})

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            _log("warning: " + message)

    def bench_document(self, status: str, error: dict | None) -> dict:
        return {
            "schema": SCHEMA,
            "agent_version": AGENT_VERSION,
            "status": status,
            "error": error,
            "started_at": self.started_at,
            "duration_s": _round(time.perf_counter() - self.t_start),
            "params": self.params,
            "model": self.model,
            "device": self.device,
            "runtime": self.runtime,
            "load_s": _round(self.load_s),
            "memory": self.memory,
            "llm": self.llm,
            "latency_ms": self.latency_ms,
            "throughput_per_s": _round(self.throughput_per_s),
            "output_check": self.output_check,
            "embedding": self.embedding,
            "quality": self.quality,
            "unmeasured": self.unmeasured,
            "warnings": self.warnings,
        }


def _error_dict(kind: str, message: str, hint: str = "") -> dict:
    return {"type": kind, "message": message, "hint": hint}


# --------------------------------------------------------------------------- memory


_STATUS_KEYS = (b"VmRSS:", b"VmHWM:", b"RssAnon:", b"RssFile:", b"RssShmem:")


def _read_proc_status_kb() -> dict:
    """VmRSS/VmHWM/RssAnon/RssFile/RssShmem of this process in kB."""
    with open("/proc/self/status", "rb") as handle:
        raw = handle.read()
    found = {}
    for line in raw.split(b"\n"):
        for key in _STATUS_KEYS:
            if line.startswith(key):
                found[key[:-1].decode()] = int(line.split()[1])
                break
    return found


class MemorySampler:
    """Tracks the process's RSS and its anon/file split at the highest-RSS moment.

    VmHWM gives the true peak, but not what it was made of; a sampler thread
    (and explicit samples at phase boundaries) keeps the sample with the
    largest VmRSS so the report can say how much of the peak was file-backed
    (mmap'd weights the kernel can drop) versus anonymous memory.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_sample = None  # type: dict | None
        self.samples_taken = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None  # type: threading.Thread | None
        try:
            first = _read_proc_status_kb()
            self.proc_ok = "VmRSS" in first
            self.proc_why = "" if self.proc_ok else "/proc/self/status has no VmRSS"
        except (OSError, ValueError, IndexError) as exc:
            self.proc_ok = False
            self.proc_why = f"/proc/self/status unreadable: {exc}"
        self.has_split = False
        if self.proc_ok:
            self.has_split = "RssAnon" in first and "RssFile" in first
            self._keep(first)

    def _keep(self, sample: dict) -> None:
        with self._lock:
            self.samples_taken += 1
            if self.peak_sample is None or sample.get("VmRSS", 0) > self.peak_sample.get(
                "VmRSS", 0
            ):
                self.peak_sample = sample

    def sample(self) -> dict | None:
        if not self.proc_ok:
            return None
        try:
            current = _read_proc_status_kb()
        except (OSError, ValueError, IndexError):
            return None
        self._keep(current)
        return current

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        if self.proc_ok and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def quiet(self) -> None:
        """Stop the sampling thread before anything is timed: on a small board it would take
        a core from the runtime (explicit samples between phases go on; VmHWM has the peak)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def rss_now_mb(self) -> float | None:
        current = self.sample()
        if current is not None and "VmRSS" in current:
            return current["VmRSS"] / 1024.0
        try:
            import psutil  # optional

            return psutil.Process().memory_info().rss / (1024.0 * 1024.0)
        except Exception:
            return None

    def result(self, report: Report, rss_after_load_mb: float | None) -> dict:
        self.sample()
        memory = {
            "peak_rss_mb": None,
            "rss_anon_mb": None,
            "rss_file_mb": None,
            "rss_after_load_mb": _round(rss_after_load_mb, 2),
            "source": None,
        }
        last = None
        if self.proc_ok:
            try:
                last = _read_proc_status_kb()
            except (OSError, ValueError, IndexError):
                last = None
        if last is not None and "VmHWM" in last:
            memory["source"] = "proc"
            with self._lock:
                peak = dict(self.peak_sample or last)
            memory["peak_rss_mb"] = _round(max(last["VmHWM"], peak.get("VmRSS", 0)) / 1024.0, 2)
            if self.has_split:
                memory["rss_anon_mb"] = _round(peak["RssAnon"] / 1024.0, 2)
                memory["rss_file_mb"] = _round(peak["RssFile"] / 1024.0, 2)
            else:
                why = "kernel reports no RssAnon/RssFile (older than 4.5)"
                report.not_measured("memory.rss_anon_mb", why)
                report.not_measured("memory.rss_file_mb", why)
        else:
            why = self.proc_why or "/proc/self/status has no VmHWM"
            try:
                import resource

                maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                # Linux reports kB, macOS bytes.
                scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
                memory["peak_rss_mb"] = _round(maxrss / scale, 2)
                memory["source"] = "getrusage"
            except Exception as exc:
                report.not_measured("memory.peak_rss_mb", f"{why}; getrusage failed: {exc}")
            report.not_measured("memory.rss_anon_mb", why)
            report.not_measured("memory.rss_file_mb", why)
        if rss_after_load_mb is None:
            report.not_measured("memory.rss_after_load_mb", "no /proc and no psutil")
        return memory


# --------------------------------------------------------------------------- device facts


def _cpuinfo_fields() -> list:
    return parse_cpuinfo(_read_text("/proc/cpuinfo"))


def parse_cpuinfo(text: str) -> list:
    """/proc/cpuinfo text as a list of per-block dicts (one per CPU, plus trailers)."""
    blocks = []
    current = {}  # type: dict
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        if ":" in line:
            key, _, value = line.partition(":")
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def cpu_name_from_cpuinfo(blocks: list) -> str | None:
    """The CPU's name; on ARM the cores by "CPU part" (e.g. "4x Cortex-A55 + 4x Cortex-A76").

    ARM kernels give no "model name", or a useless one ("ARMv7 Processor rev 3"),
    so the part ids win over it when present.
    """
    counts = collections.OrderedDict()  # type: collections.OrderedDict
    for block in blocks:
        part = block.get("CPU part")
        if not part:
            continue
        implementer = block.get("CPU implementer", "").lower()
        part = part.lower()
        if implementer == "0x41" and part in ARM_CORE_NAMES:
            name = ARM_CORE_NAMES[part]
        else:
            vendor = CPU_IMPLEMENTERS.get(implementer, f"implementer {implementer or '?'}")
            name = f"{vendor} part {part}"
        counts[name] = counts.get(name, 0) + 1
    if counts:
        return " + ".join(f"{n}x {name}" for name, n in counts.items())
    for block in blocks:
        for key in ("model name", "Model Name", "cpu model", "Processor"):
            value = block.get(key)
            if value and not value.isdigit():
                return value
    for block in blocks:
        if block.get("Hardware"):
            return block["Hardware"]
    return None


def cpu_features_from_cpuinfo(blocks: list) -> list | None:
    for block in blocks:
        for key in ("Features", "flags"):
            if block.get(key):
                return sorted(set(block[key].split()))
    return None


def _getprop(name: str) -> str | None:
    if not shutil.which("getprop"):
        return None
    try:
        out = subprocess.run(
            ["getprop", name], capture_output=True, text=True, timeout=2, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _board() -> str | None:
    for path in (
        "/proc/device-tree/model",
        "/sys/firmware/devicetree/base/model",
        "/sys/class/dmi/id/product_name",
    ):
        try:
            value = _read_text(path).replace("\x00", "").strip()
        except OSError:
            continue
        if value:
            return value
    maker, model = _getprop("ro.product.manufacturer"), _getprop("ro.product.model")
    if model:
        return f"{maker} {model}" if maker else model
    return None


def _os_name() -> str:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            for line in _read_text(path).splitlines():
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
        except OSError:
            continue
    release = _getprop("ro.build.version.release")
    if release:
        return f"Android {release}"
    if sys.platform == "darwin":
        return f"macOS {platform.mac_ver()[0]}"
    return platform.platform()


def _meminfo_mb() -> dict:
    found = {}
    for line in _read_text("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            found[key] = int(rest.split()[0]) / 1024.0
    return found


def _temps_c() -> dict:
    base = "/sys/class/thermal"
    zones = [name for name in os.listdir(base) if name.startswith("thermal_zone")]
    zones.sort(key=lambda name: int(name[len("thermal_zone") :] or 0))
    temps = {}
    errors = []
    for zone in zones:
        try:
            raw = _read_text(os.path.join(base, zone, "temp")).strip()
            value = int(raw) / 1000.0
        except (OSError, ValueError) as exc:
            errors.append(f"{zone}: {exc}")
            continue
        try:
            name = _read_text(os.path.join(base, zone, "type")).strip() or zone
        except OSError:
            name = zone
        if name in temps:
            name = f"{name}.{zone[len('thermal_zone') :]}"
        temps[name] = _round(value, 1)
    if not temps:
        raise OSError(
            "no readable thermal zone" + (f" ({'; '.join(errors[:3])})" if errors else "")
        )
    return temps


def _cpu_mhz() -> dict:
    base = "/sys/devices/system/cpu"
    cpus = [n for n in os.listdir(base) if n.startswith("cpu") and n[3:].isdigit()]
    cpus.sort(key=lambda n: int(n[3:]))
    freqs = {}
    for cpu in cpus:
        try:
            khz = int(_read_text(os.path.join(base, cpu, "cpufreq", "scaling_cur_freq")).strip())
        except (OSError, ValueError):
            continue
        freqs[cpu] = _round(khz / 1000.0, 1)
    if not freqs:
        raise OSError(f"no readable {base}/cpu*/cpufreq/scaling_cur_freq")
    return freqs


def _throttled() -> str | None:
    """`vcgencmd get_throttled` (Raspberry Pi); None when there is no vcgencmd."""
    if not shutil.which("vcgencmd"):
        return None
    out = subprocess.run(
        ["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=3, check=False
    )
    text = out.stdout.strip()
    if out.returncode != 0 or "=" not in text:
        raise OSError(f"vcgencmd get_throttled failed: {out.stderr.strip() or text}")
    return text.split("=", 1)[1].strip()


def _changing_facts(report: Report, when: str, device: dict) -> None:
    """Facts that a run changes: temperatures, clocks, throttling."""
    try:
        device["temps_c"][when] = _temps_c()
    except Exception as exc:
        report.not_measured("device.temps_c", str(exc))
    try:
        device["cpu_mhz"][when] = _cpu_mhz()
    except Exception as exc:
        report.not_measured("device.cpu_mhz", str(exc))
    try:
        value = _throttled()
    except Exception as exc:
        report.not_measured("device.throttled", str(exc))
        value = None
    if value is not None:
        if device["throttled"] is None:
            device["throttled"] = {"before": None, "after": None}
        device["throttled"][when] = value


def collect_device(report: Report) -> dict:
    device = {
        "hostname": None,
        "cpu": None,
        "board": None,
        "arch": platform.machine() or None,
        "cores": os.cpu_count(),
        "cpu_features": [],
        "ram_mb": None,
        "ram_available_mb": None,
        "os": None,
        "kernel": platform.release() or None,
        "python": platform.python_version(),
        "temps_c": {"before": None, "after": None},
        "cpu_mhz": {"before": None, "after": None},
        "throttled": None,
    }
    try:
        device["hostname"] = socket.gethostname()
    except Exception as exc:
        report.not_measured("device.hostname", str(exc))
    try:
        blocks = _cpuinfo_fields()
    except Exception as exc:
        blocks = []
        report.not_measured("device.cpu_features", f"/proc/cpuinfo unreadable: {exc}")
    device["cpu"] = cpu_name_from_cpuinfo(blocks) or platform.processor() or None
    if device["cpu"] is None:
        report.not_measured("device.cpu", "no model name or CPU part in /proc/cpuinfo")
    features = cpu_features_from_cpuinfo(blocks)
    if features is None:
        report.not_measured("device.cpu_features", "no Features/flags line in /proc/cpuinfo")
    else:
        device["cpu_features"] = features
    try:
        device["board"] = _board()
    except Exception:
        device["board"] = None
    if device["board"] is None:
        report.not_measured("device.board", "no device-tree model, DMI product name or getprop")
    try:
        mem = _meminfo_mb()
        device["ram_mb"] = _round(mem.get("MemTotal"), 1)
        device["ram_available_mb"] = _round(mem.get("MemAvailable"), 1)
    except Exception as exc:
        try:
            pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            device["ram_mb"] = _round(pages / (1024.0 * 1024.0), 1)
        except (OSError, ValueError, AttributeError):
            report.not_measured("device.ram_mb", f"/proc/meminfo unreadable: {exc}")
    if device["ram_available_mb"] is None:
        report.not_measured("device.ram_available_mb", "/proc/meminfo has no MemAvailable")
    try:
        device["os"] = _os_name()
    except Exception as exc:
        report.not_measured("device.os", str(exc))
    _changing_facts(report, "before", device)
    return device


# --------------------------------------------------------------------------- runtimes


RUNTIME_MODULES = (
    ("llama_cpp", "llama-cpp-python"),
    ("onnxruntime", "onnxruntime"),
    ("tflite_runtime", "tflite-runtime"),
    ("ai_edge_litert", "ai-edge-litert"),
    ("numpy", "numpy"),
    ("psutil", "psutil"),
)

# Run in a child interpreter per runtime: a native library built for another
# CPU can kill the importing process (SIGILL), and `info` must still answer.
_PROBE_SOURCE = r"""
import json, sys
name, dist = sys.argv[1], sys.argv[2]
out = {"available": False, "version": None}
try:
    module = __import__(name)
except Exception as exc:
    out["why"] = "%s: %s" % (type(exc).__name__, exc)
else:
    out["available"] = True
    version = getattr(module, "__version__", None)
    if not version:
        try:
            from importlib import metadata
            version = metadata.version(dist)
        except Exception:
            version = None
    out["version"] = None if version is None else str(version)
    if name == "llama_cpp":
        try:
            raw = module.llama_cpp.llama_print_system_info()
            out["system_info"] = raw.decode("utf-8", "replace").strip()
        except Exception as exc:
            out["system_info"] = None
            out["why"] = "llama_print_system_info failed: %s" % exc
sys.stdout.write("\n" + json.dumps(out) + "\n")
"""


def _probe_result(module_name: str, dist_name: str, process, timeout_s: float) -> dict:
    entry = {"available": False, "version": None, "distribution": dist_name}
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        entry["why"] = f"importing {module_name} took longer than {timeout_s:.0f} s"
        return entry
    lines = stdout.strip().splitlines()
    if process.returncode == 0 and lines:
        try:
            entry.update(json.loads(lines[-1]))
            return entry
        except ValueError:
            pass
    if process.returncode is not None and process.returncode < 0:
        try:
            died = signal.Signals(-process.returncode).name
        except ValueError:
            died = f"signal {-process.returncode}"
        hint = " (native code built for another CPU?)" if died == "SIGILL" else ""
        entry["why"] = f"importing {module_name} killed the interpreter with {died}{hint}"
    else:
        tail = (stderr or "").strip().splitlines()[-1:] or ["no output"]
        entry["why"] = f"probe exited with {process.returncode}: {tail[0]}"
    return entry


def probe_runtimes(timeout_s: float = 60.0) -> dict:
    """Which runtimes import on this device, with versions; each probed in a child process."""
    processes = {}
    for module_name, dist_name in RUNTIME_MODULES:
        processes[module_name] = subprocess.Popen(
            [sys.executable, "-c", _PROBE_SOURCE, module_name, dist_name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    return {
        module_name: _probe_result(module_name, dist_name, processes[module_name], timeout_s)
        for module_name, dist_name in RUNTIME_MODULES
    }


# --------------------------------------------------------------------------- GGUF / llama.cpp


def _llama_system_info(lc) -> str:
    raw = lc.llama_print_system_info()
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()


AMX_ISSUE = "llama.cpp issue 20824"


def amx_unsafe(system_info: str, cpu_flags) -> bool:
    """True when llama.cpp would put weights in its AMX buffers, whose matmul crashes
    (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp issue 20824) on some AMX CPUs: built
    with AMX and run on a CPU that has it. EDGESHRINK_LLAMA_AMX=1 lets llama.cpp use it.
    """
    if os.environ.get("EDGESHRINK_LLAMA_AMX") == "1":
        return False
    return "AMX_INT8 = 1" in system_info and "amx_int8" in (cpu_flags or ())


def avoid_amx(mparams, system_info: str) -> bool:
    """Keep the weights out of llama.cpp's extra buffer types (AMX, repacking) when
    amx_unsafe says so; returns True when it did."""
    flags = cpu_features_from_cpuinfo(_cpuinfo_fields()) or []
    if not amx_unsafe(system_info, flags) or "use_extra_bufts" not in _struct_fields(mparams):
        return False
    mparams.use_extra_bufts = False
    return True


def check_gguf_file(path: str) -> int:
    """Cheap checks before handing the file to llama.cpp; returns its size in bytes."""
    if not os.path.exists(path):
        raise AgentError(
            "model_missing",
            f"model file not found: {path}",
            "check the path on the device; push the artifact first (edgeshrink push)",
        )
    if os.path.isdir(path):
        raise AgentError(
            "model_invalid", f"model path is a directory: {path}", "pass the .gguf file itself"
        )
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError as exc:
        raise AgentError(
            "model_unreadable", f"cannot read {path}: {exc}", "check file permissions"
        ) from exc
    if head[:4] != b"GGUF":
        raise AgentError(
            "model_invalid",
            f"{path} is not a GGUF file: it starts with {head[:4]!r}, a GGUF file starts with"
            f" b'GGUF' ({size} bytes)",
            "produce a .gguf with edgeshrink quantize/convert, or pass the right --format",
        )
    if len(head) < 24:
        raise AgentError(
            "model_truncated",
            f"{path} is only {size} bytes: the GGUF header is incomplete",
            "copy the file to the device again and compare its sha256",
        )
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (1, 2, 3):
        raise AgentError(
            "model_invalid",
            f"{path}: unsupported GGUF version {version} (big-endian or corrupt file?)",
            "re-create the file with a current gguf writer",
        )
    return size


class LlamaLog:
    """Captures llama.cpp/ggml log lines (to explain failures) and forwards warnings to stderr."""

    GGML_LOG_LEVEL_WARN = 3
    GGML_LOG_LEVEL_CONT = 5

    def __init__(self) -> None:
        self.lines = collections.deque(maxlen=400)  # type: collections.deque
        self._last_level = 2
        self._callback = None

    def install(self, lc) -> None:
        def on_log(level, text, user_data):
            try:
                message = text.decode("utf-8", "replace") if text else ""
                if level == self.GGML_LOG_LEVEL_CONT:
                    level = self._last_level
                else:
                    self._last_level = level
                self.lines.append((level, message))
                if level >= self.GGML_LOG_LEVEL_WARN:
                    sys.stderr.write(message)
            except BaseException:
                # An exception cannot cross the C frames; a signal's Interrupted
                # raised here is picked up again by _check_signal().
                pass

        # Keep a reference: ctypes callbacks are freed with their Python object.
        self._callback = lc.llama_log_callback(on_log)
        lc.llama_log_set(self._callback, None)

    def text(self) -> str:
        return "".join(message for _, message in self.lines)

    def problems(self, limit: int = 4) -> str:
        found = [m.strip() for level, m in self.lines if level >= self.GGML_LOG_LEVEL_WARN]
        found = [m for m in found if m]
        return "; ".join(found[-limit:])

    def says_oom(self) -> bool:
        text = self.text().lower()
        return any(marker in text for marker in OOM_MARKERS)

    def says_truncated(self) -> bool:
        text = self.text().lower()
        return any(marker in text for marker in TRUNCATION_MARKERS)


def _struct_fields(params) -> set:
    return {field[0] for field in type(params)._fields_}


def _first_attr(module, *names):
    for name in names:
        function = getattr(module, name, None)
        if function is not None:
            return function
    raise AgentError(
        "runtime_incompatible",
        f"llama_cpp has none of {', '.join(names)}",
        "install a llama-cpp-python between 0.3.8 and the version edgeshrink was tested with",
    )


def _memory_clearer(lc, ctx):
    """The KV cache/memory clear call of this llama-cpp-python version."""
    if hasattr(lc, "llama_memory_clear") and hasattr(lc, "llama_get_memory"):
        memory = lc.llama_get_memory(ctx)
        return lambda: lc.llama_memory_clear(memory, True)
    if hasattr(lc, "llama_kv_self_clear"):
        return lambda: lc.llama_kv_self_clear(ctx)
    if hasattr(lc, "llama_kv_cache_clear"):
        return lambda: lc.llama_kv_cache_clear(ctx)
    raise AgentError(
        "runtime_incompatible",
        "llama_cpp has no llama_memory_clear, llama_kv_self_clear or llama_kv_cache_clear",
        "install llama-cpp-python >= 0.3.8",
    )


def _new_context(lc, model, report, llama_log, n_ctx, n_batch, n_ubatch, *, what, hint, bad_hint,
                 embeddings=False):  # fmt: skip
    """A llama.cpp context with threads and flash attention set explicitly, because the
    binding's defaults (cores/2, flash off) differ from llama-bench's."""
    resolved = report.params["resolved"]
    cparams = lc.llama_context_default_params()
    cfields = _struct_fields(cparams)
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_ubatch
    cparams.n_threads = resolved["threads"]
    cparams.n_threads_batch = resolved["threads"]
    if embeddings and "embeddings" in cfields:
        cparams.embeddings = True
    if "flash_attn_type" in cfields:
        cparams.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if resolved["flash_attn"]
            else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
    elif "flash_attn" in cfields:
        cparams.flash_attn = bool(resolved["flash_attn"])
    else:
        report.warn("this llama-cpp-python has no flash attention switch; --flash-attn ignored")
    init_context = _first_attr(lc, "llama_init_from_model", "llama_new_context_with_model")
    ctx = init_context(model, cparams)
    if not ctx:
        details = llama_log.problems()
        if llama_log.says_oom():
            raise AgentOutOfMemory(
                "oom", f"llama.cpp could not allocate {what}: {details}", hint
            )
        raise AgentError(
            "context_failed",
            f"llama.cpp failed to create {what}: {details or 'no message'}",
            bad_hint,
        )
    return ctx


def run_gguf(args, report: Report, sampler: MemorySampler) -> None:
    size = check_gguf_file(args.model)
    report.model["size_bytes"] = size

    _log("importing llama_cpp")
    try:
        import ctypes

        import llama_cpp
    except ImportError as exc:
        raise AgentError(
            "runtime_missing",
            f"llama_cpp is not importable on this device: {exc}",
            "pip install llama-cpp-python (on the device)",
        ) from exc
    except OSError as exc:
        raise AgentError(
            "runtime_broken",
            f"llama_cpp is installed but its native library failed to load: {exc}",
            "reinstall llama-cpp-python on the device (pip install --force-reinstall --no-cache-dir llama-cpp-python)",
        ) from exc
    lc = llama_cpp.llama_cpp
    report.runtime = {
        "name": "llama.cpp",
        "binding": "llama-cpp-python",
        "version": getattr(llama_cpp, "__version__", None),
        "system_info": None,
    }
    llama_log = LlamaLog()
    llama_log.install(lc)
    lc.llama_backend_init()
    try:
        report.runtime["system_info"] = _llama_system_info(lc)
    except Exception as exc:
        report.not_measured("runtime.system_info", str(exc))

    # Model.
    mparams = lc.llama_model_default_params()
    if avoid_amx(mparams, report.runtime.get("system_info") or ""):
        report.warn(
            "this CPU has AMX, whose llama.cpp kernels crash (%s): weights stay in plain CPU "
            "buffers (no AMX, no repacking); EDGESHRINK_LLAMA_AMX=1 uses them anyway" % AMX_ISSUE
        )
    mfields = _struct_fields(mparams)
    if "load_mode" in mfields:  # llama-cpp-python >= 0.3.3x replaced use_mmap by load_mode
        mparams.load_mode = lc.LLAMA_LOAD_MODE_NONE if args.no_mmap else lc.LLAMA_LOAD_MODE_MMAP
    elif "use_mmap" in mfields:
        mparams.use_mmap = not args.no_mmap
    else:
        report.warn("cannot choose mmap on this llama-cpp-python; --no-mmap ignored")
    load_model = _first_attr(lc, "llama_model_load_from_file", "llama_load_model_from_file")
    _log(f"loading {os.path.basename(args.model)} ({size} bytes, mmap {'off' if args.no_mmap else 'on'})")
    t0 = time.perf_counter()
    model = load_model(os.fsencode(args.model), mparams)
    report.load_s = time.perf_counter() - t0
    _check_signal()
    if not model:
        report.load_s = None
        details = llama_log.problems()
        if llama_log.says_oom():
            raise AgentOutOfMemory(
                "oom",
                f"llama.cpp could not allocate memory for the model: {details}",
                "use a smaller quantization or a smaller model for this device",
            )
        if llama_log.says_truncated():
            raise AgentError(
                "model_truncated",
                f"llama.cpp could not read {args.model}, it looks truncated or corrupt: {details}",
                "copy the file to the device again and compare its sha256 with the artifact manifest",
            )
        raise AgentError(
            "model_load_failed",
            f"llama.cpp failed to load {args.model}: {details or 'no message'}",
            "check that the GGUF's architecture is supported by llama-cpp-python"
            f" {report.runtime['version']}",
        )
    report.rss_after_load_mb = sampler.rss_now_mb()

    desc = ctypes.create_string_buffer(256)
    lc.llama_model_desc(model, desc, ctypes.sizeof(desc))
    report.model["desc"] = desc.value.decode("utf-8", "replace")
    report.model["n_params"] = int(lc.llama_model_n_params(model))
    if hasattr(lc, "llama_model_get_vocab") and hasattr(lc, "llama_vocab_n_tokens"):
        vocab = lc.llama_model_get_vocab(model)
        n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        bos = None
        if hasattr(lc, "llama_vocab_get_add_bos") and lc.llama_vocab_get_add_bos(vocab):
            bos = int(lc.llama_vocab_bos(vocab))
    else:
        n_vocab = int(lc.llama_n_vocab(model))
        bos = None
    report.model["n_vocab"] = n_vocab
    _log(
        f"model: {report.model['desc']}, {report.model['n_params']} params,"
        f" vocab {n_vocab}, load {report.load_s:.3f} s"
    )
    reference = args.quality_reference
    if reference is not None:
        check_reference_vocab(reference, lc, model, n_vocab, args.model)
    if gguf_is_encoder(lc, ctypes, model):
        if reference is not None:
            raise AgentError(
                "reference_unsupported",
                f"{os.path.basename(args.model)} is an embedding model: its quality is the"
                " cosine of its embeddings, measured on the host (edgeshrink eval)",
                "evaluate embedding models without --target",
            )
        # BERT-style embedding models: no generation to time; what matters is how fast
        # a whole input becomes an embedding.
        run_gguf_encoder(lc, ctypes, model, n_vocab, bos, llama_log, args, report, sampler)
        return
    if args.command == "bench":
        ctx = bench_gguf(lc, ctypes, model, n_vocab, bos, llama_log, args, report, sampler)
        if reference is not None:
            lc.llama_free(ctx)  # the evaluation makes a context of its own
    if reference is not None:
        gguf_quality(lc, ctypes, model, n_vocab, llama_log, reference, args, report, sampler)


def bench_gguf(lc, ctypes, model, n_vocab, bos, llama_log, args, report, sampler):
    """llama-bench's measurement of a loaded model; returns the context it made."""
    resolved = report.params["resolved"]
    ctx = _new_context(
        lc, model, report, llama_log, resolved["n_ctx"], args.batch_size, args.ubatch_size,
        what=f"the context (n_ctx {resolved['n_ctx']})",
        hint="lower --n-ctx / --batch-size or use a smaller model",
        bad_hint="check --n-ctx, --batch-size and --ubatch-size",
    )  # fmt: skip
    _check_signal()
    resolved["n_ctx"] = int(lc.llama_n_ctx(ctx))
    resolved["batch_size"] = (
        int(lc.llama_n_batch(ctx)) if hasattr(lc, "llama_n_batch") else args.batch_size
    )
    resolved["ubatch_size"] = (
        int(lc.llama_n_ubatch(ctx)) if hasattr(lc, "llama_n_ubatch") else args.ubatch_size
    )
    sampler.sample()

    bench = LlamaBench(lc, ctypes, ctx, n_vocab, bos, resolved["batch_size"], args.seed, llama_log)
    clear_memory = _memory_clearer(lc, ctx)
    n_prompt, n_gen = args.prompt_tokens, args.gen_tokens
    pp_samples, tg_samples, ttft_samples = [], [], []
    report.llm_partial = (pp_samples, tg_samples, ttft_samples)

    # llama-bench's sequence: the prompt test (a warm-up, then every repetition), then the
    # generation test (its own warm-up of one token, then every repetition), each from an
    # empty cache. Nothing runs beside llama.cpp while it is timed: the memory sampler's
    # thread is stopped first (the kernel keeps the peak, VmHWM), and the log lines are
    # written between repetitions.
    sampler.quiet()
    deadline_at = None if args.deadline_s is None else report.t_start + args.deadline_s
    # With a deadline the prompt test may take half of the time left, so the generation
    # test gets its share.
    limit = {"at": None if deadline_at is None else (time.perf_counter() + deadline_at) / 2}

    def out_of_time(done: int, spent: list, what: str) -> bool:
        if limit["at"] is None or not spent:
            return False
        if time.perf_counter() + statistics.mean(spent) <= limit["at"]:
            return False
        report.warn(
            f"deadline of {args.deadline_s} s reached: stopped {what} after {done} of"
            f" {args.reps} repetitions"
        )
        return True

    def run_test(name: str, reps: int, warm_up, once) -> None:
        """llama-bench's shape of one test: warm-ups, then timed repetitions (``once``
        records its samples and returns the text to log) until ``reps`` or the deadline."""
        for index in range(args.warmup):
            _log(f"warm-up {index + 1}/{args.warmup}: {name}")
            clear_memory()
            warm_up()
        sampler.sample()
        spent = []
        for rep in range(reps):
            if out_of_time(rep, spent, f"the {name} test"):
                break
            _check_signal()
            t_rep = time.perf_counter()
            clear_memory()
            text = once()
            spent.append(time.perf_counter() - t_rep)
            sampler.sample()
            _log(f"rep {rep + 1}/{args.reps}: {text}")

    def prompt_once() -> str:
        # Time to first token: prompt, greedy pick of the first token, and its decode.
        t_pp = bench.prompt(n_prompt)
        t0 = time.perf_counter()
        bench.decode_one(bench.argmax_last())
        t_first = time.perf_counter() - t0
        pp_samples.append(n_prompt / t_pp)
        ttft_samples.append((t_pp + t_first) * 1000.0)
        return f"pp {pp_samples[-1]:.1f} tok/s, ttft {ttft_samples[-1]:.2f} ms"

    def generate_once() -> str:
        tg_samples.append(n_gen / bench.generate(n_gen))
        return f"tg {tg_samples[-1]:.1f} tok/s"

    run_test(f"pp{n_prompt}", args.reps, lambda: bench.prompt(n_prompt), prompt_once)
    limit["at"] = deadline_at
    run_test(f"tg{n_gen}", len(pp_samples), lambda: bench.generate(1), generate_once)
    if args.check_output:
        prompt = [t for t in random.Random(args.seed).sample(range(n_vocab), min(16, n_vocab))]
        if bos is not None:
            prompt[0] = bos
        runs = []
        for _ in range(2):
            clear_memory()
            runs.append(bench.greedy(prompt, 16))
        report.output_check = {
            "finite": runs[0][1] and runs[1][1],
            "deterministic": runs[0][0] == runs[1][0],
            "tokens": runs[0][0],
            "runs": 2,
        }
        _log(f"output check: {report.output_check}")
    return ctx


def _meta_str(lc, ctypes, model, key: str):
    """A GGUF metadata value as llama.cpp prints it (bools: 'true'/'false'), or None."""
    function = getattr(lc, "llama_model_meta_val_str", None)
    if function is None:
        return None
    buffer = ctypes.create_string_buffer(256)
    if function(model, key.encode(), buffer, ctypes.sizeof(buffer)) < 0:
        return None
    return buffer.value.decode("utf-8", "replace")


def gguf_is_encoder(lc, ctypes, model) -> bool:
    """An embedding model (BERT and kin: non-causal attention, or an encoder without a
    decoder) rather than a text generator."""
    has_encoder = getattr(lc, "llama_model_has_encoder", None)
    has_decoder = getattr(lc, "llama_model_has_decoder", None)
    if has_encoder is not None and has_decoder is not None:
        if has_encoder(model) and not has_decoder(model):
            return True
    arch = _meta_str(lc, ctypes, model, "general.architecture")
    return bool(arch) and _meta_str(lc, ctypes, model, arch + ".attention.causal") == "false"


POOLING_NAMES = {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def fill_batch(batch, tokens, first_output: int) -> None:
    """One sequence of ``tokens`` at positions 0.. in a llama_batch (from llama_batch_init),
    with outputs (logits or embeddings) from position ``first_output`` on."""
    for i, token in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1 if i >= first_output else 0
    batch.n_tokens = len(tokens)


def run_gguf_encoder(lc, ctypes, model, n_vocab, bos, llama_log, args, report, sampler) -> None:
    """Time whole inputs of --prompt-tokens tokens becoming embeddings (one llama_encode
    or llama_decode of a non-causal batch each), like the ONNX/TFLite runs: at least
    --runs runs and --min-seconds, with latency percentiles and inputs per second."""
    resolved = report.params["resolved"]
    n_tokens = args.prompt_tokens
    trained = int(lc.llama_model_n_ctx_train(model)) if hasattr(lc, "llama_model_n_ctx_train") else 0
    if trained and n_tokens > trained:
        # Learned position tables (BERT) have exactly `trained` rows: more tokens would
        # index past them and abort the process inside llama.cpp.
        report.warn(
            f"--prompt-tokens {n_tokens} is beyond the {trained} tokens this embedding model"
            f" takes: embedding inputs of {trained} tokens"
        )
        n_tokens = trained
    for key in ("gen_tokens", "reps", "batch_size", "ubatch_size"):
        report.params.pop(key, None)
    report.params["runs"] = args.runs
    report.params["min_seconds"] = args.min_seconds
    # A non-causal batch must be decoded in one micro-batch.
    ctx = _new_context(
        lc, model, report, llama_log, n_tokens, n_tokens, n_tokens, embeddings=True,
        what=f"an embedding context ({n_tokens} tokens)",
        hint="lower --prompt-tokens or use a smaller model", bad_hint="lower --prompt-tokens",
    )  # fmt: skip
    _check_signal()
    resolved["n_ctx"] = int(lc.llama_n_ctx(ctx))
    resolved["prompt_tokens"] = n_tokens
    n_embd = int(lc.llama_model_n_embd(model))
    pooling = int(lc.llama_pooling_type(ctx)) if hasattr(lc, "llama_pooling_type") else -1
    uses_encode = bool(getattr(lc, "llama_model_has_encoder", lambda _m: False)(model))
    run = lc.llama_encode if uses_encode else lc.llama_decode
    clear_memory = (
        _memory_clearer(lc, ctx)
        if not uses_encode and getattr(lc, "llama_get_memory", lambda _c: True)(ctx)
        else (lambda: None)
    )
    rng = random.Random(args.seed)
    tokens = [rng.randrange(n_vocab) for _ in range(n_tokens)]
    if bos is not None and tokens:
        tokens[0] = bos
    # Every token marked as an output, in sequence 0, as llama-embedding does (a batch
    # from llama_batch_get_one makes llama.cpp log an override on every run).
    batch = lc.llama_batch_init(n_tokens, 0, 1)
    fill_batch(batch, tokens, 0)
    synchronize = lc.llama_synchronize

    def embed_once() -> None:
        clear_memory()
        rc = run(ctx, batch)
        if rc:
            details = llama_log.problems()
            if llama_log.says_oom():
                raise AgentOutOfMemory(
                    "oom", f"embedding an input could not allocate memory: {details}",
                    "lower --prompt-tokens or use a smaller model",
                )
            raise AgentError(
                "decode_failed",
                f"embedding {n_tokens} tokens returned {rc}: {details or 'no message'}",
                "see the llama.cpp messages on stderr",
            )
        synchronize(ctx)

    def embedding() -> list:
        get = getattr(lc, "llama_get_embeddings_seq", None)
        pointer = get(ctx, 0) if get is not None and pooling > 0 else None
        if not pointer:
            pointer = lc.llama_get_embeddings_ith(ctx, -1)
        if not pointer:
            raise AgentError(
                "decode_failed",
                "llama.cpp returned no embedding for the input",
                "check that the GGUF is an embedding model llama.cpp supports",
            )
        return [pointer[i] for i in range(n_embd)]

    _log(f"embedding model: inputs of {n_tokens} tokens, {n_embd} dims, pooling {POOLING_NAMES.get(pooling, pooling)}")
    measure_runs(embed_once, args, report, sampler)
    report.embedding = {
        "tokens_per_input": n_tokens,
        "n_embd": n_embd,
        "pooling": POOLING_NAMES.get(pooling, str(pooling)),
    }
    if args.check_output:
        runs = []
        for _ in range(2):
            embed_once()
            runs.append([embedding()])
        try:
            import numpy as np
        except ImportError:
            same = runs[0] == runs[1]
            finite = all(v == v and abs(v) != float("inf") for v in runs[0][0])
            report.output_check = {"finite": finite, "deterministic": same, "runs": 2}
        else:
            report.output_check = compare_output_runs(np, runs[0], runs[1])
        _log(f"output check: {report.output_check}")


class LlamaBench:
    """The llama-bench measurement loops on the low-level ctypes API.

    Token arrays and batches are built before the clock starts so the timed
    loops are nothing but llama_decode calls.
    """

    def __init__(self, lc, ctypes, ctx, n_vocab, bos, n_batch, seed, llama_log) -> None:
        self.lc = lc
        self.ctypes = ctypes
        self.ctx = ctx
        self.n_vocab = n_vocab
        self.bos = bos
        self.n_batch = max(1, n_batch)
        self.rng = random.Random(seed)
        self.llama_log = llama_log
        self.token_size = ctypes.sizeof(lc.llama_token)
        self.one_token = (lc.llama_token * 1)()
        self.one_batch = lc.llama_batch_get_one(self.one_token, 1)
        try:
            import numpy  # a llama-cpp-python dependency; argmax in C instead of Python

            self.numpy = numpy
        except ImportError:
            self.numpy = None

    def _random_tokens(self, count: int, start_with_bos: bool) -> list:
        randrange, n_vocab = self.rng.randrange, self.n_vocab
        tokens = [randrange(n_vocab) for _ in range(count)]
        if start_with_bos and self.bos is not None and tokens:
            tokens[0] = self.bos
        return tokens

    def _check(self, rc: int, what: str) -> None:
        if rc == 0:
            return
        details = self.llama_log.problems()
        if self.llama_log.says_oom():
            raise AgentOutOfMemory(
                "oom",
                f"llama_decode ({what}) could not allocate memory: {details}",
                "lower --batch-size/--ubatch-size or use a smaller model",
            )
        hint = "raise --n-ctx" if rc == 1 else "see the llama.cpp messages on stderr"
        raise AgentError(
            "decode_failed",
            f"llama_decode ({what}) returned {rc}: {details or 'no message'}",
            hint,
        )

    def prompt(self, n_prompt: int) -> float:
        """Decode n_prompt random tokens in batches of n_batch; returns seconds."""
        lc, ctypes = self.lc, self.ctypes
        tokens = (lc.llama_token * n_prompt)(*self._random_tokens(n_prompt, True))
        batches = []
        for offset in range(0, n_prompt, self.n_batch):
            count = min(self.n_batch, n_prompt - offset)
            pointer = ctypes.cast(
                ctypes.addressof(tokens) + offset * self.token_size, ctypes.POINTER(lc.llama_token)
            )
            batches.append(lc.llama_batch_get_one(pointer, count))
        decode, ctx = lc.llama_decode, self.ctx
        t0 = time.perf_counter()
        for batch in batches:
            rc = decode(ctx, batch)
            if rc:
                self._check(rc, "prompt")
        lc.llama_synchronize(ctx)
        return time.perf_counter() - t0

    def generate(self, n_gen: int) -> float:
        """Decode n_gen random tokens one at a time; returns seconds."""
        tokens = self._random_tokens(n_gen, True)
        decode, ctx, batch, slot = self.lc.llama_decode, self.ctx, self.one_batch, self.one_token
        t0 = time.perf_counter()
        for token in tokens:
            slot[0] = token
            rc = decode(ctx, batch)
            if rc:
                self._check(rc, "generation")
        self.lc.llama_synchronize(ctx)
        return time.perf_counter() - t0

    def argmax_last(self) -> int:
        """Greedy pick from the logits of the last decoded token."""
        import array

        logits = self.lc.llama_get_logits_ith(self.ctx, -1)
        if not logits:
            raise AgentError(
                "decode_failed",
                "llama_get_logits_ith(-1) returned NULL",
                "report this as an agent bug",
            )
        if self.numpy is not None:
            return int(self.numpy.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())
        values = array.array("f", self.ctypes.string_at(logits, self.n_vocab * 4))
        return values.index(max(values))

    def greedy(self, prompt: list, n_gen: int) -> tuple:
        """Greedy generation from ``prompt``: (tokens, all logits finite?)."""
        import math

        lc, ctypes = self.lc, self.ctypes
        tokens = (lc.llama_token * len(prompt))(*prompt)
        self._check(
            lc.llama_decode(self.ctx, lc.llama_batch_get_one(tokens, len(prompt))), "check prompt"
        )
        out, finite = [], True
        for _ in range(n_gen):
            logits = lc.llama_get_logits_ith(self.ctx, -1)
            if self.numpy is not None:
                row = self.numpy.ctypeslib.as_array(logits, shape=(self.n_vocab,))
                finite = finite and bool(self.numpy.isfinite(row).all())
                token = int(row.argmax())
            else:
                import array

                values = array.array("f", ctypes.string_at(logits, self.n_vocab * 4))
                finite = finite and all(math.isfinite(v) for v in values)
                token = values.index(max(values))
            out.append(token)
            self.decode_one(token)
        return out, finite

    def decode_one(self, token: int) -> None:
        self.one_token[0] = token
        rc = self.lc.llama_decode(self.ctx, self.one_batch)
        if rc:
            self._check(rc, "first token")
        self.lc.llama_synchronize(self.ctx)


# --------------------------------------------------------------------------- timed runs


def compare_output_runs(np, first, second) -> dict:
    """Finite and identical? ``first``/``second``: lists of output arrays of two runs."""
    finite = True
    max_diff = 0.0
    scale = 0.0
    for a, b in zip(first, second):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "f":
            finite = finite and bool(np.isfinite(a).all() and np.isfinite(b).all())
        if a.size:
            diff = np.abs(a.astype("float64") - b.astype("float64"))
            max_diff = max(max_diff, float(np.nanmax(diff)) if diff.size else 0.0)
            scale = max(scale, float(np.nanmax(np.abs(a.astype("float64")))))
    # Threaded reductions may reorder float sums: allow a relative 1e-6.
    deterministic = max_diff <= 1e-6 * max(scale, 1.0)
    return {
        "finite": finite,
        "deterministic": deterministic,
        "max_abs_diff": _round(max_diff, 9),
        "runs": 2,
    }


def timed_load(load, failure, report: Report, sampler: MemorySampler):
    """``load()``'s result, timed as the model load, with the RSS after it; any error but
    running out of memory becomes ``failure(exc)`` (an AgentError)."""
    t0 = time.perf_counter()
    try:
        loaded = load()
    except MemoryError:
        raise
    except Exception as exc:
        raise failure(exc) from exc
    report.load_s = time.perf_counter() - t0
    _check_signal()
    report.rss_after_load_mb = sampler.rss_now_mb()
    return loaded


def measure_runs(run_once, args, report: Report, sampler: MemorySampler) -> None:
    """Warm up, then time ``run_once`` until at least --runs runs AND --min-seconds have
    passed (TFLite benchmark_model's rule); --deadline-s stops it early with a warning.

    Per-run seconds go into ``report.latency_partial`` as they are measured, so a
    run stopped by SIGTERM still reports what it measured.
    """
    sampler.quiet()
    for index in range(args.warmup):
        _log(f"warm-up {index + 1}/{args.warmup}")
        run_once()
    sampler.sample()
    samples = []
    report.latency_partial = samples
    perf = time.perf_counter
    runs, min_end = args.runs, perf() + args.min_seconds
    deadline_at = None if args.deadline_s is None else report.t_start + args.deadline_s
    append = samples.append
    while True:
        t0 = perf()
        run_once()
        t1 = perf()
        append(t1 - t0)
        if len(samples) >= runs and t1 >= min_end:
            break
        if deadline_at is not None and t1 + (t1 - t0) > deadline_at:
            report.warn(
                f"deadline of {args.deadline_s} s reached: stopped after {len(samples)} runs"
            )
            break
        if _Process.signalled is not None:
            _check_signal()
    sampler.sample()
    mean_ms = 1000.0 * sum(samples) / len(samples)
    _log(f"{len(samples)} runs in {sum(samples):.3f} s: mean {mean_ms:.4f} ms")


# --------------------------------------------------------------------------- ONNX / onnxruntime


ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
ORT_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
# onnxruntime type strings -> numpy dtype names
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(bool)": "bool",
}


def check_model_file(path: str) -> int:
    """The model file exists and is a readable file; returns its size in bytes."""
    if not os.path.exists(path):
        raise AgentError(
            "model_missing",
            f"model file not found: {path}",
            "check the path on the device; push the artifact first (edgeshrink push)",
        )
    if os.path.isdir(path):
        raise AgentError(
            "model_invalid", f"model path is a directory: {path}", "pass the model file itself"
        )
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise AgentError(
            "model_unreadable", f"cannot read {path}: {exc}", "check file permissions"
        ) from exc
    return os.path.getsize(path)


def choose_ort_providers(ort, wanted: str, threads: int, machine: str) -> tuple:
    """(providers argument, session tweaks, name chosen) for InferenceSession.

    auto: CUDA when the build has it, XNNPACK on ARM when the build has it, else
    CPU.  TensorRT builds an engine on first use (minutes), so only on request.
    """
    available = list(ort.get_available_providers())
    arm = machine.lower() in ("aarch64", "arm64") or machine.lower().startswith("arm")
    if wanted == "auto":
        if ORT_PROVIDERS["cuda"] in available:
            wanted = "cuda"
        elif arm and ORT_PROVIDERS["xnnpack"] in available:
            wanted = "xnnpack"
        else:
            wanted = "cpu"
    name = ORT_PROVIDERS[wanted]
    if name not in available:
        raise AgentError(
            "provider_missing",
            f"this onnxruntime has no {name}; it has {', '.join(available)}",
            "pass --execution-provider auto or one of the available providers"
            " (XNNPACK needs an onnxruntime build with it, CUDA/TensorRT onnxruntime-gpu)",
        )
    tweaks = {}
    if wanted == "xnnpack":
        # XNNPACK has its own thread pool: the ORT intra-op pool stays at one
        # thread without spinning, as the XNNPACK EP documentation advises.
        providers = [(name, {"intra_op_num_threads": str(threads)}), ORT_PROVIDERS["cpu"]]
        tweaks = {"intra_op_num_threads": 1, "session.intra_op.allow_spinning": "0"}
    elif wanted == "tensorrt":
        providers = [name, ORT_PROVIDERS["cuda"], ORT_PROVIDERS["cpu"]]
        providers = [p for p in providers if p in available]
    elif wanted == "cpu":
        providers = [name]
    else:
        providers = [name, ORT_PROVIDERS["cpu"]]
    return providers, tweaks, wanted


def _ort_load_failure(path: str, exc: BaseException) -> AgentError:
    message = str(exc)
    lower = message.lower()
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    if any(marker in lower for marker in ("bad_alloc", "failed to allocate", "out of memory")):
        return AgentOutOfMemory(
            "oom",
            f"onnxruntime could not allocate memory for the model: {first}",
            "use a smaller or quantized model for this device",
        )
    if "invalid_protobuf" in lower or "protobuf parsing failed" in lower:
        try:
            with open(path, "rb") as handle:
                head = handle.read(2)
        except OSError:
            head = b""
        if len(head) == 2 and head[0] == 0x08 and 1 <= head[1] <= 20:
            return AgentError(
                "model_truncated",
                f"{path} looks like an ONNX file but does not parse: it is truncated or corrupt",
                "copy the file to the device again and compare its sha256 with the artifact manifest",
            )
        return AgentError(
            "model_invalid",
            f"{path} is not an ONNX file ({os.path.getsize(path)} bytes that do not parse)",
            "pass an .onnx model, or the right --format",
        )
    if "is till opset" in lower or "ir version" in lower:
        return AgentError(
            "unsupported_opset",
            f"onnxruntime cannot run {path}: {first}",
            "convert the model to an older opset (onnx.version_converter) or upgrade onnxruntime on the device",
        )
    if "external" in lower or "no such file" in lower:
        return AgentError(
            "external_data_missing",
            f"onnxruntime cannot read the external data of {path}: {first}",
            "push the model's .data file(s) beside it, keeping their names",
        )
    return AgentError(
        "model_load_failed",
        f"onnxruntime failed to load {path}: {first}",
        "check that the model runs in onnxruntime on the host (edgeshrink inspect / eval)",
    )


def onnx_input_feed(
    np, session_inputs, inputs_path, seed: int, report: Report, int_bounds=None, dim_values=None
) -> tuple:
    """Feeds for every onnxruntime input (see ``input_feeds``)."""
    metas = []
    for meta in session_inputs:
        dtype = ORT_DTYPES.get(meta.type)
        if dtype is None:
            raise AgentError(
                "inputs_unsupported",
                f"input '{meta.name}' has type {meta.type}",
                "the agent feeds numeric tensors only",
            )
        metas.append(InputMeta(meta.name, list(meta.shape), dtype))
    return input_feeds(np, metas, inputs_path, seed, report, int_bounds, dim_values)


class InputMeta:
    """One model input as the feeder needs it.

    ``dims``: declared dimensions (an int when fixed, a name or None when not);
    ``shape``: the shape to feed when it is known (TFLite's allocated shape);
    ``quantization``: (scale, zero point) of an integer input that float data is
    quantized into; ``aliases``: other names an .npz may use for it.
    """

    def __init__(self, name, dims, dtype, shape=None, quantization=None, aliases=()) -> None:
        self.name = name
        self.dims = dims
        self.dtype = dtype
        self.shape = shape
        self.quantization = quantization
        self.aliases = tuple(aliases)


def _quantize(np, array, dtype: str, quantization):
    scale, zero_point = quantization
    limits = np.iinfo(np.dtype(dtype))
    scaled = np.round(np.asarray(array, np.float64) / scale) + zero_point
    return np.clip(scaled, limits.min, limits.max).astype(dtype)


def _load_npz(np, inputs_path: str) -> dict:
    if not os.path.isfile(inputs_path):
        raise AgentError(
            "inputs_missing",
            f"inputs file not found: {inputs_path}",
            "push the .npz with the model (--inputs on the host)",
        )
    try:
        with np.load(inputs_path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:
        raise AgentError(
            "inputs_invalid",
            f"{inputs_path} is not a readable .npz: {exc}",
            "write it with numpy.savez(path, input_name=array)",
        ) from exc


def parse_name_values(items, flag: str = "--int-bound") -> dict:
    """``["input_ids=30522", ...]`` as {name: N} (N >= 1)."""
    values = {}
    for item in items or ():
        name, _, value = str(item).rpartition("=")
        if not name or not value.isdigit() or int(value) < 1:
            raise BadArguments(f"{flag} wants NAME=N with N >= 1, not {item!r}")
        values[name] = int(value)
    return values


def parse_int_bounds(items) -> dict:
    """``--int-bound`` values: {input name: exclusive upper bound of its random integers}."""
    return parse_name_values(items, "--int-bound")


def parse_dims(items) -> dict:
    """``--dim`` values: {symbolic dimension name: its size in random inputs}, like
    onnxruntime_perf_test's free-dimension overrides (-f NAME:N)."""
    return parse_name_values(items, "--dim")


def random_integers(np, rng, name: str, shape, dtype: str, bounds: dict):
    """Valid random integers for an input: what transformer exports expect of their
    integer inputs (a Gather index below its table's rows, masks of ones, type ids 0)."""
    lowered = name.lower()
    if "mask" in lowered:
        return np.ones(shape, dtype=dtype)
    if "token_type" in lowered or "segment" in lowered:
        return np.zeros(shape, dtype=dtype)
    high = min(10, bounds.get(name, 10))
    return rng.integers(0, max(high, 1), shape).astype(dtype)


def input_feeds(
    np, metas, inputs_path, seed: int, report: Report, int_bounds=None, dim_values=None
) -> tuple:
    """Feeds for every input, from the pushed .npz or random from the declared shapes.

    Arrays hold samples on their first axis; one batch is taken: the declared
    first dimension when it is fixed, 1 when it is symbolic.  Random inputs:
    symbolic dimensions become 1 (with a warning), floats are standard normal,
    integers in [0, 10) (below --int-bound; masks ones, type ids zero), all from
    ``seed``.  Float data for a quantized integer
    input is quantized with the input's scale and zero point.
    """
    feeds, described = {}, []
    arrays = None if not inputs_path else _load_npz(np, inputs_path)
    rng = np.random.default_rng(seed)
    for meta in metas:
        dims = list(meta.dims)
        shown = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
        dtype = meta.dtype
        shown_type = dtype if meta.quantization is None else f"{dtype} (quantized; float accepted)"
        if arrays is not None:
            key = next((k for k in (meta.name, *meta.aliases) if k in arrays), None)
            if key is None and len(metas) == 1 and list(arrays) == ["arr_0"]:
                key = "arr_0"  # numpy.savez(path, array) without a name
            if key is None:
                raise AgentError(
                    "bad_inputs",
                    f"{inputs_path} has no array for input '{meta.name}' (expected {shown} {dtype});"
                    f" it has: {', '.join(sorted(arrays)) or 'nothing'}",
                    f"save it with numpy.savez(path, {meta.name}=array)",
                )
            array = arrays[key]
            if array.ndim == len(dims) + 1:
                array = array[0]
            elif array.ndim == len(dims) and dims:
                if isinstance(dims[0], int) and dims[0] > 0:
                    rows = dims[0]
                else:
                    rows = meta.shape[0] if meta.shape else 1
                array = array[:rows]
            if array.ndim != len(dims) or any(
                isinstance(d, int) and d > 0 and d != got for d, got in zip(dims, array.shape)
            ):
                raise AgentError(
                    "bad_inputs",
                    f"input '{meta.name}' from {inputs_path} has shape {list(array.shape)},"
                    f" the model expects {shown} {shown_type}",
                    "stack the samples on the first axis of an array of the model's input shape",
                )
            if meta.quantization is not None and array.dtype.kind == "f":
                array = _quantize(np, array, dtype, meta.quantization)
            elif array.dtype.name != dtype:
                if array.dtype.kind != np.dtype(dtype).kind and not (
                    array.dtype.kind in "iu" and np.dtype(dtype).kind in "iu"
                ):
                    raise AgentError(
                        "bad_inputs",
                        f"input '{meta.name}' from {inputs_path} is {array.dtype.name},"
                        f" the model expects {shown} {dtype}",
                        f"convert it with array.astype(numpy.{dtype})",
                    )
                array = array.astype(dtype)
            feeds[meta.name] = np.ascontiguousarray(array)
        else:
            sizes = dim_values or {}
            symbolic = [
                d if isinstance(d, str) else f"axis {axis}"
                for axis, d in enumerate(dims)
                if not (isinstance(d, int) and d > 0) and not (isinstance(d, str) and d in sizes)
            ]
            if symbolic:
                report.warn(
                    f"input '{meta.name}' {shown}: symbolic dimension(s) {', '.join(symbolic)}"
                    " set to 1 (--dim NAME=N sets a named one)"
                )
            shape = meta.shape or [
                d if isinstance(d, int) and d > 0 else sizes.get(d, 1) if isinstance(d, str) else 1
                for d in dims
            ]
            kind = np.dtype(dtype).kind
            if meta.quantization is not None:
                feeds[meta.name] = _quantize(
                    np, rng.standard_normal(shape), dtype, meta.quantization
                )
            elif kind == "f":
                feeds[meta.name] = rng.standard_normal(shape).astype(dtype)
            elif kind == "b":
                feeds[meta.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                feeds[meta.name] = random_integers(
                    np, rng, meta.name, shape, dtype, int_bounds or {}
                )
        described.append(
            {
                "name": meta.name,
                "declared": dims,
                "shape": list(feeds[meta.name].shape),
                "dtype": dtype,
            }
        )
    return feeds, described


def run_onnx(args, report: Report, sampler: MemorySampler) -> None:
    size = check_model_file(args.model)
    report.model["size_bytes"] = size

    _log("importing onnxruntime")
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as exc:
        raise AgentError(
            "runtime_missing",
            f"onnxruntime is not importable on this device: {exc}",
            "pip install onnxruntime (on the device; it brings numpy)",
        ) from exc
    except OSError as exc:
        raise AgentError(
            "runtime_broken",
            f"onnxruntime is installed but its native library failed to load: {exc}",
            "reinstall onnxruntime on the device (pip install --force-reinstall onnxruntime)",
        ) from exc
    resolved = report.params["resolved"]
    threads = resolved["threads"]
    report.runtime = {
        "name": "onnxruntime",
        "version": getattr(ort, "__version__", None),
        "providers": None,
        "available_providers": list(ort.get_available_providers()),
        "device": ort.get_device() if hasattr(ort, "get_device") else None,
        "session_options": None,
    }
    providers, tweaks, chosen = choose_ort_providers(
        ort, args.execution_provider, threads, platform.machine() or ""
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = tweaks.get("intra_op_num_threads", threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, ORT_OPT_LEVELS[args.graph_optimization]
    )
    options.log_severity_level = 3
    if "session.intra_op.allow_spinning" in tweaks:
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", tweaks["session.intra_op.allow_spinning"]
        )
    report.runtime["session_options"] = {
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "execution_mode": "sequential",
        "graph_optimization_level": ORT_OPT_LEVELS[args.graph_optimization],
        "intra_op_allow_spinning": tweaks.get("session.intra_op.allow_spinning", "1") == "1",
        "requested_providers": [p if isinstance(p, str) else p[0] for p in providers],
        "provider_options": {p[0]: p[1] for p in providers if not isinstance(p, str)},
    }
    resolved["execution_provider"] = chosen

    _log(f"loading {os.path.basename(args.model)} ({size} bytes) with {chosen}, {threads} threads")
    session = timed_load(
        lambda: ort.InferenceSession(args.model, options, providers=providers),
        lambda exc: _ort_load_failure(args.model, exc),
        report,
        sampler,
    )
    actual = list(session.get_providers())
    report.runtime["providers"] = actual
    if ORT_PROVIDERS[chosen] not in actual:
        report.warn(
            f"{ORT_PROVIDERS[chosen]} was requested but the session runs on {', '.join(actual)}"
        )

    def describe(metas):
        return [{"name": m.name, "type": m.type, "shape": list(m.shape)} for m in metas]

    report.model["inputs"] = describe(session.get_inputs())
    report.model["outputs"] = describe(session.get_outputs())
    # Importing the onnx package to count initializers would inflate the peak RSS
    # being measured; the host's `edgeshrink inspect` reports the parameters.
    report.not_measured("model.n_params", "onnxruntime does not expose initializers")
    if args.command == "eval":
        onnx_quality(np, session, args.quality_reference, report, sampler)
        return
    feeds, described = onnx_input_feed(
        np, session.get_inputs(), args.inputs, args.seed, report, parse_int_bounds(args.int_bound),
        parse_dims(args.dims),
    )
    resolved["inputs"] = described
    resolved["input_source"] = "file" if args.inputs else "random"
    _log(
        f"model: {len(described)} input(s) "
        + ", ".join(f"{d['name']} {d['shape']}" for d in described)
        + f"; load {report.load_s:.3f} s on {', '.join(actual)}"
    )

    run = session.run
    try:
        run(None, feeds)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "bad_alloc" in message or "allocate" in message.lower():
            raise AgentOutOfMemory(
                "oom",
                f"onnxruntime ran out of memory: {message}",
                "use a smaller or quantized model",
            ) from exc
        raise AgentError(
            "run_failed",
            f"onnxruntime could not run the model: {message}",
            "check the inputs' shapes and types (see params.resolved.inputs)",
        ) from exc
    sampler.sample()
    measure_runs(functools.partial(run, None, feeds), args, report, sampler)
    if args.check_output:
        report.output_check = compare_output_runs(np, run(None, feeds), run(None, feeds))
    if args.quality_reference is not None:
        onnx_quality(np, session, args.quality_reference, report, sampler)


# --------------------------------------------------------------------------- TFLite / LiteRT


# (--tflite-runtime name, module to import, distribution), in the order "auto" tries them.
TFLITE_RUNTIMES = (
    ("litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow", "tensorflow", "tensorflow"),
)
TFLITE_MAGIC = b"TFL3"
# Operator versions that are newer than some runtimes, and what they are.
TFLITE_OP_VERSIONS = {
    ("FULLY_CONNECTED", 12): "dynamic-range int8 with per-channel weights",
}


class TfliteRuntime:
    """One imported TFLite runtime: its Interpreter, load_delegate and OpResolverType."""

    def __init__(self, name, dist, interpreter, load_delegate, resolver_types, version) -> None:
        self.name = name
        self.dist = dist
        self.Interpreter = interpreter
        self.load_delegate = load_delegate
        self.OpResolverType = resolver_types
        self.version = version


def _dist_version(dist: str):
    try:
        from importlib import metadata

        return metadata.version(dist)
    except Exception:
        return None


def import_tflite_runtime(wanted: str) -> tuple:
    """(TfliteRuntime, what was tried): ai-edge-litert, then tflite-runtime, then
    tensorflow.lite, or only the one asked for."""
    tried = []
    for name, module_name, dist in TFLITE_RUNTIMES:
        if wanted not in ("auto", name):
            continue
        try:
            if name == "tensorflow":
                import tensorflow as tf

                lite = tf.lite
                runtime = TfliteRuntime(
                    name, dist, lite.Interpreter, lite.experimental.load_delegate,
                    getattr(lite.experimental, "OpResolverType", None), tf.__version__,
                )  # fmt: skip
            else:
                import importlib

                module = importlib.import_module(module_name)
                runtime = TfliteRuntime(
                    name, dist, module.Interpreter, module.load_delegate,
                    getattr(module, "OpResolverType", None),
                    getattr(module, "__version__", None) or _dist_version(dist),
                )  # fmt: skip
            return runtime, tried
        except ImportError as exc:
            tried.append(f"{module_name}: {exc}")
        except OSError as exc:
            raise AgentError(
                "runtime_broken",
                f"{dist} is installed but its native library failed to load: {exc}",
                f"reinstall it on the device (pip install --force-reinstall {dist})",
            ) from exc
    if wanted == "auto":
        message = "no TFLite runtime is importable on this device (" + "; ".join(tried) + ")"
        hint = (
            "pip install ai-edge-litert on the device (Linux x86_64/aarch64, Python 3.10+),"
            " or tflite-runtime with numpy<2 on older systems"
        )
    else:
        dist = next(d for n, _, d in TFLITE_RUNTIMES if n == wanted)
        message = f"{dist} is not importable on this device: {'; '.join(tried)}"
        hint = f"pip install {dist} on the device, or pass --tflite-runtime auto"
    raise AgentError("runtime_missing", message, hint)


def check_tflite_file(path: str, size: int) -> None:
    """The file is a TFLite flatbuffer that is not cut short before its root table."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_MAGIC:
        raise AgentError(
            "model_invalid",
            f"{path} is not a TFLite file (bytes 4-8 are {head[4:8]!r}, not {TFLITE_MAGIC!r})",
            "pass a .tflite model, or the right --format",
        )
    root = struct.unpack_from("<I", head, 0)[0]
    if root + 4 > size:
        raise AgentError(
            "model_truncated",
            f"{path} is a truncated TFLite file ({size} bytes; its root table is at {root})",
            "copy the file to the device again and compare its sha256 with the artifact manifest",
        )


def _exception_chain(exc: BaseException) -> str:
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def _numpy_version():
    module = sys.modules.get("numpy")
    return getattr(module, "__version__", None) if module is not None else None


def _tflite_load_failure(path: str, exc: BaseException, runtime: TfliteRuntime) -> AgentError:
    import re

    chain = _exception_chain(exc)
    lower = chain.lower()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    numpy_version = _numpy_version() or "?"
    label = f"{runtime.dist} {runtime.version or '?'}"
    if (
        "_array_api not found" in lower
        or "numpy.core.multiarray failed to import" in lower
        or (
            runtime.name == "tflite-runtime"
            and isinstance(exc, SystemError)
            and numpy_version.split(".")[0].isdigit()
            and int(numpy_version.split(".")[0]) >= 2
        )
    ):
        return AgentError(
            "numpy_incompatible",
            f"{label} was built against numpy 1.x and cannot create an interpreter with"
            f" numpy {numpy_version} in this environment ({sys.executable})",
            "it needs numpy<2 in the device's environment:"
            f" {sys.executable} -m pip install 'numpy<2';"
            " or install ai-edge-litert, which runs with numpy 2",
        )
    match = re.search(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'", chain)
    if match:
        op, version = match.group(1), int(match.group(2))
        what = TFLITE_OP_VERSIONS.get((op, version))
        described = f"{op} version {version}" + (f" ({what})" if what else "")
        if runtime.name == "litert":
            hint = "upgrade ai-edge-litert on the device (pip install -U ai-edge-litert)"
        else:
            hint = (
                "ai-edge-litert runs it: pip install ai-edge-litert on the device"
                " (the agent tries it first); or shrink the float model again for this runtime"
            )
            if (op, version) == ("FULLY_CONNECTED", 12):
                hint += " with per-tensor weights (edgeshrink shrink --per-tensor)"
        return AgentError(
            "op_version_unsupported",
            f"{label} cannot run {path}: it has no kernel for {described}",
            hint,
        )
    if any(m in lower for m in ("bad_alloc", "failed to allocate", "out of memory")):
        return AgentOutOfMemory(
            "oom",
            f"{label} could not allocate memory for the model: {first}",
            "use a smaller or quantized model for this device",
        )
    if "custom op" in lower or "unresolved custom" in lower:
        return AgentError(
            "unsupported_op",
            f"{label} cannot run {path}: {first}",
            "the model needs a custom operator this runtime does not register",
        )
    if "flatbuffer" in lower or "identifier" in lower or "could not open" in lower:
        return AgentError(
            "model_truncated",
            f"{path} has a TFLite header but {label} cannot parse it: {first}",
            "copy the file to the device again and compare its sha256 with the artifact manifest",
        )
    return AgentError(
        "model_load_failed",
        f"{label} failed to load {path}: {first}",
        "check that the model runs on the host (edgeshrink inspect / eval)",
    )


def _external_delegate_options(items) -> dict:
    options = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AgentError(
                "bad_params",
                f"--external-delegate-option {item!r} is not KEY=VALUE",
                "pass each delegate option as KEY=VALUE",
            )
        options[key] = value
    return options


def _delegation(interpreter) -> dict:
    """How many nodes of the execution plan are delegate kernels, as the interpreter says."""
    try:
        ops = interpreter._get_ops_details()
    except Exception as exc:
        return {"nodes": None, "delegate_kernels": None, "why": str(exc)}
    delegated = [op for op in ops if op.get("op_name") == "DELEGATE"]
    return {"nodes": len(ops) - len(delegated), "delegate_kernels": len(delegated)}


def _tflite_tensor_doc(detail) -> dict:
    quant = detail.get("quantization") or (0.0, 0)
    doc = {
        "name": detail["name"],
        "dtype": getattr(detail["dtype"], "__name__", str(detail["dtype"])),
        "shape": [int(d) for d in detail["shape"]],
        "shape_signature": [int(d) for d in detail.get("shape_signature", detail["shape"])],
        "quantization": None,
    }
    if quant and float(quant[0]) != 0.0:
        doc["quantization"] = {"scale": float(quant[0]), "zero_point": int(quant[1])}
    return doc


def _signature_aliases(interpreter) -> dict:
    """tensor index -> the names the model's signatures give it."""
    aliases = {}
    try:
        signatures = interpreter._get_full_signature_list() or {}
    except Exception:
        return aliases
    for signature in signatures.values():
        for group in ("inputs", "outputs"):
            for name, index in (signature.get(group) or {}).items():
                aliases.setdefault(int(index), []).append(name)
    return aliases


def run_tflite(args, report: Report, sampler: MemorySampler) -> None:
    size = check_model_file(args.model)
    report.model["size_bytes"] = size
    check_tflite_file(args.model, size)
    _log(f"importing a TFLite runtime ({args.tflite_runtime})")
    runtime, tried = import_tflite_runtime(args.tflite_runtime)
    try:
        import numpy as np
    except ImportError as exc:
        raise AgentError(
            "runtime_missing",
            f"numpy is not importable on this device: {exc}",
            f"pip install numpy on the device (with {runtime.dist})",
        ) from exc
    resolved = report.params["resolved"]
    threads = resolved["threads"]
    delegate_options = _external_delegate_options(args.external_delegate_option)
    report.runtime = {
        "name": runtime.dist,
        "version": runtime.version,
        "numpy": np.__version__,
        "not_importable": tried,
        "num_threads": threads,
        "xnnpack": {"requested": args.xnnpack == "on", "default_delegate": args.xnnpack == "on"},
        "external_delegate": None,
        "delegation": None,
    }
    resolved["tflite_runtime"] = runtime.name
    kwargs = {"model_path": args.model, "num_threads": threads}
    if args.xnnpack == "off":
        if runtime.OpResolverType is None:
            raise AgentError(
                "bad_params",
                f"{runtime.dist} {runtime.version} cannot switch XNNPACK off (no OpResolverType)",
                "drop --xnnpack off, or use ai-edge-litert",
            )
        kwargs["experimental_op_resolver_type"] = (
            runtime.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    if args.external_delegate:
        _log(f"loading external delegate {args.external_delegate}")
        report.runtime["external_delegate"] = {
            "path": args.external_delegate,
            "options": delegate_options,
            "loaded": False,
        }
        if not os.path.exists(args.external_delegate):
            raise AgentError(
                "delegate_missing",
                f"external delegate not found on this device: {args.external_delegate}",
                "check the path (the i.MX 8M Plus BSP installs /usr/lib/libvx_delegate.so with"
                " its TensorFlow Lite; the profile may name it for you), or bench with"
                " --external-delegate none to run on the CPU",
            )
        try:
            delegate = runtime.load_delegate(args.external_delegate, delegate_options)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AgentError(
                "delegate_failed",
                f"{runtime.dist} could not load the external delegate"
                f" {args.external_delegate}: {first}",
                "the delegate must be built for this runtime's TFLite version and this CPU;"
                " check its options (--external-delegate-option KEY=VALUE)",
            ) from exc
        report.runtime["external_delegate"]["loaded"] = True
        kwargs["experimental_delegates"] = [delegate]

    _log(
        f"loading {args.model} ({size} bytes) with {runtime.dist} {runtime.version}, {threads} threads"
    )

    def load():
        interpreter = runtime.Interpreter(**kwargs)
        interpreter.allocate_tensors()
        return interpreter

    interpreter = timed_load(
        load, lambda exc: _tflite_load_failure(args.model, exc, runtime), report, sampler
    )
    delegation = _delegation(interpreter)
    report.runtime["delegation"] = delegation
    if args.xnnpack == "on" and not args.external_delegate:
        report.runtime["xnnpack"]["applied"] = bool(delegation.get("delegate_kernels"))

    input_details = interpreter.get_input_details()
    output_details = interpreter.get_output_details()
    report.model["inputs"] = [_tflite_tensor_doc(d) for d in input_details]
    report.model["outputs"] = [_tflite_tensor_doc(d) for d in output_details]
    report.not_measured("model.n_params", "the interpreter does not say which tensors are constant")
    aliases = _signature_aliases(interpreter)
    metas = []
    for detail in input_details:
        signature = [int(d) for d in detail.get("shape_signature", detail["shape"])]
        dims = [d if d > 0 else None for d in signature]
        quant = detail.get("quantization") or (0.0, 0)
        dtype = np.dtype(detail["dtype"]).name
        quantization = None
        if quant and float(quant[0]) != 0.0 and np.dtype(dtype).kind in "iu":
            quantization = (float(quant[0]), int(quant[1]))
        metas.append(
            InputMeta(
                detail["name"], dims, dtype,
                shape=[int(d) for d in detail["shape"]],
                quantization=quantization,
                aliases=[a for a in aliases.get(int(detail["index"]), []) if a != detail["name"]],
            )
        )  # fmt: skip
    if args.command == "eval":
        tflite_quality(np, interpreter, input_details, output_details, aliases,
                       args.quality_reference, report, sampler)  # fmt: skip
        return
    feeds, described = input_feeds(
        np, metas, args.inputs, args.seed, report, parse_int_bounds(args.int_bound)
    )
    resolved["inputs"] = described
    resolved["input_source"] = "file" if args.inputs else "random"
    resolved["timed"] = "invoke (inputs set once, as benchmark_model does)"
    for detail in input_details:
        interpreter.set_tensor(detail["index"], feeds[detail["name"]])
    _log(
        f"model: {len(described)} input(s) "
        + ", ".join(f"{d['name']} {d['shape']}" for d in described)
        + f"; load {report.load_s:.3f} s with {runtime.dist}"
    )
    invoke = interpreter.invoke
    try:
        invoke()
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "allocate" in message.lower() or "bad_alloc" in message:
            raise AgentOutOfMemory(
                "oom", f"{runtime.dist} ran out of memory: {message}", "use a smaller model"
            ) from exc
        raise AgentError(
            "run_failed",
            f"{runtime.dist} could not run the model: {message}",
            "check the inputs' shapes and types (see params.resolved.inputs)",
        ) from exc
    sampler.sample()
    measure_runs(invoke, args, report, sampler)
    if args.check_output:

        def outputs():
            invoke()
            return [interpreter.get_tensor(d["index"]).copy() for d in output_details]

        report.output_check = compare_output_runs(np, outputs(), outputs())
    if args.quality_reference is not None:
        tflite_quality(np, interpreter, input_details, output_details, aliases,
                       args.quality_reference, report, sampler)  # fmt: skip


RUNNERS = {
    "gguf": run_gguf,
    "onnx": run_onnx,
    "tflite": run_tflite,
}


# --------------------------------------------------------------------------- quality on the device

# The kind of reference each format's model is scored against (device_quality.py).
REFERENCE_KINDS = {"gguf": "llm-text", "onnx": "outputs", "tflite": "outputs"}
QUALITY_MODULE = "device_quality.py"


def load_device_quality():
    """device_quality.py, which the host pushes beside this file (edgeshrink/agent/ holds
    both when the agent runs from the package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), QUALITY_MODULE)
    if not os.path.isfile(path):
        raise AgentError(
            "agent_incomplete",
            f"{QUALITY_MODULE} is not beside the agent ({path}): quality cannot be measured",
            "run the agent through edgeshrink (eval with a target, check), which pushes both files",
        )
    spec = importlib.util.spec_from_file_location("edgeshrink_device_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class QualityReference:
    """A reference read and checked on this device: the module that reads it, numpy, its
    header and arrays, and what the document says about it."""

    def __init__(self, dq, np, path: str, header: dict, arrays: dict) -> None:
        self.dq = dq
        self.np = np
        self.header = header
        self.arrays = arrays
        with open(path, "rb") as handle:
            digest = hashlib.sha256()
            for block in iter(functools.partial(handle.read, 1 << 20), b""):
                digest.update(block)
        base = header.get("base") if isinstance(header.get("base"), dict) else {}
        self.meta = {
            "path": os.path.abspath(path),
            "sha256": digest.hexdigest(),
            "bytes": os.path.getsize(path),
            "base": {"name": base.get("name"), "sha256": base.get("sha256")},
        }

    def failure(self, exc) -> AgentError:
        return AgentError(exc.kind, exc.message, exc.hint)


def open_reference(path: str, model_format: str) -> QualityReference:
    """The reference at ``path``, checked before any model is loaded."""
    dq = load_device_quality()
    try:
        import numpy as np
    except ImportError as exc:
        raise AgentError(
            "runtime_missing",
            f"numpy is not importable on this device: {exc}",
            "pip install numpy on the device (llama-cpp-python and onnxruntime bring it)",
        ) from exc
    try:
        header, arrays = dq.read_reference(np, path)
    except dq.ReferenceError as exc:
        raise AgentError(exc.kind, exc.message, exc.hint) from exc
    expected = REFERENCE_KINDS.get(model_format)
    if header["kind"] != expected:
        raise AgentError(
            "reference_mismatch",
            f"{os.path.basename(path)} is a reference of kind {header['kind']}; a"
            f" {model_format} model is scored against one of kind {expected}",
            "make the reference from this model's base (edgeshrink eval with a target does)",
        )
    _log(f"reference: {header['kind']}, {os.path.getsize(path)} bytes, made from"
         f" {(header.get('base') or {}).get('name')}")  # fmt: skip
    return QualityReference(dq, np, path, header, arrays)


def check_reference_vocab(ref: QualityReference, lc, model, n_vocab: int, model_path: str) -> None:
    """The candidate's vocabulary is the one the reference's tokens were made with."""
    tokenizer = ref.header.get("tokenizer") if isinstance(ref.header.get("tokenizer"), dict) else {}
    fingerprint = ref.dq.vocab_fingerprint(ref.dq.llama_vocab_texts(lc, model, n_vocab))
    if tokenizer.get("n_vocab") != n_vocab or tokenizer.get("sha256") != fingerprint:
        raise AgentError(
            "reference_mismatch",
            f"the reference was made for {ref.meta['base']['name']} ({tokenizer.get('n_vocab')}"
            f" tokens, vocabulary {str(tokenizer.get('sha256'))[:12]}), not for"
            f" {os.path.basename(model_path)} ({n_vocab} tokens, vocabulary {fingerprint[:12]})",
            "score it against the model it was shrunk from (the same vocabulary)",
        )


def _finish_quality(ref: QualityReference, figures: dict, started: float, report: Report) -> None:
    report.quality = dict(figures)
    report.quality["seconds"] = _round(time.perf_counter() - started)
    report.quality["reference"] = ref.meta
    _log(f"quality measured in {report.quality['seconds']} s")


def gguf_quality(lc, ctypes, model, n_vocab, llama_log, ref, args, report, sampler) -> None:
    """The candidate over the reference's chunks of tokens, llama-perplexity's way (the
    second half of each chunk scored), against the base's log-probabilities."""
    np, header = ref.np, ref.header
    try:
        scores = ref.dq.LlmScores(np, header, ref.arrays)
    except ref.dq.ReferenceError as exc:
        raise ref.failure(exc) from exc
    n_ctx, n_chunks = int(header["n_ctx"]), int(header["n_chunks"])
    first = n_ctx // 2
    trained = int(lc.llama_model_n_ctx_train(model)) if hasattr(lc, "llama_model_n_ctx_train") else 0
    if trained and n_ctx > trained:
        report.warn(f"the reference's chunks of {n_ctx} tokens are longer than the {trained}"
                    " this model was trained on")  # fmt: skip
    started = time.perf_counter()
    ctx = _new_context(
        lc, model, report, llama_log, n_ctx, n_ctx, min(n_ctx, 512),
        what=f"an evaluation context ({n_ctx} tokens)",
        hint=f"this device cannot hold {n_ctx} tokens of context for this model: evaluate with"
        " shorter chunks (the text is cut into more of them)",
        bad_hint="evaluate in shorter chunks",
    )  # fmt: skip
    report.params["resolved"]["eval_n_ctx"] = n_ctx
    clear_memory = _memory_clearer(lc, ctx)
    batch = lc.llama_batch_init(n_ctx, 0, 1)
    tokens, bos = ref.arrays["tokens"], header.get("bos")
    float_pointer = ctypes.POINTER(ctypes.c_float)
    step = max(1, n_chunks // 4)
    _log(f"quality: {n_chunks} chunks of {n_ctx} tokens, {header['n_scored']} scored")
    try:
        for i in range(n_chunks):
            _check_signal()
            chunk = [int(t) for t in tokens[i * n_ctx : (i + 1) * n_ctx]]
            if bos is not None:
                chunk[0] = int(bos)
            fill_batch(batch, chunk, first)
            clear_memory()
            rc = lc.llama_decode(ctx, batch)
            if rc:
                details = llama_log.problems()
                if llama_log.says_oom():
                    raise AgentOutOfMemory(
                        "oom", f"evaluating a chunk of {n_ctx} tokens ran out of memory: {details}",
                        "evaluate in shorter chunks, or use a smaller model",
                    )  # fmt: skip
                raise AgentError(
                    "decode_failed",
                    f"llama_decode of evaluation chunk {i + 1} returned {rc}: {details or 'no message'}",
                    "see the llama.cpp messages on stderr",
                )
            lc.llama_synchronize(ctx)
            pointer = ctypes.cast(lc.llama_get_logits(ctx), float_pointer)
            logits = np.ctypeslib.as_array(pointer, shape=(n_ctx - first, n_vocab))
            scores.add(logits[:-1])
            sampler.sample()
            if i % step == 0 or i == n_chunks - 1:
                _log(f"quality: chunk {i + 1}/{n_chunks}")
        figures = scores.summary()
    except ref.dq.ReferenceError as exc:
        raise ref.failure(exc) from exc
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
    _finish_quality(ref, figures, started, report)


def _run_failure(runtime: str, exc: BaseException) -> AgentError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "bad_alloc" in message or "allocate" in message.lower():
        return AgentOutOfMemory(
            "oom", f"{runtime} ran out of memory during the evaluation: {message}",
            "evaluate on fewer samples, or use a smaller model",
        )  # fmt: skip
    return AgentError(
        "run_failed",
        f"{runtime} could not run the model on the reference's inputs: {message}",
        "check that the reference was made from this model's base",
    )


def outputs_quality(ref: QualityReference, run_feed, runtime: str, report, sampler) -> None:
    """Agreement with the base's outputs (and accuracy) over every feed of the reference."""
    started = time.perf_counter()

    def guarded(feed):
        _check_signal()
        try:
            produced = run_feed(feed)
        except (AgentError, MemoryError, Interrupted):
            raise
        except Exception as exc:
            raise _run_failure(runtime, exc) from exc
        sampler.sample()
        return produced

    try:
        figures = ref.dq.outputs_quality(ref.np, ref.header, ref.arrays, guarded)
    except ref.dq.ReferenceError as exc:
        raise ref.failure(exc) from exc
    _finish_quality(ref, figures, started, report)


def _reference_inputs(ref: QualityReference, available: dict) -> dict:
    """{reference input name: the model's input} (``available``: every name an input goes by)."""
    wanted = ref.header.get("inputs") or []
    matched = {}
    for name in wanted:
        found = next((v for names, v in available if name in names), None)
        if found is None:
            raise AgentError(
                "reference_mismatch",
                f"the model has no input {name!r}; the reference's base ran on"
                f" {', '.join(map(str, wanted))}",
                "make the reference from this model's base",
            )
        matched[name] = found
    return matched


def onnx_quality(np, session, ref: QualityReference, report, sampler) -> None:
    dtypes = {m.name: ORT_DTYPES.get(m.type) for m in session.get_inputs()}
    matched = _reference_inputs(ref, [({m.name}, m.name) for m in session.get_inputs()])
    names = [o.name for o in session.get_outputs()]

    def run_feed(feed):
        arrays = {}
        for name, array in feed.items():
            dtype = dtypes[matched[name]]
            if dtype and array.dtype.name != dtype:
                array = array.astype(dtype)
            arrays[matched[name]] = np.ascontiguousarray(array)
        return dict(zip(names, session.run(names, arrays)))

    outputs_quality(ref, run_feed, "onnxruntime", report, sampler)


def tflite_quality(np, interpreter, input_details, output_details, aliases, ref, report, sampler):
    """Inputs quantized from float data and integer outputs dequantized with the tensors' own
    scale and zero point, feeds of more rows run as batches of the interpreter's shape (as
    the host's TfliteRunner runs them)."""

    def described(details):
        found = []
        for detail in details:
            names = {detail["name"], *aliases.get(int(detail["index"]), [])}
            quant = detail.get("quantization") or (0.0, 0)
            dtype = np.dtype(detail["dtype"])
            scale = float(quant[0]) if quant else 0.0
            q = (scale, int(quant[1])) if scale != 0.0 and dtype.kind in "iu" else None
            found.append((names, (detail, q)))
        return found

    matched = _reference_inputs(ref, described(input_details))
    outputs = {}
    for name in ref.header.get("outputs") or []:
        hit = next((v for names, v in described(output_details) if name in names), None)
        if hit is not None:
            outputs[name] = hit

    def invoke(arrays):
        for name, array in arrays.items():
            detail, _q = matched[name]
            interpreter.set_tensor(detail["index"], array)
        interpreter.invoke()
        got = {}
        for name, (detail, q) in outputs.items():
            value = interpreter.get_tensor(detail["index"])
            if q is not None:
                value = ((np.asarray(value, np.float64) - q[1]) * q[0]).astype(np.float32)
            got[name] = np.array(value)
        return got

    def run_feed(feed):
        arrays = {}
        for name, array in feed.items():
            detail, q = matched[name]
            dtype = np.dtype(detail["dtype"]).name
            if q is not None and array.dtype.kind == "f":
                array = _quantize(np, array, dtype, q)
            arrays[name] = np.ascontiguousarray(array.astype(dtype, copy=False))
        shapes = {n: tuple(int(d) for d in matched[n][0]["shape"]) for n in arrays}
        if all(tuple(a.shape) == shapes[n] for n, a in arrays.items()):
            return invoke(arrays)
        rows = {a.shape[0] for a in arrays.values() if a.ndim}
        step = max((shapes[n][0] for n in arrays if shapes[n]), default=1)
        if len(rows) != 1 or step < 1 or next(iter(rows)) % step:
            raise AgentError(
                "reference_mismatch",
                "the reference's inputs "
                + ", ".join(f"{n} {list(a.shape)}" for n, a in arrays.items())
                + " do not fit the interpreter's "
                + ", ".join(f"{list(shapes[n])}" for n in arrays),
                "make the reference from this model's base",
            )
        parts = [invoke({n: a[lo : lo + step] for n, a in arrays.items()})
                 for lo in range(0, next(iter(rows)), step)]  # fmt: skip
        return {n: np.concatenate([p[n] for p in parts], axis=0) for n in parts[0]}

    outputs_quality(ref, run_feed, "the TFLite runtime", report, sampler)


# --------------------------------------------------------------------------- commands


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BadArguments(message, self.format_usage().strip())

    def exit(self, status=0, message=None):
        if message:
            _log(message.strip())
        raise BadArguments(
            "help requested" if status == 0 else (message or "bad arguments"),
            self.format_usage().strip(),
        )


def _checked(convert, noun: str, ok, requirement: str, name: str):
    """An argparse type: ``convert`` the text, then require ``ok(value)``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = name
    return parse


_positive_int = _checked(int, "an integer", lambda v: v >= 1, "at least 1", "positive_int")
_non_negative_int = _checked(int, "an integer", lambda v: v >= 0, "0 or more", "non_negative_int")
_positive_float = _checked(
    float, "a number", lambda v: v > 0 and math.isfinite(v), "a positive number", "positive_float"
)
_non_negative_float = _checked(
    float, "a number", lambda v: v >= 0 and math.isfinite(v), "0 or more", "non_negative_float"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgeshrink_agent.py", description="edgeshrink on-device benchmark agent")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    bench = commands.add_parser("bench", help="load a model and measure it")
    _add_run_arguments(bench)
    bench.add_argument(
        "--reference",
        default=None,
        help="after measuring, score the model against this reference (edgeshrink.reference/1)",
    )
    evaluate = commands.add_parser(
        "eval", help="load a model and measure its quality against a reference, not its speed"
    )
    _add_run_arguments(evaluate)
    evaluate.add_argument(
        "--reference", required=True, help="the reference made on the host (edgeshrink.reference/1)"
    )
    commands.add_parser("info", help="device facts and available runtimes")
    return parser


def _add_run_arguments(bench) -> None:
    """The options of a run that loads a model: bench and eval share them."""
    bench.add_argument("--model", required=True, help="model file on this device")
    bench.add_argument(
        "--format", default=None, help="gguf, onnx or tflite (default: from the file extension)"
    )
    bench.add_argument("--prompt-tokens", type=_positive_int, default=512)
    bench.add_argument("--gen-tokens", type=_positive_int, default=128)
    bench.add_argument("--reps", type=_positive_int, default=5)
    bench.add_argument("--warmup", type=_non_negative_int, default=1)
    bench.add_argument(
        "--threads", type=_positive_int, default=None, help="default: os.cpu_count()"
    )
    bench.add_argument("--flash-attn", choices=("on", "off"), default="on")
    bench.add_argument(
        "--n-ctx",
        type=_positive_int,
        default=None,
        help="default: prompt + gen tokens, as llama-bench",
    )
    bench.add_argument("--batch-size", type=_positive_int, default=2048)
    bench.add_argument("--ubatch-size", type=_positive_int, default=512)
    bench.add_argument("--no-mmap", action="store_true")
    bench.add_argument("--seed", type=int, default=1234)
    # Models that are not LLMs (ONNX, TFLite): TFLite benchmark_model's defaults.
    bench.add_argument(
        "--runs", type=_positive_int, default=50, help="at least this many timed runs"
    )
    bench.add_argument(
        "--min-seconds",
        type=_non_negative_float,
        default=1.0,
        help="and keep running until this many seconds have passed",
    )
    bench.add_argument(
        "--inputs", default=None, help=".npz of inputs (default: random, declared shapes)"
    )
    bench.add_argument(
        "--int-bound",
        action="append",
        default=[],
        metavar="NAME=N",
        help="random integers for input NAME stay below N (e.g. the rows of the embedding"
        " table it indexes; the host reads them from the graph)",
    )
    bench.add_argument(
        "--dim",
        dest="dims",
        action="append",
        default=[],
        metavar="NAME=N",
        help="random inputs: the symbolic dimension NAME is N (e.g. sequence=128; default 1)",
    )
    bench.add_argument(
        "--execution-provider",
        choices=("auto", "cpu", "xnnpack", "cuda", "tensorrt"),
        default="auto",
        help="onnxruntime provider (auto: CUDA if present, XNNPACK on ARM if present, else CPU)",
    )
    bench.add_argument(
        "--graph-optimization",
        choices=("disable", "basic", "extended", "all"),
        default="all",
        help="onnxruntime graph optimisation level",
    )
    bench.add_argument(
        "--tflite-runtime",
        choices=("auto", "litert", "tflite-runtime", "tensorflow"),
        default="auto",
        help="TFLite runtime (auto: ai-edge-litert, then tflite-runtime, then tensorflow.lite)",
    )
    bench.add_argument(
        "--xnnpack",
        choices=("on", "off"),
        default="on",
        help="TFLite: apply the default XNNPACK CPU delegate",
    )
    bench.add_argument(
        "--external-delegate",
        default=None,
        help="TFLite: path of an external delegate library (e.g. /usr/lib/libvx_delegate.so)",
    )
    bench.add_argument(
        "--external-delegate-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="TFLite: an option for the external delegate (repeatable)",
    )
    bench.add_argument(
        "--check-output",
        action="store_true",
        help="after measuring, run twice more on fixed inputs: outputs finite and identical?",
    )
    bench.add_argument(
        "--deadline-s",
        type=_positive_float,
        default=None,
        help="stop repeating when the next repetition would end after S seconds",
    )


def _supported_formats() -> str:
    return ", ".join(sorted(RUNNERS))


def _resolve_format(args) -> str:
    if args.format:
        return args.format.strip().lower().lstrip(".")
    extension = os.path.splitext(args.model)[1].lower()
    if extension in FORMAT_BY_EXTENSION:
        return FORMAT_BY_EXTENSION[extension]
    raise AgentError(
        "unknown_format",
        f"cannot tell the format of {args.model} from its extension {extension!r}",
        f"pass --format (supported: {_supported_formats()})",
    )


LLM_ONLY_PARAMS = (
    "prompt_tokens",
    "gen_tokens",
    "reps",
    "flash_attn",
    "n_ctx",
    "batch_size",
    "ubatch_size",
    "no_mmap",
)
NON_LLM_PARAMS = ("runs", "min_seconds", "inputs", "dims")
ONNX_ONLY_PARAMS = ("execution_provider", "graph_optimization")
TFLITE_ONLY_PARAMS = ("tflite_runtime", "xnnpack", "external_delegate", "external_delegate_options")
SPEED_ONLY_PARAMS = (
    "prompt_tokens", "gen_tokens", "reps", "warmup", "n_ctx", "batch_size", "ubatch_size",
    "deadline_s", "runs", "min_seconds", "inputs", "dims",
)  # fmt: skip
RUN_COMMANDS = ("bench", "eval")
# The parameters each format's runner does not read (left out of params).
UNUSED_PARAMS = {
    "gguf": NON_LLM_PARAMS + ONNX_ONLY_PARAMS + TFLITE_ONLY_PARAMS,
    "onnx": LLM_ONLY_PARAMS + TFLITE_ONLY_PARAMS,
    "tflite": LLM_ONLY_PARAMS + ONNX_ONLY_PARAMS,
}


def usable_cores() -> int:
    """Cores this process may run on (affinity and cpusets), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def command_bench(args, report: Report, sampler: MemorySampler) -> None:
    cores = usable_cores()
    threads = args.threads or cores
    if threads > cores:
        # More threads than cores only measures contention (and the host plans
        # threads from a profile that may describe a bigger board).
        report.warn(f"--threads {threads} is more than the {cores} usable cores: using {cores}")
        threads = cores
    # llama-bench's n_ctx: prompt + generation (llama.cpp pads it to its own granularity).
    n_ctx = args.n_ctx if args.n_ctx is not None else args.prompt_tokens + args.gen_tokens
    report.params = {
        "command": args.command,
        "model": args.model,
        "format": args.format,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "reps": args.reps,
        "warmup": args.warmup,
        "threads": args.threads,
        "flash_attn": args.flash_attn,
        "n_ctx": args.n_ctx,
        "batch_size": args.batch_size,
        "ubatch_size": args.ubatch_size,
        "no_mmap": args.no_mmap,
        "seed": args.seed,
        "deadline_s": args.deadline_s,
        "runs": args.runs,
        "min_seconds": args.min_seconds,
        "inputs": args.inputs,
        "dims": args.dims,
        "execution_provider": args.execution_provider,
        "graph_optimization": args.graph_optimization,
        "tflite_runtime": args.tflite_runtime,
        "xnnpack": args.xnnpack,
        "external_delegate": args.external_delegate,
        "external_delegate_options": args.external_delegate_option,
        "reference": args.reference,
        "resolved": {
            "format": None,
            "threads": threads,
            "n_ctx": n_ctx,
            "flash_attn": args.flash_attn == "on",
        },
    }
    report.model = {
        "path": os.path.abspath(args.model),
        "format": None,
        "size_bytes": None,
        "n_params": None,
        "n_vocab": None,
        "desc": None,
    }
    report.device = collect_device(report)
    model_format = _resolve_format(args)
    report.params["resolved"]["format"] = model_format
    report.model["format"] = model_format
    # Record only the parameters that the format's runner reads.
    unused = UNUSED_PARAMS.get(model_format, LLM_ONLY_PARAMS + TFLITE_ONLY_PARAMS)
    for key in unused:
        report.params.pop(key, None)
    if model_format != "gguf":
        for key in ("n_ctx", "flash_attn"):
            report.params["resolved"].pop(key, None)
    runner = RUNNERS.get(model_format)
    if runner is None:
        raise AgentError(
            "unsupported_format",
            f"agent {AGENT_VERSION} cannot measure format {model_format!r}",
            f"supported formats: {_supported_formats()}",
        )
    args.quality_reference = None
    if args.reference:
        args.quality_reference = open_reference(args.reference, model_format)
    if args.command == "eval":
        for key in SPEED_ONLY_PARAMS:
            report.params.pop(key, None)
        report.params["resolved"].pop("n_ctx", None)
        report.not_measured("speed", "eval measures quality only (bench measures speed)")
    elif model_format == "gguf" and args.prompt_tokens + args.gen_tokens > n_ctx:
        raise AgentError(
            "bad_params",
            f"prompt {args.prompt_tokens} + gen {args.gen_tokens} tokens"
            f" do not fit in n_ctx {n_ctx}",
            f"raise --n-ctx to at least {args.prompt_tokens + args.gen_tokens}"
            " or lower --prompt-tokens/--gen-tokens",
        )
    runner(args, report, sampler)


def _finish_bench(report: Report, sampler: MemorySampler, args) -> None:
    """Fill the parts of the document that summarise whatever was measured."""
    sampler.stop()
    try:
        report.memory = sampler.result(report, report.rss_after_load_mb)
    except Exception as exc:
        report.not_measured("memory", str(exc))
    partial = report.llm_partial
    if partial is not None:
        pp, tg, ttft = partial
        report.llm = {
            "pp_tok_s": _stats(pp),
            "tg_tok_s": _stats(tg),
            "ttft_ms": _stats(ttft),
            "n_prompt": args.prompt_tokens,
            "n_gen": args.gen_tokens,
            "reps": min(len(pp), len(tg), len(ttft)),
        }
    if report.latency_partial is not None:
        samples = list(report.latency_partial)
        report.latency_ms = _latency_stats(samples)
        if samples and sum(samples) > 0:
            report.throughput_per_s = len(samples) / sum(samples)
    if report.device is not None:
        try:
            _changing_facts(report, "after", report.device)
        except Exception as exc:
            report.not_measured("device.after", str(exc))


def command_info(report: Report) -> dict:
    device = collect_device(report)
    runtimes = probe_runtimes()
    formats = {}
    runtime_for_format = {
        "gguf": ("llama_cpp",),
        "onnx": ("onnxruntime",),
        "tflite": ("ai_edge_litert", "tflite_runtime"),
    }
    for name, modules in runtime_for_format.items():
        formats[name] = {
            "runner": name in RUNNERS,
            "runtime_available": any(runtimes[m]["available"] for m in modules),
        }
    return {
        "schema": SCHEMA,
        "agent_version": AGENT_VERSION,
        "status": "ok",
        "error": None,
        "started_at": report.started_at,
        "duration_s": _round(time.perf_counter() - report.t_start),
        "device": device,
        "runtimes": runtimes,
        "formats": formats,
        "unmeasured": report.unmeasured,
        "warnings": report.warnings,
    }


def _bad_args_document(report: Report, exc: BadArguments) -> dict:
    document = report.bench_document(
        "error", _error_dict("bad_arguments", exc.message, exc.usage or "see --help on stderr")
    )
    return document


def main(argv=None) -> int:
    _protect_stdout()
    _install_signal_handlers()
    report = Report()
    sampler = None
    args = None
    document = None
    exit_code = 1
    try:
        try:
            args = build_parser().parse_args(argv)
        except BadArguments as exc:
            _log(f"bad arguments: {exc.message}")
            _emit(_bad_args_document(report, exc))
            return EXIT_BAD_ARGS
        if args.command is None:
            exc = BadArguments(
                "a command is required: bench, eval or info", build_parser().format_usage().strip()
            )
            _emit(_bad_args_document(report, exc))
            return EXIT_BAD_ARGS
        if args.command == "info":
            document = command_info(report)
            _emit(document)
            return 0
        sampler = MemorySampler()
        sampler.start()
        command_bench(args, report, sampler)
        _finish_bench(report, sampler, args)
        document = report.bench_document("ok", None)
        exit_code = 0
    except Interrupted as exc:
        # SIGTERM is how the host enforces its timeout; SIGINT is a person.
        if exc.signum == getattr(signal, "SIGTERM", None):
            status = "timeout"
            error = _error_dict(
                "timeout",
                "terminated by SIGTERM while measuring",
                "raise the host timeout or lower --reps/--prompt-tokens/--gen-tokens"
                " (--runs/--min-seconds for ONNX and TFLite)",
            )
        else:
            status = "error"
            error = _error_dict(
                "interrupted", f"interrupted by signal {exc.signum}", "run it again"
            )
        document = _finish_safely(report, sampler, args, status, error)
        exit_code = EXIT_CODES[status]
    except AgentError as exc:
        _log(f"{exc.kind}: {exc.message}")
        document = _finish_safely(
            report, sampler, args, exc.status, _error_dict(exc.kind, exc.message, exc.hint)
        )
        exit_code = EXIT_CODES[exc.status]
    except MemoryError as exc:
        document = _finish_safely(
            report,
            sampler,
            args,
            "oom",
            _error_dict(
                "oom", f"Python ran out of memory: {exc!r}", "use a smaller model or quantization"
            ),
        )
        exit_code = EXIT_CODES["oom"]
    except BaseException as exc:  # anything else still ends as one JSON document
        _log(f"unexpected {type(exc).__name__}: {exc}")
        document = _finish_safely(
            report,
            sampler,
            args,
            "error",
            _error_dict(
                "internal",
                f"{type(exc).__name__}: {exc}",
                "report this as an edgeshrink agent bug, with the stderr log",
            ),
        )
        exit_code = EXIT_CODES["error"]
    _emit(document)
    return exit_code


def _finish_safely(report, sampler, args, status, error) -> dict:
    _Process.emitting = True
    if sampler is not None and args is not None and getattr(args, "command", None) in RUN_COMMANDS:
        try:
            _finish_bench(report, sampler, args)
        except BaseException as exc:
            report.warnings.append(f"could not summarise the partial run: {exc}")
    return report.bench_document(status, error)


if __name__ == "__main__":
    code = main()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    # Skip interpreter teardown: the result is out, and native destructors
    # (llama.cpp threads, mmaps) have nothing left to report.
    os._exit(code)
