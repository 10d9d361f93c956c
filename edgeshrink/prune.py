"""Prune one model: choose the blocks (or take the ones asked for) and write the pruned
artifact through the pipeline, for a device or for none.

GGUF models are scored and pruned as they are. A Hugging Face checkpoint is converted
to a float GGUF for scoring (kept beside the output, as `shrink` keeps it), and the
chosen blocks are then removed from the checkpoint itself, before conversion. Language
models are judged by KL divergence; embedding models (BERT) by embedding cosine.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import default_output_path
from edgeshrink.errors import RecipeError
from edgeshrink.formats import backend, detect_and_inspect
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.gguf import is_encoder
from edgeshrink.formats.gguf.embeddings import EmbeddingBudget
from edgeshrink.formats.gguf.quality import LlmBudget
from edgeshrink.passes import get_pass, step
from edgeshrink.passes.prune_choice import (
    PruneChoice,
    RemovalMeter,
    choose_removal,
    prune_to_budget,
    score_layers,
    split_texts,
)
from edgeshrink.pipeline import Progress, ShrinkResult, resolve_output, run_recipe, shrink_model
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile
from edgeshrink.util import make_work_dir

FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class PruneOutcome:
    choice: PruneChoice
    result: ShrinkResult | None  # None: scored only
    info: ModelInfo
    encoder: bool


def prunable(model: str | os.PathLike[str]) -> ModelInfo:
    """The model's info, or one error saying why it cannot be pruned."""
    model = Path(model)
    info = detect_and_inspect(model)
    if info.format not in get_pass("prune").formats or info.llm is None:
        raise RecipeError(
            f"{model.name}: prune works on transformer language and embedding models in GGUF "
            f"or Hugging Face checkpoints, not {info.format} ({info.architecture})",
            hint="give a .gguf file or a checkpoint directory (config.json + *.safetensors)",
        )
    return info


def makes_embeddings(info: ModelInfo) -> bool:
    """An embedding model (judged by embedding cosine), not a language model (by KLD)."""
    return backend(info.format).embeds(info)


def scoring_model(
    model: Path, info: ModelInfo, *, threads: int | None, force: bool, progress: Progress
) -> Path:
    """A GGUF llama.cpp can score: the model itself, or a checkpoint converted to F16 (kept
    in the working directory, ``CHECKPOINT-f16.gguf``, where `shrink` finds it too)."""
    if not backend(info.format).front_end_for:
        return model
    out = Path.cwd() / f"{model.name}-f16.gguf"
    options = ShrinkOptions(threads=threads, force=force)
    made = run_recipe(model, info, backend(info.format), None, (step("quantize", type="F16"),),
                      None, options, output=out, progress=progress, for_profile=False)  # fmt: skip
    return made.artifact.path


def budget_for(encoder: bool, *, max_kld: float | None, max_ppl_increase: float | None,
               min_same_top: float | None, min_cosine: float | None) -> Any:  # fmt: skip
    """The budget that judges this kind of model; a bound of the other kind is refused."""
    llm_bounds = [n for n, v in (("--max-kld", max_kld), ("--max-ppl-increase", max_ppl_increase),
                                 ("--min-same-top", min_same_top)) if v is not None]  # fmt: skip
    if encoder and llm_bounds:
        raise RecipeError(
            f"{', '.join(llm_bounds)} judge language models; this embedding model is judged "
            "by embedding cosine",
            hint="use --min-cosine, e.g. --min-cosine 0.98",
        )
    if not encoder and min_cosine is not None:
        raise RecipeError(
            "--min-cosine judges embedding models; this language model is judged by KL divergence",
            hint="use --max-kld, --max-ppl-increase or --min-same-top",
        )
    if encoder:
        return EmbeddingBudget(min_cosine=min_cosine)
    return LlmBudget(max_kld=max_kld, max_ppl_increase=max_ppl_increase, min_same_top=min_same_top)


