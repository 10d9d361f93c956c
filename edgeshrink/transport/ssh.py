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
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import posixpath
import re
import select
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import paramiko

from edgeshrink.errors import TransportError
from edgeshrink.targets import (
    SshEndpoint,
    Target,
    parse_destination,
    resolve_destination,
    resolve_ssh,
)
from edgeshrink.transport import openssh
from edgeshrink.transport.base import (
    DEVICE_LOCK_NAME,
    DEVICE_WAIT_S,
    EXIT_MARKER,
    CommandResult,
    PushResult,
    device_busy_message,
    helper_argv,
)
from edgeshrink.util import atomic_path

# paramiko logs a traceback for every connection that fails in its thread;
# ours becomes one TransportError line instead (EDGESHRINK_DEBUG shows the cause).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CONNECT_TIMEOUT_S = 10.0
# After SIGTERM the agent writes what it measured so far; give it this long.
TERM_GRACE_S = 5.0
KEEPALIVE_S = 30
CHUNK_BYTES = 1 << 20
# Channel data stalls longer than this (no window from the device) count as a lost connection.
SEND_STALL_S = 120.0
CIPHER_PREFERENCE = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "aes192-ctr",
)
MAC_PREFERENCE = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
_PID_MARKER = re.compile(rb"@@edgeshrink-pid=(\d+)\n")
_WORKDIR_MARKER = b"@@edgeshrink-workdir-failed"
_EXIT_RE = re.compile(re.escape(EXIT_MARKER) + rb"(\{[^\n]*\})\n")
# The launcher's own Python failed before it could start the command.
_HELPER_BROKE = re.compile(rb'File "device_helper.py"|SyntaxError')
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

PYTHON_HINT = (
    "install Python 3.9+ on the device (Debian/Raspberry Pi OS: sudo apt install python3;"
    " Termux: pkg install python) or set the target's python (`edgeshrink targets add ... --python PATH`)"
)


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


# --------------------------------------------------------------------------- host keys


