"""The GGUF backend's part of the pipeline: a recipe (prune, quantize) carried out by
llama.cpp's quantizer in one pass, and a pruned file reloaded before it gets its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats.base import Built, ModelInfo
from edgeshrink.formats.gguf.quality import check_runs
from edgeshrink.formats.gguf.quantize import check_prune_layers, quantize_gguf
from edgeshrink.passes.base import removed_layers


def preflight(options: Any) -> None:
    if options.calibration or options.allow_random_calibration:
        raise EdgeshrinkError(
            "calibration data applies to ONNX and TFLite static int8, not to GGUF",
            hint="drop --calibration; llama.cpp's quantizer needs none",
        )


def check_recipe(info: ModelInfo, recipe: Any) -> None:
    layers = removed_layers(recipe)
    if layers and info.llm is not None:
        check_prune_layers(layers, info.llm.n_layer, info.path.name)


def build(src: Path, work: Path, name: str, recipe: Any, *, info: ModelInfo, options: Any,
          progress: Any) -> Built:  # fmt: skip
    quant = recipe[-1].get("type")
    layers = removed_layers(recipe)
    if layers:
        progress(f"removing layers {', '.join(map(str, layers))} of {src.name} with llama.cpp"
                 + ("" if quant == info.file_type else f" and quantizing to {quant}"))  # fmt: skip
    else:
        progress(f"quantizing {src.name} to {quant} with llama.cpp")
    outcome = quantize_gguf(
        src, work / name, quant, threads=options.threads, allow_requantize=options.allow_requantize,
        prune_layers=layers,
    )  # fmt: skip
    progress(f"verifying {name}")
    return Built(
        path=outcome.output,
        recipe=tuple(s.to_dict() for s in recipe),
        tensor_types=outcome.tensor_types,
        fallbacks=outcome.fallbacks,
        tool_versions=(("llama-cpp-python", outcome.llama_cpp_version),),
    )


def verify(built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
    """A pruned file is reloaded and run before it gets its name: llama.cpp's quantizer
    exits 0 even when it leaves per-layer metadata untrimmed (llama.cpp issue 27976)."""
    removed = {i for step in built.recipe if step["pass"] == "prune" for i in step["layers"]}
    if not removed or info.llm is None:
        return built

    expected = info.llm.n_layer - len(removed)
    progress(f"checking that llama.cpp loads and runs {built.path.name} with {expected} layers")
    check_runs(built.path, expected_layers=expected, threads=options.threads)
    return built
