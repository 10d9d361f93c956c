"""The interface every transport implements, and what its calls return."""

from __future__ import annotations

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


class Transport(Protocol):
    target: Target

    @property
    def work_dir(self) -> str: ...

    def push_file(self, local: Path, remote_rel: str, sha256: str) -> PushResult: ...

    def push_artifact(self, local: Path, sha256: str) -> PushResult: ...

    def run(
        self, argv: list[str], *, timeout_s: float, max_output_bytes: int = 8 << 20
    ) -> CommandResult: ...

    def close(self) -> None: ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc: object) -> None: ...
