"""Measuring a sweep's candidates on the device, one at a time: their speed and memory,
and their quality against a reference of the original (the device's runtime, not the
host's, decides whether a candidate meets the budget)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.bench import BenchParams
from edgeshrink.deploy import bench_model, threads_for
from edgeshrink.device_eval import device_figures, device_quality_key, store_device_quality
from edgeshrink.formats import backend, detect_format
from edgeshrink.profiles import HardwareProfile
from edgeshrink.quality import EvalSettings
from edgeshrink.store import ResultStore
from edgeshrink.sweep.types import Progress, SweepCandidate
from edgeshrink.targets import Target
from edgeshrink.util import sha256_file


@dataclass(frozen=True)
class DeviceQuality:
    """How a sweep judges its candidates by the device's quality: the original, the settings
    of the evaluation, the budget's failures and the loss of a report."""

    base: Path
    settings: EvalSettings
    failures: Callable[[dict[str, Any]], list[str]]
    loss: Callable[[dict[str, Any]], float]

    def reference(self, say: Progress) -> Path:
        fmt = backend(detect_format(self.base))
        say(f"making the quality reference from {self.base.name} for the device")
        return fmt.make_reference(self.base, **self.settings.reference_settings(), progress=say)

    def judged(
        self, cand: SweepCandidate, figures: dict[str, Any], target: Target
    ) -> SweepCandidate:
        """``cand`` with the device's figures as its quality (the host's kept beside them)."""
        return replace(
            cand, quality=figures, quality_failures=tuple(self.failures(figures)),
            loss=self.loss(figures), quality_on=target.name, host_quality=cand.quality,
        )  # fmt: skip


def _gguf_measured(r: Any, result_id: int | None) -> dict[str, Any]:
    return {"tg_tok_s": r.tg_tok_s.mean if r.tg_tok_s else None,
            "tg_tok_s_stddev": r.tg_tok_s.stddev if r.tg_tok_s else None,
            "pp_tok_s": r.pp_tok_s.mean if r.pp_tok_s else None,
            "peak_rss_mb": r.peak_rss_mb, "ttft_ms": r.ttft_ms.mean if r.ttft_ms else None,
            "status": r.status, "result_id": result_id}  # fmt: skip


def _onnx_measured(r: Any, result_id: int | None) -> dict[str, Any]:
    lat = r.latency_ms
    return {"latency_p50_ms": lat.p50 if lat else None, "latency_p90_ms": lat.p90 if lat else None,
            "latency_mean_ms": lat.mean if lat else None, "throughput_per_s": r.throughput_per_s,
            "latency_stddev_ms": lat.stddev if lat else None, "latency_count": lat.samples if lat else None,
            "peak_rss_mb": r.peak_rss_mb, "status": r.status, "error": r.error_message,
            "result_id": result_id}  # fmt: skip


def _stored_measured(store: ResultStore, found: Any, by_text: bool) -> dict[str, Any]:
    if by_text:
        return {"tg_tok_s": found.tg_tok_s, "tg_tok_s_stddev": found.tg_tok_s_stddev,
                "pp_tok_s": found.pp_tok_s,
                "peak_rss_mb": found.peak_rss_mb, "ttft_ms": found.ttft_ms,
                "status": found.status, "result_id": found.id}  # fmt: skip
    # p50 has no column of its own: it is in the agent's document beside the row.
    latency = store.get_document(found.id).get("latency_ms") or {}
    return {"latency_p50_ms": latency.get("p50"), "latency_p90_ms": found.latency_p90_ms,
            "latency_mean_ms": found.latency_ms, "throughput_per_s": found.throughput_per_s,
            "latency_stddev_ms": latency.get("stddev"), "latency_count": latency.get("count"),
            "peak_rss_mb": found.peak_rss_mb, "status": found.status, "error": None,
            "result_id": found.id}  # fmt: skip


def measure_on_target(
    candidates: list[SweepCandidate],
    profile: HardwareProfile,
    target: Target,
    params: BenchParams,
    db: str | os.PathLike[str] | None,
    remeasure: bool,
    say: Progress,
    quality: DeviceQuality | None = None,
) -> list[SweepCandidate]:
    """Benchmark each fitting candidate on the device, one at a time (never two at once);
    with ``quality``, the same run measures its quality there against a reference."""

    asked = replace(params, threads=threads_for(target, profile, params.threads))
    reference = quality.reference(say) if quality is not None else None
    fmt = backend(detect_format(quality.base)) if quality is not None else None
    measured = []
    with ResultStore(db) as store:
        base_sha = sha256_file(quality.base) if quality is not None else ""
        for cand in candidates:
            if not cand.fits:
                measured.append(cand)
                continue
            found = None if remeasure else store.find_result(cand.sha256, target.name, asked.key())
            figures = None
            if found is not None and quality is not None and reference is not None:
                method, key = device_quality_key(fmt, quality.settings, target, reference)
                figures = store.find_quality(method, base_sha, cand.sha256, key)
            if found is not None and (quality is None or figures is not None):
                doc = _stored_measured(store, found, cand.by_text)
                cand = replace(cand, measured=doc, measured_reused=True)
                measured.append(quality.judged(cand, figures, target) if quality else cand)
                continue
            say(f"{cand.quant}: benchmarking on {target.name}"
                + (" (and its quality)" if quality else ""))  # fmt: skip
            outcome = bench_model(cand.path, target, asked, profile=profile, db=db, progress=None,
                                  reference=reference)  # fmt: skip
            shape = _gguf_measured if cand.by_text else _onnx_measured
            cand = replace(cand, measured=shape(outcome.result, outcome.result_id))
            device = outcome.result.quality
            if quality is not None and device is not None and fmt is not None:
                figures = device_figures(fmt, quality.base, cand.path, device)
                store_device_quality(store, fmt, quality.base, cand.path, quality.settings,
                                     target, reference, figures, outcome.result_id)  # fmt: skip
                cand = quality.judged(cand, figures, target)
            measured.append(cand)
    return measured