def fingerprint_sha256(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint format: SHA256:<unpadded base64>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


@dataclass(frozen=True)
class KnownKey:
    file: str
    line: int
    key_type: str
    key: paramiko.PKey
    revoked: bool = False


@dataclass(frozen=True)
class HostKeyCheck:
    """How a host key was verified (or accepted)."""

    host: str  # the known_hosts name, e.g. [10.0.0.2]:2222
    key_type: str
    fingerprint: str
    status: str  # "known" or "accepted"
    file: str
    line: int | None

    def describe(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        verb = "matches" if self.status == "known" else "accepted and stored in"
        return f"{self.key_type} {self.fingerprint} {verb} {where}"


def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH patterns know only * and ?; brackets as in [host]:port are literal."""
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts))


def _host_pattern_matches(patterns: str, name: str) -> bool:
    """OpenSSH known_hosts host field: comma-separated, hashed (|1|), wildcards, negation."""
    matched = False
    for pattern in patterns.split(","):
        if pattern.startswith("|1|"):
            try:
                if paramiko.HostKeys.hash_host(name, pattern) == pattern:
                    matched = True
            except Exception:  # a malformed salt is simply no match
                continue
            continue
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if _wildcard(pattern).fullmatch(name.lower()):
            if negated:
                return False
            matched = True
    return matched


def read_known_keys(files: list[str], name: str) -> list[KnownKey]:
    """The keys that ``files`` hold for the known_hosts name ``name``, with their lines."""
    found: list[KnownKey] = []
    for file in files:
        try:
            text = Path(file).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            revoked = False
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                if marker == "@revoked":
                    revoked = True
                else:  # @cert-authority: certificates are not used here
                    continue
            fields = line.split()
            if len(fields) < 3 or not _host_pattern_matches(fields[0], name):
                continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(" ".join(fields[:3]), number)
            except Exception:  # an unparseable line is skipped, like OpenSSH does
                continue
            if entry is None or entry.key is None:
                continue
            found.append(KnownKey(file, number, fields[1], entry.key, revoked))
    return found


def user_known_hosts_files() -> list[str]:
    return [str(Path(p).expanduser()) for p in USER_KNOWN_HOSTS]


def verify_host_key(
    endpoint: SshEndpoint,
    key: paramiko.PKey,
    *,
    accept_new: bool,
    label: str,
) -> HostKeyCheck:
    """Refuse an unknown (unless ``accept_new``) or changed host key; store accepted ones."""
    name = known_hosts_name(endpoint.hostname, endpoint.port)
    files = [*user_known_hosts_files(), endpoint.known_hosts]
    known = read_known_keys(files, name)
    fingerprint = fingerprint_sha256(key)
    key_type = key.get_name()
    for entry in known:
        if entry.revoked and entry.key == key:
            raise TransportError(
                f"{label}: the host key {key_type} {fingerprint} is marked @revoked in {entry.file}:{entry.line}",
                hint="do not connect; ask whoever runs the device",
            )
    same_type = [k for k in known if not k.revoked and k.key.get_name() == key_type]
    for entry in same_type:
        if entry.key == key:
            return HostKeyCheck(name, key_type, fingerprint, "known", entry.file, entry.line)
    if same_type:
        old = same_type[0]
        raise TransportError(
            f"{label}: HOST KEY CHANGED for {name}: the device offers {key_type} {fingerprint}, "
            f"but {old.file} line {old.line} holds {fingerprint_sha256(old.key)}. "
            "Someone may be intercepting the connection, or the device was reinstalled",
            hint=f"if the device was really reinstalled, remove line {old.line} of {old.file} "
            f"(ssh-keygen -R '{name}' -f {old.file}) and connect again with --accept-new-host-key",
        )
    others = sorted({k.key.get_name() for k in known if not k.revoked})
    if not accept_new:
        also = f" (keys of other types are known for it: {', '.join(others)})" if others else ""
        raise TransportError(
            f"{label}: unknown host key for {name}: {key_type} {fingerprint}{also}",
            hint="check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
            "then pass --accept-new-host-key to trust and store it",
        )
    line = _append_known_host(endpoint.known_hosts, name, key)
    return HostKeyCheck(name, key_type, fingerprint, "accepted", endpoint.known_hosts, line)


def _append_known_host(file: str, name: str, key: paramiko.PKey) -> int:
    path = Path(file)
    try:
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise TransportError(f"cannot read {path}: {exc.strerror}") from exc
    if existing and not existing.endswith("\n"):
        existing += "\n"
    text = existing + f"{name} {key.get_name()} {key.get_base64()}\n"
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise TransportError(f"cannot store the host key in {path}: {exc.strerror or exc}") from exc
    return text.count("\n")


# --------------------------------------------------------------------------- connecting


def _tcp_socket(hostname: str, port: int, timeout: float, label: str) -> socket.socket:
    try:
        sock = socket.create_connection((hostname, port), timeout=timeout)
    except socket.gaierror as exc:
        raise TransportError(
            f"{label}: cannot resolve host '{hostname}': {exc.strerror}",
            hint="check the host name or address (and HostName in ~/.ssh/config)",
        ) from exc
    except ConnectionRefusedError as exc:
        raise TransportError(
            f"{label}: connection refused by {hostname}:{port}: no SSH server listens there",
            hint="check the port (Termux's sshd listens on 8022) and that sshd runs on the device",
        ) from exc
    except TimeoutError as exc:
        raise TransportError(
            f"{label}: no answer from {hostname}:{port} within {timeout:.0f} s",
            hint="check the address, that the device is on and on the network, and firewalls",
        ) from exc
    except OSError as exc:
        raise TransportError(
            f"{label}: cannot reach {hostname}:{port}: {exc.strerror or exc}",
            hint="check the address and the network route to the device",
        ) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.settimeout(None)
    return sock


def _prefer(available: tuple[str, ...], preferred: tuple[str, ...]) -> tuple[str, ...]:
    first = tuple(p for p in preferred if p in available)
    return first + tuple(a for a in available if a not in first)


@dataclass
class ConnectTrace:
    """How far a connection got: tcp, handshake, host key, auth (for doctor's report)."""

    stage: str = "start"
    auth: str | None = None  # the key that was accepted
    cipher: str | None = None
    jump_hops: int = 0


def _start_ssh(
    sock: Any,
    endpoint: SshEndpoint,
    *,
    accept_new: bool,
    extra_keys: tuple[str, ...],
    timeout: float,
    trace: ConnectTrace | None = None,
) -> tuple[paramiko.Transport, HostKeyCheck]:
    label = endpoint.describe()
    trace = trace if trace is not None else ConnectTrace()
    transport = paramiko.Transport(sock, default_window_size=8 << 20)
    try:
        options = transport.get_security_options()
        options.ciphers = _prefer(tuple(options.ciphers), CIPHER_PREFERENCE)
        options.digests = _prefer(tuple(options.digests), MAC_PREFERENCE)
        # Ask for a host key type we already know for this host, so a known
        # host is not reported as new just because the server prefers another type.
        name = known_hosts_name(endpoint.hostname, endpoint.port)
        known_types = [
            k.key.get_name()
            for k in read_known_keys([*user_known_hosts_files(), endpoint.known_hosts], name)
        ]
        options.key_types = _prefer(tuple(options.key_types), tuple(dict.fromkeys(known_types)))
        try:
            transport.start_client(timeout=timeout)
        except paramiko.SSHException as exc:
            raise TransportError(
                f"{label}: SSH handshake failed: {exc}",
                hint="check that an SSH server (not another service) listens on that port; "
                "a server that hangs up at once may be refusing us (MaxStartups, tcp wrappers, fail2ban)",
            ) from exc
        except (EOFError, OSError) as exc:
            raise TransportError(
                f"{label}: the connection closed during the SSH handshake: {exc or type(exc).__name__}",
                hint="the server dropped us: check its logs (MaxStartups, tcp wrappers, fail2ban)",
            ) from exc
        if not transport.is_active() or transport.host_key is None:
            # start_client returns quietly when its timeout passes mid-negotiation.
            raise TransportError(
                f"{label}: the server accepted the connection but did not complete the SSH "
                f"handshake within {timeout:.0f} s",
                hint="check that sshd (not another service) listens on that port and is not "
                "overloaded (MaxStartups); try `ssh -v` to the same address",
            )
        trace.stage, trace.cipher = "handshake", transport.local_cipher
        checked = verify_host_key(
            endpoint, transport.get_remote_server_key(), accept_new=accept_new, label=label
        )
        trace.stage = "host key"
        trace.auth = _authenticate(transport, endpoint, extra_keys)
        trace.stage = "auth"
        transport.set_keepalive(KEEPALIVE_S)
    except BaseException:
        transport.close()
        raise
    return transport, checked


PASSPHRASE_NOTE = "passphrase-protected: skipped (load it into the ssh-agent: ssh-add {path})"


def _load_key(path: str) -> tuple[paramiko.PKey | None, str]:
    try:
        return paramiko.PKey.from_path(path), ""
    except paramiko.PasswordRequiredException:
        return None, PASSPHRASE_NOTE.format(path=path)
    except TypeError as exc:
        # cryptography raises TypeError ("Key is password-protected") for encrypted OpenSSH keys.
        if "password" in str(exc).lower():
            return None, PASSPHRASE_NOTE.format(path=path)
        return None, f"unreadable: {exc}"
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, paramiko.SSHException) as exc:
        return None, f"unreadable: {exc}"


def _authenticate(
    transport: paramiko.Transport, endpoint: SshEndpoint, extra_keys: tuple[str, ...]
) -> str:
    label = endpoint.describe()
    tried: list[str] = []
    candidates: list[tuple[str, paramiko.PKey]] = []
    for path in dict.fromkeys((*endpoint.key_files, *extra_keys)):
        key, why = _load_key(path)
        if key is None:
            tried.append(f"{path} ({why})")
        else:
            candidates.append((path, key))
    try:
        agent_keys = list(paramiko.Agent().get_keys())
    except paramiko.SSHException:
        agent_keys = []
    candidates += [(f"ssh-agent key {fingerprint_sha256(k)}", k) for k in agent_keys]
    if not endpoint.key_files and not extra_keys:
        for default in DEFAULT_IDENTITIES:
            path = str(Path(default).expanduser())
            if Path(path).is_file():
                key, why = _load_key(path)
                if key is None:
                    tried.append(f"{path} ({why})")
                else:
                    candidates.append((path, key))
    for what, key in candidates:
        try:
            transport.auth_publickey(endpoint.user, key)
        except paramiko.BadAuthenticationType as exc:
            raise TransportError(
                f"{label}: the server does not accept keys (it allows: {', '.join(exc.allowed_types)})",
                hint="enable PubkeyAuthentication on the device; edgeshrink never uses passwords",
            ) from exc
        except paramiko.AuthenticationException:
            tried.append(f"{what} (refused)")
            continue
        except (paramiko.SSHException, EOFError, OSError) as exc:
            tried.append(f"{what} ({exc or type(exc).__name__})")
            break
        if transport.is_authenticated():
            return what
    if not candidates:
        tried.append("no key: none given, none in ~/.ssh/config, the ssh-agent and ~/.ssh/id_*")
    locked = [t.split(" (", 1)[0] for t in tried if "passphrase-protected" in t]
    if locked and not agent_keys:
        raise TransportError(
            f"{label}: the key {', '.join(locked)} is passphrase-protected and no ssh-agent "
            f"offers it (tried: {'; '.join(tried)})",
            hint=f"load it into the ssh-agent (eval $(ssh-agent); ssh-add {locked[0]}) and run again; "
            "edgeshrink never asks for passphrases",
        )
    # Only options that exist: bench/deploy/push take the key from the target.
    raise TransportError(
        f"{label}: authentication refused for user '{endpoint.user}' (tried: {'; '.join(tried)})",
        hint=f"put your public key in the device's ~/.ssh/authorized_keys (ssh-copy-id -p {endpoint.port} "
        f"{endpoint.user}@{endpoint.hostname}), load your key into the ssh-agent (ssh-add FILE), "
        "or give the target its key (`edgeshrink targets add NAME --host HOST --profile ID --key FILE --force`)",
    )


@dataclass
class _Connection:
    transport: paramiko.Transport
    hops: list[paramiko.Transport]
    host_key: HostKeyCheck
    proxy: Any = None

    def close(self) -> None:
        for t in [self.transport, *reversed(self.hops)]:
            with contextlib.suppress(Exception):
                t.close()
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.close()


def connect(
    endpoint: SshEndpoint,
    *,
    accept_new: bool,
    extra_keys: tuple[str, ...] = (),
    timeout: float = CONNECT_TIMEOUT_S,
    trace: ConnectTrace | None = None,
) -> _Connection:
    """An authenticated connection to ``endpoint``, through its jump hosts if any."""
    trace = trace if trace is not None else ConnectTrace()
    hops: list[paramiko.Transport] = []
    proxy = None
    try:
        if endpoint.jump:
            previous: paramiko.Transport | None = None
            for hop_text in [h.strip() for h in endpoint.jump.split(",") if h.strip()]:
                parsed = parse_destination(hop_text)
                if parsed is None:
                    raise TransportError(f"jump host {hop_text!r} is not [user@]host[:port]")
                user, host, port = parsed
                hop = resolve_destination(
                    host, port=port, user=user, known_hosts=endpoint.known_hosts
                )
                # A hop's own ProxyJump is not followed: the chain is the one given here.
                if previous is None:
                    sock = _tcp_socket(
                        hop.hostname, hop.port, timeout, f"jump host {hop.describe()}"
                    )
                else:
                    sock = _direct_tcpip(previous, hop, timeout)
                transport, _ = _start_ssh(
                    sock,
                    hop,
                    accept_new=accept_new,
                    extra_keys=endpoint.key_files + extra_keys,
                    timeout=timeout,
                )
                hops.append(transport)
                trace.jump_hops = len(hops)
                previous = transport
            assert previous is not None
            sock = _direct_tcpip(previous, endpoint, timeout)
        elif endpoint.proxy_command:
            proxy = sock = paramiko.ProxyCommand(endpoint.proxy_command)
        else:
            sock = _tcp_socket(endpoint.hostname, endpoint.port, timeout, endpoint.describe())
        trace.stage = "tcp"
        transport, checked = _start_ssh(
            sock,
            endpoint,
            accept_new=accept_new,
            extra_keys=extra_keys,
            timeout=timeout,
            trace=trace,
        )
    except BaseException:
        for t in reversed(hops):
            with contextlib.suppress(Exception):
                t.close()
        if proxy is not None:
            with contextlib.suppress(Exception):
                proxy.close()
        raise
    return _Connection(transport, hops, checked, proxy)


def _direct_tcpip(
    via: paramiko.Transport, endpoint: SshEndpoint, timeout: float
) -> paramiko.Channel:
    try:
        return via.open_channel(
            "direct-tcpip", (endpoint.hostname, endpoint.port), ("127.0.0.1", 0), timeout=timeout
        )
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise TransportError(
            f"the jump host could not open a connection to {endpoint.hostname}:{endpoint.port}: {exc}",
            hint="check that the jump host can reach the device and allows TCP forwarding (AllowTcpForwarding)",
        ) from exc


# --------------------------------------------------------------------------- the device-side helper


def helper_command(python: str, args: list[str]) -> str:
    """``python -c`` running edgeshrink/agent/device_helper.py with ``args``.

    The file travels base64-encoded inside the command line: no quote or
    backslash in it can meet a login shell's rules.
    """
    return _quote_argv(helper_argv(python, args))


def _sh(script: str) -> str:
    """A command line that runs ``script`` with POSIX sh whatever the login shell is."""
    return "sh -c " + shlex.quote(script)


def _quote_argv(argv: list[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _close_quietly(chan: paramiko.Channel) -> None:
    """Close a channel whose connection may already be gone (closing then raises EOFError)."""
    with contextlib.suppress(Exception):
        chan.close()


def _signal_status(rc: int) -> tuple[int | None, int | None]:
    """(returncode, signal) from a shell exit status; 128+N means killed by signal N."""
    if rc < 0:
        return None, None
    if 128 < rc <= 128 + 64:
        return -(rc - 128), rc - 128
    return rc, None


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
        self._conn: _Connection | None = None
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

    def _session(self) -> paramiko.Channel:
        transport = self.connect()
        try:
            return transport.open_session(timeout=self.connect_timeout_s)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(f"{self.label}: cannot open an SSH session: {exc}") from exc

    def _exec(
        self, command: str, *, timeout_s: float, stdin: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run a short command (no process-group handling); returns (status, stdout, stderr)."""
        chan = self._session()
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
            _close_quietly(chan)

    # -- work dir

    @property
    def work_dir(self) -> str:
        if self._work_dir is None:
            raw = self.target.work_dir
            if raw.startswith("/"):
                self._work_dir = posixpath.normpath(raw)
            else:
                rc, out, err = self._exec(_sh('printf %s "$HOME"'), timeout_s=30)
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

    def _remote_path(self, remote_rel: str) -> str:
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
        return self._push(Path(local), self._remote_path(remote_rel), sha256)

    def push_artifact(self, local: Path, sha256: str) -> PushResult:
        if not _SHA256_RE.match(sha256):
            raise TransportError(f"{sha256!r} is not a sha256 hex digest")
        local = Path(local)
        return self._push(local, self._remote_path(f"models/{sha256}/{local.name}"), sha256)

    def _push(self, local: Path, remote: str, sha256: str) -> PushResult:
        """One session: the receiver locks the destination, says what it needs, takes the bytes.

        Deciding under the device-side lock is what keeps concurrent pushes of
        one file apart; "present" means the receiver checked the sha256.
        """
        start = time.perf_counter()
        try:
            size = local.stat().st_size
        except OSError as exc:
            raise TransportError(f"cannot read {local}: {exc.strerror}") from exc
        args = ["receive", remote, str(size), sha256, "1" if self.durable else "0"]
        command = _sh("exec " + helper_command(self.target.python, args))
        if openssh.wanted(size):
            # Big files: OpenSSH's C moves the bytes, to the same receiver (see openssh.py).
            pushed = openssh.push(self, local, remote, sha256, size, command, start)
            if pushed is not None:
                return pushed
        chan = self._session()
        lines = _ChannelLines(chan)
        sent = offset = 0
        try:
            # A long stall is fine while the device waits for the lock ("waiting" every few s).
            chan.settimeout(max(SEND_STALL_S, size / 20e6))
            chan.exec_command(command)
            decision = lines.next_doc(skip=("waiting",))
            if decision is None:
                raise self.helper_failed(*lines.finish(), "preparing the push")
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
            offset = self.send_offset(decision, local, remote, size)
            began = time.perf_counter()
            self.report_progress(local, remote, offset, size, 0, began)
            try:
                sent = self._stream(chan, local, remote, offset, size, began)
                chan.shutdown_write()
            except (paramiko.SSHException, EOFError, OSError) as exc:
                # The receiver may have stopped reading on purpose (a full disk): ask it why.
                self.lost(
                    lines.next_doc(timeout_s=5.0), local, remote, size,
                    f"after sending {offset + sent} of {size} bytes of {local.name}: "
                    f"{exc or type(exc).__name__}",
                    exc,
                )  # fmt: skip
            verdict = lines.next_doc()
            if verdict is None:
                raise self.helper_failed(*lines.finish(), f"receiving {local.name}")
        except TransportError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(
                f"{self.label}: connection lost while pushing {local.name}: "
                f"{exc or type(exc).__name__}",
                hint="push again: it resumes from what reached the device",
            ) from exc
        finally:
            _close_quietly(chan)
        if verdict.get("status") != "ok":
            self.push_failed(verdict, local, remote, size)
        return PushResult(
            local, remote, sha256, size, size - offset, False, time.perf_counter() - start,
            via="paramiko",
        )  # fmt: skip

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

    def _stream(
        self, chan: paramiko.Channel, local: Path, remote: str, offset: int, size: int, began: float
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
                self.report_progress(local, remote, offset + sent, size, sent, began)
        return sent

    def report_progress(
        self, local: Path, remote: str, done: int, total: int, sent: int, began: float
    ) -> None:
        if self.progress is not None:
            self.progress(
                PushProgress(local, remote, done, total, sent, time.perf_counter() - began)
            )

    def push_failed(self, doc: dict[str, Any], local: Path, remote: str, size: int) -> None:
        from edgeshrink.util import human_bytes

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
        on_line = on_stderr or self.on_stderr
        work = shlex.quote(self.work_dir)
        command = _quote_argv(argv)
        python = shlex.quote(self.target.python)
        lock = posixpath.join(self.work_dir, DEVICE_LOCK_NAME)
        launcher = "exec " + helper_command(
            self.target.python, ["launch", lock, f"{device_wait_s:g}", "--", *argv]
        )
        script = (
            f"cd -- {work} 2>/dev/null || {{ mkdir -p -- {work} && cd -- {work}; }} || "
            f"{{ printf '{_WORKDIR_MARKER.decode()}' >&2; exit 125; }}\n"
            f"if command -v {python} >/dev/null 2>&1; then {launcher}\n"
            f"elif command -v setsid >/dev/null 2>&1; then setsid {command} </dev/null &\n"
            f"else {command} </dev/null &\nfi\n"
            'pid=$!\nprintf "@@edgeshrink-pid=%s\\n" "$pid" >&2\nwait "$pid"\nexit $?\n'
        )
        chan = self._session()
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
            chan.exec_command(_sh(script))
            # Until the command starts, the launcher may be waiting for the device lock.
            deadline = time.monotonic() + device_wait_s + timeout_s + 5
            started = False
            while True:
                drain()
                if pid and not started:
                    started, deadline = True, time.monotonic() + timeout_s
                if (
                    chan.exit_status_ready()
                    and not chan.recv_ready()
                    and not chan.recv_stderr_ready()
                ):
                    break
                if chan.closed or not chan.get_transport().is_active():
                    drain()
                    if chan.exit_status_ready():
                        break
                    raise TransportError(
                        f"{self.label}: connection lost while running {argv[0]}",
                        hint="check the device and network; the launcher ends the command "
                        "when its session is gone",
                    )
                if time.monotonic() > deadline:
                    timed_out = True
                    self._stop(pid, chan, wait_exit)
                    break
                select.select([chan], [], [], 0.1)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            _close_quietly(chan)
            if isinstance(exc, TransportError):
                raise
            raise TransportError(
                f"{self.label}: connection lost while running {argv[0]}: {exc}"
            ) from exc
        except BaseException:
            # Ctrl-C, or a callback that raised: the remote command must not outlive us.
            with contextlib.suppress(Exception):
                self._stop(pid, chan, wait_exit)
            _close_quietly(chan)
            raise
        drain()
        if pending:
            take_stderr(b"\n")
        status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        _close_quietly(chan)
        if status == 125 and _WORKDIR_MARKER in tail:
            raise TransportError(
                f"{self.label}: cannot create or enter the work dir {self.work_dir}: "
                f"{tail.decode('utf-8', 'replace').replace(_WORKDIR_MARKER.decode(), '').strip()}",
                hint="give the target a work_dir the SSH user can write (`targets add ... --work-dir`)",
            )
        if exit_doc.get("status") == "busy":
            message, hint = device_busy_message(self.label, exit_doc, device_wait_s)
            raise TransportError(message, hint=hint)
        if exit_doc.get("status") == "lock_failed":
            raise TransportError(
                f"{self.label}: cannot write the device lock {exit_doc.get('path')}: "
                f"{exit_doc.get('error')}",
                hint="give the target a work_dir the SSH user can write "
                "(`edgeshrink targets add NAME ... --work-dir PATH`)",
            )
        if status == 1 and not pid and not exit_doc and _HELPER_BROKE.search(tail):
            raise self.helper_failed(status, bytes(tail), f"starting {argv[0]}")
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
        self, pid: list[int], chan: paramiko.Channel, wait_exit: Callable[[float], bool]
    ) -> None:
        """SIGTERM the remote process group, then SIGKILL; return once the launcher says it is gone."""
        if not pid:
            wait_exit(1.0)  # the marker may still be on its way
        if not pid:
            _close_quietly(chan)  # EOF: the launcher ends whatever it started
            return
        for sig, grace in (("TERM", TERM_GRACE_S), ("KILL", TERM_GRACE_S)):
            with contextlib.suppress(Exception):
                chan.sendall(sig.encode() + b"\n")  # the launcher signals its group
            self._kill(pid[0], sig)  # a device without Python: the shell's group
            if wait_exit(grace):
                return
        _close_quietly(chan)

    def _kill(self, pid: int, sig: str) -> None:
        # "kill -SIG -PGID", not "kill -SIG -- -PGID": dash's kill does not take "--".
        script = f"kill -{sig} -{pid} 2>/dev/null || kill -{sig} {pid} 2>/dev/null; exit 0"
        with contextlib.suppress(TransportError):
            self._exec(_sh(script), timeout_s=15)
