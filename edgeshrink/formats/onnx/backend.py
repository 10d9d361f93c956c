"""OnnxBackend: what the rest of edgeshrink asks of the ONNX format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeshrink.errors import QuantizationError, SweepError
from edgeshrink.formats.base import Backend, Built, MemoryEstimate, ModelInfo
from edgeshrink.formats.onnx import build
from edgeshrink.formats.onnx.constants import FORMAT, QUANT_TYPES
from edgeshrink.formats.onnx.inspect import inspect_onnx
from edgeshrink.formats.onnx.plan import estimate_onnx_memory, normalize_quant, plan_onnx
from edgeshrink.formats.onnx.quality import evaluate_onnx, onnx_reference
from edgeshrink.formats.tensors import graph_details


class OnnxBackend(Backend):
    format = FORMAT
    label = "ONNX"
    runtime = "onnxruntime"
    quant_types = QUANT_TYPES
    sweep_ladder = (
        "fp32", "fp16", "int8-dynamic", "int8-static-per-tensor", "int8-static-per-channel",
    )  # fmt: skip
    # Each step of the ladder is a quantization type and its weight granularity
    # (None: the backend's default, per-channel).
    STEPS: dict[str, tuple[str, bool | None]] = {
        "fp32": ("fp32", None),
        "fp16": ("fp16", None),
        "int8-dynamic": ("int8-dynamic", None),
        "int8-static-per-tensor": ("int8-static", False),
        "int8-static-per-channel": ("int8-static", True),
        "int8-static-qoperator": ("int8-static-qoperator", None),
    }

    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        return inspect_onnx(path)

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:
        return plan_onnx(info, profile, options)

    tool = "onnxruntime's tooling"
    failure_hint = (
        "try another --quant (fp16, int8-dynamic); EDGESHRINK_DEBUG=1 shows the traceback"
    )

    def preflight(self, info: ModelInfo, plan: Any, options: Any) -> None:
        build.preflight(info, plan.quant, options)

    def source_sha256(self, src: Path, info: ModelInfo) -> str:
        return build.source_sha256(src, info)

    def reuse_details(
        self, info: ModelInfo, profile: Any, options: Any, quant: str
    ) -> tuple[str, ...] | None:
        return build.reuse_details(info, profile, options, quant)

    def check_source(self, src: Path, info: ModelInfo, options: Any, progress: Any) -> None:
        build.check_source(src, info, progress)

    def build(self, src: Path, work: Path, name: str, recipe: Any, **kw: Any) -> Built:
        return build.build(src, work, name, recipe, **kw)

    def verify(self, built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
        return build.verify(built, info, options, progress)

    def normalize_quant(self, name: str) -> str:
        return normalize_quant(name)

    def estimate(self, info: ModelInfo, quant: str, profile: Any) -> MemoryEstimate:
        return estimate_onnx_memory(info, quant, profile)

    def inspect_details(self, info: ModelInfo) -> list[tuple[str, Any]]:
        return graph_details(info)

    def sweep_step(self, name: str) -> str:
        key = name.strip().lower().replace("_", "-")
        if key in self.STEPS:
            return key
        try:
            quant = normalize_quant(key)
        except QuantizationError:
            raise SweepError(
                f"'{name}' is not a step of the ONNX sweep ladder",
                hint=f"use some of: {', '.join(self.STEPS)}",
            ) from None
        # `shrink -q int8-static` makes per-channel weights; the same name means the same here.
        return "int8-static-per-channel" if quant == "int8-static" else quant

    def step_options(self, step: str) -> dict[str, Any]:
        quant, per_channel = self.STEPS[step]
        return {"quant": quant, "per_channel": per_channel}

    def needs_calibration(self, quant: str) -> bool:
        return quant.startswith("int8-static")

    def check_sweep_base(self, info: ModelInfo) -> None:
        if info.is_quantized or info.file_type == "FP16":
            raise SweepError(
                f"{info.path.name} is already {info.file_type}; an ONNX sweep starts from the "
                "FP32 original",
                hint="give the FP32 export of the model",
            )

    def make_reference(self, base: Any, **settings: Any) -> Path:
        wanted = ("inputs", "labels", "samples", "seed", "threads", "progress")
        return onnx_reference(base, **{k: v for k, v in settings.items() if k in wanted})

    def evaluate(self, base: Any, candidate: Any, **kw: Any) -> Any:

        return evaluate_onnx(base, candidate, **kw)

    def device_files(self, info: ModelInfo, model: Path) -> list[Path]:
        """The external data files the model finds by relative name, beside it."""
        entries = dict(info.metadata).get("external_data") or []
        return [
            model.parent / entry["file"]
            for entry in entries
            if isinstance(entry, dict) and entry.get("file")
        ]
