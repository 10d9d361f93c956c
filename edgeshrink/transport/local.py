"""This machine as a device: a separate work dir, commands in their own process group."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from edgeshrink.errors import TransportError
from edgeshrink.targets import Target
from edgeshrink.transport.base import CommandResult, PushResult
from edgeshrink.util import atomic_path, sha256_file

# After SIGTERM the agent writes what it measured so far; give it this long.
TERM_GRACE_S = 5.0


class LocalTransport:
    def __init__(self, target: Target) -> None:
        self.target = target
        self._work_dir = Path(target.work_dir).expanduser()

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
        size = local.stat().st_size
        if dest.exists() and dest.stat().st_size == size and sha256_file(dest) == sha256:
            return PushResult(local, str(dest), sha256, size, 0, True, time.perf_counter() - start)
        try:
            with atomic_path(dest) as tmp:
                shutil.copyfile(local, tmp)
                got = sha256_file(tmp)
                if got != sha256:
                    raise TransportError(
                        f"{dest}: copy has sha256 {got[:12]}…, expected {sha256[:12]}…",
                        hint="the source changed during the copy, or the disk is failing",
                    )
        except OSError as exc:
            raise TransportError(f"cannot copy {local} to {dest}: {exc.strerror or exc}") from exc
        return PushResult(local, str(dest), sha256, size, size, False, time.perf_counter() - start)

    def push_artifact(self, local: Path, sha256: str) -> PushResult:
        # Content-addressed: the directory name is the verified hash, and a file
        # only gets its final name after verification, so a present file of the
        # right size is the same bytes.
        start = time.perf_counter()
        rel = f"models/{sha256}/{local.name}"
        dest = self._resolve(rel)
        size = local.stat().st_size
        if dest.exists() and dest.stat().st_size == size:
            return PushResult(local, str(dest), sha256, size, 0, True, time.perf_counter() - start)
        return self.push_file(local, rel, sha256)

    def run(
        self, argv: list[str], *, timeout_s: float, max_output_bytes: int = 8 << 20
    ) -> CommandResult:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self._work_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(
                f"cannot start {argv[0]}: {exc.strerror or exc}",
                hint="check the target's python path",
            ) from exc
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            out, err = self._stop(proc)
        except BaseException:
            self._stop(proc)
            raise
        rc = proc.returncode
        sig = -rc if rc is not None and rc < 0 else None
        truncated = len(out) > max_output_bytes
        return CommandResult(
            argv=tuple(argv),
            returncode=rc,
            stdout=out[:max_output_bytes].decode("utf-8", "replace"),
            stderr=err[-max_output_bytes:].decode("utf-8", "replace"),
            seconds=time.perf_counter() - start,
            timed_out=timed_out,
            signal=sig,
            stdout_truncated=truncated,
        )

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
        """SIGTERM the whole process group, then SIGKILL what is left after a grace period."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.communicate(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.communicate()
