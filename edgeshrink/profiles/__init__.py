"""Hardware profiles: one TOML file per device, loaded, validated and budgeted.

A profile says what a device is (CPU, ISA features, RAM, memory bandwidth,
accelerators) and what edgeshrink should do for it by default (formats and
runtimes in order of preference, threads, default quantization per format,
how much memory a model may take).  The files live in ``hardware-profiles/``;
users add or override profiles in their own directories.

Validation is strict on purpose: a typo in a profile would otherwise turn into
a silently wrong memory budget or quantization choice much later.  Every
problem is reported as one :class:`~edgeshrink.errors.ProfileError` naming the
file and the field.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeshrink.errors import ProfileError
from edgeshrink.profiles.reader import ProfileReader, closest, describe_value, display_path
from edgeshrink.profiles.types import (
    ACCELERATOR_KINDS,
    ARCHES,
    FORMATS,
    PROFILES_PATH_ENV,
    Accelerator,
    CpuSpec,
    HardwareProfile,
    Price,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = [
    "ACCELERATOR_KINDS",
    "ARCHES",
    "BUILTIN_PROFILES_DIR",
    "FORMATS",
    "PROFILES_PATH_ENV",
    "Accelerator",
    "CpuSpec",
    "HardwareProfile",
    "Price",
    "ProfileScan",
    "closest",
    "describe_value",
    "display_path",
    "get_profile",
    "list_profiles",
    "load_profile_file",
    "profile_dirs",
    "scan_profiles",
]


def _builtin_profiles_dir() -> Path:
    """The profiles shipped with edgeshrink.

    A source checkout or editable install has them beside the package, in the
    top-level ``hardware-profiles/``; a wheel carries a copy as package data.
    """
    beside_package = Path(__file__).resolve().parent.parent.parent / "hardware-profiles"
    if beside_package.is_dir():
        return beside_package
    return Path(str(importlib.resources.files("edgeshrink") / "data" / "hardware-profiles"))


BUILTIN_PROFILES_DIR: Path = _builtin_profiles_dir()


# --------------------------------------------------------------------------- public API


def load_profile_file(path: str | os.PathLike[str]) -> HardwareProfile:
    """Load and validate one profile file; any problem raises one ProfileError."""
    path = Path(path)
    reader = ProfileReader(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(
            f"{reader.where}: cannot read hardware profile: {exc.strerror or exc}",
            hint="check the path; `edgeshrink profiles list` shows the known profiles",
        ) from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"{reader.where}: not UTF-8 text (byte {exc.start})",
            hint="save the profile as UTF-8",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line N, column M)".
        raise ProfileError(
            f"{reader.where}: invalid TOML: {exc}",
            hint="fix the syntax at that line; strings need quotes, tables need [brackets]",
        ) from exc
    return reader.read(doc)


def _user_config_profiles_dir() -> Path:
    import platformdirs  # only needed when profiles are looked up

    return platformdirs.user_config_path("edgeshrink") / "hardware-profiles"


def profile_dirs(extra: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Directories searched for profiles, highest precedence first.

    ``extra`` directories, then each entry of ``$EDGESHRINK_PROFILES_PATH``
    (``os.pathsep``-separated), then the user's config directory if it
    exists, then the built-in profiles.
    """
    candidates = [Path(d) for d in extra]
    env_value = os.environ.get(PROFILES_PATH_ENV, "")
    candidates += [Path(entry) for entry in env_value.split(os.pathsep) if entry.strip()]
    user_dir = _user_config_profiles_dir()
    if user_dir.is_dir():
        candidates.append(user_dir)
    candidates.append(BUILTIN_PROFILES_DIR)

    dirs: list[Path] = []
    seen: set[Path] = set()
    for directory in candidates:
        try:
            key = directory.expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # Python < 3.13 raises RuntimeError for a loop
            raise ProfileError(
                f"{directory}: cannot be resolved ({exc}): a symlink loop?",
                hint=f"point --profiles-dir / ${PROFILES_PATH_ENV} at a real directory",
            ) from exc
        if key not in seen:
            seen.add(key)
            dirs.append(directory.expanduser())
    return dirs


