"""shrink_onnx: plan, quantize, verify in onnxruntime, and rename the result into place
with its manifest (or reuse an artifact made the same way)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.onnx.constants import FORMAT, Progress
from edgeshrink.formats.onnx.inspect import inspect_onnx
from edgeshrink.formats.onnx.plan import int8_recipe, plan_onnx
from edgeshrink.formats.onnx.quantize import calibration_batches, quantize_onnx
from edgeshrink.formats.onnx.runtime import open_session, verify_runs
from edgeshrink.formats.tensors import fingerprint_calibration
from edgeshrink.profiles import HardwareProfile
from edgeshrink.util import make_work_dir

if TYPE_CHECKING:
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.shrink import ShrinkResult

# Above this the protobuf limit (2 GiB) is near: write external data.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 1024**3)


def _source_sha256(src: Path, info: ModelInfo) -> str:
    from edgeshrink.util import sha256_file

    files = dict(info.metadata).get("external_data") or []
    if not files:
        return sha256_file(src)
    digest = hashlib.sha256(sha256_file(src).encode())
    for f in sorted(files, key=lambda f: f["file"]):
        digest.update(sha256_file(src.parent / f["file"]).encode())
    return digest.hexdigest()


def shrink_onnx(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    info: ModelInfo | None = None,
) -> ShrinkResult:
    from edgeshrink.artifacts import Artifact, load_artifact, tool_versions
    from edgeshrink.plan import ShrinkOptions
    from edgeshrink.shrink import ShrinkResult, quantizer_failures, resolve_output
    from edgeshrink.util import atomic_path, write_json_atomic

    options = options or ShrinkOptions()
    say = progress or (lambda _m: None)
    src = Path(src)
    info = info or inspect_onnx(src)
    plan = plan_onnx(info, profile, options)
    out = resolve_output(src, plan.quant, output)
    if plan.quant.startswith("int8-static"):
        # Fail on missing or mismatched calibration data before anything slow.
        calibration_batches(info, options)
    say(f"hashing {src.name}")
    source_sha = _source_sha256(src, info)
    external = bool(dict(info.metadata).get("external_data")) or (
        info.size_bytes > EXTERNAL_DATA_THRESHOLD
    )
    if not options.force and out.exists():
        with contextlib.suppress(EdgeshrinkError):
            existing = load_artifact(out, verify=True)
            if existing.source_sha256 == source_sha and existing.quant == plan.quant:
                expected = _expected_recipes(info, profile, options, plan.quant, external)
                if expected is None or existing.recipe_detail in expected:
                    return ShrinkResult(plan=plan, artifact=existing, reused=True, seconds=0.0)

    say(f"checking that onnxruntime runs {src.name}")
    open_session(src, opsets=dict(info.metadata).get("opset"))
    start = time.perf_counter()
    work = make_work_dir(out).resolve()
    try:
        with quantizer_failures(
            src, plan.quant, "onnxruntime's tooling",
            "try another --quant (fp16, int8-dynamic); EDGESHRINK_DEBUG=1 shows the traceback",
        ):  # fmt: skip
            outcome = quantize_onnx(
                src, work, plan.quant, info, profile, options,
                out_name=out.name, external=external, progress=say,
            )  # fmt: skip
        say(f"verifying {out.name} in onnxruntime")
        feed = None
        if options.calibration is not None:
            feed = calibration_batches(info, options)[0].feeds[0]
        verify_runs(outcome.path, info, feed=feed)
        out_info = inspect_onnx(outcome.path)
        with atomic_path(out) as tmp:
            for data in outcome.data_files:
                os.replace(data, out.parent / data.name)
            os.replace(outcome.path, tmp)
            versions = tool_versions()
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions["onnxconverter-common"] = version("onnxconverter-common")
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
                notes=(plan.reason, *outcome.notes)
                + tuple(f"external data: {d.name}" for d in outcome.data_files),
                detail=outcome.recipe,
            )
            write_json_atomic(artifact.manifest_path, artifact.to_manifest())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ShrinkResult(
        plan=plan, artifact=artifact, reused=False, seconds=time.perf_counter() - start
    )


def _expected_recipes(
    info: ModelInfo, profile: HardwareProfile, options: ShrinkOptions, quant: str, external: bool
) -> tuple[str, ...] | None:
    """The recipe strings a fresh shrink could record, when they can be known cheaply
    (static int8 measures per-channel against per-tensor unless the user chose)."""
    if quant in ("fp32",):
        return ("fp32",)
    if quant == "fp16":
        return ("fp16 keep_io_types=True",)
    recipe = int8_recipe(profile, options, quant)

    def tail(per_channel: bool) -> str:
        return f" per_channel={per_channel} reduce_range={recipe.reduce_range}"

    if quant == "int8-dynamic":
        return (f"int8-dynamic weight={recipe.weight_type}" + tail(recipe.per_channel),)
    if options.calibration is None:
        calibration = "random"
    else:
        batches, _ = calibration_batches(info, options)
        calibration = fingerprint_calibration(batches)
    head = (
        f"{quant} act={recipe.activation_type}"
        f"{'-sym' if recipe.symmetric_activations else ''} weight={recipe.weight_type} "
        f"method={options.calibration_method} calibration={calibration}"
    )
    measured = options.per_channel is None and not external
    choices = (True, False) if measured else (recipe.per_channel,)
    return tuple(head + tail(per_channel) for per_channel in choices)
