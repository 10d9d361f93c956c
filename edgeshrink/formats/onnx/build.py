"""The ONNX backend's part of the pipeline: onnxruntime's quantizers, then a run in
onnxruntime on the host before the file gets its name; the reuse key's details."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from importlib.metadata import version
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import quantize_pass
from edgeshrink.formats.base import Built, ModelInfo
from edgeshrink.formats.onnx.inspect import inspect_onnx
from edgeshrink.formats.onnx.plan import int8_recipe
from edgeshrink.formats.onnx.quantize import calibration_batches, quantize_onnx
from edgeshrink.formats.onnx.runtime import open_session, verify_runs
from edgeshrink.formats.tensors import fingerprint_calibration
from edgeshrink.util import sha256_file

# Above this the protobuf limit (2 GiB) is near: write external data.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 1024**3)


def source_sha256(src: Path, info: ModelInfo) -> str:
    """The model file and its external data files, hashed together."""
    files = dict(info.metadata).get("external_data") or []
    if not files:
        return sha256_file(src)
    digest = hashlib.sha256(sha256_file(src).encode())
    for f in sorted(files, key=lambda f: f["file"]):
        digest.update(sha256_file(src.parent / f["file"]).encode())
    return digest.hexdigest()


def external_data(info: ModelInfo) -> bool:
    """Whether the artifact keeps its weights in an external data file."""
    return bool(dict(info.metadata).get("external_data")) or (
        info.size_bytes > EXTERNAL_DATA_THRESHOLD
    )


def preflight(info: ModelInfo, quant: str, options: Any) -> None:
    if quant.startswith("int8-static"):
        calibration_batches(info, options)  # missing or mismatched data fails now


def reuse_details(
    info: ModelInfo, profile: Any, options: Any, quant: str
) -> tuple[str, ...] | None:
    return expected_recipes(info, profile, options, quant, external_data(info))


def check_source(src: Path, info: ModelInfo, progress: Any) -> None:
    progress(f"checking that onnxruntime runs {src.name}")
    open_session(src, opsets=dict(info.metadata).get("opset"))


def build(src: Path, work: Path, name: str, recipe: Any, *, info: ModelInfo, profile: Any,
          options: Any, progress: Any) -> Built:  # fmt: skip
    quant = recipe[-1].get("type")
    outcome = quantize_onnx(src, work, quant, info, profile, options, out_name=name,
                            external=external_data(info), progress=progress)  # fmt: skip
    versions = []
    with contextlib.suppress(Exception):
        versions.append(("onnxconverter-common", version("onnxconverter-common")))
    return Built(
        path=outcome.path,
        recipe=(*(s.to_dict() for s in recipe[:-1]), quantize_pass(quant, outcome.recipe)),
        notes=(*outcome.notes, *(f"external data: {d.name}" for d in outcome.data_files)),
        data_files=outcome.data_files,
        tool_versions=tuple(versions),
    )


def verify(built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
    progress(f"verifying {built.path.name} in onnxruntime")
    feed = None
    if options.calibration is not None:
        feed = calibration_batches(info, options)[0].feeds[0]
    verify_runs(built.path, info, feed=feed)
    return dataclasses.replace(built, tensor_types=inspect_onnx(built.path).tensor_types)


def expected_recipes(
    info: ModelInfo, profile: Any, options: Any, quant: str, external: bool
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
