"""Quality measured on the device itself, beside the host's.

The device runs other kernels than the laptop (llama.cpp repacks Q4_0 for ARM dot-product
and i8mm, XNNPACK and NPU delegates round differently), so a model that passed on the host
can drift on the board. Here the host makes a compact reference from the base model (the
backend's ``make_reference``: the base's log-probabilities over the text, or its outputs on
the inputs), pushes it like an artifact (content-addressed, verified), and the agent scores
the candidate against it with the device's own runtime. The result is stored (the run in
``results``, the figures in ``quality`` with the target) and compared with the host's
figures for the same settings, found in the store or measured: a difference beyond the
tolerance is a drift.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.bench import BenchParams
from edgeshrink.deploy import BenchOutcome, bench_model
from edgeshrink.errors import AgentError, UnsupportedFormatError
from edgeshrink.formats import backend, detect_format
from edgeshrink.formats.base import Backend
from edgeshrink.profiles import HardwareProfile
from edgeshrink.quality import (
    DEVICE_SUFFIX,
    EvalSettings,
    host_quality,
    quality_columns,
    quality_key,
)
from edgeshrink.store import ResultStore
from edgeshrink.targets import Target
from edgeshrink.util import sha256_file

Progress = Callable[[str], None]
DEFAULT_TOLERANCE = 0.02
KLD_FLOOR = 1e-3  # a KLD difference is read against at least this much KLD
SAMPLING_ALLOWANCE = 3.0  # standard errors of the KLD's sampled tail allowed before a drift


@dataclass(frozen=True)
class DriftRow:
    metric: str  # what is compared: ppl, kld_mean, same_top, rms_dp, cosine_mean of X, ...
    host: float
    device: float
    difference: float  # device - host
    judged: float  # the difference as it is held to the tolerance (relative or absolute)
    relative: bool
    beyond: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Drift:
    tolerance: float
    rows: tuple[DriftRow, ...]

    @property
    def flagged(self) -> tuple[DriftRow, ...]:
        return tuple(r for r in self.rows if r.beyond)

    def describe(self) -> str:
        if not self.flagged:
            return f"none beyond {self.tolerance:.1%}"
        return (
            "; ".join(
                f"{r.metric} {r.judged:+.2%}" + (" (relative)" if r.relative else " (absolute)")
                for r in self.flagged
            )
            + f" > {self.tolerance:.1%}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "flagged": bool(self.flagged),
                "rows": [r.to_dict() for r in self.rows]}  # fmt: skip


@dataclass(frozen=True)
class DeviceEval:
    target: str
    evaluation: str  # the backend's: "llm-text" or "outputs"
    quality: dict[str, Any]  # the device's figures, shaped like the host report's to_dict()
    outcome: BenchOutcome
    reference: Path
    host: dict[str, Any] | None  # the host's figures for the same settings
    host_cached: bool
    drift: Drift | None
    quality_id: int | None

    def to_dict(self) -> dict[str, Any]:
        r = self.outcome.result
        return {
            "target": self.target,
            "evaluation": self.evaluation,
            "device": self.quality,
            "host": self.host,
            "host_cached": self.host_cached,
            "drift": self.drift.to_dict() if self.drift else None,
            "reference": {"path": str(self.reference), "bytes": self.reference.stat().st_size,
                          "sha256": (self.quality.get("reference") or {}).get("sha256")},
            "run": {"status": r.status, "runtime": r.runtime, "runtime_version": r.runtime_version,
                    "threads": r.threads, "peak_rss_mb": r.peak_rss_mb,
                    "device_cpu": r.device_cpu, "device_arch": r.device_arch},
            "result_id": self.outcome.result_id,
            "quality_id": self.quality_id,
        }  # fmt: skip


def device_figures(
    fmt: Backend, base: Path, candidate: Path, quality: dict[str, Any]
) -> dict[str, Any]:
    """A device's quality section completed into the host report's shape."""
    doc = {**quality, "base": str(base), "candidate": str(candidate)}
    if fmt.evaluation != "llm-text":
        doc.update({"format": fmt.format, "verdict": None, "notes": []})
    return doc


def compare(host: dict[str, Any], device: dict[str, Any], tolerance: float) -> Drift:
    """The device's figures against the host's: a drift is a difference beyond ``tolerance``,
    relative for perplexity and KL divergence (the KLD's sampling error allowed), absolute
    for fractions (same top token, RMS Δp, cosine, agreement, accuracy)."""
    rows: list[DriftRow] = []

    def add(metric: str, h: float, d: float, relative: bool, allowance: float = 0.0) -> None:
        if relative:
            judged = (d - h) / max(abs(h), KLD_FLOOR if metric == "kld_mean" else 1e-12)
        else:
            judged = d - h
        shrunk = max(abs(judged) - allowance, 0.0)
        rows.append(DriftRow(metric, h, d, d - h, judged, relative, shrunk > tolerance))

    if "kld_mean" in device:
        kld_h = host["kld_mean"]["value"]
        allowance = (
            SAMPLING_ALLOWANCE * device.get("kld_sampling_error", 0.0) / max(kld_h, KLD_FLOOR)
        )
        add("ppl", host["ppl"]["value"], device["ppl"]["value"], True)
        add("kld_mean", kld_h, device["kld_mean"]["value"], True, allowance)
        add("same_top", host["same_top"]["value"], device["same_top"]["value"], False)
        add("rms_dp", host["rms_dp"]["value"], device["rms_dp"]["value"], False)
        return Drift(tolerance, tuple(rows))
    on_host = {(m["name"], m.get("output")): m for m in host["metrics"]}
    for m in device["metrics"]:
        if m["name"] not in ("cosine_mean", "top1_agreement", "accuracy"):
            continue
        h = on_host.get((m["name"], m.get("output")))
        if h is not None:
            label = f"{m['name']} of {m['output']}" if m.get("output") else m["name"]
            add(label, h["value"], m["value"], False)
    return Drift(tolerance, tuple(rows))


def evaluate_on_device(
    base: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    target: Target,
    *,
    settings: EvalSettings | None = None,
    params: BenchParams | None = None,
    profile: HardwareProfile | None = None,
    with_host: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    db: str | os.PathLike[str] | None = None,
    timeout_s: float = 900.0,
    progress: Progress | None = None,
    push_progress: Callable[[Any], None] | None = None,
    agent_stderr: Callable[[str], None] | None = None,
) -> DeviceEval:
    """Measure ``candidate``'s quality against ``base`` on ``target`` (and, with
    ``with_host``, beside the host's measurement of the same, from the store when it is
    there); the run and the figures are stored."""
    say = progress or (lambda _m: None)
    base, candidate = Path(base), Path(candidate)
    settings = settings or EvalSettings()
    fmt = backend(detect_format(candidate))
    if detect_format(base) != fmt.format:
        raise UnsupportedFormatError(
            f"{base.name} is {detect_format(base)} but {candidate.name} is {fmt.format}",
            hint="compare a model with its own shrunk version (same format)",
        )
    say(f"making the reference from {base.name} (cached after the first time)")
    reference = fmt.make_reference(base, **settings.reference_settings(), progress=say)
    params = params or BenchParams()
    if settings.inputs is not None:
        params = replace(params, inputs=None)  # the reference carries the inputs
    with ResultStore(db) as store:
        host, cached = None, False
        if with_host:
            host, cached = host_quality(store, base, candidate, settings, progress=say)
            say("host figures " + ("found in the results database" if cached else "measured"))
        outcome = bench_model(
            candidate, target, params, profile=profile, db=db, timeout_s=timeout_s,
            progress=say, push_progress=push_progress, agent_stderr=agent_stderr,
            reference=reference, speed=False,
        )  # fmt: skip
        quality = judged_quality(fmt, base, candidate, outcome, target)
        quality_id = store_device_quality(
            store, fmt, base, candidate, settings, target, reference, quality, outcome.result_id
        )
    drift = compare(host, quality, tolerance) if host is not None else None
    return DeviceEval(target.name, fmt.evaluation, quality, outcome, reference, host, cached,
                      drift, quality_id)  # fmt: skip


def judged_quality(
    fmt: Backend, base: Path, candidate: Path, outcome: BenchOutcome, target: Target
) -> dict[str, Any]:
    """The device's figures of a run that measured quality (AgentError when it did not)."""
    r = outcome.result
    if not r.ok:
        raise AgentError(
            f"the evaluation on {target.name} ended with status {r.status}: {r.error_message}",
            hint=r.error_hint or AgentError.default_hint,
        )
    if r.quality is None:
        raise AgentError(
            f"the agent on {target.name} measured no quality",
            hint="check that the device runs this edgeshrink's agent; EDGESHRINK_DEBUG=1",
        )
    return device_figures(fmt, base, candidate, r.quality)


def device_quality_key(
    fmt: Backend, settings: EvalSettings, target: Target, reference: Path
) -> tuple[str, str]:
    """(method, settings) of a measurement on ``target`` in the results database."""
    method, host_settings = quality_key(fmt, settings)
    asked = {**json.loads(host_settings), "target": target.name,
             "reference_sha256": sha256_file(reference)}  # fmt: skip
    return method + DEVICE_SUFFIX, json.dumps(asked, sort_keys=True)


def store_device_quality(
    store: ResultStore, fmt: Backend, base: Path, candidate: Path, settings: EvalSettings,
    target: Target, reference: Path, quality: dict[str, Any], result_id: int | None,
) -> int:  # fmt: skip
    method, key = device_quality_key(fmt, settings, target, reference)
    return store.add_quality(
        {"method": method, "base_sha256": sha256_file(base),
         "candidate_sha256": sha256_file(candidate), "settings": key,
         "candidate_name": candidate.name, "target": target.name, "result_id": result_id,
         **quality_columns(quality)},
        quality,
    )  # fmt: skip
