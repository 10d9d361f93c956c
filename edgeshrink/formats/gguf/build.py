"""The GGUF backend's part of the pipeline: a recipe (prune, quantize) carried out by
llama.cpp's quantizer in one pass, with an importance matrix where it helps, a mix of
types when the file has a size budget, and the file checked before it gets its name
(a pruned one reloaded and run, a mix measured against its source)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeshrink.distill.run import distill_gguf
from edgeshrink.distill.train import TrainSettings
from edgeshrink.errors import EdgeshrinkError, EvalError, QuantizationError, RecipeError
from edgeshrink.formats.base import Built, ModelInfo
from edgeshrink.formats.gguf.imatrix import (
    CalibrationText,
    given_imatrix,
    imatrix_for,
    wants_imatrix,
)
from edgeshrink.formats.gguf.imatrix_file import read_imatrix
from edgeshrink.formats.gguf.mix import Mix, choose_mix, fixed_bytes, megabytes
from edgeshrink.formats.gguf.quality import check_runs, evaluate_llm
from edgeshrink.formats.gguf.quant_types import quant_type
from edgeshrink.formats.gguf.quantize import QuantizeOutcome, check_prune_layers, quantize_gguf
from edgeshrink.formats.gguf.reader import inspect_gguf
from edgeshrink.formats.gguf.sensitivity import METHOD, measure_losses
from edgeshrink.passes.base import removed_layers
from edgeshrink.util import sha256_file

# A mix is reused only when the way it was chosen is this one (its losses' method).
MIX_DETAIL = f"a type per tensor by {METHOD}"
MIX_FITTING_TRIES = 3  # the metadata llama.cpp adds can push a mix a few bytes over


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
    if layers and recipe[-1].get("max_size"):
        raise RecipeError(
            "a size budget is met by a type per tensor of the unpruned model: prune and a "
            "size budget do not go together yet",
            hint="prune first (edgeshrink prune), then shrink the pruned file to the budget",
        )


def resolve_settings(
    src: Path, info: ModelInfo, recipe: Any, options: Any, source_sha256: str, progress: Any
) -> tuple[dict[str, Any], Any]:
    """The quantize step's importance matrix (its sha256 and its text's), computed or read
    now; the options then carry the file's path to the build."""
    last = recipe[-1]
    quant, max_size = last.get("type"), last.get("max_size")
    if any(s.name == "distill" for s in recipe):
        return {}, options  # the student the quantizer reads does not exist yet to compute one
    if not wants_imatrix(quant, options, info, mix=bool(max_size)):
        if quant_type(quant).needs_imatrix:
            raise QuantizationError(
                f"{quant} cannot be made without an importance matrix, and --no-imatrix "
                "turns it off",
                hint="drop --no-imatrix, or choose Q2_K or a larger type",
            )
        return {}, options
    if options.imatrix is not None:
        found = given_imatrix(options.imatrix, src)
    else:
        found = imatrix_for(
            src, CalibrationText.read(options.imatrix_text), model_sha256=source_sha256,
            threads=options.threads, progress=progress,
        )  # fmt: skip
    if found.cached:
        progress(f"using the importance matrix computed before over {found.datasets}")
    settings = {"imatrix": found.sha256,
                "imatrix_text": found.text_sha256 or f"datasets: {found.datasets}"}  # fmt: skip
    return settings, replace(options, imatrix=found.path, use_imatrix=True)


def build(src: Path, work: Path, name: str, recipe: Any, *, info: ModelInfo, options: Any,
          progress: Any) -> Built:  # fmt: skip
    last = recipe[-1]
    quant, max_size = last.get("type"), last.get("max_size")
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
    imatrix = imatrix_file(options, last.get("imatrix"))
    with_imatrix = " and an importance matrix" if imatrix else ""
    recorded: dict[str, Any] = {}
    if imatrix is not None:
        recorded["imatrix_datasets"] = list(read_imatrix(imatrix).datasets)
    detail = None
    if max_size:
        outcome, mix = build_mix(src, work / name, quant, max_size, imatrix, options, progress)
        recorded["mix"] = mix.to_dict()
        detail = MIX_DETAIL
    else:
        if layers:
            progress(f"removing layers {', '.join(map(str, layers))} of {src.name} with llama.cpp"
                     + ("" if quant == info.file_type else f" and quantizing to {quant}")
                     + with_imatrix)  # fmt: skip
        else:
            progress(f"quantizing {src.name} to {quant} with llama.cpp{with_imatrix}")
        outcome = quantize_gguf(
            src, work / name, quant, threads=options.threads,
            allow_requantize=options.allow_requantize, prune_layers=layers, imatrix=imatrix,
        )  # fmt: skip
    progress(f"verifying {name}")
    steps = [s.to_dict() for s in recipe]
    if recorded:
        steps[-1]["recorded"] = recorded
    if detail:
        steps[-1]["detail"] = detail
    return Built(
        path=outcome.output,
        recipe=tuple(steps),
        tensor_types=outcome.tensor_types,
        fallbacks=outcome.fallbacks,
        tool_versions=(("llama-cpp-python", outcome.llama_cpp_version),),
    )