def _searchable_dirs(extra: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """profile_dirs(), refusing a directory the user named that does not exist."""
    dirs = profile_dirs(extra)
    for directory in dirs:
        if directory.is_dir() or directory == BUILTIN_PROFILES_DIR:
            continue
        if directory.exists():
            raise ProfileError(
                f"{directory}: not a directory of hardware profiles",
                hint=f"check --profiles-dir and ${PROFILES_PATH_ENV}",
            )
        raise ProfileError(
            f"{directory}: hardware profile directory does not exist",
            hint=f"create it or fix --profiles-dir / ${PROFILES_PATH_ENV}",
        )
    return [d for d in dirs if d.is_dir()]


@dataclass(frozen=True)
class ProfileScan:
    """Every good profile, and the files that are not good profiles."""

    profiles: tuple[HardwareProfile, ...]
    problems: tuple[ProfileError, ...]


def scan_profiles(extra: Iterable[str | os.PathLike[str]] = ()) -> ProfileScan:
    """Like list_profiles, but a malformed file is a problem in the result, not an error:
    one bad file does not hide the good ones.  A broken file still shadows a profile of
    the same id in a directory of lower precedence, so nothing silently stands in for it."""
    by_id: dict[str, HardwareProfile] = {}
    claimed: set[str] = set()
    problems: list[ProfileError] = []
    for directory in _searchable_dirs(extra):
        for path in sorted(directory.glob("*.toml")):
            if path.stem in claimed:
                continue
            claimed.add(path.stem)
            try:
                profile = load_profile_file(path)
            except ProfileError as exc:
                problems.append(exc)
                continue
            by_id.setdefault(profile.id, profile)
    return ProfileScan(tuple(by_id[key] for key in sorted(by_id)), tuple(problems))


def list_profiles(extra: Iterable[str | os.PathLike[str]] = ()) -> list[HardwareProfile]:
    """Every profile, sorted by id; a profile in a user directory overrides a built-in one.

    A malformed file raises ProfileError rather than being skipped, so a user
    never benchmarks against a profile they did not mean.
    """
    by_id: dict[str, HardwareProfile] = {}
    for directory in _searchable_dirs(extra):
        for path in sorted(directory.glob("*.toml")):
            profile = load_profile_file(path)
            by_id.setdefault(profile.id, profile)
    return [by_id[key] for key in sorted(by_id)]


def _looks_like_path(id_or_path: str | os.PathLike[str]) -> bool:
    if not isinstance(id_or_path, str):
        return True
    return id_or_path.endswith(".toml") or "/" in id_or_path or os.sep in id_or_path


def get_profile(
    id_or_path: str | os.PathLike[str], extra: Iterable[str | os.PathLike[str]] = ()
) -> HardwareProfile:
    """A profile by id (searched in profile_dirs()) or by the path of a .toml file."""
    if _looks_like_path(id_or_path):
        path = Path(id_or_path).expanduser()
        if not path.is_file():
            raise ProfileError(
                f"hardware profile file not found: {path}",
                hint="give a profile id or the path of an existing .toml file; "
                "`edgeshrink profiles list` shows all",
            )
        return load_profile_file(path)

    profile_id = str(id_or_path)
    dirs = _searchable_dirs(extra)
    for directory in dirs:
        candidate = directory / f"{profile_id}.toml"
        if candidate.is_file():
            return load_profile_file(candidate)

    known = sorted({path.stem for directory in dirs for path in directory.glob("*.toml")})
    suggestions = difflib.get_close_matches(profile_id, known, n=1, cutoff=0.5)
    if suggestions:
        hint = f"did you mean '{suggestions[0]}'? `edgeshrink profiles list` shows all"
    else:
        hint = "`edgeshrink profiles list` shows all"
    raise ProfileError(f"unknown hardware profile '{profile_id}'", hint=hint)
