"""TfliteBackend: what the rest of edgeshrink asks of the TFLite format."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from edgeshrink.errors import SweepError
from edgeshrink.formats.base import Backend, Built, MemoryEstimate, ModelInfo
from edgeshrink.formats.tensors import graph_details
from edgeshrink.formats.tflite import build
from edgeshrink.formats.tflite.constants import FORMAT, QUANT_TYPES, STATIC_QUANTS
from edgeshrink.formats.tflite.inspect import inspect_tflite
from edgeshrink.formats.tflite.plan import estimate_tflite_memory, normalize_quant, plan_tflite
from edgeshrink.formats.tflite.quality import evaluate_tflite, tflite_reference


class TfliteBackend(Backend):
    format = FORMAT
    label = "TFLite"
    runtime = "ai-edge-litert (LiteRT) or tflite-runtime"
    quant_types = QUANT_TYPES
    sweep_ladder = ("float32", "fp16", "weight-only-int8", "dynamic-int8", "int8")

    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        return inspect_tflite(path)

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:
        return plan_tflite(info, profile, options)

    tool = "ai-edge-quantizer"
    failure_hint = (
        "try another --quant (fp16, dynamic-int8); EDGESHRINK_DEBUG=1 shows the traceback"
    )

    def preflight(self, info: ModelInfo, plan: Any, options: Any) -> None:
        build.preflight(info, plan.quant, options)

    def reuse_details(
        self, info: ModelInfo, profile: Any, options: Any, quant: str
    ) -> tuple[str, ...] | None:
        return (build.expected_recipe(info, options, quant),)

    def check_source(self, src: Path, info: ModelInfo, options: Any, progress: Any) -> None:
        build.check_source(src, info, options, progress)

    def build(self, src: Path, work: Path, name: str, recipe: Any, **kw: Any) -> Built:
        kw.pop("profile")
        return build.build(src, work, name, recipe, **kw)

    def verify(self, built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
        return build.verify(built, options, progress)

    def normalize_quant(self, name: str) -> str:
        return normalize_quant(name)

    def estimate(self, info: ModelInfo, quant: str, profile: Any) -> MemoryEstimate:
        return estimate_tflite_memory(info, quant)

    def inspect_details(self, info: ModelInfo) -> list[tuple[str, Any]]:
        meta = dict(info.metadata)
        return [
            *graph_details(info),
            ("per-channel", "yes" if meta.get("per_channel") else "no"),
            *(("note", note) for note in meta.get("runtime_notes") or []),
        ]

    def needs_calibration(self, quant: str) -> bool:
        return quant in STATIC_QUANTS

    def check_sweep_base(self, info: ModelInfo) -> None:
        if info.is_quantized or info.file_type != "FP32":
            raise SweepError(
                f"{info.path.name} is already {info.file_type}; a TFLite sweep starts from the "
                "float32 original",
                hint="give the float32 .tflite (or convert the SavedModel/Keras model with "
                "`edgeshrink shrink --to tflite --quant float32`)",
            )

    def make_reference(self, base: Any, **settings: Any) -> Path:
        wanted = ("inputs", "labels", "samples", "seed", "threads", "progress")
        return tflite_reference(base, **{k: v for k, v in settings.items() if k in wanted})

    def evaluate(self, base: Any, candidate: Any, **kw: Any) -> Any:

        return evaluate_tflite(base, candidate, **kw)

    def agent_args(self, params: Any, remote_inputs: str | None = None) -> list[str]:
        args = super().agent_args(params, remote_inputs)
        args += ["--tflite-runtime", params.tflite_runtime]
        if params.external_delegate:
            args += ["--external-delegate", params.external_delegate]
        return args

    def bench_params(
        self, info: ModelInfo, params: Any, profile: Any, *, on_this_machine: bool
    ) -> tuple[Any, str]:
        if params.external_delegate is None and profile and not on_this_machine:
            # The profile's delegate exists on that device, not on this machine.
            params = dataclasses.replace(params, external_delegate=profile.external_delegate)
        return super().bench_params(info, params, profile, on_this_machine=on_this_machine)
