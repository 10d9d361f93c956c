"""Reaching a device over SSH with paramiko: TCP, the handshake, the host key check,
keys, jump hosts (see ssh.py's docstring, "Connection")."""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from edgeshrink.errors import TransportError
from edgeshrink.targets import SshEndpoint, parse_destination, resolve_destination
from edgeshrink.transport.ssh_hostkeys import (
    HostKeyCheck,
    fingerprint_sha256,
    known_hosts_name,
    read_known_keys,
    user_known_hosts_files,
    verify_host_key,
)

# paramiko logs a traceback for every connection that fails in its thread;
# ours becomes one TransportError line instead (EDGESHRINK_DEBUG shows the cause).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
CIPHER_PREFERENCE = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "aes192-ctr",
)
MAC_PREFERENCE = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


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
class SshConnection:
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
) -> SshConnection:
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
    return SshConnection(transport, hops, checked, proxy)


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


def close_quietly(chan: paramiko.Channel) -> None:
    """Close a channel whose connection may already be gone (closing then raises EOFError)."""
    with contextlib.suppress(Exception):
        chan.close()
