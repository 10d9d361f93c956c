"""Targets: how to reach one device, and which hardware profile it is.

``local`` is built in: this machine, treated exactly like a remote device (its
own work dir, the agent in its own process).  Other targets are TOML files in
the user's config dir (``targets add`` writes them) or in a directory named by
``EDGESHRINK_TARGETS_PATH``; targets/example-*.toml in the repository show the
format.

Wherever a target name is accepted, an SSH destination works too:
``user@host[:port]`` (``user@[::1]:2222`` for IPv6), or a ``Host`` alias of
``~/.ssh/config``.  At connection time the target's fields are completed from
``~/.ssh/config`` (HostName, User, Port, IdentityFile, ProxyJump,
ProxyCommand): what the target file says wins, except that ``port = 22`` counts
as "not set" because it is the default.
"""

from __future__ import annotations

import difflib
import getpass
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.errors import TargetError
from edgeshrink.util import atomic_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

LOCAL = "local"
KINDS = ("local", "ssh")
DEFAULT_SSH_PORT = 22
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "kind": str,
    "profile": str,
    "host": str,
    "port": int,
    "user": str,
    "key": str,
    "known_hosts": str,
    "python": str,
    "work_dir": str,
    "jump": str,
    "tags": list,
}
_REQUIRED = ("name", "kind")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# [user@]host[:port] with host a name, an IPv4 address or a bracketed IPv6 address.
_DESTINATION_RE = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[^@\s/:]+)@)?(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?$"
)


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    profile: str | None = None
    host: str | None = None
    port: int = DEFAULT_SSH_PORT
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = None
    python: str = "python3"
    work_dir: str = "~/edgeshrink"
    jump: str | None = None
    tags: tuple[str, ...] = ()
    source: str | None = None
    # Set per command (--accept-new-host-key), never stored in a target file.
    accept_new_host_key: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.kind == LOCAL:
            return "this machine"
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        via = f" via {self.jump}" if self.jump else ""
        return f"{user}{host}:{self.port}{via}"


