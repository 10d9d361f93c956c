"""Commands on the device over SSH, under the device helper's launcher (see ssh.py's
docstring, "Run")."""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import select
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paramiko

from edgeshrink.errors import TransportError
from edgeshrink.transport.base import (
    DEVICE_LOCK_NAME,
    DEVICE_WAIT_S,
    EXIT_MARKER,
    CommandResult,
    device_busy_message,
)
from edgeshrink.transport.ssh_commands import helper_command, posix_sh, quote_argv
from edgeshrink.transport.ssh_connect import close_quietly

if TYPE_CHECKING:
    from edgeshrink.transport.ssh import SSHTransport

# After SIGTERM the agent writes what it measured so far; give it this long.
TERM_GRACE_S = 5.0
_PID_MARKER = re.compile(rb"@@edgeshrink-pid=(\d+)\n")
_WORKDIR_MARKER = b"@@edgeshrink-workdir-failed"
_EXIT_RE = re.compile(re.escape(EXIT_MARKER) + rb"(\{[^\n]*\})\n")
# The launcher's own Python failed before it could start the command.
_HELPER_BROKE = re.compile(rb'File "device_helper.py"|SyntaxError')


def _signal_status(rc: int) -> tuple[int | None, int | None]:
    """(returncode, signal) from a shell exit status; 128+N means killed by signal N."""
    if rc < 0:
        return None, None
    if 128 < rc <= 128 + 64:
        return -(rc - 128), rc - 128
    return rc, None


