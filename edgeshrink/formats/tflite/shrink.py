"""shrink_tflite: plan, quantize, verify in the host's runtime, and rename the result into
place with its manifest (finish_artifact, which the Keras/SavedModel converter uses too)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.tensors import fingerprint_calibration
from edgeshrink.formats.tflite.constants import FORMAT, STATIC_QUANTS, Progress
from edgeshrink.formats.tflite.inspect import inspect_tflite
from edgeshrink.formats.tflite.plan import plan_tflite
from edgeshrink.formats.tflite.quantize import (
    calibration_batches,
    check_calibration_method,
    quantize_tflite,
    recipe_detail,
)
from edgeshrink.formats.tflite.runtime import verify_runs
from edgeshrink.profiles import HardwareProfile

if TYPE_CHECKING:
    from edgeshrink.plan import ShrinkOptions, ShrinkPlan
    from edgeshrink.shrink import ShrinkResult


def _expected_recipe(info: ModelInfo, options: ShrinkOptions, quant: str) -> str:
    calibration = None
    if quant in STATIC_QUANTS:
        if options.calibration is None:
            calibration = "random"
        else:
            batches, _ = calibration_batches(info, options, quant)
            calibration = fingerprint_calibration(batches)
    return recipe_detail(quant, options, calibration)


def shrink_tflite(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
) -> ShrinkResult:
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.shrink import (
        ShrinkResult,
        quantizer_failures,
        resolve_output,
        reusable_artifact,
    )
    from edgeshrink.util import sha256_file

    options = options or ShrinkOptions()
    say = progress or (lambda _m: None)
    src = Path(src)
    info = info or inspect_tflite(src)
    plan = plan_tflite(info, profile, options)
    out = resolve_output(src, plan.quant, output)
    if plan.quant in STATIC_QUANTS:
        check_calibration_method(options)
        calibration_batches(info, options, plan.quant)  # fail before anything slow
    say(f"hashing {src.name}")
    source_sha = sha256_file(src)
    existing = None if options.force else reusable_artifact(out, source_sha, plan.quant)
    if existing and existing.recipe_detail == _expected_recipe(info, options, plan.quant):
        return ShrinkResult(plan=plan, artifact=existing, reused=True, seconds=0.0)

    say(f"checking that the host's TFLite runtime runs {src.name}")
    verify_runs(src, info, threads=options.threads)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".work", dir=out.parent))
    try:
        with quantizer_failures(
            src, plan.quant, "ai-edge-quantizer",
            "try another --quant (fp16, dynamic-int8); EDGESHRINK_DEBUG=1 shows the traceback",
        ):  # fmt: skip
            outcome = quantize_tflite(src, work / out.name, plan.quant, info, options, progress=say)
        artifact = finish_artifact(
            outcome.path, out, plan, src, source_sha, profile,
            notes=(plan.reason, *outcome.notes), recipe=outcome.recipe,
            threads=options.threads, progress=say,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ShrinkResult(
        plan=plan, artifact=artifact, reused=False, seconds=time.perf_counter() - start
    )


def finish_artifact(
    made: Path,
    out: Path,
    plan: ShrinkPlan,
    src: Path,
    source_sha: str,
    profile: HardwareProfile,
    *,
    notes: tuple[str, ...],
    recipe: str,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Any:
    """Verify ``made`` in the host's runtime, rename it to ``out`` and write its manifest."""
    from edgeshrink.artifacts import Artifact, tool_versions
    from edgeshrink.util import atomic_path, write_json_atomic

    say = progress or (lambda _m: None)
    out_info = inspect_tflite(made)
    say(f"verifying {out.name} in the host's TFLite runtime")
    runtime = verify_runs(made, out_info, threads=threads)
    with atomic_path(out) as tmp:
        os.replace(made, tmp)
        versions = tool_versions()
        for dist in ("ai-edge-quantizer", "ai-edge-litert", "tflite-runtime", "tensorflow"):
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions[dist] = version(dist)
        meta = dict(out_info.metadata)
        artifact = Artifact.of_file(
            out,
            written=tmp,
            format=FORMAT,
            quant=plan.quant,
            source=src,
            source_sha256=source_sha,
            profile_id=profile.id,
            tool_versions=versions,
            tensor_types=out_info.tensor_types,
            notes=(
                *notes,
                f"verified: loads and runs in {runtime} on the host",
                "operators: "
                + ", ".join(f"{o['op']} v{o['version']}" for o in meta.get("operators", [])),
                *meta.get("runtime_notes", []),
            ),
            detail=recipe,
        )
        # The manifest goes in first: an artifact without one is never reused.
        write_json_atomic(artifact.manifest_path, artifact.to_manifest())
    return artifact
