"""The paramiko push: one session to the device's receiver, which decides under its lock
(see ssh.py's docstring, "Push"; big files go through openssh.py to the same receiver)."""

from __future__ import annotations

import contextlib
import json
import select
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from edgeshrink.errors import TransportError
from edgeshrink.transport import openssh
from edgeshrink.transport.base import PushResult
from edgeshrink.transport.ssh_commands import helper_command, posix_sh
from edgeshrink.transport.ssh_connect import close_quietly

if TYPE_CHECKING:
    from edgeshrink.transport.ssh import SSHTransport

CHUNK_BYTES = 1 << 20
# Channel data stalls longer than this (no window from the device) count as a lost connection.
SEND_STALL_S = 120.0


class _ChannelLines:
    """JSON documents, one a line, on a channel's stdout (other lines are skipped)."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.buf = bytearray()
        self.eof = False

    def _line(self) -> bytes | None:
        while True:
            at = self.buf.find(b"\n")
            if at >= 0:
                line = bytes(self.buf[:at])
                del self.buf[: at + 1]
                return line
            if self.eof:
                line, self.buf = bytes(self.buf), bytearray()
                return line or None
            data = self.chan.recv(65536)
            if data:
                self.buf += data
            else:
                self.eof = True

    def next_doc(
        self, *, skip: tuple[str, ...] = (), timeout_s: float | None = None
    ) -> dict[str, Any] | None:
        """The next document (None at the end); with ``timeout_s``, None also on a timeout."""
        previous = self.chan.gettimeout()
        if timeout_s is not None:
            self.chan.settimeout(timeout_s)
        try:
            while True:
                line = self._line()
                if line is None:
                    return None
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and doc.get("status") not in skip:
                    return doc
        except (OSError, EOFError, paramiko.SSHException):
            if timeout_s is None:
                raise
            return None
        finally:
            with contextlib.suppress(Exception):
                self.chan.settimeout(previous)

    def finish(self, wait_s: float = 5.0) -> tuple[int, bytes]:
        """(exit status or -1 when the session ended without one, stderr)."""
        deadline = time.monotonic() + wait_s
        while not self.chan.exit_status_ready() and time.monotonic() < deadline:
            select.select([self.chan], [], [], 0.1)
        err = bytearray()
        with contextlib.suppress(Exception):
            while self.chan.recv_stderr_ready():
                err += self.chan.recv_stderr(65536)
        status = self.chan.exit_status if self.chan.exit_status_ready() else -1
        return status, bytes(err)


def push(transport: SSHTransport, local: Path, remote: str, sha256: str) -> PushResult:
    """One session: the receiver locks the destination, says what it needs, takes the bytes.

    Deciding under the device-side lock is what keeps concurrent pushes of
    one file apart; "present" means the receiver checked the sha256.
    """
    start = time.perf_counter()
    try:
        size = local.stat().st_size
    except OSError as exc:
        raise TransportError(f"cannot read {local}: {exc.strerror}") from exc
    args = ["receive", remote, str(size), sha256, "1" if transport.durable else "0"]
    command = posix_sh("exec " + helper_command(transport.target.python, args))
    if openssh.wanted(size):
        # Big files: OpenSSH's C moves the bytes, to the same receiver (see openssh.py).
        pushed = openssh.push(transport, local, remote, sha256, size, command, start)
        if pushed is not None:
            return pushed
    chan = transport.open_session()
    lines = _ChannelLines(chan)
    sent = offset = 0
    try:
        # A long stall is fine while the device waits for the lock ("waiting" every few s).
        chan.settimeout(max(SEND_STALL_S, size / 20e6))
        chan.exec_command(command)
        decision = lines.next_doc(skip=("waiting",))
        if decision is None:
            raise transport.helper_failed(*lines.finish(), "preparing the push")
        status = decision.get("status")
        if status == "present":
            return PushResult(
                local,
                remote,
                sha256,
                size,
                0,
                True,
                time.perf_counter() - start,
                via="paramiko",
            )
        offset = transport.send_offset(decision, local, remote, size)
        began = time.perf_counter()
        transport.report_progress(local, remote, offset, size, 0, began)
        try:
            sent = _stream(transport, chan, local, remote, offset, size, began)
            chan.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # The receiver may have stopped reading on purpose (a full disk): ask it why.
            transport.lost(
                lines.next_doc(timeout_s=5.0), local, remote, size,
                f"after sending {offset + sent} of {size} bytes of {local.name}: "
                f"{exc or type(exc).__name__}",
                exc,
            )  # fmt: skip
        verdict = lines.next_doc()
        if verdict is None:
            raise transport.helper_failed(*lines.finish(), f"receiving {local.name}")
    except TransportError:
        raise
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise TransportError(
            f"{transport.label}: connection lost while pushing {local.name}: "
            f"{exc or type(exc).__name__}",
            hint="push again: it resumes from what reached the device",
        ) from exc
    finally:
        close_quietly(chan)
    if verdict.get("status") != "ok":
        transport.push_failed(verdict, local, remote, size)
    return PushResult(
        local, remote, sha256, size, size - offset, False, time.perf_counter() - start,
        via="paramiko",
    )  # fmt: skip


def _stream(
    transport: SSHTransport,
    chan: paramiko.Channel,
    local: Path,
    remote: str,
    offset: int,
    size: int,
    began: float,
) -> int:
    sent = 0
    with open(local, "rb", buffering=0) as handle:
        handle.seek(offset)
        left = size - offset
        while left > 0:
            block = handle.read(min(CHUNK_BYTES, left))
            if not block:
                raise TransportError(f"{local} shrank while it was being sent")
            view = memoryview(block)
            while view:
                # Channel.send takes at most one window/packet; sendall would
                # re-slice (copy) the rest of the block on every packet.
                n = chan.send(view)
                if n <= 0:
                    raise EOFError("channel closed")
                view = view[n:]
            sent += len(block)
            left -= len(block)
            transport.report_progress(local, remote, offset + sent, size, sent, began)
    return sent
