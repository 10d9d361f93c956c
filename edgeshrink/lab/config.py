"""The lab's two files: the inventory (which devices) and the suite (which jobs).

Both are TOML, read and validated completely before anything connects: a
problem is one :class:`LabConfigError` whose message names the file and the
field (``lab/suite.toml: job[2].bench.reps must be an integer, got string
'5'``), like hardware profiles.  ``targets/lab.toml`` and ``lab/suite.toml``
in the repository are annotated examples.

Inventory::

    [defaults]                 # optional: every device inherits these fields
    user = "lab"
    [[device]]
    name = "pi5-desk"          # required, unique
    host = "192.168.1.20"      # target fields, as in a target file
    profile = "raspberry-pi-5-8gb"
    tags = ["pi5"]
    [[device]]
    name = "car-bench-3"
    target = "car-bench-3"     # or a saved target / target file, fields above override it
    thermal = ["/sys/class/hwmon/hwmon0/temp1_input"]   # where the SoC temperature is

Suite::

    name = "nightly"
    [run]        retries, retry_delay_s, timeout_s
    [cooldown]   max_temp_c, max_wait_s, poll_s, rest_s
    [regression] baseline, threshold, memory_threshold, quality_threshold, alpha, noise_factor,
                 min_baseline_runs
    [[job]]      name, model | artifact, quant, context, prefer, profile, tags, timeout_s
    [job.bench]  the bench parameters (prompt_tokens, gen_tokens, reps, threads, ...)
    [job.quality] max_kld, max_ppl_increase, min_same_top, eval_ctx, eval_chunks, text
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from edgeshrink.bench import BenchParams
from edgeshrink.errors import EdgeshrinkError, LabConfigError, LabLockError  # noqa: F401 (re-exported)
from edgeshrink.profiles import closest, describe_value, display_path
from edgeshrink.sweep import QualityBudget
from edgeshrink.targets import DEFAULT_SSH_PORT, Target

DEFAULT_THERMAL = ("/sys/class/thermal/thermal_zone*/temp",)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
BASELINE_RE = re.compile(r"^(?:last-(?P<n>\d+)-(?:nights|runs)|run:(?P<ids>\d+(?:,\d+)*))$")


# --------------------------------------------------------------------------- types


_LOOPBACK = "127.0.0.1"  # how the loopback board is spelled in lock keys and messages


def board_host(host: str) -> str:
    """One spelling per machine for a host: case, a trailing dot, brackets and the many
    names of the loopback interface (127.0.0.1, ::1, localhost) do not make another board."""
    import ipaddress

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
        return {"name": self.name, "tags": list(self.tags), "thermal": list(self.thermal),
                "target": target}  # fmt: skip


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


# --------------------------------------------------------------------------- reading


def _tomllib() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def _read_toml(path: Path, text: str | None, what: str) -> tuple[str, dict[str, Any]]:
    where = display_path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise LabConfigError(f"{where}: {what} file not found", hint="check the path") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise LabConfigError(f"{where}: cannot read the {what}: {exc}") from exc
    try:
        return text, _tomllib().loads(text)
    except _tomllib().TOMLDecodeError as exc:
        raise LabConfigError(
            f"{where}: invalid TOML: {exc}",
            hint="fix the syntax at that line; strings need quotes, [[device]] / [[job]] start an entry",
        ) from exc


class _Reader:
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


# --------------------------------------------------------------------------- inventory

_TARGET_KEYS = ("kind", "profile", "host", "port", "user", "key", "known_hosts", "python",
                "work_dir", "jump")  # fmt: skip
_DEVICE_KEYS = ("name", "target", *_TARGET_KEYS, "tags", "thermal", "enabled")
_DEFAULT_KEYS = (*_TARGET_KEYS, "tags", "thermal")


def load_inventory(path: str | os.PathLike[str], *, text: str | None = None) -> Inventory:
    """Read and validate an inventory; ``text`` (a stored copy) replaces reading the file."""
    path = Path(path)
    text, doc = _read_toml(path, text, "inventory")
    r = _Reader(path)
    r.keys(doc, ("defaults", "device"), "")
    defaults = r.table(doc, "defaults")
    r.keys(defaults, _DEFAULT_KEYS, "defaults.")
    for key in _TARGET_KEYS:
        if key != "port":
            r.string(defaults, key, "defaults.")
    r.integer(defaults, "port", "defaults.", minimum=1)
    r.strings(defaults, "tags", "defaults.", pattern=_TAG_RE)
    r.strings(defaults, "thermal", "defaults.")
    base = path.parent
    devices: list[LabDevice] = []
    seen_names: dict[str, int] = {}
    seen_boards: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(r.entries(doc, "device", "device"), start=1):
        prefix = f"device[{index}]."
        name = r.string(entry, "name", prefix)
        if name is not None and _NAME_RE.match(name):
            r.keys(entry, _DEVICE_KEYS, f"device[{index}] ({name}).")
        r.keys(entry, _DEVICE_KEYS, prefix)
        if name is None:
            r.fail(f"device[{index}] has no name", hint='every [[device]] needs name = "..."')
        if not _NAME_RE.match(name):
            r.fail(
                f"{prefix}name {name!r}: start with a letter or digit; use letters, digits, '.', '_', '-'"
            )
        if name in seen_names:
            r.fail(f"{prefix}name '{name}' is also device[{seen_names[name]}]'s name")
        seen_names[name] = index
        prefix = f"device[{index}] ({name})."
        if r.boolean(entry, "enabled", prefix, True) is False:
            continue
        device = _read_device(r, name, {**defaults, **entry}, defaults, prefix, base)
        other = seen_boards.get(device.lock_key)
        if other is not None:
            r.fail(
                f"device[{index}] ({name}) is the same board as device[{other[0]}] ({other[1]}): "
                f"both reach {device.lock_key}",
                hint="one board, one [[device]]: two benchmarks must never run on one board at once",
            )
        seen_boards[device.lock_key] = (index, name)
        devices.append(device)
    if not devices:
        r.fail("every device is disabled (enabled = false)")
    return Inventory(path=path, text=text, devices=tuple(devices))


def _read_device(
    r: _Reader,
    name: str,
    fields: dict[str, Any],
    defaults: dict[str, Any],
    prefix: str,
    base: Path,
) -> LabDevice:
    from edgeshrink.errors import ProfileError, TargetError
    from edgeshrink.targets import get_target

    values: dict[str, Any] = {}
    for key in (
        "kind",
        "profile",
        "host",
        "user",
        "key",
        "known_hosts",
        "python",
        "work_dir",
        "jump",
    ):
        value = r.string(fields, key, prefix)
        if value is not None:
            values[key] = value
    port = r.integer(fields, "port", prefix, minimum=1)
    if port is not None:
        if port > 65535:
            r.fail(f"{prefix}port must be 1-65535, got {port}")
        values["port"] = port
    for key in ("key", "known_hosts"):
        if key in values:
            values[key] = str(r.resolve(values[key], base))
    own_tags = r.strings(fields, "tags", prefix, pattern=_TAG_RE) or ()
    default_tags = r.strings(defaults, "tags", "defaults.", pattern=_TAG_RE) or ()
    tags = tuple(dict.fromkeys((*default_tags, *own_tags)))
    thermal = r.strings(fields, "thermal", prefix) or DEFAULT_THERMAL
    target_ref = r.string(fields, "target", prefix)
    if target_ref is not None:
        ref = str(r.resolve(target_ref, base)) if target_ref.endswith(".toml") else target_ref
        try:
            target = get_target(ref)
        except TargetError as exc:
            r.fail(f"{prefix}target: {exc.message}", hint=exc.hint)
        target = replace(target, name=name, tags=tags, **values)
    else:
        kind = values.pop("kind", "ssh" if "host" in values else None)
        if kind is None:
            r.fail(
                f"{prefix[:-1]} says neither where it is (host) nor which target it is (target)",
                hint='give host = "..." for an SSH device, target = "NAME" for a saved target, '
                'or kind = "local" for this machine',
            )
        if kind not in ("ssh", "local"):
            r.fail(f'{prefix}kind must be "ssh" or "local", got {kind!r}')
        if kind == "ssh" and "host" not in values:
            r.fail(f"{prefix}host is required for an SSH device")
        if kind == "local":
            from edgeshrink.targets import local_target

            target = replace(local_target(), name=name, tags=tags, source=str(r.path),
                             **{k: v for k, v in values.items() if k in ("profile", "python", "work_dir")})  # fmt: skip
        else:
            target = Target(name=name, kind="ssh", tags=tags, source=str(r.path),
                            port=values.pop("port", DEFAULT_SSH_PORT), **values)  # fmt: skip
    if target.profile:
        from edgeshrink.profiles import get_profile

        try:
            get_profile(target.profile)
        except ProfileError as exc:
            r.fail(f"{prefix}profile: {exc.message}", hint=exc.hint)
    return LabDevice(name=name, target=target, tags=tags, thermal=thermal)


# --------------------------------------------------------------------------- suite

_SUITE_KEYS = ("name", "run", "cooldown", "regression", "job")
_RUN_KEYS = ("retries", "retry_delay_s", "timeout_s")
_COOLDOWN_KEYS = ("max_temp_c", "max_wait_s", "poll_s", "rest_s")
_REGRESSION_KEYS = ("baseline", "threshold", "memory_threshold", "quality_threshold", "alpha",
                    "noise_factor", "min_baseline_runs")  # fmt: skip
_JOB_KEYS = ("name", "model", "artifact", "quant", "context", "prefer", "profile", "tags", "bench",
             "quality", "timeout_s")  # fmt: skip
_BENCH_INT = {"prompt_tokens": 1, "gen_tokens": 1, "reps": 1, "warmup": 0, "threads": 1,
              "n_ctx": 16, "seed": 0, "runs": 1}  # fmt: skip
_BENCH_KEYS = (*_BENCH_INT, "flash_attn", "no_mmap", "min_seconds")
_QUALITY_KEYS = ("max_kld", "max_ppl_increase", "min_same_top", "eval_ctx", "eval_chunks", "text")


def parse_baseline(spec: str) -> tuple[int | None, tuple[int, ...]]:
    """``last-N-nights`` / ``last-N-runs`` -> (N, ()); ``run:ID[,ID...]`` -> (None, ids)."""
    match = BASELINE_RE.match(spec.strip())
    if match is None or (match.group("n") is not None and int(match.group("n")) < 1):
        raise LabConfigError(
            f"baseline {spec!r} is not one of last-N-nights, last-N-runs, run:ID[,ID...]",
            hint="e.g. last-7-nights: the median of the 7 lab runs of this suite before the one compared",
        )
    if match.group("n") is not None:
        return int(match.group("n")), ()
    return None, tuple(int(i) for i in match.group("ids").split(","))


def load_suite(path: str | os.PathLike[str], *, text: str | None = None) -> Suite:
    """Read and validate a suite; ``text`` (a stored copy) replaces reading the file."""
    path = Path(path)
    text, doc = _read_toml(path, text, "suite")
    r = _Reader(path)
    r.keys(doc, _SUITE_KEYS, "")
    name = r.string(doc, "name", "", path.stem)
    if not _NAME_RE.match(name):
        r.fail(f"name {name!r}: use letters, digits, '.', '_' and '-'")
    run = r.table(doc, "run")
    r.keys(run, _RUN_KEYS, "run.")
    retry = RetryPolicy(
        retries=r.integer(run, "retries", "run.", RetryPolicy.retries, minimum=0),
        delay_s=r.number(run, "retry_delay_s", "run.", RetryPolicy.delay_s),
    )
    job_timeout = r.number(run, "timeout_s", "run.", 900.0, minimum=1.0)
    cool = r.table(doc, "cooldown")
    r.keys(cool, _COOLDOWN_KEYS, "cooldown.")
    cooldown = CooldownPolicy(
        max_temp_c=r.number(
            cool, "max_temp_c", "cooldown.", CooldownPolicy.max_temp_c, minimum=-50
        ),
        max_wait_s=r.number(cool, "max_wait_s", "cooldown.", CooldownPolicy.max_wait_s),
        poll_s=r.number(cool, "poll_s", "cooldown.", CooldownPolicy.poll_s, minimum=0.1),
        rest_s=r.number(cool, "rest_s", "cooldown.", CooldownPolicy.rest_s),
    )
    regression = _read_regression(r, doc)
    jobs: list[LabJob] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(r.entries(doc, "job", "job"), start=1):
        job = _read_job(r, entry, index, path.parent, job_timeout)
        if job.name in names:
            r.fail(f"job[{index}].name '{job.name}' is also job[{names[job.name]}]'s name")
        names[job.name] = index
        jobs.append(job)
    return Suite(path=path, text=text, name=name, jobs=tuple(jobs), cooldown=cooldown,
                 retry=retry, regression=regression)  # fmt: skip


def _read_regression(r: _Reader, doc: dict[str, Any]) -> RegressionPolicy:
    reg = r.table(doc, "regression")
    r.keys(reg, _REGRESSION_KEYS, "regression.")
    baseline = r.string(reg, "baseline", "regression.", RegressionPolicy.baseline)
    try:
        parse_baseline(baseline)
    except LabConfigError as exc:
        r.fail(f"regression.baseline: {exc.message}", hint=exc.hint)
    return RegressionPolicy(
        baseline=baseline,
        threshold=r.number(reg, "threshold", "regression.", RegressionPolicy.threshold, maximum=10),
        memory_threshold=r.number(reg, "memory_threshold", "regression.", RegressionPolicy.memory_threshold, maximum=10),
        quality_threshold=r.number(reg, "quality_threshold", "regression.", RegressionPolicy.quality_threshold, maximum=10),
        alpha=r.number(reg, "alpha", "regression.", RegressionPolicy.alpha, minimum=1e-9, maximum=0.5),
        noise_factor=r.number(reg, "noise_factor", "regression.", RegressionPolicy.noise_factor),
        min_baseline_runs=r.integer(reg, "min_baseline_runs", "regression.", RegressionPolicy.min_baseline_runs, minimum=1),
    )  # fmt: skip


def read_regression_policy(path: str | os.PathLike[str], text: str) -> RegressionPolicy:
    """Only the [regression] table of a suite: what `lab compare` needs of a stored suite.

    The jobs are not read, so a suite whose model files have moved still gives its policy.
    """
    path = Path(path)
    _text, doc = _read_toml(path, text, "suite")
    return _read_regression(_Reader(path), doc)


def _read_job(r: _Reader, entry: dict[str, Any], index: int, base: Path, timeout: float) -> LabJob:
    prefix = f"job[{index}]."
    name = r.string(entry, "name", prefix)
    if name is not None and _NAME_RE.match(name):
        r.keys(entry, _JOB_KEYS, f"job[{index}] ({name}).")
    r.keys(entry, _JOB_KEYS, prefix)
    if name is None:
        r.fail(f"job[{index}] has no name", hint='every [[job]] needs name = "..."')
    if not _NAME_RE.match(name):
        r.fail(
            f"{prefix}name {name!r}: start with a letter or digit; use letters, digits, '.', '_', '-'"
        )
    prefix = f"job[{index}] ({name})."
    model = r.string(entry, "model", prefix)
    artifact = r.string(entry, "artifact", prefix)
    if (model is None) == (artifact is None):
        r.fail(
            f"{prefix[:-1]} needs exactly one of model (shrunk on the host) and artifact (used as is)",
            hint='model = "model-f16.gguf" with quant = "Q4_K_M", or artifact = "model-q4_k_m.gguf"',
        )
    source_key = "model" if model is not None else "artifact"
    source = r.resolve(model or artifact, base)
    if not source.exists():
        r.fail(
            f"{prefix}{source_key}: {source} does not exist",
            hint="paths are relative to the suite file",
        )
    from edgeshrink.formats import detect_format

    try:
        detect_format(source)  # a directory without config.json, a text file, ...
    except EdgeshrinkError as exc:
        r.fail(f"{prefix}{source_key}: {exc.message}", hint=exc.hint)
    quant = r.string(entry, "quant", prefix)
    if artifact is not None and quant is not None:
        r.fail(f"{prefix}quant applies to a model that is shrunk, not to a prebuilt artifact")
    prefer = r.string(entry, "prefer", prefix, "quality")
    if prefer not in ("quality", "speed"):
        r.fail(f'{prefix}prefer must be "quality" or "speed", got {prefer!r}')
    bench_doc = r.table(entry, "bench", prefix)
    r.keys(bench_doc, _BENCH_KEYS, f"{prefix}bench.")
    bp = f"{prefix}bench."
    bench_args: dict[str, Any] = {}
    for key, minimum in _BENCH_INT.items():
        value = r.integer(bench_doc, key, bp, minimum=minimum)
        if value is not None:
            bench_args[key] = value
    for key in ("flash_attn", "no_mmap"):
        value = r.boolean(bench_doc, key, bp)
        if value is not None:
            bench_args[key] = value
    min_seconds = r.number(bench_doc, "min_seconds", bp)
    if min_seconds is not None:
        bench_args["min_seconds"] = min_seconds
    quality = None
    if "quality" in entry:
        quality = _read_quality(r, r.table(entry, "quality", prefix), f"{prefix}quality.", base)
        if model is None:
            r.fail(
                f"{prefix}quality needs model = ... (the original the artifact is compared with)"
            )
        if source.suffix.lower() != ".gguf":
            r.fail(
                f"{prefix}quality: quality checks in a lab suite are for GGUF models in this version"
            )
    return LabJob(
        name=name,
        index=index,
        model=source if model is not None else None,
        artifact=source if artifact is not None else None,
        quant=quant,
        context=r.integer(entry, "context", prefix, minimum=16),
        prefer=prefer,
        profile=r.string(entry, "profile", prefix),
        tags=r.strings(entry, "tags", prefix, pattern=_TAG_RE) or (),
        bench=BenchParams(**bench_args),
        quality=quality,
        timeout_s=r.number(entry, "timeout_s", prefix, timeout, minimum=1.0),
    )


def _read_quality(r: _Reader, doc: dict[str, Any], prefix: str, base: Path) -> QualityCheck:
    r.keys(doc, _QUALITY_KEYS, prefix)
    budget = QualityBudget(
        max_kld=r.number(doc, "max_kld", prefix),
        max_ppl_increase=r.number(doc, "max_ppl_increase", prefix),
        min_same_top=r.number(doc, "min_same_top", prefix, maximum=1.0),
    )
    text = r.string(doc, "text", prefix)
    text_path = r.resolve(text, base) if text else None
    if text_path is not None and not text_path.is_file():
        r.fail(f"{prefix}text: {text_path} does not exist")
    return QualityCheck(
        budget=budget,
        eval_ctx=r.integer(doc, "eval_ctx", prefix, 512, minimum=16),
        eval_chunks=r.integer(doc, "eval_chunks", prefix, minimum=1),
        text=text_path,
    )


def match_jobs(inventory: Inventory, suite: Suite) -> dict[str, tuple[LabJob, ...]]:
    """Which jobs each device runs, in suite order; a job no device runs is an error."""
    plan = {d.name: tuple(j for j in suite.jobs if j.runs_on(d)) for d in inventory.devices}
    known = sorted({t for d in inventory.devices for t in d.tags})
    for job in suite.jobs:
        if not any(job in jobs for jobs in plan.values()):
            raise LabConfigError(
                f"{display_path(suite.path)}: job[{job.index}] ({job.name}).tags "
                f"{list(job.tags)} match no device of {display_path(inventory.path)}",
                hint=f"tags in the inventory: {', '.join(known) or '(none)'}",
            )
        if job.quant is not None and job.model is not None:
            devices = [d for d in inventory.devices if job in plan[d.name]]
            profile_id = job.profile or next((d.profile for d in devices if d.profile), None)
            if profile_id is not None:
                _check_quant(suite, job, profile_id)
    return plan


def _check_quant(suite: Suite, job: LabJob, profile_id: str) -> None:
    """Ask the model's backend whether it knows ``job.quant`` (a dry run must refuse
    ``Q9_9`` as the build would); fitting the budget is the build's question."""
    from edgeshrink.errors import QuantizationError
    from edgeshrink.formats import detect_and_inspect
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.profiles import get_profile
    from edgeshrink.shrink import plan_model

    options = ShrinkOptions(quant=job.quant, context=job.context, prefer=job.prefer,
                            check_fit=False)  # fmt: skip
    try:
        plan_model(detect_and_inspect(job.model), get_profile(profile_id), options)
    except QuantizationError as exc:
        raise LabConfigError(
            f"{display_path(suite.path)}: job[{job.index}] ({job.name}).quant: {exc.message}",
            hint=exc.hint,
        ) from exc