def imatrix_file(options: Any, sha256: str | None) -> Path | None:
    """The importance-matrix file the recipe names, checked to be that file still."""
    if not sha256:
        return None
    path = options.imatrix
    if path is None or sha256_file(path) != sha256:
        raise QuantizationError(
            f"the importance matrix changed while the model was being shrunk ({path})",
            hint="run the shrink again",
        )
    return Path(path)


def build_mix(src: Path, dst: Path, quant: str, budget: int, imatrix: Path | None, options: Any,
              progress: Any) -> tuple[QuantizeOutcome, Mix]:  # fmt: skip
    """Measure every tensor's loss at every type, choose the mix within ``budget`` bytes from
    ``quant``'s own, and quantize it; a file over the budget is chosen again, smaller."""
    losses = measure_losses(
        src, dst.parent, imatrix=imatrix, allow_requantize=options.allow_requantize,
        threads=options.threads, text=CalibrationText.read(options.imatrix_text).text,
        progress=progress,
    )  # fmt: skip
    kw = dict(threads=options.threads, allow_requantize=options.allow_requantize, imatrix=imatrix)
    start = dict(quantize_gguf(src, dst, quant, dry_run=True, **kw).planned)
    fixed, target = fixed_bytes(src), budget
    for _ in range(MIX_FITTING_TRIES):
        mix = choose_mix(losses, start, target, fixed, quant)
        progress(f"quantizing {src.name} to a mix within {megabytes(budget)}: {mix.describe()}")
        outcome = quantize_gguf(src, dst, quant, tensor_types=mix.types, **kw)
        size = dst.stat().st_size
        if size <= budget:
            return outcome, replace(mix, budget_bytes=budget, estimated_bytes=size)
        target -= size - budget
    raise QuantizationError(
        f"llama.cpp's file of the mix is {megabytes(size)}, over the budget of {megabytes(budget)}",
        hint="give a slightly larger --max-size",
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
    facts = run.facts.to_dict() | {
        "trained_blocks": run.trained_blocks,
        "memory_estimate_mb": run.memory_estimate_mb,
    }
    return run.path, facts


def verify(built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
    """A pruned file is reloaded and run before it gets its name: llama.cpp's quantizer
    exits 0 even when it leaves per-layer metadata untrimmed (llama.cpp issue 27976).
    A mix is measured against its source (KL divergence over edgeshrink's evaluation
    text), and the figures recorded."""
    removed = {i for step in built.recipe if step["pass"] == "prune" for i in step["layers"]}
    if removed and info.llm is not None:
        expected = info.llm.n_layer - len(removed)
        progress(f"checking that llama.cpp loads and runs {built.path.name} with {expected} layers")
        check_runs(built.path, expected_layers=expected, threads=options.threads)
    if built.recipe[-1].get("max_size"):
        built = verify_mix(built, info, options, progress)
    return built


def verify_mix(built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
    progress(f"measuring {built.path.name} against {info.path.name} with llama.cpp")
    n_ctx = min(512, info.llm.context_length) if info.llm and info.llm.context_length else 512
    try:
        report = evaluate_llm(info.path, built.path, n_ctx=n_ctx, threads=options.threads)
    except EvalError as exc:
        note = f"the mix was not measured: {exc.message}"
        return replace(built, notes=(*built.notes, note))
    figures = {
        "kld_mean": report.kld_mean.value, "ppl_ratio": report.ppl_ratio.value,
        "same_top": report.same_top.value, "n_scored": report.n_scored,
        "text_sha256": report.text_sha256,
    }  # fmt: skip
    steps = [dict(s) for s in built.recipe]
    steps[-1]["recorded"] = {**steps[-1].get("recorded", {}), "eval": figures}
    return replace(built, recipe=tuple(steps))
