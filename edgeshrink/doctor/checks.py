"""What a device really is and has, checked step by step.

``diagnose`` walks the path a benchmark takes and reports every step as a
:class:`Check` (ok / warn / error / skip), so a failure says where it happened
and everything that could still be learned is still reported:

    connection -> host key -> authentication -> work dir -> python -> agent
    -> runtimes, cpu, ram, disk, thermal -> profile match

It works for ``local`` as for SSH targets.  Devices that hide parts of /proc
and /sys (Termux on Android) give "skip" checks that say what could not be
read, not errors.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeshrink.agent import DEVICE_FACTS_PATH
from edgeshrink.bench import install_agent
from edgeshrink.errors import EdgeshrinkError, TransportError
from edgeshrink.profiles import HardwareProfile
from edgeshrink.targets import Target
from edgeshrink.transport import open_transport
from edgeshrink.transport.ssh_commands import PYTHON_HINT
from edgeshrink.util import human_bytes

MIN_PYTHON = (3, 9)
STATUSES = ("ok", "warn", "error", "skip")
RAM_TOLERANCE = 0.10
RUNTIME_MODULES = {
    "gguf": ("llama_cpp",),
    "onnx": ("onnxruntime",),
    "tflite": ("ai_edge_litert", "tflite_runtime"),
}
RUNTIME_PACKAGES = {
    "gguf": ("llama-cpp-python",),
    "onnx": ("onnxruntime",),
    "tflite": ("ai-edge-litert",),
}
# Features worth naming when a profile expects them and the device lacks them.
KEY_FEATURES = (
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
    "fphp",
    "avx2",
    "avx512f",
    "avx512_vnni",
    "f16c",
    "fma",
)
_CORE_RE = re.compile(
    r"(Cortex-[AX]\d+\w*|Neoverse-[NV]\d+|Kryo[- ]?\w+|Oryon|Carmel|Denver)", re.IGNORECASE
)

Say = Callable[[str], None]

# Run by the device's Python (a real file, so linters see it): what the transport's
# helper does not tell.
FACTS_SCRIPT = DEVICE_FACTS_PATH.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | error | skip
    summary: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "hint": self.hint,
            "details": self.details,
        }


@dataclass(frozen=True)
class DoctorReport:
    target: Target
    profile_id: str | None
    checks: tuple[Check, ...]
    facts: dict[str, Any] | None  # the facts script's document
    info: dict[str, Any] | None  # the agent's `info` document
    seconds: float

    @property
    def ok(self) -> bool:
        return not any(c.status == "error" for c in self.checks)

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": {
                k: v for k, v in self.target.to_dict().items() if k != "accept_new_host_key"
            },
            "profile": self.profile_id,
            "ok": self.ok,
            "errors": self.count("error"),
            "warnings": self.count("warn"),
            "seconds": round(self.seconds, 3),
            "checks": [c.to_dict() for c in self.checks],
            "facts": self.facts,
            "device": (self.info or {}).get("device"),
            "runtimes": (self.info or {}).get("runtimes"),
            "unmeasured": (self.info or {}).get("unmeasured"),
        }


class _Checks:
    def __init__(self) -> None:
        self.items: list[Check] = []

    def add(
        self, name: str, status: str, summary: str, hint: str | None = None, **details: Any
    ) -> Check:
        check = Check(name, status, summary, hint, details)
        self.items.append(check)
        return check

    def skip_rest(self, names: tuple[str, ...], why: str) -> None:
        done = {c.name for c in self.items}
        for name in names:
            if name not in done:
                self.add(name, "skip", f"not checked: {why}")


ALL_CHECKS = (
    "connection",
    "host key",
    "authentication",
    "work dir",
    "python",
    "agent",
    "runtimes",
    "cpu",
    "ram",
    "disk",
    "thermal",
    "profile",
)


def _python_version(facts: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(p) for p in facts.get("python") or (0,))


def run_json(
    transport: Any, argv: list[str], *, timeout_s: float
) -> tuple[dict[str, Any] | None, Any]:
    result = transport.run(argv, timeout_s=timeout_s)
    lines = result.stdout.strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        doc = None
    return (doc if isinstance(doc, dict) else None), result


def stderr_tail(result: Any, lines: int = 3) -> str:
    tail = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return " | ".join(tail[-lines:]) or f"exit status {result.returncode}"


def _connect(transport: Any, target: Target, checks: _Checks, say: Say) -> bool:
    """Connection, host key and authentication checks; True when connected."""
    if target.kind == "local":
        checks.add("connection", "ok", "this machine (no network)")
        checks.add("host key", "skip", "not needed for the local target")
        checks.add("authentication", "skip", "not needed for the local target")
        return True
    say(f"connecting to {target.name} ({transport.endpoint.describe()})")
    start = time.perf_counter()
    try:
        transport.connect()
    except TransportError as exc:
        trace = transport.trace
        reached = (
            f"{transport.endpoint.describe()} reached, SSH handshake done (cipher {trace.cipher})"
        )
        if trace.stage == "handshake":
            checks.add("connection", "ok", reached)
        elif trace.stage == "host key":
            checks.add("connection", "ok", reached)
            checks.add("host key", "ok", "the host key is known (or was accepted)")
        name = {"handshake": "host key", "host key": "authentication"}.get(
            trace.stage, "connection"
        )
        checks.add(name, "error", exc.message, exc.hint)
        return False
    trace = transport.trace
    endpoint = transport.endpoint
    via = f", through {trace.jump_hops} jump host(s) ({endpoint.jump})" if trace.jump_hops else ""
    checks.add(
        "connection",
        "ok",
        f"{endpoint.describe()} in {time.perf_counter() - start:.2f} s, cipher {trace.cipher}{via}",
        endpoint=endpoint.describe(),
        cipher=trace.cipher,
    )
    host_key = transport.host_key
    checks.add(
        "host key",
        "ok",
        host_key.describe(),
        fingerprint=host_key.fingerprint,
        key_type=host_key.key_type,
        file=host_key.file,
        line=host_key.line,
        verified=host_key.status,
    )
    checks.add("authentication", "ok", f"as {endpoint.user} with {trace.auth}")
    return True


def _python_checks(
    transport: Any, target: Target, checks: _Checks, say: Say
) -> dict[str, Any] | None:
    say(f"checking the device's Python ({target.python})")
    try:
        facts, result = run_json(
            transport, [target.python, "-c", FACTS_SCRIPT, target.work_dir], timeout_s=60
        )
    except TransportError as exc:
        checks.add("work dir", "error", exc.message, exc.hint)
        return None
    if facts is None:
        why = stderr_tail(result)
        checks.add("work dir", "skip", "not checked: the device's Python did not run")
        checks.add(
            "python",
            "error",
            f"cannot run the device's Python {target.python!r}: {why}",
            PYTHON_HINT,
        )
        return None
    if facts.get("writable"):
        free = facts.get("free_bytes")
        checks.add(
            "work dir",
            "ok",
            f"{facts['work_dir']} is writable"
            + (f" ({human_bytes(free)} free)" if free is not None else ""),
            path=facts["work_dir"],
        )
    else:
        checks.add(
            "work dir",
            "error",
            f"cannot write to {facts.get('work_dir')}: {facts.get('writable_why')}",
            "give the target a work_dir the SSH user can write (`targets add ... --work-dir`)",
        )
    version = _python_version(facts)
    text = ".".join(str(p) for p in version)
    where = facts.get("executable") or target.python
    venv = " (a venv)" if facts.get("in_venv") else ""
    if version < MIN_PYTHON:
        checks.add(
            "python",
            "error",
            f"Python {text} at {where}: the agent needs {'.'.join(map(str, MIN_PYTHON))} or newer",
            "install a newer Python on the device (Debian/Raspberry Pi OS bookworm ships 3.11; "
            "Termux: pkg install python) and point the target's python at it",
            version=text,
        )
    else:
        checks.add(
            "python", "ok", f"Python {text} at {where}{venv}", version=text, executable=where
        )
    return facts


def _agent_info(transport: Any, target: Target, checks: _Checks, say: Say) -> dict[str, Any] | None:
    say("running the agent's info command on the device")
    try:
        agent = install_agent(transport)
        info, result = run_json(transport, [target.python, agent, "info"], timeout_s=120)
    except EdgeshrinkError as exc:
        checks.add("agent", "error", exc.message, exc.hint)
        return None
    if info is None or info.get("status") != "ok":
        checks.add(
            "agent",
            "error",
            f"the agent's info command failed: {stderr_tail(result)}",
            "run it by hand on the device: "
            + " ".join(shlex.quote(a) for a in [target.python, agent, "info"]),
        )
        return None
    checks.add("agent", "ok", f"agent {info.get('agent_version')} at {agent}", path=agent)
    return info


def _runtime_checks(
    info: dict[str, Any], target: Target, profile: HardwareProfile | None, checks: _Checks
) -> None:
    runtimes = info.get("runtimes") or {}
    present = {name: entry for name, entry in runtimes.items() if entry.get("available")}
    described = ", ".join(
        f"{entry.get('distribution', name)} {entry.get('version') or '?'}"
        for name, entry in present.items()
        if name not in ("numpy", "psutil")
    )
    formats = profile.preferred_formats if profile else ("gguf",)
    usable = [f for f in formats if any(m in present for m in RUNTIME_MODULES.get(f, ()))]
    details = {name: entry.get("version") for name, entry in present.items()}
    wanted = formats[0] if formats else "gguf"
    package = RUNTIME_PACKAGES.get(wanted, ("llama-cpp-python",))[0]
    how = (
        f"edgeshrink doctor {shlex.quote(target.name)} --install-runtime {wanted} "
        f"(a venv in the work dir), or on the device: {target.python} -m pip install {package}"
    )
    if usable and usable[0] == wanted:
        checks.add("runtimes", "ok", described or "none", **details)
    elif usable:
        checks.add(
            "runtimes",
            "warn",
            f"{described}: no runtime for {wanted}, the profile's first format (usable: {', '.join(usable)})",
            how,
            **details,
        )
    else:
        checks.add(
            "runtimes",
            "error",
            f"no runtime for {', '.join(formats)} in {target.python} (found: {described or 'none'})",
            how,
            **details,
        )


def _fact_checks(info: dict[str, Any], facts: dict[str, Any] | None, checks: _Checks) -> None:
    device = info.get("device") or {}
    unmeasured = {u.get("what"): u.get("why") for u in info.get("unmeasured") or []}
    features = device.get("cpu_features") or []
    key = [f for f in KEY_FEATURES if f in features]
    if device.get("cpu") or features:
        checks.add(
            "cpu",
            "ok",
            f"{device.get('cpu') or '?'}, {device.get('cores') or '?'} cores, {device.get('arch') or '?'}"
            + (f"; {' '.join(key)}" if key else ""),
            model=device.get("cpu"),
            cores=device.get("cores"),
            arch=device.get("arch"),
            board=device.get("board"),
        )
    else:
        why = unmeasured.get("device.cpu") or unmeasured.get("device.cpu_features") or "unknown"
        checks.add(
            "cpu",
            "skip",
            f"{device.get('cores') or '?'} cores, {device.get('arch')}; model not readable: {why}",
        )
    ram, available = device.get("ram_mb"), device.get("ram_available_mb")
    limit = (facts or {}).get("cgroup_memory_limit")
    if ram:
        text = f"{ram:,.0f} MB" + (f", {available:,.0f} MB available" if available else "")
        if limit:
            text += f"; cgroup memory limit {limit / 2**20:,.0f} MB"
        checks.add(
            "ram",
            "ok",
            text,
            ram_mb=ram,
            available_mb=available,
            cgroup_limit_mb=limit and limit / 2**20,
        )
    else:
        checks.add("ram", "skip", f"not readable: {unmeasured.get('device.ram_mb', 'unknown')}")
    free, total = (facts or {}).get("free_bytes"), (facts or {}).get("total_bytes")
    if free is None:
        checks.add("disk", "skip", "free space in the work dir not readable")
    else:
        status = "warn" if free < 1 << 30 else "ok"
        checks.add(
            "disk",
            status,
            f"{human_bytes(free)} free of {human_bytes(total or 0)} in {(facts or {}).get('work_dir')}",
            "free space on the device: artifacts need room" if status == "warn" else None,
            free_bytes=free,
        )
    temps = (device.get("temps_c") or {}).get("before") or {}
    throttled = (device.get("throttled") or {}).get("before") if device.get("throttled") else None
    if temps or throttled:
        text = ", ".join(f"{k} {v:.0f}°C" for k, v in temps.items()) or "temperature not readable"
        status = "ok"
        hint = None
        if throttled and throttled not in ("0x0", "0"):
            status = "warn"
            text += f"; throttled={throttled}"
            hint = "the device is or was throttled (vcgencmd get_throttled): cool it, check the power supply"
        checks.add("thermal", status, text, hint, temps_c=temps, throttled=throttled)
    else:
        why = unmeasured.get("device.temps_c") or "no thermal zone"
        checks.add("thermal", "skip", f"not readable here: {why}")


def _normal_arch(arch: str | None) -> str | None:
    if arch is None:
        return None
    return {"arm64": "aarch64", "amd64": "x86_64", "armv8l": "armv7l"}.get(
        arch.lower(), arch.lower()
    )


def compare_profile(
    profile: HardwareProfile, device: dict[str, Any], *, memory_limit_mb: float | None = None
) -> list[str]:
    """How the device differs from what the profile says (empty when it matches)."""
    problems: list[str] = []
    arch = _normal_arch(device.get("arch"))
    if arch and arch != profile.arch:
        problems.append(f"the profile says {profile.arch}, the device is {arch}")
    cores = device.get("cores")
    if cores and cores != profile.cpu.cores:
        problems.append(f"the profile says {profile.cpu.cores} cores, the device has {cores}")
    ram = device.get("ram_mb")
    if memory_limit_mb:
        ram = min(ram or memory_limit_mb, memory_limit_mb)
    if ram and abs(ram - profile.ram_mb) > RAM_TOLERANCE * profile.ram_mb:
        problems.append(f"the profile says {profile.ram_mb:,} MB RAM, the device has {ram:,.0f} MB")
    want_cores = {m.lower() for m in _CORE_RE.findall(profile.cpu.model)}
    have_cores = {m.lower() for m in _CORE_RE.findall(device.get("cpu") or "")}
    if want_cores and have_cores and want_cores != have_cores:
        problems.append(
            f"the profile's CPU is {profile.cpu.model}, the device reports {device.get('cpu')}"
        )
    features = set(device.get("cpu_features") or [])
    if features and (not arch or arch == profile.arch):
        missing = [f for f in profile.cpu.features if f not in features and f in KEY_FEATURES]
        if missing:
            problems.append(
                f"the device lacks CPU features the profile expects: {', '.join(missing)}"
            )
    return problems


def _profile_check(
    profile: HardwareProfile | None,
    info: dict[str, Any],
    facts: dict[str, Any] | None,
    checks: _Checks,
) -> None:
    if profile is None:
        checks.add(
            "profile", "skip", "the target has no hardware profile", "pass --profile ID to compare"
        )
        return
    limit = (facts or {}).get("cgroup_memory_limit")
    problems = compare_profile(
        profile, info.get("device") or {}, memory_limit_mb=limit / 2**20 if limit else None
    )
    if problems:
        checks.add(
            "profile",
            "warn",
            f"{profile.id} does not match: " + "; ".join(problems),
            "plans and budgets follow the profile: pick the profile of this device (`edgeshrink profiles list`)",
            problems=problems,
        )
    else:
        checks.add("profile", "ok", f"matches {profile.id} ({profile.name})")


def diagnose(
    target: Target,
    *,
    profile: HardwareProfile | None = None,
    progress: Say | None = None,
) -> DoctorReport:
    """Check everything a benchmark on ``target`` needs; never raises for device problems."""
    say = progress or (lambda _m: None)
    start = time.perf_counter()
    checks = _Checks()
    facts = info = None
    with open_transport(target) as transport:
        if _connect(transport, target, checks, say):
            facts = _python_checks(transport, target, checks, say)
            if facts is not None and _python_version(facts) >= MIN_PYTHON:
                info = _agent_info(transport, target, checks, say)
    if info is not None:
        _runtime_checks(info, target, profile, checks)
        _fact_checks(info, facts, checks)
        _profile_check(profile, info, facts, checks)
    checks.skip_rest(ALL_CHECKS, "an earlier step failed")
    order = {name: i for i, name in enumerate(ALL_CHECKS)}
    ordered = tuple(sorted(checks.items, key=lambda c: order.get(c.name, len(order))))
    return DoctorReport(
        target,
        profile.id if profile else target.profile,
        ordered,
        facts,
        info,
        time.perf_counter() - start,
    )