def score_only(
    model: str | os.PathLike[str], *, text: str | None, max_run: int, threads: int | None,
    force: bool = False, progress: Progress | None = None,
) -> PruneOutcome:  # fmt: skip
    say = progress or (lambda _m: None)
    model = Path(model)
    info = prunable(model)
    calibration, _ = split_texts(text, None)
    gguf_model = scoring_model(model, info, threads=threads, force=force, progress=say)
    scores = score_layers(gguf_model, calibration, max_run=max_run, threads=threads, progress=say)
    encoder = is_encoder(backend("gguf").inspect(gguf_model))
    return PruneOutcome(
        PruneChoice((), (scores,), (), "scored only (--dry-run)"), None, info, encoder
    )


def prune_model(
    model: str | os.PathLike[str],
    *,
    n_layers: int | None = None,
    remove: tuple[int, ...] | None = None,
    budget: Any = None,
    text: str | None = None,
    eval_text: str | None = None,
    candidates: int = 3,
    output: str | os.PathLike[str] | None = None,
    profile: HardwareProfile | None = None,
    quant: str | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> PruneOutcome:
    """Remove ``remove`` (0-based), or the ``n_layers`` the scores rank best and the
    measurements confirm, or as many as ``budget`` allows; write the pruned artifact."""
    say = progress or (lambda _m: None)
    model = Path(model)
    info = prunable(model)
    n_layer = info.llm.n_layer if info.llm else 0
    if n_layers is not None and n_layers >= n_layer:
        raise RecipeError(
            f"{model.name} has {n_layer} layers: it cannot lose {n_layers}",
            hint=f"remove at most {n_layer - 1}",
        )
    if remove:
        choice = PruneChoice(tuple(remove), (), (), "the layers asked for (--remove)")
        encoder = makes_embeddings(info)
    else:
        calibration, evaluation = split_texts(text, eval_text)
        gguf_model = scoring_model(model, info, threads=threads, force=force, progress=say)
        encoder = is_encoder(backend("gguf").inspect(gguf_model))
        final = Path(output) if output else default_output_path(model, "pruned")
        work = make_work_dir(final)
        try:
            meter = RemovalMeter(gguf_model, work, evaluation, n_ctx=512, threads=threads,
                                 progress=say)  # fmt: skip
            if n_layers:
                choice = choose_removal(meter, calibration, n_layers, candidates=candidates)
            else:
                choice = prune_to_budget(meter, calibration, budget, candidates=candidates)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not choice.layers:
        return PruneOutcome(choice, None, info, encoder)
    prune_step = step("prune", layers=choice.layers)
    options = ShrinkOptions(quant=quant, threads=threads, force=force, passes=(prune_step,))
    if profile is not None:
        result = shrink_model(model, profile, options, output=output, progress=say, info=info)
        return PruneOutcome(choice, result, info, encoder)
    fmt = backend(info.format)
    # For no device: keep the file's type (a checkpoint: its float type), or --quant.
    out_type = fmt.normalize_quant(quant) if quant else info.file_type
    n = len(choice.layers)
    if fmt.front_end_for and out_type.upper() not in FLOAT_TYPES:
        # A checkpoint to a quantized type: pruned and converted to F16, then quantized.
        pruned = run_recipe(model, info, fmt, None, (prune_step, step("quantize", type="F16")),
                            None, options, output=default_output_path(model, f"pruned{n}-f16"),
                            progress=say, for_profile=False)  # fmt: skip
        base = pruned.artifact.path
        result = run_recipe(base, backend("gguf").inspect(base), backend("gguf"), None,
                            (step("quantize", type=out_type),), None, options,
                            output=resolve_output(model, f"pruned{n}-{out_type}", output),
                            progress=say)  # fmt: skip
        return PruneOutcome(choice, result, info, encoder)
    recipe = (prune_step, step("quantize", type=out_type))
    out = resolve_output(model, f"pruned{n}", output)
    result = run_recipe(model, info, fmt, None, recipe, None, options, output=out, progress=say)
    return PruneOutcome(choice, result, info, encoder)
