"""Helpers for the device-lab tests: the rig module, cpu cgroups, killing a device, files.

(A module of its own, not conftest.py: tests/, tests/ssh and tests/lab each have a conftest.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CPU_CGROUP_PREFIX = "edgeshrink-lab-"
DEVICE_SHARES = 8192  # x8 the default 1024 of every other process here


# --------------------------------------------------------------------------- cgroup v1 cpu


def cpu_cgroup_root() -> Path | None:
    """The mounted cgroup v1 cpu hierarchy, when it is there and writable."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, options = left.split(), right.split()
        if len(options) >= 3 and options[0] == "cgroup" and "cpu" in options[2].split(","):
            root = Path(fields[4])
            if (root / "cpu.cfs_quota_us").exists() and os.access(root, os.W_OK):
                return root
    return None


class CpuGroup:
    """A cgroup v1 cpu group holding one device's sshd (and so its sessions and agents)."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.path = root / name
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.shares").write_text(str(DEVICE_SHARES))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def limit(self, fraction: float | None, period_us: int = 5000) -> None:
        """At most ``fraction`` of one core (CFS quota); None removes the limit."""
        if fraction is None:
            (self.path / "cpu.cfs_quota_us").write_text("-1")
            return
        (self.path / "cpu.cfs_period_us").write_text(str(period_us))
        (self.path / "cpu.cfs_quota_us").write_text(str(max(1000, int(period_us * fraction))))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (self.root / "cgroup.procs").write_text(pid)
            self.path.rmdir()


def kill_device(rig) -> None:
    """The device goes away: its sshd and every session and agent under it die at once."""
    import psutil

    try:
        top = psutil.Process(rig.sshd_pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


# --------------------------------------------------------------------------- files


def device_toml(name: str, rig, *, tags: tuple[str, ...] = (), thermal: str | None = None) -> str:
    lines = [
        "[[device]]",
        f"name = {json.dumps(name)}",
        f"host = {json.dumps(rig.host)}",
        f"port = {rig.port}",
        f"user = {json.dumps(rig.user)}",
        f"key = {json.dumps(str(rig.client_key))}",
        f"known_hosts = {json.dumps(str(rig.known_hosts))}",
        f"python = {json.dumps(rig.python)}",
        f"work_dir = {json.dumps(str(rig.work_dir))}",
        f"tags = {json.dumps(list(tags))}",
    ]
    if thermal:
        lines.append(f"thermal = {json.dumps([thermal])}")
    return "\n".join(lines) + "\n\n"


SHORT_JOB = """
[[job]]
name = "{name}"
model = "{model}"
quant = "Q8_0"
[job.bench]
prompt_tokens = 32
gen_tokens = 8
reps = 2
threads = 1
"""


def short_jobs(model: Path | str, names: tuple[str, ...] = ("first", "second")) -> str:
    """A suite's [[job]] tables: one short benchmark of ``model`` (pp32 + tg8, 2 reps,
    one thread) per name."""
    return "".join(SHORT_JOB.replace("{name}", n).replace("{model}", str(model)) for n in names)


def cli_env(home: Path, db: Path | str) -> dict[str, str]:
    """Environment for a child `edgeshrink` with every user dir under ``home``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("EDGESHRINK_", "XDG_", "SSH_AUTH"))
    }
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"),
               XDG_DATA_HOME=str(home / "data"), EDGESHRINK_DB=str(db))  # fmt: skip
    return env