@dataclass(frozen=True)
class SshEndpoint:
    """Where an SSH target really goes, after ~/.ssh/config has been applied."""

    alias: str  # what the target (or the user) called the host
    hostname: str  # what is connected to
    port: int
    user: str
    key_files: tuple[str, ...]  # explicit key first, then IdentityFile entries
    jump: str | None  # ProxyJump: "[user@]host[:port]", comma-separated hops
    proxy_command: str | None
    known_hosts: str  # edgeshrink's file for this target (accepted keys go here)
    config_file: str | None  # the ssh config that contributed, if any

    def describe(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"


def local_work_dir() -> Path:
    env = os.environ.get("EDGESHRINK_LOCAL_WORKDIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("edgeshrink") / "local-device"


def local_target(profile: str | None = None) -> Target:
    return Target(
        name=LOCAL,
        kind=LOCAL,
        profile=profile,
        python=sys.executable,
        work_dir=str(local_work_dir()),
        source="built-in",
    )


def user_config_dir() -> Path:
    import platformdirs

    return platformdirs.user_config_path("edgeshrink")


def user_targets_dir() -> Path:
    """Where `targets add` writes (and `targets remove` deletes) target files."""
    return user_config_dir() / "targets"


def default_known_hosts() -> Path:
    """edgeshrink's own known_hosts: host keys accepted with --accept-new-host-key."""
    return user_config_dir() / "known_hosts"


def target_dirs() -> list[Path]:
    dirs = [
        Path(p).expanduser()
        for p in os.environ.get("EDGESHRINK_TARGETS_PATH", "").split(os.pathsep)
        if p
    ]
    dirs.append(user_targets_dir())
    return dirs


def load_target_file(path: str | os.PathLike[str]) -> Target:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TargetError(
            f"{path}: not UTF-8 text (byte {exc.start}): not a target file",
            hint="a target file is TOML text, see targets/example-*.toml",
        ) from exc
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}", hint="fix the file's syntax") from exc
    if "name" not in doc and ("device" in doc or "defaults" in doc):
        raise TargetError(
            f"{path}: a lab inventory ([[device]] entries), not a target file",
            hint=f"use it with `edgeshrink lab run --inventory {path}`",
        )
    for key, value in doc.items():
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            raise TargetError(
                f"{path}: unknown key '{key}'",
                hint=f"did you mean '{close[0]}'?"
                if close
                else f"known keys: {', '.join(_FIELDS)}",
            )
        expected = _FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            names = (
                expected.__name__
                if isinstance(expected, type)
                else "/".join(t.__name__ for t in expected)
            )
            raise TargetError(
                f"{path}: {key} must be {names}, got {type(value).__name__} {value!r}"
            )
    for key in _REQUIRED:
        if key not in doc:
            raise TargetError(f"{path}: missing required key '{key}'")
    if doc["kind"] not in KINDS:
        raise TargetError(f"{path}: kind must be one of {', '.join(KINDS)}, got {doc['kind']!r}")
    if doc["kind"] == "ssh" and not doc.get("host"):
        raise TargetError(f"{path}: an ssh target needs 'host'")
    if doc["name"] == LOCAL:
        # A file would silently replace the built-in target every command falls back to.
        raise TargetError(
            f"{path}: the name 'local' is reserved for the built-in target (this machine)",
            hint='give it another name (name = "bench-box"); kind = "local" makes it this machine',
        )
    if not 0 < int(doc.get("port", DEFAULT_SSH_PORT)) < 65536:
        raise TargetError(f"{path}: port must be 1-65535, got {doc['port']}")
    fields = dict(doc)
    fields["tags"] = tuple(str(t) for t in doc.get("tags", ()))
    if doc["kind"] == LOCAL:
        fields.setdefault("python", sys.executable)
        fields.setdefault("work_dir", str(local_work_dir()))
    return Target(**fields, source=str(path))


@dataclass(frozen=True)
class TargetScan:
    """The targets of every target directory, and the files that could not be read."""

    targets: tuple[Target, ...]
    problems: tuple[tuple[Path, TargetError], ...]


def scan_targets() -> TargetScan:
    """Every target, and one problem per file that is not a good target file: one bad
    file (or the lab inventory beside the examples) does not hide the others."""
    found: dict[str, Target] = {LOCAL: local_target()}
    problems: list[tuple[Path, TargetError]] = []
    for folder in reversed(target_dirs()):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                target = load_target_file(path)
            except TargetError as exc:
                problems.append((path, exc))
                continue
            found[target.name] = target
    ordered = sorted(found.values(), key=lambda t: (t.name != LOCAL, t.name))
    return TargetScan(tuple(ordered), tuple(problems))


def list_targets() -> list[Target]:
    """The good targets (see scan_targets for the files that are not)."""
    return list(scan_targets().targets)


# --------------------------------------------------------------------------- SSH destinations


def parse_destination(text: str) -> tuple[str | None, str, int | None] | None:
    """``[ssh://][user@]host[:port]`` as (user, host, port); None when it is not one."""
    match = _DESTINATION_RE.match(text.strip())
    if match is None:
        return None
    host = match.group("host")
    if host.startswith("["):
        host = host[1:-1]
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise TargetError(f"{text}: port must be 1-65535, got {port}")
    return match.group("user"), host, port


def ssh_config_path() -> Path:
    return Path(os.environ.get("EDGESHRINK_SSH_CONFIG") or "~/.ssh/config").expanduser()


def _ssh_config() -> Any | None:
    path = ssh_config_path()
    if not path.is_file():
        return None
    import paramiko

    try:
        return paramiko.SSHConfig.from_path(str(path))
    except Exception as exc:  # paramiko raises several types for bad files
        raise TargetError(
            f"{path}: cannot parse: {exc}",
            hint="fix the file, or point EDGESHRINK_SSH_CONFIG elsewhere",
        ) from exc


def ssh_config_aliases() -> set[str]:
    """The literal (non-wildcard) Host names of ~/.ssh/config."""
    config = _ssh_config()
    if config is None:
        return set()
    return {h for h in config.get_hostnames() if not any(c in h for c in "*?!")}


def _adhoc_target(name: str, profile: str | None) -> Target | None:
    """A target given on the command line as user@host[:port] or an ssh config alias."""
    parsed = parse_destination(name)
    if parsed is None:
        return None
    user, host, port = parsed
    explicit = user is not None or port is not None or name.startswith("ssh://")
    if not explicit and host not in ssh_config_aliases():
        return None
    return Target(
        name=name,
        kind="ssh",
        profile=profile,
        host=host,
        port=port or DEFAULT_SSH_PORT,
        user=user,
        source="command line",
    )


def get_target(name: str, *, profile: str | None = None) -> Target:
    """A target by name, path to a target TOML, ``user@host[:port]`` or ssh config alias.

    ``profile`` overrides the target's profile.
    """
    if name.endswith(".toml") and Path(name).exists():
        target = load_target_file(name)
    else:
        scan = scan_targets()
        targets = {t.name: t for t in scan.targets}
        if name in targets:
            target = targets[name]
        else:
            for path, problem in scan.problems:
                if path.stem == name:
                    raise problem  # the file of that name is broken: say why
            adhoc = _adhoc_target(name, profile)
            if adhoc is None:
                close = difflib.get_close_matches(name, list(targets), n=1)
                raise TargetError(
                    f"unknown target '{name}'",
                    hint=(f"did you mean '{close[0]}'? " if close else "")
                    + "`edgeshrink targets list` shows the known targets; "
                    "user@host[:port] reaches a device without a target file",
                )
            target = adhoc
    if profile:
        target = replace(target, profile=profile)
    return target


def resolve_ssh(target: Target) -> SshEndpoint:
    """Complete an SSH target from ~/.ssh/config: the endpoint a connection really uses."""
    if target.kind != "ssh" or not target.host:
        raise TargetError(f"target '{target.name}' is not an SSH target")
    return resolve_destination(
        target.host,
        port=target.port if target.port != DEFAULT_SSH_PORT else None,
        user=target.user,
        key=target.key,
        jump=target.jump,
        known_hosts=target.known_hosts,
    )


def resolve_destination(
    host: str,
    *,
    port: int | None = None,
    user: str | None = None,
    key: str | None = None,
    jump: str | None = None,
    known_hosts: str | None = None,
) -> SshEndpoint:
    """``host`` (a name, address or ssh config alias) completed from ~/.ssh/config."""
    config = _ssh_config()
    options: dict[str, Any] = dict(config.lookup(host)) if config is not None else {}
    try:
        config_port = int(options["port"]) if "port" in options else None
    except ValueError as exc:
        raise TargetError(
            f"{ssh_config_path()}: Port for {host} is not a number: {options['port']}"
        ) from exc
    keys: list[str] = []
    if key:
        keys.append(str(Path(key).expanduser()))
    for entry in options.get("identityfile", []) or []:
        path = str(Path(entry).expanduser())
        if path not in keys:
            keys.append(path)
    config_jump = options.get("proxyjump")
    if config_jump and config_jump.strip().lower() == "none":
        config_jump = None
    proxy_command = options.get("proxycommand")
    if proxy_command and proxy_command.strip().lower() == "none":
        proxy_command = None
    return SshEndpoint(
        alias=host,
        hostname=options.get("hostname") or host,
        port=port or config_port or DEFAULT_SSH_PORT,
        user=user or options.get("user") or getpass.getuser(),
        key_files=tuple(keys),
        jump=jump or config_jump,
        proxy_command=None if (jump or config_jump) else proxy_command,
        known_hosts=str(Path(known_hosts).expanduser())
        if known_hosts
        else str(default_known_hosts()),
        config_file=str(ssh_config_path()) if config is not None else None,
    )


# --------------------------------------------------------------------------- target files


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def render_target_toml(target: Target) -> str:
    lines = ["# Written by `edgeshrink targets add`; edit freely (see targets/example-*.toml)."]
    for key in _FIELDS:
        value = getattr(target, key)
        if value is None or (key == "tags" and not value):
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def validate_target_name(name: str) -> None:
    if name == LOCAL:
        raise TargetError("the name 'local' is reserved for this machine", hint="pick another name")
    if not _NAME_RE.match(name):
        raise TargetError(
            f"target name {name!r} must start with a letter or digit and use only letters, digits, '.', '_' and '-'",
            hint="e.g. mypi, pi5-desk, lab.rk3588",
        )


def _write_target(target: Target, path: Path) -> Path:
    text = render_target_toml(target)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    # The file now says what a later load will see: check it round-trips.
    loaded = load_target_file(path)
    if replace(loaded, source=None) != replace(target, source=None, accept_new_host_key=False):
        raise TargetError(f"{path}: written file does not read back as the same target")
    return path


def build_ssh_target(
    name: str,
    *,
    host: str,
    profile: str | None,
    port: int | None = None,
    user: str | None = None,
    key: str | None = None,
    python: str | None = None,
    work_dir: str | None = None,
    jump: str | None = None,
    known_hosts: str | None = None,
    tags: tuple[str, ...] = (),
) -> Target:
    """The Target `targets add` would write (nothing is written)."""
    validate_target_name(name)
    if not host or any(c.isspace() for c in host):
        raise TargetError(f"host {host!r} is not a host name or address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if port is not None and not 0 < port < 65536:
        raise TargetError(f"port must be 1-65535, got {port}")
    if key and not Path(key).expanduser().is_file():
        raise TargetError(
            f"key file {key} does not exist", hint="pass the private key file (not the .pub)"
        )
    return Target(
        name=name,
        kind="ssh",
        profile=profile,
        host=host,
        port=port or DEFAULT_SSH_PORT,
        user=user,
        key=key,
        known_hosts=known_hosts,
        python=python or "python3",
        work_dir=work_dir or "~/edgeshrink",
        jump=jump,
        tags=tuple(tags),
    )


def target_file_path(name: str) -> Path:
    """The file user target ``name`` would have; a name that is a path (``../x``) is
    refused, so no command reads, writes or deletes outside the targets directory."""
    if name in ("", ".", "..") or any(c in name for c in {"/", "\\", os.sep, "\0"}):
        raise TargetError(
            f"target name {name!r} is a path, not a name: target names use letters, digits, "
            "'.', '_' and '-'",
            hint="`edgeshrink targets list` shows the known targets",
        )
    return user_targets_dir() / f"{name}.toml"


def add_target(target: Target, *, force: bool = False) -> Path:
    """Write ``target`` to the user's targets dir (atomically); returns the file."""
    validate_target_name(target.name)
    path = target_file_path(target.name)
    existing = {t.name: t for t in list_targets()}
    if not force:
        if path.exists():
            raise TargetError(
                f"target '{target.name}' already exists ({path})",
                hint="pass --force to replace it, or `edgeshrink targets remove` it first",
            )
        other = existing.get(target.name)
        if other is not None and other.source and Path(other.source) != path:
            raise TargetError(
                f"target '{target.name}' is already defined in {other.source}",
                hint="pick another name, or pass --force to shadow it with a user target",
            )
    return _write_target(replace(target, source=None, accept_new_host_key=False), path)


def update_target(name: str, **fields: Any) -> Path:
    """Change fields of a target file that edgeshrink wrote (in the user's targets dir)."""
    path = target_file_path(name)
    if not path.is_file():
        raise TargetError(
            f"target '{name}' has no file in {user_targets_dir()} that edgeshrink may rewrite",
            hint=f"edit the target's file by hand and set {', '.join(f'{k} = {v!r}' for k, v in fields.items())}",
        )
    target = load_target_file(path)
    return _write_target(replace(target, **fields, source=None), path)


def remove_target(name: str) -> Path:
    """Delete a user target file; returns the path it had."""
    if name == LOCAL:
        raise TargetError(
            "'local' is the built-in target (this machine): it has no file to remove",
            hint="`edgeshrink targets list` shows the targets that have files",
        )
    if not _NAME_RE.match(name):  # `targets add` wrote no such name
        raise TargetError(
            f"target name {name!r} must start with a letter or digit and use only letters, "
            "digits, '.', '_' and '-'",
            hint="`edgeshrink targets list` shows the known targets",
        )
    path = target_file_path(name)
    if path.is_file():
        path.unlink()
        return path
    for target in list_targets():
        if target.name == name:
            raise TargetError(
                f"target '{name}' is defined in {target.source}, not in {user_targets_dir()}",
                hint="edgeshrink only removes targets it wrote; delete or edit that file yourself",
            )
    names = [t.name for t in list_targets()]
    close = difflib.get_close_matches(name, names, n=1)
    raise TargetError(
        f"unknown target '{name}'",
        hint=(f"did you mean '{close[0]}'? " if close else "")
        + "`edgeshrink targets list` shows the known targets",
    )
