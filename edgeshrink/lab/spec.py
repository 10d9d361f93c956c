"""What a lab run is asked to do, as data: the devices of an inventory and the jobs of a suite.

config.py reads and validates the files these come from.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.bench import BenchParams
from edgeshrink.errors import LabConfigError
from edgeshrink.profiles import display_path
from edgeshrink.sweep import QualityBudget
from edgeshrink.targets import Target

DEFAULT_THERMAL = ("/sys/class/thermal/thermal_zone*/temp",)

_LOOPBACK = "127.0.0.1"  # how the loopback board is spelled in lock keys and messages


def board_host(host: str) -> str:
    """One spelling per machine for a host: case, a trailing dot, brackets and the many
    names of the loopback interface (127.0.0.1, ::1, localhost) do not make another board."""
    name = host.strip().strip("[]").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        if name == "localhost" or name.endswith(".localhost") or name == "localhost.localdomain":
            return _LOOPBACK
        return name
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return _LOOPBACK if address.is_loopback else address.compressed


@dataclass(frozen=True)
class LabDevice:
    name: str
    target: Target
    tags: tuple[str, ...]
    thermal: tuple[str, ...] = DEFAULT_THERMAL
    reachable_from: tuple[str, ...] = ()  # lab hosts the board hangs off; empty: any host

    def reachable_by(self, host: str) -> bool:
        """Whether a runner on lab host ``host`` may try this board."""
        return not self.reachable_from or host in self.reachable_from

    @property
    def lock_key(self) -> str:
        """What the board is, whatever it is called: two names for one board share it."""
        t = self.target
        if t.kind == "local":
            return f"local:{socket.gethostname()}"
        return f"ssh:{board_host(t.host or '')}:{t.port}"

    @property
    def profile(self) -> str | None:
        return self.target.profile

    def to_dict(self) -> dict[str, Any]:
        target = {k: v for k, v in self.target.to_dict().items() if k != "accept_new_host_key"}
        doc = {"name": self.name, "tags": list(self.tags), "thermal": list(self.thermal),
               "target": target}  # fmt: skip
        if self.reachable_from:
            doc["reachable_from"] = list(self.reachable_from)
        return doc


@dataclass(frozen=True)
class Inventory:
    path: Path
    text: str
    devices: tuple[LabDevice, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def device(self, name: str) -> LabDevice:
        for device in self.devices:
            if device.name == name:
                return device
        raise LabConfigError(
            f"{display_path(self.path)}: no device named '{name}'",
            hint=f"devices: {', '.join(d.name for d in self.devices)}",
        )


@dataclass(frozen=True)
class QualityCheck:
    budget: QualityBudget
    eval_ctx: int = 512
    eval_chunks: int | None = None
    text: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.budget), "eval_ctx": self.eval_ctx, "eval_chunks": self.eval_chunks,
                "text": str(self.text) if self.text else None}  # fmt: skip


@dataclass(frozen=True)
class LabJob:
    name: str
    index: int  # 1-based position in the suite, for messages
    model: Path | None
    artifact: Path | None
    quant: str | None
    context: int | None
    prefer: str
    profile: str | None
    tags: tuple[str, ...]  # empty: every device
    bench: BenchParams
    quality: QualityCheck | None
    timeout_s: float

    @property
    def source(self) -> Path:
        return self.model if self.model is not None else self.artifact  # type: ignore[return-value]

    def runs_on(self, device: LabDevice) -> bool:
        return not self.tags or bool(set(self.tags) & set(device.tags))

    def settings_key(self) -> str:
        """What the job asks, without the model's bytes: a change of bytes is a finding, not a new series."""
        asked = {
            "kind": "model" if self.model is not None else "artifact",
            "quant": self.quant, "context": self.context, "prefer": self.prefer,
            "profile": self.profile, "bench": self.bench.key(),
            "quality": self.quality.to_dict() if self.quality else None,
        }  # fmt: skip
        return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model": str(self.model) if self.model else None,
            "artifact": str(self.artifact) if self.artifact else None, "quant": self.quant,
            "context": self.context, "prefer": self.prefer, "profile": self.profile,
            "tags": list(self.tags), "bench": {k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in asdict(self.bench).items()},
            "quality": self.quality.to_dict() if self.quality else None,
            "timeout_s": self.timeout_s, "settings_key": self.settings_key(),
        }  # fmt: skip


@dataclass(frozen=True)
class CooldownPolicy:
    max_temp_c: float = 60.0  # wait until the hottest zone is below this
    max_wait_s: float = 180.0  # ...but no longer than this (recorded as "timeout")
    poll_s: float = 5.0
    rest_s: float = 0.0  # always rest this long before a benchmark


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # connection failures tolerated per device (consecutive)
    delay_s: float = 10.0


@dataclass(frozen=True)
class RegressionPolicy:
    baseline: str = "last-7-nights"
    threshold: float = 0.10  # relative change of a speed metric that matters
    memory_threshold: float = 0.10
    quality_threshold: float = 0.10
    alpha: float = 0.01  # Mann-Whitney U one-sided significance level
    noise_factor: float = 3.0  # the limit is at least this many baseline spreads
    min_baseline_runs: int = 3  # fewer good nights say nothing about the noise between nights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Suite:
    path: Path
    text: str
    name: str
    jobs: tuple[LabJob, ...]
    cooldown: CooldownPolicy = field(default_factory=CooldownPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    regression: RegressionPolicy = field(default_factory=RegressionPolicy)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def job(self, name: str) -> LabJob:
        for job in self.jobs:
            if job.name == name:
                return job
        raise LabConfigError(f"{display_path(self.path)}: no job named '{name}'")
