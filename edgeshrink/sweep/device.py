"""Measuring a sweep's candidates on the device, one at a time."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from edgeshrink.bench import BenchParams
from edgeshrink.deploy import bench_model, threads_for
from edgeshrink.profiles import HardwareProfile
from edgeshrink.store import ResultStore
from edgeshrink.sweep.types import Progress, SweepCandidate
from edgeshrink.targets import Target


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
) -> list[SweepCandidate]:
    """Benchmark each fitting candidate on the device, one at a time (never two at once)."""

    asked = replace(params, threads=threads_for(target, profile, params.threads))
    measured = []
    with ResultStore(db) as store:
        for cand in candidates:
            if not cand.fits:
                measured.append(cand)
                continue
            found = None if remeasure else store.find_result(cand.sha256, target.name, asked.key())
            if found is not None:
                doc = _stored_measured(store, found, cand.by_text)
                measured.append(replace(cand, measured=doc, measured_reused=True))
                continue
            say(f"{cand.quant}: benchmarking on {target.name}")
            outcome = bench_model(cand.path, target, asked, profile=profile, db=db, progress=None)
            shape = _gguf_measured if cand.by_text else _onnx_measured
            measured.append(replace(cand, measured=shape(outcome.result, outcome.result_id)))
    return measured
