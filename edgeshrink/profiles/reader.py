"""Reading a profile's TOML: strict on purpose, every problem one ProfileError naming
the file and the field (a typo would otherwise become a silently wrong budget)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from edgeshrink.errors import ProfileError
from edgeshrink.formats import backend
from edgeshrink.profiles.types import (
    ACCELERATOR_KINDS,
    ARCHES,
    FEATURE_RE,
    FORMATS,
    ID_RE,
    Accelerator,
    CpuSpec,
    HardwareProfile,
    Price,
)

_TOP_KEYS = {
    "id": True,
    "name": True,
    "arch": True,
    "os_notes": True,
    "ram_mb": True,
    "memory_bandwidth_gbs": True,
    "soc": True,
    "external_delegate": False,
    "sources": True,
    "cpu": True,
    "memory": True,
    "runtime": True,
    "quantization": True,
    "accelerators": False,
    "thermal": False,
    "price": False,
}
_TABLE_KEYS = frozenset({"cpu", "memory", "runtime", "quantization", "thermal", "price"})
_PRICE_KEYS = {
    "source": True, "date": True, "per_hour_usd": False, "unit_usd": False, "watts": False,
    "kwh_usd": False, "lifetime_years": False,
}  # fmt: skip
_CPU_KEYS = {
    "model": True,
    "cores": True,
    "big_cores": True,
    "little_cores": True,
    "max_mhz": True,
    "features": True,
}
_MEMORY_KEYS = {"reserved_mb": True, "budget_fraction": True}
_RUNTIME_KEYS = {"preferred_formats": True, "preferred_runtimes": True, "threads": True}
_QUANTIZATION_KEYS = {fmt: False for fmt in FORMATS}
_ACCELERATOR_KEYS = {"name": True, "kind": True, "usable_by": True, "notes": False}
_THERMAL_KEYS = {"throttle_c": True, "notes": False}

_SCHEMA_HINT = (
    "compare with a built-in profile such as raspberry-pi-5-8gb.toml "
    "(`edgeshrink profiles show raspberry-pi-5-8gb`)"
)


# --------------------------------------------------------------------------- validation


def display_path(path: Path) -> str:
    """The path as a user would type it: relative to the working directory if inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return str(path)


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def describe_value(value: object) -> str:
    """``string '4'``, ``boolean true``, ``table``: what a user wrote, shortly."""
    kind = _toml_type(value)
    if isinstance(value, dict):
        return kind
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} {shown}"


