"""SSH host keys: OpenSSH's known_hosts files, read and written, and the check of a
device's key (the rules are in ssh.py's docstring, "Host keys")."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import paramiko

from edgeshrink.errors import TransportError
from edgeshrink.targets import SshEndpoint
from edgeshrink.util import atomic_path

USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")


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
