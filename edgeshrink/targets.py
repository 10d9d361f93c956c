"""Targets: how to reach one device, and which hardware profile it is.

``local`` is built in: this machine, treated exactly like a remote device (its
own work dir, the agent in its own process).  Other targets are TOML files in
the user's config dir (``targets add`` writes them, see the SSH issue) or in a
directory named by ``EDGESHRINK_TARGETS_PATH``; targets/example-*.toml in the
repository show the format.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import TargetError

LOCAL = "local"
KINDS = ("local", "ssh")
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


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    profile: str | None = None
    host: str | None = None
    port: int = 22
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
        return f"{user}{self.host}:{self.port}"


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


def target_dirs() -> list[Path]:
    dirs = [
        Path(p).expanduser()
        for p in os.environ.get("EDGESHRINK_TARGETS_PATH", "").split(os.pathsep)
        if p
    ]
    import platformdirs

    dirs.append(platformdirs.user_config_path("edgeshrink") / "targets")
    return dirs


def _tomllib() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def load_target_file(path: str | os.PathLike[str]) -> Target:
    path = Path(path)
    tomllib = _tomllib()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}", hint="fix the file's syntax") from exc
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
    if doc["name"] == LOCAL and doc["kind"] != LOCAL:
        raise TargetError(f"{path}: the name 'local' is reserved for this machine")
    if not 0 < int(doc.get("port", 22)) < 65536:
        raise TargetError(f"{path}: port must be 1-65535, got {doc['port']}")
    fields = dict(doc)
    fields["tags"] = tuple(str(t) for t in doc.get("tags", ()))
    if doc["kind"] == LOCAL:
        fields.setdefault("python", sys.executable)
        fields.setdefault("work_dir", str(local_work_dir()))
    return Target(**fields, source=str(path))


def list_targets() -> list[Target]:
    found: dict[str, Target] = {LOCAL: local_target()}
    for folder in reversed(target_dirs()):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            target = load_target_file(path)
            found[target.name] = target
    return sorted(found.values(), key=lambda t: (t.name != LOCAL, t.name))


def get_target(name: str, *, profile: str | None = None) -> Target:
    """A target by name (or a path to a target TOML); ``profile`` overrides its profile."""
    if name.endswith(".toml") and Path(name).exists():
        target = load_target_file(name)
    else:
        targets = {t.name: t for t in list_targets()}
        if name not in targets:
            close = difflib.get_close_matches(name, list(targets), n=1)
            raise TargetError(
                f"unknown target '{name}'",
                hint=(f"did you mean '{close[0]}'? " if close else "")
                + "`edgeshrink targets list` shows the known targets",
            )
        target = targets[name]
    if profile:
        from dataclasses import replace

        target = replace(target, profile=profile)
    return target
