"""Reading the lab's TOML files: the document, and typed fields whose errors name file and field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from edgeshrink.errors import LabConfigError
from edgeshrink.profiles import closest, describe_value, display_path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def read_toml(path: Path, text: str | None, what: str) -> tuple[str, dict[str, Any]]:
    where = display_path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise LabConfigError(f"{where}: {what} file not found", hint="check the path") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise LabConfigError(f"{where}: cannot read the {what}: {exc}") from exc
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LabConfigError(
            f"{where}: invalid TOML: {exc}",
            hint="fix the syntax at that line; strings need quotes, [[device]] / [[job]] start an entry",
        ) from exc


class FieldReader:
    """Typed access to one table of a TOML document; every failure names file and field."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = display_path(path)

    def fail(self, message: str, hint: str | None = None) -> NoReturn:
        raise LabConfigError(f"{self.where}: {message}", hint=hint)

    def keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                close = closest(key, allowed)
                self.fail(
                    f"unknown key '{prefix}{key}'" + (f" (did you mean '{prefix}{close}'?)" if close else ""),
                    hint=f"valid keys here: {', '.join(allowed)}",
                )  # fmt: skip

    def table(self, doc: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            self.fail(
                f"{prefix}{key} must be a table ([{prefix}{key}]), got {describe_value(value)}"
            )
        return value

    def entry_name(
        self, entry: dict[str, Any], table: str, index: int, known: tuple[str, ...]
    ) -> str:
        """The ``name`` of the ``index``-th ``[[table]]`` entry, checked with its keys (named
        in messages once the name is known)."""
        prefix = f"{table}[{index}]."
        name = self.string(entry, "name", prefix)
        if name is not None and NAME_RE.match(name):
            self.keys(entry, known, f"{table}[{index}] ({name}).")
        self.keys(entry, known, prefix)
        if name is None:
            self.fail(f"{table}[{index}] has no name", hint=f'every [[{table}]] needs name = "..."')
        if not NAME_RE.match(name):
            self.fail(
                f"{prefix}name {name!r}: start with a letter or digit; use letters, digits, '.', '_', '-'"
            )
        return name

    def string(self, table: Mapping[str, Any], key: str, prefix: str, default: Any = None) -> Any:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, str):
            self.fail(f"{prefix}{key} must be a string, got {describe_value(value)}")
        if not value.strip():
            self.fail(f"{prefix}{key} must not be empty")
        return value

    def integer(
        self, table: Mapping[str, Any], key: str, prefix: str, default: Any = None, *, minimum: int
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{prefix}{key} must be an integer, got {describe_value(value)}")
        if value < minimum:
            self.fail(f"{prefix}{key} must be at least {minimum}, got {value}")
        return value

    def number(
        self,
        table: Mapping[str, Any],
        key: str,
        prefix: str,
        default: Any = None,
        *,
        minimum: float = 0.0,
        maximum: float | None = None,
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"{prefix}{key} must be a number, got {describe_value(value)}")
        if not math.isfinite(value):
            # TOML has nan and inf: a NaN wait never ends, a NaN alpha never decides.
            self.fail(f"{prefix}{key} must be a finite number, got {value}")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = (
                f"between {minimum:g} and {maximum:g}"
                if maximum is not None
                else f"at least {minimum:g}"
            )
            self.fail(f"{prefix}{key} must be {bounds}, got {value}")
        return float(value)

    def boolean(self, table: Mapping[str, Any], key: str, prefix: str, default: Any = None) -> Any:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, bool):
            self.fail(f"{prefix}{key} must be true or false, got {describe_value(value)}")
        return value

    def strings(
        self,
        table: Mapping[str, Any],
        key: str,
        prefix: str,
        *,
        pattern: re.Pattern[str] | None = None,
    ) -> tuple[str, ...] | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, list):
            self.fail(f"{prefix}{key} must be an array of strings, got {describe_value(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.fail(
                    f"{prefix}{key}[{i}] must be a non-empty string, got {describe_value(item)}"
                )
            if pattern is not None and not pattern.match(item):
                self.fail(
                    f"{prefix}{key}[{i}] {item!r}: use letters, digits, '.', '_', ':' and '-'"
                )
        return tuple(value)

    def entries(self, doc: Mapping[str, Any], key: str, what: str) -> list[dict[str, Any]]:
        value = doc.get(key, [])
        if isinstance(value, dict):
            self.fail(f"[{key}] must be written [[{key}]] (one per {what})")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(f"{key} must be [[{key}]] tables, got {describe_value(value)}")
        if not value:
            self.fail(f"no [[{key}]] entries", hint=f"add at least one {what} as [[{key}]]")
        return value

    def resolve(self, value: str, base: Path) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
