"""The TFLite backend's part of the pipeline: ai-edge-quantizer, then a run in the
host's TFLite runtime before the file gets its name."""

from __future__ import annotations

import contextlib
import dataclasses
from importlib.metadata import version
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import quantize_pass
from edgeshrink.formats.base import Built, ModelInfo
from edgeshrink.formats.tensors import fingerprint_calibration
from edgeshrink.formats.tflite.constants import STATIC_QUANTS
from edgeshrink.formats.tflite.inspect import inspect_tflite
from edgeshrink.formats.tflite.quantize import (
    calibration_batches,
    check_calibration_method,
    quantize_tflite,
    recipe_detail,
)
from edgeshrink.formats.tflite.runtime import verify_runs

VERSIONED = ("ai-edge-quantizer", "ai-edge-litert", "tflite-runtime", "tensorflow")


def preflight(info: ModelInfo, quant: str, options: Any) -> None:
    if quant in STATIC_QUANTS:
        check_calibration_method(options)
        calibration_batches(info, options, quant)  # fail before anything slow


def check_source(src: Path, info: ModelInfo, options: Any, progress: Any) -> None:
    progress(f"checking that the host's TFLite runtime runs {src.name}")
    verify_runs(src, info, threads=options.threads)


def build(src: Path, work: Path, name: str, recipe: Any, *, info: ModelInfo, options: Any,
          progress: Any) -> Built:  # fmt: skip
    quant = recipe[-1].get("type")
    outcome = quantize_tflite(src, work / name, quant, info, options, progress=progress)
    return Built(
        path=outcome.path,
        recipe=(*(s.to_dict() for s in recipe[:-1]), quantize_pass(quant, outcome.recipe)),
        notes=outcome.notes,
    )


def verify(built: Built, options: Any, progress: Any) -> Built:
    """Load and run the made file in the host's runtime; note what ran it and its operators."""
    out_info = inspect_tflite(built.path)
    progress(f"verifying {built.path.name} in the host's TFLite runtime")
    runtime = verify_runs(built.path, out_info, threads=options.threads)
    meta = dict(out_info.metadata)
    versions = []
    for dist in VERSIONED:
        with contextlib.suppress(Exception):
            versions.append((dist, version(dist)))
    return dataclasses.replace(
        built,
        tensor_types=out_info.tensor_types,
        tool_versions=(*built.tool_versions, *versions),
        notes=(
            *built.notes,
            f"verified: loads and runs in {runtime} on the host",
            "operators: "
            + ", ".join(f"{o['op']} v{o['version']}" for o in meta.get("operators", [])),
            *meta.get("runtime_notes", []),
        ),
    )


def expected_recipe(info: ModelInfo, options: Any, quant: str) -> str:
    """What a fresh shrink would record: the reuse key's detail."""
    calibration = None
    if quant in STATIC_QUANTS:
        if options.calibration is None:
            calibration = "random"
        else:
            batches, _ = calibration_batches(info, options, quant)
            calibration = fingerprint_calibration(batches)
    return recipe_detail(quant, options, calibration)
