"""A device over SSH (paramiko): verified host keys, resumable verified pushes, remote runs.

Connection
    Opens lazily (on the first push, run or ``work_dir``) and closes with the
    context manager.  ~/.ssh/config is applied (HostName, User, Port,
    IdentityFile, ProxyJump, ProxyCommand); keys come from the target, the
    IdentityFile entries, the ssh-agent and ~/.ssh/id_*; passwords are never
    asked for.  Jump hosts are reached through ``direct-tcpip`` channels, each
    hop with its own verified host key.  TCP_NODELAY is set (paramiko does not,
    and small writes then stall on Nagle's algorithm), and the AES-GCM ciphers
    are preferred: with AES instructions on both ends they cost the least CPU.

Host keys
    Checked against the user's ~/.ssh/known_hosts and edgeshrink's own file
    (the target's ``known_hosts``, default ``<config dir>/edgeshrink/known_hosts``).
    An unknown host is refused with its SHA256 fingerprint unless the command
    was given --accept-new-host-key, which stores it in edgeshrink's file (like
    OpenSSH's StrictHostKeyChecking=accept-new).  A changed key is always
    refused, naming the file and line that hold the old one.

Push
    One exec channel runs edgeshrink/agent/device_helper.py (``receive``) with
    the device's Python.  Before it opens any other file it takes the lock
    ``.<name>.lock`` beside the destination, so concurrent pushes of one file
    queue up there; under the lock it says what it needs: nothing (the final
    name already holds those bytes: its sha256 was checked, through a cache
    keyed by size, mtime, ctime and inode, so an unchanged re-push costs no
    re-hash), no room, or the bytes from an offset (it resumes ``.<name>.partial``
    and re-hashes the part already there).  It hashes while it writes and only
    when size and sha256 match renames the file into place (POSIX rename), so a
    final name never holds unverified bytes.  A receiver that stops reading (a
    full disk) says why, and that is the error, not "connection lost".
    ``push_artifact`` is content addressed: ``<work dir>/models/<sha256>/<name>``.

Run
    The command runs in the work dir under the device helper's ``launch``:
    every argument quoted with shlex.quote, in its own process group, with the
    per-device lock ``<work dir>/.edgeshrink-device.lock`` held (a second
    command waits for it, then fails naming the holder's pid).  The session's
    stdin is the launcher's lifeline: on timeout or Ctrl-C the host writes
    TERM, then KILL after a grace period; when the host or the connection dies,
    stdin reaches EOF and the launcher ends the group itself.  Results come back
    only once the group is gone, with whether the kernel's OOM killer acted.  A
    process killed by a signal comes back as ``signal=N, returncode=-N``.  On a
    device without that Python the command runs directly (``setsid`` where it
    exists), so that doctor can say what is missing.

The parts: ssh_hostkeys.py (known_hosts), ssh_connect.py (TCP, handshake,
authentication, jump hosts), ssh_push.py (the paramiko push), ssh_run.py (the
launcher session), ssh_commands.py (command lines for the login shell) and
openssh.py (big pushes); :class:`SSHTransport` here ties them together.
"""

from __future__ import annotations

import posixpath
import re
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import paramiko

from edgeshrink.errors import TransportError
from edgeshrink.targets import SshEndpoint, Target, resolve_ssh
from edgeshrink.transport import ssh_push, ssh_run
from edgeshrink.transport.base import DEVICE_WAIT_S, CommandResult, PushResult
from edgeshrink.transport.ssh_commands import PYTHON_HINT, helper_command, posix_sh
from edgeshrink.transport.ssh_connect import (
    CONNECT_TIMEOUT_S,
    ConnectTrace,
    SshConnection,
    close_quietly,
    connect,
)
from edgeshrink.transport.ssh_hostkeys import HostKeyCheck, fingerprint_sha256, verify_host_key
from edgeshrink.transport.ssh_push import SEND_STALL_S
from edgeshrink.transport.ssh_run import TERM_GRACE_S
from edgeshrink.util import human_bytes

__all__ = [
    "CONNECT_TIMEOUT_S",
    "PYTHON_HINT",
    "SEND_STALL_S",
    "TERM_GRACE_S",
    "ConnectTrace",
    "HostKeyCheck",
    "PushProgress",
    "SSHTransport",
    "connect",
    "fingerprint_sha256",
    "helper_command",
    "verify_host_key",
]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class PushProgress:
    """Where a push stands; handed to the progress callback about once per MiB."""

    local: Path
    remote: str
    done_bytes: int  # bytes of the file that are on the device now (resumed part included)
    total_bytes: int
    sent_bytes: int  # sent by this push
    seconds: float  # since this push started sending

    @property
    def mb_per_s(self) -> float:
        return self.sent_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


ProgressCallback = Callable[[PushProgress], None]
LineCallback = Callable[[str], None]

# --------------------------------------------------------------------------- the transport


