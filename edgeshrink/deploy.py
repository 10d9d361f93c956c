"""The whole chain for one model and one device: plan, shrink, push, bench, store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import Artifact, load_artifact
from edgeshrink.bench import BenchParams, BenchResult, run_agent_bench
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats import backend, detect_and_inspect
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile
from edgeshrink.shrink import ShrinkResult, shrink_model
from edgeshrink.store import ResultStore
from edgeshrink.targets import Target
from edgeshrink.transport import PushResult, open_transport
from edgeshrink.util import sha256_file

Progress = Callable[[str], None]


NO_DELEGATE = "none"  # --external-delegate none: the CPU, even where the profile names one


@dataclass(frozen=True)
class BenchOutcome:
    target: Target
    artifact: Artifact | None
    model_path: Path
    push: PushResult
    result: BenchResult
    result_id: int | None
    db_path: Path | None
    # What the host knows the user should hear (e.g. a context beyond the trained one).
    warnings: tuple[str, ...] = ()

    @property
    def all_warnings(self) -> tuple[str, ...]:
        """The host's warnings, then the agent's (its document's ``warnings``)."""
        agent = self.result.document.get("warnings") or []
        return self.warnings + tuple(str(w) for w in agent if str(w) not in self.warnings)


@dataclass(frozen=True)
class DeployOutcome:
    shrink: ShrinkResult
    bench: BenchOutcome


def threads_for(target: Target, profile: HardwareProfile | None, asked: int | None) -> int | None:
    if asked:
        return asked
    if profile is None:
        return None
    if target.kind == "local":
        # The profile describes the device being planned for; this machine may
        # have fewer cores, and oversubscribed threads only measure contention.
        return min(profile.threads, os.cpu_count() or profile.threads)
    return profile.threads


def _artifact_and_sha(model: Path, say: Callable[[str], None]) -> tuple[Artifact | None, str]:
    """The artifact's manifest (verified) and sha256; a file without one is hashed."""
    try:
        artifact = load_artifact(model, verify=True)
        return artifact, artifact.sha256
    except EdgeshrinkError:
        say(f"hashing {model.name}")
        return None, sha256_file(model)


def _push_files(transport: Any, model: Path, info: Any, sha: str) -> list[PushResult]:
    """The model at models/<sha256>/<its name> (push_artifact's contract), then the data
    files an ONNX model with external data finds by relative name, beside it."""
    pushed = [transport.push_artifact(model, sha)]
    for data in backend(info.format).device_files(info, model):
        pushed.append(transport.push_file(data, f"models/{sha}/{data.name}", sha256_file(data)))
    return pushed


def push_model(
    model: str | os.PathLike[str],
    target: Target,
    *,
    progress: Progress | None = None,
    push_progress: Callable[[Any], None] | None = None,
) -> list[PushResult]:
    """Push a model (and its external data files) to ``target``, verified there: what
    `bench` pushes before it measures, as a stage of its own. The model's result first."""
    say = progress or (lambda _msg: None)
    model = Path(model)
    info = detect_and_inspect(model)
    _artifact, sha = _artifact_and_sha(model, say)
    with open_transport(target, progress=push_progress) as transport:
        say(f"pushing {model.name} to {target.name} ({target.describe()})")
        return _push_files(transport, model, info, sha)


def bench_model(
    model: str | os.PathLike[str],
    target: Target,
    params: BenchParams,
    *,
    profile: HardwareProfile | None = None,
    db: str | os.PathLike[str] | None = None,
    store_result: bool = True,
    timeout_s: float = 900.0,
    progress: Progress | None = None,
    push_progress: Callable[[Any], None] | None = None,
    agent_stderr: Callable[[str], None] | None = None,
    reference: str | os.PathLike[str] | None = None,
    speed: bool = True,
) -> BenchOutcome:
    """Push ``model`` to ``target``, measure it there and store the result. With a
    ``reference`` (a file the backend's ``make_reference`` wrote, pushed like an artifact)
    the agent also measures its quality on the device; ``speed=False`` measures only that."""
    say = progress or (lambda _msg: None)
    model = Path(model)
    info = detect_and_inspect(model)
    # The store is opened (and checked) before anything is measured: a bad --db must
    # not cost a whole benchmark whose figures then go nowhere.
    with ResultStore(db) if store_result else contextlib.nullcontext() as store:
        return _bench_and_store(
            model, info, target, params, store, profile, timeout_s, say,
            push_progress, agent_stderr, Path(reference) if reference else None, speed,
        )  # fmt: skip


def _bench_and_store(
    model: Path,
    info: Any,
    target: Target,
    params: BenchParams,
    store: ResultStore | None,
    profile: HardwareProfile | None,
    timeout_s: float,
    say: Callable[[str], None],
    push_progress: Callable[[Any], None] | None,
    agent_stderr: Callable[[str], None] | None,
    reference: Path | None = None,
    speed: bool = True,
) -> BenchOutcome:
    artifact, sha = _artifact_and_sha(model, say)
    params = replace(params, threads=threads_for(target, profile, params.threads))
    fmt = backend(info.format)
    params, note = fmt.bench_params(info, params, profile, on_this_machine=target.kind == "local")
    if params.external_delegate == NO_DELEGATE:
        params = replace(params, external_delegate=None)  # asked for: no delegate at all
    with open_transport(target, progress=push_progress, on_stderr=agent_stderr) as transport:
        say(f"pushing {model.name} to {target.name} ({target.describe()})")
        pushed = _push_files(transport, model, info, sha)[0]
        inputs = remote_reference = None
        if params.inputs is not None and speed:
            inputs_path = Path(params.inputs)
            inputs = transport.push_artifact(inputs_path, sha256_file(inputs_path)).remote
        if reference is not None:
            say(f"pushing the reference {reference.name} ({reference.stat().st_size} bytes)")
            remote_reference = transport.push_artifact(reference, sha256_file(reference)).remote
        if speed:
            say(f"benchmarking on {target.name}: {fmt.bench_plan(info, params, note)}")
        else:
            say(f"measuring the quality of {model.name} on {target.name}")
        result, _run = run_agent_bench(
            transport,
            pushed.remote,
            params,
            model_format=info.format,
            remote_inputs=inputs,
            remote_reference=remote_reference,
            speed=speed,
            timeout_s=timeout_s,
        )
    result_id = None
    db_path = None
    if store is not None:
        db_path = store.path
        result_id = store.add_result(
            {
                "target": target.name,
                "target_kind": target.kind,
                "profile_id": profile.id if profile else target.profile,
                "format": info.format,
                "quant": artifact.quant if artifact else info.file_type,
                "model_name": model.name,
                "source_sha256": artifact.source_sha256 if artifact else None,
                "artifact_sha256": sha,
                "artifact_size": model.stat().st_size,
                **result.store_columns(),
                # A quality-only run is no speed measurement: its key never matches one.
                "params_key": params.key() if speed else f"eval-{sha256_file(reference)[:16]}",
            },
            result.document,
        )
    return BenchOutcome(
        target, artifact, model, pushed, result, result_id, db_path,
        warnings=fmt.bench_warnings(info, params),
    )  # fmt: skip


def deploy_model(
    model: str | os.PathLike[str],
    profile: HardwareProfile,
    target: Target,
    params: BenchParams,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    timeout_s: float = 900.0,
    progress: Progress | None = None,
    push_progress: Callable[[Any], None] | None = None,
    agent_stderr: Callable[[str], None] | None = None,
) -> DeployOutcome:
    shrunk = shrink_model(
        model, profile, options or ShrinkOptions(), output=output, progress=progress
    )
    outcome = bench_model(
        shrunk.artifact.path,
        target,
        params,
        profile=profile,
        db=db,
        timeout_s=timeout_s,
        progress=progress,
        push_progress=push_progress,
        agent_stderr=agent_stderr,
    )
    return DeployOutcome(shrink=shrunk, bench=outcome)
