"""The GGUF backend's part of the pipeline: a recipe (prune, quantize) carried out by
llama.cpp's quantizer in one pass, and a pruned file reloaded before it gets its name."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeshrink.distill.run import distill_gguf
from edgeshrink.distill.train import TrainSettings
from edgeshrink.errors import EdgeshrinkError, RecipeError
from edgeshrink.formats.base import Built, ModelInfo
from edgeshrink.formats.gguf.quality import check_runs
from edgeshrink.formats.gguf.quantize import check_prune_layers, quantize_gguf
from edgeshrink.formats.gguf.reader import inspect_gguf
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
    distill = next((s for s in recipe if s.name == "distill"), None)
    if distill is not None:
        healed, facts = distill_student(src, work, name, recipe, quant, options, progress)
        built = build(healed, work, name, recipe[-1:], info=inspect_gguf(healed),
                      options=options, progress=progress)  # fmt: skip
        done = [s.to_dict() for s in recipe]
        done[[s.name for s in recipe].index("distill")]["detail"] = json.dumps(
            facts, sort_keys=True
        )
        return replace(built, recipe=tuple(done))
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


def distill_student(src: Path, work: Path, name: str, recipe: Any, quant: str, options: Any,
                    progress: Any) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """The student (``src`` without the recipe's pruned blocks, or ``src`` itself when
    ``options.teacher`` is set) trained to imitate the teacher: a float GGUF in ``work``."""
    step = next(s for s in recipe if s.name == "distill")
    text = options.text
    if text is None or hashlib.sha256(text.encode()).hexdigest() != step.get("text"):
        raise RecipeError(
            "distill needs the text its recipe names", hint="give the training text with --text"
        )
    layers = removed_layers(recipe)
    teacher = Path(options.teacher) if options.teacher else src
    student = work / f"student-{name}"  # never the output's own name
    progress(f"making the student: {src.name}" + (
        f" without layers {', '.join(map(str, layers))}" if layers else "") + ", as F32")  # fmt: skip
    quantize_gguf(src, student, "F32", threads=options.threads, allow_requantize=True,
                  prune_layers=layers)  # fmt: skip
    settings = TrainSettings(
        steps=step.get("steps"), minutes=step.get("minutes"), lr=step.get("lr"),
        batch=step.get("batch"), temperature=step.get("temperature"), alpha=step.get("alpha"),
        seed=step.get("seed"), threads=options.threads,
    )  # fmt: skip
    run = distill_gguf(
        teacher, student, text, work / f"healed-{name}", settings=settings,
        removed=layers or tuple(step.get("cuts") or ()), train=step.get("train"),
        n_ctx=step.get("ctx"), checkpoint=work.parent / f".{name}.distill.pt",
        resume=options.resume, fingerprint=json.dumps([s.to_dict() for s in recipe], sort_keys=True),
        matrix_type="F32" if quant == "F32" else "F16", progress=progress,
    )  # fmt: skip
    facts = run.facts.to_dict() | {"trained_blocks": run.trained_blocks}
    return run.path, facts


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
