"""This machine as a device: a separate work dir, commands in their own process group."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgeshrink.agent import device_helper
from edgeshrink.errors import TransportError
from edgeshrink.targets import Target
from edgeshrink.transport.base import (
    DEVICE_HELPER_PATH,
    DEVICE_LOCK_NAME,
    DEVICE_WAIT_S,
    EXIT_MARKER,
    CommandResult,
    PushResult,
    device_busy_message,
)
from edgeshrink.util import atomic_path, sha256_file

# After SIGTERM the agent writes what it measured so far; give it this long.
TERM_GRACE_S = 5.0


class LocalTransport:
    def __init__(self, target: Target, on_stderr: Callable[[str], None] | None = None) -> None:
        self.target = target
        self._work_dir = Path(target.work_dir).expanduser()
        self.on_stderr = on_stderr  # each stderr line of a run, as it comes (like SSH's)

    @property
    def work_dir(self) -> str:
        return str(self._work_dir)

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to close: kept for the Transport interface."""

    def _resolve(self, remote_rel: str) -> Path:
        path = (self._work_dir / remote_rel).resolve()
        if self._work_dir.resolve() not in path.parents:
            raise TransportError(f"{remote_rel}: outside the device work dir {self._work_dir}")
        return path

    def push_file(self, local: Path, remote_rel: str, sha256: str) -> PushResult:
        start = time.perf_counter()
        dest = self._resolve(remote_rel)
        try:
            size = local.stat().st_size
        except OSError as exc:
            raise TransportError(f"cannot read {local}: {exc.strerror}") from exc
        try:
            with _destination_lock(dest):
                # "Already there" means the hash was checked (cached by size, mtime, ctime, inode).
                if (
                    device_helper.verified_sha256(str(dest)) == sha256
                    and dest.stat().st_size == size
                ):
                    return PushResult(
                        local, str(dest), sha256, size, 0, True, time.perf_counter() - start
                    )
                with atomic_path(dest) as tmp:
                    shutil.copyfile(local, tmp)
                    got = sha256_file(tmp)
                    if got != sha256:
                        raise TransportError(
                            f"{dest}: copy has sha256 {got[:12]}…, expected {sha256[:12]}…",
                            hint="the source changed during the copy, or the disk is failing",
                        )
                device_helper.write_hash_cache(str(dest), got)
        except OSError as exc:
            if isinstance(exc, TransportError):
                raise
            raise TransportError(
                f"cannot copy {local} to {dest}: {exc.strerror or exc}",
                hint="free space in the local work dir, or make it writable",
            ) from exc
        return PushResult(local, str(dest), sha256, size, size, False, time.perf_counter() - start)

    def push_artifact(self, local: Path, sha256: str) -> PushResult:
        return self.push_file(local, f"models/{sha256}/{local.name}", sha256)

    def run(
        self,
        argv: list[str],
        *,
        timeout_s: float,
        max_output_bytes: int = 8 << 20,
        device_wait_s: float = DEVICE_WAIT_S,
    ) -> CommandResult:
        """Run ``argv`` through the device launcher, like the SSH transport does.

        The launcher holds the device lock, runs the command in its own process
        group and ends that group when its stdin (this process) goes away.
        """
        try:
            self._work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransportError(
                f"cannot create the local work dir {self._work_dir}: {exc.strerror or exc}",
                hint="set EDGESHRINK_LOCAL_WORKDIR to a writable directory",
            ) from exc
        lock = str(self._work_dir / DEVICE_LOCK_NAME)
        launcher = [sys.executable, str(DEVICE_HELPER_PATH), "launch", lock, f"{device_wait_s:g}"]
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [*launcher, "--", *argv],
                cwd=self._work_dir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(
                f"cannot start {sys.executable}: {exc.strerror or exc}",
                hint="check this machine's Python",
            ) from exc
        assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
        out, err = bytearray(), bytearray()
        truncated = [False]

        def collect_stdout() -> None:
            for block in iter(lambda: proc.stdout.read1(65536), b""):
                room = max_output_bytes - len(out)
                if len(block) > room:
                    truncated[0] = True
                out.extend(block[: max(room, 0)])

        on_line = self.on_stderr

        def collect_stderr() -> None:
            pending = b""
            for block in iter(lambda: proc.stderr.read1(65536), b""):
                err.extend(block)
                del err[: max(0, len(err) - 2 * max_output_bytes)]
                if on_line is not None:
                    *lines, pending = (pending + block).split(b"\n")
                    pending = pending[-65536:]
                    for line in lines:
                        on_line(line.decode("utf-8", "replace").rstrip("\r"))

        readers = [
            threading.Thread(target=f, daemon=True) for f in (collect_stdout, collect_stderr)
        ]
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            self._wait_started(proc, err, device_wait_s)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._stop(proc)
        except BaseException:
            self._stop(proc)
            raise
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        # Bounded: only a launcher killed on its own leaves writers of these pipes behind.
        until = time.monotonic() + 2.0
        for reader in readers:
            reader.join(timeout=max(0.0, until - time.monotonic()))
        doc, stderr = split_exit_marker(bytes(err))
        if doc.get("status") == "busy":
            message, hint = device_busy_message("local", doc, device_wait_s)
            raise TransportError(message, hint=hint)
        if doc.get("status") == "lock_failed":
            raise TransportError(
                f"cannot write the device lock {doc.get('path')}: {doc.get('error')}",
                hint="set EDGESHRINK_LOCAL_WORKDIR to a writable directory",
            )
        rc = proc.returncode
        sig = doc.get("signal")
        if doc.get("status") == "exited":
            rc = -int(sig) if sig is not None else doc.get("returncode")
        else:
            sig = -rc if rc is not None and rc < 0 else None
        return CommandResult(
            argv=tuple(argv),
            returncode=rc,
            stdout=bytes(out).decode("utf-8", "replace"),
            stderr=stderr[-max_output_bytes:].decode("utf-8", "replace"),
            seconds=time.perf_counter() - start,
            timed_out=timed_out,
            signal=sig,
            stdout_truncated=truncated[0],
            oom_kill=doc.get("oom_kill"),
        )

    @staticmethod
    def _wait_started(proc: subprocess.Popen[bytes], err: bytearray, wait_s: float) -> None:
        """Wait while the launcher waits for the device lock (the timeout starts after)."""
        until = time.monotonic() + wait_s + 5
        while PID_MARKER not in err and proc.poll() is None and time.monotonic() < until:
            time.sleep(0.01)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        """TERM the command's group, then KILL; return once the launcher has seen it gone."""
        for command in (b"TERM\n", b"KILL\n"):
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write(command)
                proc.stdin.flush()
            try:
                proc.wait(timeout=TERM_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


PID_MARKER = b"@@edgeshrink-pid="


def split_exit_marker(stderr: bytes) -> tuple[dict, bytes]:
    """The launcher's exit document and the command's own stderr (markers removed)."""
    doc: dict = {}
    kept = []
    for line in stderr.splitlines(keepends=True):
        at = line.find(EXIT_MARKER)
        if at >= 0:
            with contextlib.suppress(ValueError):
                doc = json.loads(line[at + len(EXIT_MARKER) :])
            line = line[:at]
        at = line.find(PID_MARKER)
        if at >= 0:
            line = line[:at]
        kept.append(line)
    return doc, b"".join(kept)


@contextlib.contextmanager
def _destination_lock(dest: Path):
    """One writer per destination: the receiver's own lock file beside it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest.parent / f".{dest.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
