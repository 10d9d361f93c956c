"""What a hardware profile is: the device's CPU, accelerators, memory and defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.errors import ProfileError

PROFILES_PATH_ENV = "EDGESHRINK_PROFILES_PATH"

ARCHES = ("aarch64", "armv7l", "x86_64")
FORMATS = ("gguf", "onnx", "tflite")
ACCELERATOR_KINDS = ("gpu", "npu", "dsp", "tpu")


# Names people use for the same ARM feature; /proc/cpuinfo spells them differently.
FEATURE_ALIASES = {"neon": "asimd", "dotprod": "asimddp"}

ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
FEATURE_RE = re.compile(r"^[a-z0-9_]+$")

# key -> required?  Order is the order of the documented schema.


@dataclass(frozen=True)
class CpuSpec:
    """The CPU of a device as /proc/cpuinfo and the vendor describe it."""

    model: str
    cores: int
    big_cores: int
    little_cores: int
    max_mhz: int
    features: tuple[str, ...]


@dataclass(frozen=True)
class Accelerator:
    """A GPU, NPU, DSP or TPU and the runtimes/delegates that can reach it."""

    name: str
    kind: str
    usable_by: tuple[str, ...]
    notes: str = ""


@dataclass(frozen=True)
class Price:
    """What running on this hardware costs: a cloud instance by the hour, or an edge
    device bought once (amortised over ``lifetime_years``) plus the power it draws."""

    source: str  # where the figure comes from
    date: str  # when it was read (prices move)
    per_hour_usd: float | None = None  # a cloud instance, on demand
    unit_usd: float | None = None  # an edge device's purchase price
    watts: float | None = None  # its draw under load
    kwh_usd: float = 0.15  # the electricity price assumed for watts
    lifetime_years: float = 3.0  # over which a unit's price is spread

    @property
    def hourly_usd(self) -> float:
        """The cost of one hour of this hardware, running."""
        if self.per_hour_usd is not None:
            return self.per_hour_usd
        unit = (self.unit_usd or 0.0) / (self.lifetime_years * 365 * 24)
        return unit + (self.watts or 0.0) / 1000 * self.kwh_usd

    def describe(self) -> str:
        if self.per_hour_usd is not None:
            return f"${self.per_hour_usd:g}/hour ({self.source}, {self.date})"
        return (f"${self.unit_usd:g} over {self.lifetime_years:g} years + {self.watts:g} W at "
                f"${self.kwh_usd:g}/kWh = ${self.hourly_usd:.4f}/hour ({self.source}, {self.date})")  # fmt: skip


@dataclass(frozen=True)
class HardwareProfile:
    """One device, as described by one ``hardware-profiles/<id>.toml``."""

    id: str
    name: str
    arch: str
    soc: str
    os_notes: str
    ram_mb: int
    memory_bandwidth_gbs: float
    cpu: CpuSpec
    reserved_mb: int
    budget_fraction: float
    preferred_formats: tuple[str, ...]
    preferred_runtimes: tuple[str, ...]
    threads: int
    # (format, quantization type) pairs: a tuple keeps the profile hashable.
    default_quant: tuple[tuple[str, str], ...]
    accelerators: tuple[Accelerator, ...]
    throttle_c: float | None
    external_delegate: str | None
    sources: tuple[str, ...]
    path: Path
    thermal_notes: str = field(default="")
    price: Price | None = None

    @property
    def budget_mb(self) -> int:
        """Memory a model may use on this device, in MiB."""
        return int((self.ram_mb - self.reserved_mb) * self.budget_fraction)

    def default_quant_for(self, fmt: str) -> str:
        """The speed-oriented default quantization type for ``fmt`` on this device."""
        for known_fmt, quant in self.default_quant:
            if known_fmt == fmt:
                return quant
        if fmt not in FORMATS:
            raise ProfileError(
                f"unknown model format '{fmt}'",
                hint=f"known formats: {', '.join(FORMATS)}",
            )
        raise ProfileError(
            f"hardware profile '{self.id}' has no default quantization for '{fmt}'",
            hint=f"add `{fmt} = ...` under [quantization] in {self.path}",
        )

    def has_feature(self, name: str) -> bool:
        """Whether the CPU has an ISA feature, by its /proc/cpuinfo name.

        ``neon`` and ``dotprod`` are accepted as the usual names of ``asimd``
        and ``asimddp``.
        """
        wanted = name.strip().lower()
        wanted = FEATURE_ALIASES.get(wanted, wanted)
        return wanted in self.cpu.features

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view, including the computed ``budget_mb``."""
        return {
            "id": self.id,
            "name": self.name,
            "arch": self.arch,
            "soc": self.soc,
            "os_notes": self.os_notes,
            "ram_mb": self.ram_mb,
            "memory_bandwidth_gbs": self.memory_bandwidth_gbs,
            "cpu": {
                "model": self.cpu.model,
                "cores": self.cpu.cores,
                "big_cores": self.cpu.big_cores,
                "little_cores": self.cpu.little_cores,
                "max_mhz": self.cpu.max_mhz,
                "features": list(self.cpu.features),
            },
            "reserved_mb": self.reserved_mb,
            "budget_fraction": self.budget_fraction,
            "budget_mb": self.budget_mb,
            "preferred_formats": list(self.preferred_formats),
            "preferred_runtimes": list(self.preferred_runtimes),
            "threads": self.threads,
            "default_quant": dict(self.default_quant),
            "accelerators": [
                {
                    "name": acc.name,
                    "kind": acc.kind,
                    "usable_by": list(acc.usable_by),
                    "notes": acc.notes,
                }
                for acc in self.accelerators
            ],
            "throttle_c": self.throttle_c,
            "thermal_notes": self.thermal_notes,
            "external_delegate": self.external_delegate,
            "sources": list(self.sources),
            "path": str(self.path),
        }