def _fold(word: str) -> str:
    # Case and the letter O for the digit 0 are the usual slips in names like "q4_O".
    return word.lower().replace("o", "0")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a user most likely meant, or None if nothing is close."""
    by_fold = {_fold(choice): choice for choice in choices}
    if _fold(word) in by_fold:
        return by_fold[_fold(word)]
    matches = difflib.get_close_matches(_fold(word), list(by_fold), n=1, cutoff=0.5)
    return by_fold[matches[0]] if matches else None


def _find_nested_key(doc: Mapping[str, Any], key: str) -> str | None:
    """Where ``key`` sits one level down (``thermal.sources``), if it does."""
    for name, value in doc.items():
        if isinstance(value, dict) and key in value:
            return f"{name}.{key}"
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict) and key in item:
                    return f"{name}[{index}].{key}"
    return None


class ProfileReader:
    """Reads one parsed TOML document into a HardwareProfile, failing on the first problem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = display_path(path)

    def fail(self, message: str, hint: str | None = None) -> NoReturn:
        raise ProfileError(f"{self.where}: {message}", hint=hint or _SCHEMA_HINT)

    # -- structure

    def check_keys(self, table: Mapping[str, Any], schema: Mapping[str, bool], prefix: str) -> None:
        for key in table:
            if key in schema:
                continue
            dotted = f"{prefix}{key}"
            if prefix and key in _TOP_KEYS:
                # A top-level key written after a [table] header lands inside that table.
                self.fail(
                    f"unknown key '{dotted}': '{key}' is a top-level key",
                    hint=f"move `{key} = ...` above the first [table] header of the file",
                )
            suggestion = closest(key, schema)
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            valid = ", ".join(schema)
            if suggestion is not None:
                self.fail(
                    f"unknown key '{dotted}' (did you mean '{prefix}{suggestion}'?)",
                    hint=f"valid keys at {where}: {valid}",
                )
            self.fail(f"unknown key '{dotted}'", hint=f"valid keys at {where}: {valid}")
        for key, required in schema.items():
            if required and key not in table:
                misplaced = _find_nested_key(table, key) if not prefix else None
                if misplaced is not None:
                    # A top-level key written after a [table] header lands inside that table.
                    self.fail(
                        f"unknown key '{misplaced}': '{key}' is a top-level key",
                        hint=f"move `{key} = ...` above the first [table] header of the file",
                    )
                if not prefix and key in _TABLE_KEYS:
                    self.fail(f"missing required table [{key}]")
                self.fail(f"missing required key '{prefix}{key}'")

    def table(self, parent: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = parent[key]
        if not isinstance(value, dict):
            self.fail(f"{prefix}{key} must be a table ([{key}]), got {describe_value(value)}")
        return value

    # -- scalars

    def string(self, table: Mapping[str, Any], key: str, prefix: str = "") -> str:
        value = table[key]
        if not isinstance(value, str):
            self.fail(f"{prefix}{key} must be a string, got {describe_value(value)}")
        if not value.strip():
            self.fail(f"{prefix}{key} must not be empty")
        return value

    def optional_string(self, table: Mapping[str, Any], key: str, prefix: str = "") -> str | None:
        if key not in table:
            return None
        return self.string(table, key, prefix)

    def integer(self, table: Mapping[str, Any], key: str, prefix: str = "", *, minimum: int) -> int:
        value = table[key]
        # bool is an int subclass in Python; `cores = true` is still a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{prefix}{key} must be an integer, got {describe_value(value)}")
        if value < minimum:
            self.fail(f"{prefix}{key} must be at least {minimum}, got {value}")
        return value

    def number(self, table: Mapping[str, Any], key: str, prefix: str = "") -> float:
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"{prefix}{key} must be a number, got {describe_value(value)}")
        if not math.isfinite(value):
            # TOML has nan and inf; either passes every range check and poisons the sums.
            self.fail(f"{prefix}{key} must be a finite number, got {value}")
        return float(value)

    def choice(
        self, table: Mapping[str, Any], key: str, choices: tuple[str, ...], prefix: str = ""
    ) -> str:
        value = self.string(table, key, prefix)
        if value not in choices:
            self._unknown_choice(f"{prefix}{key}", value, choices)
        return value

    def _unknown_choice(self, field_name: str, value: str, choices: tuple[str, ...]) -> NoReturn:
        suggestion = closest(value, choices)
        known = ", ".join(choices)
        if suggestion is not None:
            self.fail(
                f"{field_name} has unknown value '{value}' (did you mean '{suggestion}'?)",
                hint=f"one of: {known}",
            )
        self.fail(f"{field_name} has unknown value '{value}'", hint=f"one of: {known}")

    def string_list(
        self, table: Mapping[str, Any], key: str, prefix: str = "", *, allow_empty: bool
    ) -> tuple[str, ...]:
        value = table[key]
        name = f"{prefix}{key}"
        if not isinstance(value, list):
            self.fail(f"{name} must be an array of strings, got {describe_value(value)}")
        if not value and not allow_empty:
            self.fail(f"{name} must not be empty")
        seen: set[str] = set()
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{name}[{index}] must be a string, got {describe_value(item)}")
            if not item.strip():
                self.fail(f"{name}[{index}] must not be empty")
            if item in seen:
                self.fail(f"{name} lists '{item}' twice")
            seen.add(item)
        return tuple(value)

    # -- sections

    def cpu(self, doc: Mapping[str, Any]) -> CpuSpec:
        cpu = self.table(doc, "cpu")
        self.check_keys(cpu, _CPU_KEYS, "cpu.")
        model = self.string(cpu, "model", "cpu.")
        cores = self.integer(cpu, "cores", "cpu.", minimum=1)
        big = self.integer(cpu, "big_cores", "cpu.", minimum=0)
        little = self.integer(cpu, "little_cores", "cpu.", minimum=0)
        if big + little != cores:
            self.fail(
                f"cpu.big_cores + cpu.little_cores must equal cpu.cores "
                f"({big} + {little} != {cores})",
                hint="count every core once: performance cores in big_cores, "
                "efficiency cores in little_cores",
            )
        max_mhz = self.integer(cpu, "max_mhz", "cpu.", minimum=1)
        features = self.string_list(cpu, "features", "cpu.", allow_empty=False)
        for index, feature in enumerate(features):
            if feature != feature.lower():
                self.fail(
                    f"cpu.features[{index}] must be lower case as in /proc/cpuinfo, "
                    f"got '{feature}'",
                    hint=f"write '{feature.lower()}'",
                )
            if not FEATURE_RE.match(feature):
                self.fail(
                    f"cpu.features[{index}] must be one /proc/cpuinfo feature name "
                    f"(letters, digits, '_'), got '{feature}'",
                    hint="list each feature as its own string",
                )
        return CpuSpec(
            model=model,
            cores=cores,
            big_cores=big,
            little_cores=little,
            max_mhz=max_mhz,
            features=features,
        )

    def memory(self, doc: Mapping[str, Any], ram_mb: int) -> tuple[int, float]:
        memory = self.table(doc, "memory")
        self.check_keys(memory, _MEMORY_KEYS, "memory.")
        reserved = self.integer(memory, "reserved_mb", "memory.", minimum=0)
        if reserved >= ram_mb:
            self.fail(
                f"memory.reserved_mb ({reserved}) must be less than ram_mb ({ram_mb})",
                hint="reserved_mb is what the OS and services keep; the rest is for models",
            )
        fraction = self.number(memory, "budget_fraction", "memory.")
        if not 0.0 < fraction <= 1.0:
            self.fail(f"memory.budget_fraction must be in (0, 1], got {fraction}")
        return reserved, fraction

    def runtime(
        self, doc: Mapping[str, Any], cores: int
    ) -> tuple[tuple[str, ...], tuple[str, ...], int]:
        runtime = self.table(doc, "runtime")
        self.check_keys(runtime, _RUNTIME_KEYS, "runtime.")
        formats = self.string_list(runtime, "preferred_formats", "runtime.", allow_empty=False)
        for index, fmt in enumerate(formats):
            if fmt not in FORMATS:
                self._unknown_choice(f"runtime.preferred_formats[{index}]", fmt, FORMATS)
        runtimes = self.string_list(runtime, "preferred_runtimes", "runtime.", allow_empty=False)
        threads = self.integer(runtime, "threads", "runtime.", minimum=1)
        if threads > cores:
            self.fail(f"runtime.threads ({threads}) must not exceed cpu.cores ({cores})")
        return formats, runtimes, threads

    def quantization(
        self, doc: Mapping[str, Any], formats: tuple[str, ...]
    ) -> tuple[tuple[str, str], ...]:
        quant = self.table(doc, "quantization")
        self.check_keys(quant, _QUANTIZATION_KEYS, "quantization.")
        pairs = []
        for fmt in FORMATS:
            if fmt in quant:
                pairs.append(
                    (fmt, self.choice(quant, fmt, backend(fmt).quant_types, "quantization."))
                )
        for fmt in formats:
            if fmt not in quant:
                self.fail(
                    f"missing required key 'quantization.{fmt}' "
                    f"('{fmt}' is in runtime.preferred_formats)",
                    hint=f"one of: {', '.join(backend(fmt).quant_types)}",
                )
        return tuple(pairs)

    def accelerators(self, doc: Mapping[str, Any]) -> tuple[Accelerator, ...]:
        if "accelerators" not in doc:
            return ()
        value = doc["accelerators"]
        if not isinstance(value, list):
            self.fail(
                f"accelerators must be an array of tables ([[accelerators]]), got {describe_value(value)}"
            )
        found = []
        for index, entry in enumerate(value):
            prefix = f"accelerators[{index}]."
            if not isinstance(entry, dict):
                self.fail(f"accelerators[{index}] must be a table, got {describe_value(entry)}")
            self.check_keys(entry, _ACCELERATOR_KEYS, prefix)
            found.append(
                Accelerator(
                    name=self.string(entry, "name", prefix),
                    kind=self.choice(entry, "kind", ACCELERATOR_KINDS, prefix),
                    usable_by=self.string_list(entry, "usable_by", prefix, allow_empty=True),
                    notes=self.optional_string(entry, "notes", prefix) or "",
                )
            )
        return tuple(found)

    def thermal(self, doc: Mapping[str, Any]) -> tuple[float | None, str]:
        if "thermal" not in doc:
            return None, ""
        thermal = self.table(doc, "thermal")
        self.check_keys(thermal, _THERMAL_KEYS, "thermal.")
        throttle_c = self.number(thermal, "throttle_c", "thermal.")
        if not 0.0 < throttle_c < 150.0:
            self.fail(f"thermal.throttle_c must be a temperature in °C, got {throttle_c}")
        return throttle_c, self.optional_string(thermal, "notes", "thermal.") or ""

    def price(self, doc: Mapping[str, Any]) -> Price | None:
        if "price" not in doc:
            return None
        price = self.table(doc, "price")
        self.check_keys(price, _PRICE_KEYS, "price.")
        values = {
            key: self.number(price, key, "price.")
            for key in ("per_hour_usd", "unit_usd", "watts", "kwh_usd", "lifetime_years")
            if key in price
        }
        for key, value in values.items():
            if value <= 0:
                self.fail(f"price.{key} must be positive, got {value}")
        hourly = "per_hour_usd" in values
        unit = "unit_usd" in values and "watts" in values
        if hourly == unit:
            self.fail(
                "price needs per_hour_usd (a cloud instance) or unit_usd and watts (a device), "
                "not both",
                hint="e.g. per_hour_usd = 0.145, or unit_usd = 80 and watts = 7",
            )
        return Price(
            source=self.string(price, "source", "price."), date=self.string(price, "date", "price."),
            **values,
        )  # fmt: skip

    # -- whole document

    def read(self, doc: Mapping[str, Any]) -> HardwareProfile:
        self.check_keys(doc, _TOP_KEYS, "")
        profile_id = self.string(doc, "id")
        if not ID_RE.match(profile_id):
            self.fail(
                f"id must be kebab-case (lower-case letters, digits and '-'), got '{profile_id}'"
            )
        if profile_id != self.path.stem:
            self.fail(
                f"id '{profile_id}' must equal the file name '{self.path.stem}'",
                hint=f'rename the file to {profile_id}.toml or set id = "{self.path.stem}"',
            )
        ram_mb = self.integer(doc, "ram_mb", minimum=1)
        bandwidth = self.number(doc, "memory_bandwidth_gbs")
        if bandwidth <= 0:
            self.fail(f"memory_bandwidth_gbs must be positive, got {bandwidth}")
        cpu = self.cpu(doc)
        reserved_mb, budget_fraction = self.memory(doc, ram_mb)
        formats, runtimes, threads = self.runtime(doc, cpu.cores)
        throttle_c, thermal_notes = self.thermal(doc)
        return HardwareProfile(
            id=profile_id,
            name=self.string(doc, "name"),
            arch=self.choice(doc, "arch", ARCHES),
            soc=self.string(doc, "soc"),
            os_notes=self.string(doc, "os_notes"),
            ram_mb=ram_mb,
            memory_bandwidth_gbs=bandwidth,
            cpu=cpu,
            reserved_mb=reserved_mb,
            budget_fraction=budget_fraction,
            preferred_formats=formats,
            preferred_runtimes=runtimes,
            threads=threads,
            default_quant=self.quantization(doc, formats),
            accelerators=self.accelerators(doc),
            throttle_c=throttle_c,
            thermal_notes=thermal_notes,
            price=self.price(doc),
            external_delegate=self.optional_string(doc, "external_delegate"),
            sources=self.string_list(doc, "sources", allow_empty=False),
            path=self.path.resolve(),
        )
