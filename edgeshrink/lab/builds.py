"""The artifacts of a lab run: which each device's jobs need (one per model bytes, type and
settings, shared by the devices that need it), and building them on the host."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from edgeshrink.artifacts import load_artifact, tool_versions
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats import detect_and_inspect
from edgeshrink.lab.config import Inventory, LabConfigError, LabJob, Suite, match_jobs
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import get_profile
from edgeshrink.shrink import plan_model, shrink_model
from edgeshrink.util import sha256_file


@dataclass(frozen=True)
class BuildPlan:
    key: str
    job: LabJob
    source: Path
    source_sha256: str
    quant: str | None  # None: a prebuilt artifact
    profile_id: str | None
    devices: tuple[str, ...]


@dataclass(frozen=True)
class LabPlan:
    inventory: Inventory
    suite: Suite
    jobs: dict[str, tuple[LabJob, ...]]  # device -> its jobs, in suite order
    builds: tuple[BuildPlan, ...]
    build_for: dict[tuple[str, str], str]  # (device, job) -> build key

    def to_dict(self) -> dict[str, Any]:
        return {
            "inventory": str(self.inventory.path),
            "suite": str(self.suite.path),
            "suite_name": self.suite.name,
            "devices": {
                d.name: {"target": d.target.describe(), "tags": list(d.tags),
                         "jobs": [j.name for j in self.jobs[d.name]]}
                for d in self.inventory.devices
            },
            "builds": [
                {"key": b.key, "job": b.job.name, "source": str(b.source), "quant": b.quant,
                 "profile": b.profile_id, "devices": list(b.devices)}
                for b in self.builds
            ],
            "cooldown": self.suite.cooldown.__dict__,
            "retry": self.suite.retry.__dict__,
        }  # fmt: skip


@dataclass(frozen=True)
class Built:
    key: str
    job: str
    ok: bool
    path: Path | None
    sha256: str | None
    format: str | None
    quant: str | None
    source_sha256: str
    tool_versions: dict[str, Any]
    error: str | None = None


def _sha256_cached(path: Path, cache: dict[Path, str]) -> str:
    key = path.resolve()
    if key not in cache:
        cache[key] = sha256_file(path)
    return cache[key]


def plan_lab(inventory: Inventory, suite: Suite) -> LabPlan:
    """Which device runs which job, and the artifacts that needs (nothing is built)."""
    jobs = match_jobs(inventory, suite)
    hashes: dict[Path, str] = {}
    infos: dict[Path, Any] = {}
    builds: dict[str, dict[str, Any]] = {}
    build_for: dict[tuple[str, str], str] = {}
    where = f"{suite.path}"
    for device in inventory.devices:
        for job in jobs[device.name]:
            sha = _sha256_cached(job.source, hashes)
            if job.artifact is not None:
                key, quant, profile_id = f"artifact-{sha[:16]}", None, None
            else:
                profile_id = job.profile or device.profile
                quant = job.quant
                if quant is None:
                    if profile_id is None:
                        raise LabConfigError(
                            f"{where}: job[{job.index}] ({job.name}) has no quant and device "
                            f"'{device.name}' has no profile to plan one for",
                            hint='give the job quant = "..." or profile = "...", or the device a profile',
                        )
                    info = infos.get(job.source) or detect_and_inspect(job.source)
                    infos[job.source] = info
                    options = ShrinkOptions(context=job.context, prefer=job.prefer)
                    try:
                        quant = plan_model(info, get_profile(profile_id), options).quant
                    except EdgeshrinkError as exc:
                        raise LabConfigError(
                            f"{where}: job[{job.index}] ({job.name}) on {device.name} "
                            f"({profile_id}): {exc.message}",
                            # plan's own hint names plan's options (--ctx), which lab run
                            # does not have: say it in the suite's words.
                            hint='give the job a smaller quant = "..." or a shorter context = N '
                            "in the suite, or run it on a device with more memory",
                        ) from exc
                # The bytes depend on the source and the type only (context and
                # prefer only choose the type), so jobs that agree share an artifact.
                key = f"{sha[:16]}-{quant.lower()}"
            entry = builds.setdefault(
                (job.name, key),
                {"key": key, "job": job, "source": job.source, "source_sha256": sha,
                 "quant": quant, "profile_id": profile_id, "devices": []},
            )  # fmt: skip
            entry["devices"].append(device.name)
            build_for[(device.name, job.name)] = key
    plans = tuple(BuildPlan(**{**b, "devices": tuple(b["devices"])}) for b in builds.values())
    return LabPlan(inventory, suite, jobs, plans, build_for)


def default_artifacts_dir() -> Path:
    return platformdirs.user_cache_path("edgeshrink") / "lab" / "artifacts"


def build_artifact(
    plan: BuildPlan, out_dir: Path, say: Callable[[str], None]
) -> tuple[Built, bool, float]:
    """The artifact for ``plan`` (built, or found in the cache); returns (built, reused, seconds)."""
    start = time.perf_counter()
    job = plan.job
    if plan.quant is None:
        info = detect_and_inspect(plan.source)
        try:
            versions = load_artifact(plan.source, verify=False).tool_versions
        except EdgeshrinkError:
            versions = {}
        built = Built(plan.key, job.name, True, plan.source, plan.source_sha256, info.format, None,
                      plan.source_sha256, versions)  # fmt: skip
        return built, True, time.perf_counter() - start
    profile = get_profile(plan.profile_id or "x86-64-host")
    suffix = ".gguf" if plan.source.is_dir() else plan.source.suffix
    stem = plan.source.name if plan.source.is_dir() else plan.source.stem
    output = out_dir / plan.key / f"{stem}-{plan.quant.lower()}{suffix}"
    options = ShrinkOptions(
        quant=plan.quant, context=job.context, prefer=job.prefer, check_fit=False
    )
    shrunk = shrink_model(plan.source, profile, options, output=output)
    art = shrunk.artifact
    versions = art.tool_versions or tool_versions()
    built = Built(plan.key, job.name, True, art.path, art.sha256, art.format, art.quant,
                  plan.source_sha256, versions)  # fmt: skip
    return built, shrunk.reused, time.perf_counter() - start