def run_command(
    transport: SSHTransport,
    argv: list[str],
    *,
    timeout_s: float,
    max_output_bytes: int = 8 << 20,
    on_stderr: Callable[[str], None] | None = None,
    device_wait_s: float = DEVICE_WAIT_S,
) -> CommandResult:
    """SSHTransport.run: the launcher session, its markers, timeout and clean-up."""
    on_line = on_stderr or transport.on_stderr
    work = shlex.quote(transport.work_dir)
    command = quote_argv(argv)
    python = shlex.quote(transport.target.python)
    lock = posixpath.join(transport.work_dir, DEVICE_LOCK_NAME)
    launcher = "exec " + helper_command(
        transport.target.python, ["launch", lock, f"{device_wait_s:g}", "--", *argv]
    )
    script = (
        f"cd -- {work} 2>/dev/null || {{ mkdir -p -- {work} && cd -- {work}; }} || "
        f"{{ printf '{_WORKDIR_MARKER.decode()}' >&2; exit 125; }}\n"
        f"if command -v {python} >/dev/null 2>&1; then {launcher}\n"
        f"elif command -v setsid >/dev/null 2>&1; then setsid {command} </dev/null &\n"
        f"else {command} </dev/null &\nfi\n"
        'pid=$!\nprintf "@@edgeshrink-pid=%s\\n" "$pid" >&2\nwait "$pid"\nexit $?\n'
    )
    chan = transport.open_session()
    start = time.perf_counter()
    stdout, tail = bytearray(), bytearray()
    truncated = timed_out = False
    pending = b""
    pid: list[int] = []  # filled when the launcher (or the shell) reports the process group
    exit_doc: dict[str, Any] = {}

    def take_stderr(data: bytes) -> None:
        nonlocal pending
        pending += data
        match = _PID_MARKER.search(pending)
        if match and not pid:
            pid.append(int(match.group(1)))
            pending = pending[: match.start()] + pending[match.end() :]
        match = _EXIT_RE.search(pending)
        if match:
            with contextlib.suppress(ValueError):
                exit_doc.update(json.loads(match.group(1)))
            pending = pending[: match.start()] + pending[match.end() :]
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            tail.extend(line + b"\n")
            if on_line is not None:
                on_line(line.decode("utf-8", "replace").rstrip("\r"))
        del tail[: max(0, len(tail) - max_output_bytes)]

    def drain() -> bool:
        nonlocal truncated
        got = False
        while chan.recv_ready():
            data = chan.recv(65536)
            got = True
            room = max_output_bytes - len(stdout)
            if len(data) > room:
                truncated = True
            stdout.extend(data[: max(room, 0)])
        while chan.recv_stderr_ready():
            take_stderr(chan.recv_stderr(65536))
            got = True
        return got

    def wait_exit(limit_s: float) -> bool:
        until = time.monotonic() + limit_s
        while time.monotonic() < until:
            drain()
            if chan.exit_status_ready() or chan.closed:
                return True
            select.select([chan], [], [], 0.1)
        return False

    try:
        # stdin stays open: it is the launcher's lifeline (EOF ends the command).
        chan.exec_command(posix_sh(script))
        # Until the command starts, the launcher may be waiting for the device lock.
        deadline = time.monotonic() + device_wait_s + timeout_s + 5
        started = False
        while True:
            drain()
            if pid and not started:
                started, deadline = True, time.monotonic() + timeout_s
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if chan.closed or not chan.get_transport().is_active():
                drain()
                if chan.exit_status_ready():
                    break
                raise TransportError(
                    f"{transport.label}: connection lost while running {argv[0]}",
                    hint="check the device and network; the launcher ends the command "
                    "when its session is gone",
                )
            if time.monotonic() > deadline:
                timed_out = True
                _stop(transport, pid, chan, wait_exit)
                break
            select.select([chan], [], [], 0.1)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        close_quietly(chan)
        if isinstance(exc, TransportError):
            raise
        raise TransportError(
            f"{transport.label}: connection lost while running {argv[0]}: {exc}"
        ) from exc
    except BaseException:
        # Ctrl-C, or a callback that raised: the remote command must not outlive us.
        with contextlib.suppress(Exception):
            _stop(transport, pid, chan, wait_exit)
        close_quietly(chan)
        raise
    drain()
    if pending:
        take_stderr(b"\n")
    status = chan.recv_exit_status() if chan.exit_status_ready() else -1
    close_quietly(chan)
    if status == 125 and _WORKDIR_MARKER in tail:
        raise TransportError(
            f"{transport.label}: cannot create or enter the work dir {transport.work_dir}: "
            f"{tail.decode('utf-8', 'replace').replace(_WORKDIR_MARKER.decode(), '').strip()}",
            hint="give the target a work_dir the SSH user can write (`targets add ... --work-dir`)",
        )
    if exit_doc.get("status") == "busy":
        message, hint = device_busy_message(transport.label, exit_doc, device_wait_s)
        raise TransportError(message, hint=hint)
    if exit_doc.get("status") == "lock_failed":
        raise TransportError(
            f"{transport.label}: cannot write the device lock {exit_doc.get('path')}: "
            f"{exit_doc.get('error')}",
            hint="give the target a work_dir the SSH user can write "
            "(`edgeshrink targets add NAME ... --work-dir PATH`)",
        )
    if status == 1 and not pid and not exit_doc and _HELPER_BROKE.search(tail):
        raise transport.helper_failed(status, bytes(tail), f"starting {argv[0]}")
    if exit_doc.get("status") == "exited":
        returncode, sig = exit_doc.get("returncode"), exit_doc.get("signal")
        if sig is not None:
            returncode = -int(sig)
    else:
        returncode, sig = _signal_status(status)
    return CommandResult(
        argv=tuple(argv),
        returncode=returncode,
        stdout=bytes(stdout).decode("utf-8", "replace"),
        stderr=bytes(tail).decode("utf-8", "replace"),
        seconds=time.perf_counter() - start,
        timed_out=timed_out,
        signal=sig,
        stdout_truncated=truncated,
        oom_kill=exit_doc.get("oom_kill"),
    )


def _stop(
    transport: SSHTransport,
    pid: list[int],
    chan: paramiko.Channel,
    wait_exit: Callable[[float], bool],
) -> None:
    """SIGTERM the remote process group, then SIGKILL; return once the launcher says it is gone."""
    if not pid:
        wait_exit(1.0)  # the marker may still be on its way
    if not pid:
        close_quietly(chan)  # EOF: the launcher ends whatever it started
        return
    for sig, grace in (("TERM", TERM_GRACE_S), ("KILL", TERM_GRACE_S)):
        with contextlib.suppress(Exception):
            chan.sendall(sig.encode() + b"\n")  # the launcher signals its group
        _kill(transport, pid[0], sig)  # a device without Python: the shell's group
        if wait_exit(grace):
            return
    close_quietly(chan)


def _kill(transport: SSHTransport, pid: int, sig: str) -> None:
    # "kill -SIG -PGID", not "kill -SIG -- -PGID": dash's kill does not take "--".
    script = f"kill -{sig} -{pid} 2>/dev/null || kill -{sig} {pid} 2>/dev/null; exit 0"
    with contextlib.suppress(TransportError):
        transport.exec_command(posix_sh(script), timeout_s=15)
