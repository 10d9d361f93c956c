"""The interface every transport implements, and what its calls return."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeshrink.targets import Target


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None when killed by us on timeout
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    signal: int | None = None  # the signal that ended the process, if any
    stdout_truncated: bool = False
    # Whether the kernel's OOM killer acted while the command ran (the kernel's or
    # the cgroup's oom_kill counter rose); None when no counter was readable.
    oom_kill: bool | None = None


@dataclass(frozen=True)
class PushResult:
    """What was asked (local file, sha256) and what was done (remote path, bytes sent)."""

    local: Path
    remote: str
    sha256: str
    size_bytes: int
    bytes_sent: int
    skipped: bool
    seconds: float
    via: str = "copy"  # how the bytes went: copy (local), paramiko or openssh


class Transport(Protocol):
    target: Target

    @property
    def work_dir(self) -> str: ...

    def push_file(self, local: Path, remote_rel: str, sha256: str) -> PushResult: ...

    def push_artifact(self, local: Path, sha256: str) -> PushResult: ...

    def run(
        self,
        argv: list[str],
        *,
        timeout_s: float,
        max_output_bytes: int = 8 << 20,
        device_wait_s: float = ...,
    ) -> CommandResult:
        """Run ``argv`` on the device under the launcher: own process group, the device
        lock held (waiting ``device_wait_s`` for an earlier command of ours), ended with
        the session; returns once the group is gone."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc: object) -> None: ...


# The device-side helper (push receiver and command launcher): a real file,
# standard library only, that both transports run on the device.
DEVICE_HELPER_PATH = Path(__file__).resolve().parent.parent / "agent" / "device_helper.py"


def helper_argv(python: str, args: list[str]) -> list[str]:
    """``python -c`` running edgeshrink/agent/device_helper.py with ``args``, for
    ``transport.run`` on any transport. The file travels base64-encoded inside the
    command line: no quote or backslash in it can meet a login shell's rules."""
    encoded = base64.b64encode(DEVICE_HELPER_PATH.read_bytes()).decode("ascii")
    code = f'import base64;exec(compile(base64.b64decode("{encoded}"),"device_helper.py","exec"))'
    return [python, "-c", code, *args]


# The per-device lock the launcher holds while a command runs (in the work dir).
DEVICE_LOCK_NAME = ".edgeshrink-device.lock"
# How long a command waits for an earlier one of ours on the same device.
DEVICE_WAIT_S = 60.0
EXIT_MARKER = b"@@edgeshrink-exit="
BUSY_EXIT = 75


def device_busy_message(label: str, doc: dict, waited_s: float) -> tuple[str, str]:
    """(message, hint) for a device whose lock another of our commands holds."""
    holder = str(doc.get("holder") or "").split(" ", 1)
    pid = holder[0] or "?"
    what = f" ({holder[1]})" if len(holder) > 1 and holder[1] else ""
    return (
        f"{label}: the device is busy: edgeshrink process {pid}{what} still holds "
        f"{doc.get('lock')} after {waited_s:.0f} s",
        f"wait for it to finish, or stop it on the device (kill -TERM -{pid}: its process "
        "group), then run again",
    )