class SSHTransport:
    """One device over SSH; see the module docstring."""

    def __init__(
        self,
        target: Target,
        *,
        progress: ProgressCallback | None = None,
        on_stderr: LineCallback | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        durable: bool = True,
    ) -> None:
        self.target = target
        self.progress = progress
        self.on_stderr = on_stderr
        self.connect_timeout_s = connect_timeout_s
        self.durable = durable
        self._endpoint: SshEndpoint | None = None
        self._conn: SshConnection | None = None
        self._work_dir: str | None = None
        self.trace = ConnectTrace()
        self.push_via_note: str | None = None  # why a big push did not go through OpenSSH

    # -- connection

    @property
    def endpoint(self) -> SshEndpoint:
        if self._endpoint is None:
            self._endpoint = resolve_ssh(self.target)
        return self._endpoint

    @property
    def label(self) -> str:
        return f"{self.target.name} ({self.endpoint.describe()})"

    def connect(self) -> paramiko.Transport:
        if self._conn is not None and self._conn.transport.is_active():
            return self._conn.transport
        self.close()
        self.trace = ConnectTrace()
        self._conn = connect(
            self.endpoint,
            accept_new=self.target.accept_new_host_key,
            timeout=self.connect_timeout_s,
            trace=self.trace,
        )
        return self._conn.transport

    @property
    def host_key(self) -> HostKeyCheck:
        self.connect()
        assert self._conn is not None
        return self._conn.host_key

    @property
    def server_key(self) -> paramiko.PKey:
        """The device's host key, as verified (or accepted) when connecting."""
        return self.connect().get_remote_server_key()

    @property
    def cipher(self) -> str:
        return self.connect().local_cipher

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_session(self) -> paramiko.Channel:
        """A new session channel on the connection (connecting first if need be)."""
        transport = self.connect()
        try:
            return transport.open_session(timeout=self.connect_timeout_s)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(f"{self.label}: cannot open an SSH session: {exc}") from exc

    def exec_command(
        self, command: str, *, timeout_s: float, stdin: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run a short command (no process-group handling); returns (status, stdout, stderr)."""
        chan = self.open_session()
        try:
            chan.settimeout(timeout_s)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout_s
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if (
                    chan.exit_status_ready()
                    and not chan.recv_ready()
                    and not chan.recv_stderr_ready()
                ):
                    break
                if time.monotonic() > deadline:
                    raise TransportError(
                        f"{self.label}: `{command[:80]}` did not finish within {timeout_s:.0f} s"
                    )
                if chan.closed and not chan.exit_status_ready():
                    raise TransportError(
                        f"{self.label}: the connection closed while running a command"
                    )
                select.select([chan], [], [], 0.1)
            return chan.recv_exit_status(), bytes(out), bytes(err)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if isinstance(exc, TransportError):
                raise
            raise TransportError(
                f"{self.label}: connection lost: {exc or type(exc).__name__}"
            ) from exc
        finally:
            close_quietly(chan)

    # -- work dir

    @property
    def work_dir(self) -> str:
        if self._work_dir is None:
            raw = self.target.work_dir
            if raw.startswith("/"):
                self._work_dir = posixpath.normpath(raw)
            else:
                rc, out, err = self.exec_command(posix_sh('printf %s "$HOME"'), timeout_s=30)
                home = out.decode("utf-8", "replace").strip()
                if rc != 0 or not home.startswith("/"):
                    raise TransportError(
                        f"{self.label}: cannot find the home directory to resolve work dir {raw!r}: "
                        f"{err.decode('utf-8', 'replace').strip() or 'HOME is not set'}",
                        hint="give the target an absolute work_dir (`targets add ... --work-dir /path`)",
                    )
                rest = raw[1:].lstrip("/") if raw.startswith("~") else raw
                self._work_dir = posixpath.normpath(posixpath.join(home, rest))
        return self._work_dir

    def remote_path(self, remote_rel: str) -> str:
        rel = posixpath.normpath(remote_rel)
        if rel.startswith("/") or rel == ".." or rel.startswith("../") or rel == ".":
            raise TransportError(f"{remote_rel}: outside the device work dir {self.work_dir}")
        return posixpath.join(self.work_dir, rel)

    # -- the device's Python helper

    def helper_failed(self, rc: int, err: bytes, doing: str) -> TransportError:
        """The error for a helper that ended without a JSON verdict."""
        message = err.decode("utf-8", "replace").strip().splitlines()
        tail = " | ".join(message[-3:]) or f"exit status {rc}"
        if rc < 0:
            # No exit status: the session ended under the helper (sshd or the network died).
            return TransportError(
                f"{self.label}: the connection closed while {doing}: {tail}",
                hint="check that the device and its SSH server still run, then try again",
            )
        if rc in (126, 127):
            return TransportError(
                f"{self.label}: cannot start the device's Python {self.target.python!r}: {tail}",
                hint=PYTHON_HINT,
            )
        if re.search(r"SyntaxError|ImportError|ModuleNotFoundError", tail):
            return TransportError(
                f"{self.label}: the device's Python {self.target.python!r} cannot run "
                f"edgeshrink's helper: {tail}",
                hint=PYTHON_HINT,
            )
        return TransportError(
            f"{self.label}: edgeshrink's helper failed on the device while {doing} "
            f"(exit status {rc}): {tail}",
            hint="run again with EDGESHRINK_DEBUG=1; check the device's disk and work dir",
        )

    # -- push

    def push_file(self, local: Path, remote_rel: str, sha256: str) -> PushResult:
        return ssh_push.push(self, Path(local), self.remote_path(remote_rel), sha256)

    def push_artifact(self, local: Path, sha256: str) -> PushResult:
        if not _SHA256_RE.match(sha256):
            raise TransportError(f"{sha256!r} is not a sha256 hex digest")
        local = Path(local)
        return ssh_push.push(self, local, self.remote_path(f"models/{sha256}/{local.name}"), sha256)

    def send_offset(self, decision: dict[str, Any], local: Path, remote: str, size: int) -> int:
        """Where the receiver wants the bytes from, once it said "send" (else its error)."""
        if decision.get("status") != "send":
            self.push_failed(decision, local, remote, size)
        offset = decision.get("offset")
        if not isinstance(offset, int) or not 0 <= offset <= size:
            raise TransportError(
                f"{self.label}: the device's receiver asked for offset {offset!r} of a "
                f"{size}-byte file",
                hint="run again with EDGESHRINK_DEBUG=1; the device's helper is not edgeshrink's",
            )
        return offset

    def lost(self, verdict: dict[str, Any] | None, local: Path, remote: str, size: int,
              detail: str, exc: BaseException) -> NoReturn:  # fmt: skip
        """A push that broke off: the receiver's reason when it gave one (it may have stopped
        reading on purpose, e.g. a full disk), else a lost connection, which resumes."""
        if verdict is not None:
            self.push_failed(verdict, local, remote, size)
        raise TransportError(
            f"{self.label}: connection lost {detail}",
            hint="push again: it resumes from what reached the device",
        ) from exc

    def report_progress(
        self, local: Path, remote: str, done: int, total: int, sent: int, began: float
    ) -> None:
        if self.progress is not None:
            self.progress(
                PushProgress(local, remote, done, total, sent, time.perf_counter() - began)
            )

    def push_failed(self, doc: dict[str, Any], local: Path, remote: str, size: int) -> None:
        status = doc.get("status")
        partial = doc.get("path") or remote
        if status == "no_space":
            raise TransportError(
                f"{self.label}: not enough space on the device: {doc.get('free_path')} has "
                f"{human_bytes(doc.get('free_bytes') or 0)} free, {local.name} needs "
                f"{human_bytes(doc.get('need') or 0)} more",
                hint="free space on the device, or give the target a work_dir on a larger filesystem",
            )
        if status == "not_writable":
            raise TransportError(
                f"{self.label}: cannot write {doc.get('path')} on the device: {doc.get('error')}",
                hint="give the target a work_dir the SSH user can write "
                "(`edgeshrink targets add NAME ... --work-dir PATH`), or make it writable",
            )
        if status == "busy":
            raise TransportError(
                f"{self.label}: another push of {local.name} to {remote} is running",
                hint="wait for it to finish, then push again",
            )
        if status == "mismatch":
            raise TransportError(
                f"{self.label}: {remote} arrived with sha256 {str(doc.get('sha256'))[:16]}… "
                f"({doc.get('size')} bytes), expected the local file's hash; the partial file was removed",
                hint="the local file changed while it was sent, or a stale partial file was resumed: push again",
            )
        if status == "write_failed":
            have = doc.get("have") or 0
            raise TransportError(
                f"{self.label}: writing {partial} failed after {human_bytes(have)} of {human_bytes(size)}: "
                f"{doc.get('error')} ({human_bytes(doc.get('free_bytes') or 0)} free now)",
                hint="free space on the device and push again: it resumes from the partial file",
            )
        if status == "incomplete":
            raise TransportError(
                f"{self.label}: the device received only {doc.get('have')} of {size} bytes of {local.name}",
                hint="push again: it resumes from what reached the device",
            )
        raise TransportError(f"{self.label}: pushing {local.name} failed on the device: {doc}")

    # -- run

    def run(
        self,
        argv: list[str],
        *,
        timeout_s: float,
        max_output_bytes: int = 8 << 20,
        on_stderr: LineCallback | None = None,
        device_wait_s: float = DEVICE_WAIT_S,
    ) -> CommandResult:
        """Run ``argv`` in the work dir; stdout bounded, stderr streamed by line to ``on_stderr``.

        The device's Python runs edgeshrink's launcher (agent/device_helper.py),
        which holds the device lock (waiting up to ``device_wait_s`` for an
        earlier command of ours), puts the command in its own process group and
        ends that group when this session ends.  Without a Python there, the
        command runs directly (so that doctor can say what is missing).
        """
        return ssh_run.run_command(
            self,
            argv,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            on_stderr=on_stderr,
            device_wait_s=device_wait_s,
        )
