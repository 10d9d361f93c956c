"""Large pushes through the host's own OpenSSH client, when it can do what paramiko did.

paramiko builds every 32 KiB SSH packet in Python: on a 2-core host that costs about
1 CPU-second per GiB more than OpenSSH's C (measured with scripts/bench_push.py), and
the push of a big model becomes CPU-bound on the host. So for files of at least
OPENSSH_MIN_BYTES the bytes go through ``ssh`` instead, to the very same device
receiver (device_helper.py ``receive``): it still takes the destination's lock, says
what it needs (nothing, or the bytes from an offset: resume), hashes what it writes
and renames only verified bytes into place. Nothing about the guarantees changes:

- **Host key:** paramiko has already connected and verified the device's key (known
  or accepted, see ssh.py). ``ssh`` is given exactly that key in a private
  known_hosts file (HostKeyAlias, StrictHostKeyChecking=yes, the user's files and
  ~/.ssh/config ignored), so it talks to that key or to nobody.
- **Authentication:** the key that paramiko authenticated with (a key file with
  IdentitiesOnly, or the ssh-agent); BatchMode, so nothing is ever asked for.
- **When it cannot:** no ``ssh`` binary, jump hosts or a ProxyCommand (paramiko
  chains those itself), or ``ssh`` failing before the receiver answered (a key
  OpenSSH cannot use, an old client): the push goes through paramiko, as before.
  ``EDGESHRINK_PUSH_VIA=paramiko`` forces paramiko; ``=openssh`` uses OpenSSH for
  every size.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.errors import TransportError
from edgeshrink.transport.base import PushResult

if TYPE_CHECKING:
    from edgeshrink.transport.ssh import SSHTransport

OPENSSH_MIN_BYTES = 32 << 20
HOST_ALIAS = "edgeshrink-device"
SPLICE_BYTES = 1 << 20
KEX = "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,diffie-hellman-group14-sha256"


class _NotUsable(Exception):
    """OpenSSH could not start the receiver: use paramiko instead (the reason is the text)."""


def wanted(size: int) -> bool:
    via = os.environ.get("EDGESHRINK_PUSH_VIA", "auto")
    if via == "paramiko":
        return False
    if via == "openssh":
        return True
    return size >= OPENSSH_MIN_BYTES


def ssh_command(transport: SSHTransport, known_hosts: Path, command: str) -> list[str] | None:
    """The ``ssh`` argv that reaches the same device with the same key, or None."""
    ssh = shutil.which("ssh")
    endpoint = transport.endpoint
    if ssh is None or endpoint.jump or endpoint.proxy_command:
        return None
    auth = transport.trace.auth or ""
    if auth.startswith("ssh-agent key"):
        if not os.environ.get("SSH_AUTH_SOCK"):
            return None
        identity = ["-o", "IdentitiesOnly=no"]
    elif auth and Path(auth).is_file():
        identity = ["-i", auth, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
    else:
        return None
    key = transport.server_key
    known_hosts.write_text(f"{HOST_ALIAS} {key.get_name()} {key.get_base64()}\n")
    cipher = transport.cipher
    return [
        ssh, "-F", "/dev/null", "-T", "-x", "-e", "none",
        "-p", str(endpoint.port), "-l", endpoint.user,
        "-o", "BatchMode=yes", "-o", f"HostKeyAlias={HOST_ALIAS}",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no", "-o", "CheckHostIP=no",
        "-o", f"ConnectTimeout={int(max(transport.connect_timeout_s, 1))}",
        "-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=4",
        "-o", "Compression=no", "-o", "LogLevel=ERROR",
        # The key exchanges paramiko offers (no slower post-quantum hybrid: ~80 ms more per
        # connection here, on a session that paramiko's own connection already runs without).
        "-o", f"KexAlgorithms={KEX}",
        *(["-c", cipher] if cipher else []),
        *identity, endpoint.hostname, command,
    ]  # fmt: skip


class _Lines:
    """JSON documents, one a line, on the ssh process's stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.fd = proc.stdout.fileno() if proc.stdout else -1
        self.buf = b""
        self.eof = False

    def next_doc(self, timeout_s: float, skip: tuple[str, ...] = ()) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while True:
            at = self.buf.find(b"\n")
            if at >= 0:
                line, self.buf = self.buf[:at], self.buf[at + 1 :]
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict) and doc.get("status") not in skip:
                        return doc
                continue
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                data = os.read(self.fd, 65536)
                if data:
                    self.buf += data
                else:
                    self.eof = True


