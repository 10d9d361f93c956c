"""A runner's own work on its host, beside the devices: build each artifact its devices
need (once per artifact, found in the cache when it was built before), and check each
one's quality (once per artifact, found in the results database when measured before)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats import backend, detect_format
from edgeshrink.formats.gguf.quality import default_eval_text, evaluate_llm
from edgeshrink.lab.builds import BuildPlan, Built, build_artifact
from edgeshrink.lab.history import LabHistory
from edgeshrink.lab.session import LabEvent
from edgeshrink.quality import EvalSettings, quality_key
from edgeshrink.sweep import QUALITY_METHOD

if TYPE_CHECKING:
    from edgeshrink.lab.runner import LabRunner


def build_all(runner: LabRunner, hist: LabHistory, needed: set[tuple[str, str]]) -> float:
    """Build (or find in the cache) every artifact of ``needed`` (job, build key), each
    recorded in the run's lab_builds; returns the seconds it took."""
    start = time.perf_counter()
    for plan in runner.plan.builds:
        if (plan.job.name, plan.key) not in needed:
            continue

        def say(message: str, plan: BuildPlan = plan) -> None:
            runner.emit(LabEvent("build", runner.run_id, job=plan.job.name, message=message))

        try:
            built, reused, seconds = build_artifact(plan, runner.artifacts_dir, say)
        except EdgeshrinkError as exc:
            built = Built(plan.key, plan.job.name, False, None, None, None, plan.quant,
                          plan.source_sha256, {}, exc.message)  # fmt: skip
            reused, seconds = False, 0.0
            say(f"build failed: {exc.message}")
        runner.built[(plan.job.name, plan.key)] = built
        hist.save_build(
            runner.run_id, plan.job.name, plan.key,  # type: ignore[arg-type]
            {"status": "ok" if built.ok else "failed", "source_path": str(plan.source),
             "source_sha256": plan.source_sha256,
             "artifact_path": str(built.path) if built.path else None,
             "artifact_sha256": built.sha256,
             "artifact_size": built.path.stat().st_size if built.path and built.path.is_file() else None,
             "format": built.format, "quant": built.quant, "reused": int(reused),
             "seconds": round(seconds, 3), "error": built.error,
             "tool_versions": built.tool_versions,
             "quality_status": "pending" if plan.job.quality and built.ok else None},
        )  # fmt: skip
        if built.ok:
            say(
                ("reused " if reused else f"built in {seconds:.1f} s: ")
                + f"{built.path.name} ({built.quant or built.format}, sha256 {(built.sha256 or '')[:12]}…)"
                + f" for {', '.join(plan.devices)}"
            )
    make_references(runner, needed)
    return time.perf_counter() - start


def make_references(runner: LabRunner, needed: set[tuple[str, str]]) -> None:
    """The reference of every job with a quality check whose model a reference can be made
    from (cached on this host): its devices measure the quality where it runs."""
    for plan in runner.plan.builds:
        job, check = plan.job, plan.job.quality
        built = runner.built.get((job.name, plan.key))
        if (job.name, plan.key) not in needed or check is None or job.model is None:
            continue
        if job.name in runner.references or built is None or not built.ok:
            continue
        text = check.text.read_text(encoding="utf-8") if check.text else None
        settings = EvalSettings(text=text, n_ctx=check.eval_ctx, max_chunks=check.eval_chunks)
        try:
            fmt = backend(detect_format(job.model))
            runner.references[job.name] = fmt.make_reference(
                job.model, **settings.reference_settings()
            )
            message = f"quality reference for the devices: {runner.references[job.name].name}"
        except EdgeshrinkError as exc:
            message = f"no quality on the devices: {exc.message}"
        runner.emit(LabEvent("quality", runner.run_id, job=job.name, message=message))


def check_quality(runner: LabRunner) -> None:
    """Quality checks on the host, once per artifact (reused from the store when measured)."""
    hist = runner.history()
    try:
        for plan in runner.plan.builds:
            built = runner.built.get((plan.job.name, plan.key))
            check = plan.job.quality
            if check is None or built is None or not built.ok or runner.stop.is_set():
                continue
            text = check.text.read_text(encoding="utf-8") if check.text else default_eval_text()
            _method, settings = quality_key(
                backend(detect_format(plan.source)),
                EvalSettings(text=text, n_ctx=check.eval_ctx, max_chunks=check.eval_chunks),
            )
            try:
                report = hist.store.find_quality(
                    QUALITY_METHOD, plan.source_sha256, built.sha256 or "", settings
                )
                if report is None:
                    runner.emit(LabEvent("quality", runner.run_id, job=plan.job.name,
                                       message=f"measuring quality of {built.path.name} on the host"))  # type: ignore[union-attr]  # fmt: skip
                    measured = evaluate_llm(plan.source, built.path, text=text,  # type: ignore[arg-type]
                                            n_ctx=check.eval_ctx, max_chunks=check.eval_chunks)  # fmt: skip
                    report = measured.to_dict()
                    hist.store.add_quality(
                        {"method": QUALITY_METHOD, "base_sha256": plan.source_sha256,
                         "candidate_sha256": built.sha256, "settings": settings,
                         "candidate_name": built.path.name, "quant": built.quant,  # type: ignore[union-attr]
                         "kld_mean": measured.kld_mean.value, "ppl_ratio": measured.ppl_ratio.value,
                         "same_top": measured.same_top.value},
                        report,
                    )  # fmt: skip
                failures = check.budget.failures(report)
                fields = {
                    "quality_status": "failed-budget" if failures else "ok",
                    "kld_mean": report["kld_mean"]["value"],
                    "ppl_ratio": report["ppl_ratio"]["value"],
                    "same_top": report["same_top"]["value"],
                    "quality": {"failures": failures, "budget": check.budget.describe(),
                                "settings": json.loads(settings)},
                }  # fmt: skip
                message = "quality: " + (
                    "; ".join(failures)
                    if failures
                    else f"KLD {fields['kld_mean']:.3g} within {check.budget.describe()}"
                )
            except EdgeshrinkError as exc:
                fields = {"quality_status": "error", "quality": {"error": exc.message}}
                message = f"quality check failed: {exc.message}"
            hist.set_build_quality(runner.run_id, plan.job.name, plan.key, fields)  # type: ignore[arg-type]
            runner.emit(LabEvent("quality", runner.run_id, job=plan.job.name, message=message))
    finally:
        hist.close()