def _stderr_text(proc: subprocess.Popen[bytes]) -> str:
    with contextlib.suppress(Exception):
        if proc.stderr is not None:
            text = proc.stderr.read().decode("utf-8", "replace").strip()
            return " | ".join(text.splitlines()[-3:])
    return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    with contextlib.suppress(OSError):
        proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _send(fd_out: int, handle: Any, offset: int, size: int, stall_s: float, report) -> int:
    """The file from ``offset`` into the ssh process's stdin (a pipe), zero-copy where the
    kernel can (splice), in pieces of SPLICE_BYTES; ``report(sent)`` after each."""
    fd_in = handle.fileno()
    position, sent = offset, 0
    splice = getattr(os, "splice", None)
    while position < size:
        _, ready, _ = select.select([], [fd_out], [], stall_s)
        if not ready:
            raise TimeoutError(f"the device took no data for {stall_s:.0f} s")
        count = min(SPLICE_BYTES, size - position)
        if splice is not None:
            try:
                n = splice(fd_in, fd_out, count, offset_src=position)
            except OSError:
                splice = None
                continue
        else:
            block = os.pread(fd_in, count, position)
            n = os.write(fd_out, block) if block else 0
        if n <= 0:
            raise TransportError(f"{handle.name} shrank while it was being sent")
        position += n
        sent += n
        report(sent)
    return sent


def push(transport: SSHTransport, local: Path, remote: str, sha256: str, size: int,
         command: str, start: float) -> PushResult | None:  # fmt: skip
    """The push through ``ssh``; None when OpenSSH cannot be used (the caller uses paramiko)."""
    transport.connect()  # the host key is verified (or refused) here, by paramiko
    with tempfile.TemporaryDirectory(prefix="edgeshrink-ssh-") as private:
        argv = ssh_command(transport, Path(private) / "known_hosts", command)
        if argv is None:
            return None
        try:
            return _push(transport, argv, local, remote, sha256, size, start)
        except _NotUsable as exc:
            transport.push_via_note = f"OpenSSH could not be used ({exc}): pushed with paramiko"
            return None


def _push(transport: SSHTransport, argv: list[str], local: Path, remote: str, sha256: str,
          size: int, start: float) -> PushResult:  # fmt: skip
    from edgeshrink.transport.ssh import SEND_STALL_S

    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise _NotUsable(f"cannot start ssh: {exc.strerror or exc}") from exc
    assert proc.stdin is not None
    lines = _Lines(proc)
    try:
        wait_s = transport.connect_timeout_s + 330  # the receiver may wait for the lock
        decision = lines.next_doc(wait_s, skip=("waiting",))
        if decision is None:
            rc = proc.poll()
            if rc == 255 or rc is None:
                _stop(proc)
                raise _NotUsable(_stderr_text(proc) or f"ssh exited with {proc.returncode}")
            raise transport.helper_failed(rc, _stderr_text(proc).encode(), "preparing the push")
        status = decision.get("status")
        if status == "present":
            proc.stdin.close()
            proc.wait(timeout=30)
            return PushResult(local, remote, sha256, size, 0, True, time.perf_counter() - start,
                              via="openssh")  # fmt: skip
        offset = transport.send_offset(decision, local, remote, size)
        began = time.perf_counter()
        transport.report_progress(local, remote, offset, size, 0, began)
        stall = max(SEND_STALL_S, size / 20e6)
        try:
            with open(local, "rb") as handle:
                _send(proc.stdin.fileno(), handle, offset, size, stall,
                      lambda sent: transport.report_progress(local, remote, offset + sent, size, sent, began))  # fmt: skip
            proc.stdin.close()
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TransportError):
                raise
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            transport.lost(
                lines.next_doc(5.0), local, remote, size, f"while pushing {local.name}: {why}", exc
            )
        verdict = lines.next_doc(max(600.0, size / 20e6))
        if verdict is None:
            rc = proc.wait(timeout=30)
            raise transport.helper_failed(
                -1 if rc == 255 else rc, _stderr_text(proc).encode(), f"receiving {local.name}"
            )
        if verdict.get("status") != "ok":
            transport.push_failed(verdict, local, remote, size)
        proc.wait(timeout=30)
        return PushResult(local, remote, sha256, size, size - offset, False,
                          time.perf_counter() - start, via="openssh")  # fmt: skip
    finally:
        if proc.poll() is None:
            _stop(proc)
        for stream in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


__all__ = ["OPENSSH_MIN_BYTES", "push", "wanted"]
