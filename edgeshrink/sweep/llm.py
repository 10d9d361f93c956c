"""The sweep of a language model (GGUF): each type of the ladder made with llama.cpp's
quantizer and judged by its KL divergence from the original over a text.

With ``prune=(0, 2, 4)`` the ladder is crossed with removals of whole blocks: for each
count the removal is chosen once on the original (scored on the calibration text,
measured on the evaluation text, see edgeshrink.passes.prune), and every type of the
ladder is then made from it in one llama.cpp pass. A pruned candidate that loses to
a plain quantization at the same size or smaller says so (``beaten_by``).

With ``imatrix=True`` each type below 5 bits is also made with an importance matrix
(``Q4_K_M-imatrix``); with ``max_size`` (or ``fit``) a mix of types within that size
joins the candidates (``mix-93.5mb``). The plain ladder's candidates are made without one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import Artifact
from edgeshrink.bench import BenchParams
from edgeshrink.errors import EdgeshrinkError, RecipeError
from edgeshrink.formats import backend, gguf
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.gguf.imatrix import IMATRIX_BELOW_BPW
from edgeshrink.formats.gguf.plan import plan_gguf
from edgeshrink.formats.gguf.quality import default_eval_text, evaluate_llm
from edgeshrink.passes import Step, step
from edgeshrink.passes.prune_choice import RemovalMeter, choose_removal, split_texts
from edgeshrink.pipeline import run_recipe
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile
from edgeshrink.quality import EvalSettings, quality_key
from edgeshrink.shrink import shrink_gguf
from edgeshrink.store import ResultStore
from edgeshrink.sweep.choose import check_optimize, finish
from edgeshrink.sweep.device import DeviceQuality, measure_on_target
from edgeshrink.sweep.types import (
    DEFAULT_LADDER,
    QUALITY_METHOD,
    TIE_FLOOR,
    Progress,
    QualityBudget,
    SweepCandidate,
    SweepResult,
)
from edgeshrink.targets import Target
from edgeshrink.util import make_work_dir, sha256_file

PRUNE_CHOICE_METHOD = "prune-choice/1"


@dataclass(frozen=True)
class Variant:
    """One way of making the model smaller before the type: its name and its passes."""

    suffix: str  # "" for the plain ladder, "-prune2" for two blocks removed
    passes: tuple[Step, ...]
    pruned: tuple[int, ...] = ()  # the original's blocks it removes
    source: Path | None = None  # a healed student the types are made from (else the model)
    imatrix: bool = False  # made with an importance matrix ("-imatrix")
    made_source: tuple[dict[str, Any], ...] = ()  # the recipe steps that made ``source``

    def makes(self, quant: str) -> bool:
        """An imatrix variant of a type only where one is used: below 5 bits."""
        q = gguf.quant_type(quant)
        return not self.imatrix or (q.name not in gguf.UNQUANTIZED and q.bpw < IMATRIX_BELOW_BPW)


def sweep_gguf(
    model: str | os.PathLike[str],
    profile: HardwareProfile,
    *,
    budget: QualityBudget,
    ladder: tuple[str, ...] = DEFAULT_LADDER,
    prune: tuple[int, ...] = (0,),
    calibration_text: str | None = None,
    imatrix: bool = False,
    imatrix_text: Path | None = None,
    imatrix_file: Path | None = None,
    max_size: int | None = None,
    fit: bool = False,
    heal: dict[str, Any] | None = None,
    include_original: bool = False,
    target: Target | None = None,
    params: BenchParams | None = None,
    optimize: str = "speed",
    text: str | None = None,
    eval_ctx: int = 512,
    eval_chunks: int | None = None,
    context: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    remeasure: bool = False,
    plot: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    check_optimize(optimize)
    say = progress or (lambda _m: None)
    model = Path(model)
    info = gguf.inspect_gguf(model)
    if info.is_quantized:
        raise EdgeshrinkError(
            f"{model.name} is already quantized ({info.file_type}); a sweep starts from the original",
            hint="give the F32/F16/BF16 model",
        )
    counts = check_prune_counts(info, prune)
    out_dir = Path(output_dir) if output_dir else Path.cwd() / f"{model.stem}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = text if text is not None else default_eval_text()
    base_sha = sha256_file(model)
    evaluation = EvalSettings(text=text, n_ctx=eval_ctx, max_chunks=eval_chunks)
    _method, settings = quality_key(backend("gguf"), evaluation)
    candidates: list[SweepCandidate] = []
    with ResultStore(db) as store:
        variants = [Variant("", ())]
        if imatrix or imatrix_file:
            variants.append(Variant("-imatrix", (), imatrix=True))
        for n in (c for c in counts if c):
            layers = chosen_removal(
                store, model, info, base_sha, n, calibration_text, text, out_dir, say
            )
            variants.append(Variant(f"-prune{n}", (step("prune", layers=layers),), layers))
            if heal is not None:
                healed = healed_student(model, info, base_sha, layers, calibration_text, heal,
                                        out_dir / f"{model.stem}-prune{n}-healed.gguf", say)  # fmt: skip
                variants.append(Variant(f"-prune{n}-healed", (), layers, healed.path,
                                        made_source=tuple(healed.recipe[:-1])))  # fmt: skip
        if include_original:
            candidates.append(original_candidate(store, model, info, base_sha, profile, context,
                                                 text, settings, eval_ctx, eval_chunks, budget,
                                                 remeasure, say))  # fmt: skip
        made = candidate_options(
            info, profile, variants, ladder, context,
            ImatrixChoice(imatrix, imatrix_text, imatrix_file, max_size, fit),
        )  # fmt: skip
        for label, name, variant, options in made:
            source = variant.source or model
            source_info = gguf.inspect_gguf(source) if variant.source else info
            say(f"{label}: " + ("pruning and quantizing" if variant.passes else "quantizing"))
            art = shrink_gguf(source, profile, options, info=source_info,
                              output=out_dir / name).artifact  # fmt: skip
            # A pruned file is estimated from its own tensors, at its own type.
            shape_of = gguf.inspect_gguf(art.path) if variant.pruned else info
            estimate = plan_gguf(shape_of, profile, replace(options, passes=())).chosen
            quality = store.find_quality(QUALITY_METHOD, base_sha, art.sha256, settings)
            reused = quality is not None and not remeasure
            if not reused:
                say(f"{label}: measuring quality against {model.name}")
                report = evaluate_llm(
                    model, art.path, text=text, n_ctx=eval_ctx, max_chunks=eval_chunks
                )
                quality = report.to_dict()
                store.add_quality(
                    {
                        "method": QUALITY_METHOD, "base_sha256": base_sha, "candidate_sha256": art.sha256,
                        "settings": settings, "candidate_name": art.path.name, "quant": label,
                        "kld_mean": report.kld_mean.value, "ppl_ratio": report.ppl_ratio.value,
                        "same_top": report.same_top.value,
                    },
                    quality,
                )  # fmt: skip
            assert quality is not None
            candidates.append(
                SweepCandidate(
                    quant=label,
                    path=art.path,
                    sha256=art.sha256,
                    size_bytes=art.size_bytes,
                    estimate_mb=round(estimate.estimate.total_mb, 1),
                    fits=estimate.fits,
                    est_tg_tok_s=estimate.est_tg_tok_s,
                    quality=quality,
                    quality_reused=reused,
                    quality_failures=tuple(budget.failures(quality)),
                    loss=float(quality["kld_mean"]["value"]),
                    type=art.quant,
                    pruned=variant.pruned,
                    healed=variant.source is not None,
                    # A type made from a healed student: the steps that made the student
                    # (prune, distill; not its float conversion) come first.
                    recipe=(*variant.made_source, *art.recipe),
                )
            )
    speed_source = "estimated from memory bandwidth"
    quality_source = f"{candidates[0].quality['n_scored']} tokens" if candidates else ""
    if target is not None:
        on_device = DeviceQuality(
            model, evaluation,
            budget.failures, lambda q: float(q["kld_mean"]["value"]),
        )  # fmt: skip
        candidates = measure_on_target(
            candidates, profile, target, params or BenchParams(), db, remeasure, say, on_device
        )
        speed_source = f"measured on {target.name}"
        quality_source += f", measured on {target.name} (this machine's for what does not fit)"
    return finish(
        model, profile, target, budget, optimize, speed_source, beaten(candidates), plot,
        quality_source=quality_source,
    )  # fmt: skip


def original_candidate(store: ResultStore, model: Path, info: ModelInfo, base_sha: str,
                       profile: HardwareProfile, context: int | None, text: str, settings: str,
                       eval_ctx: int, eval_chunks: int | None, budget: QualityBudget,
                       remeasure: bool, say: Progress) -> SweepCandidate:  # fmt: skip
    """The model itself, as it is: the reference a cost saving is measured against."""
    estimate = plan_gguf(info, profile, ShrinkOptions(quant=info.file_type, context=context,
                                                      check_fit=False)).chosen  # fmt: skip
    quality = (
        None if remeasure else store.find_quality(QUALITY_METHOD, base_sha, base_sha, settings)
    )
    reused = quality is not None
    if quality is None:
        say(f"{info.file_type}: measuring the original against itself")
        quality = evaluate_llm(
            model, model, text=text, n_ctx=eval_ctx, max_chunks=eval_chunks
        ).to_dict()
        store.add_quality({"method": QUALITY_METHOD, "base_sha256": base_sha, "candidate_sha256": base_sha,
                           "settings": settings, "candidate_name": model.name, "quant": info.file_type},
                          quality)  # fmt: skip
    return SweepCandidate(
        quant=info.file_type, path=model, sha256=base_sha, size_bytes=info.size_bytes,
        estimate_mb=round(estimate.estimate.total_mb, 1), fits=estimate.fits,
        est_tg_tok_s=estimate.est_tg_tok_s, quality=quality, quality_reused=reused,
        quality_failures=tuple(budget.failures(quality)), loss=float(quality["kld_mean"]["value"]),
        type=info.file_type, original=True,
    )  # fmt: skip


@dataclass(frozen=True)
class ImatrixChoice:
    """The sweep's importance-matrix and size-budget candidates (see the module docstring)."""

    variants: bool = False
    text: Path | None = None
    file: Path | None = None
    max_size: int | None = None
    fit: bool = False


def candidate_options(
    info: ModelInfo, profile: HardwareProfile, variants: list[Variant], ladder: tuple[str, ...],
    context: int | None, choice: ImatrixChoice,
) -> list[tuple[str, str, Variant, ShrinkOptions]]:  # fmt: skip
    """(label, file name, variant, options) of every candidate: each variant's types (the
    plain ladder without an imatrix, but for the types that cannot be made without one),
    then the size-budget mix."""
    stem = info.path.stem
    made = []
    for variant in variants:
        for quant in (q for q in ladder if variant.makes(q)):
            use = variant.imatrix or gguf.quant_type(quant).needs_imatrix
            options = ShrinkOptions(
                quant=quant, context=context, check_fit=False, passes=variant.passes,
                use_imatrix=use, imatrix=choice.file if use else None, imatrix_text=choice.text,
            )  # fmt: skip
            made.append((f"{quant}{variant.suffix}", f"{stem}{variant.suffix}-{quant.lower()}.gguf",
                         variant, options))  # fmt: skip
    if choice.max_size or choice.fit:
        options = ShrinkOptions(
            context=context, check_fit=False, max_size=choice.max_size, fit=choice.fit,
            imatrix=choice.file, imatrix_text=choice.text,
            use_imatrix=None if choice.variants or choice.file else False,
        )  # fmt: skip
        label = plan_gguf(info, profile, options).label
        made.append((label, f"{stem}-{label}.gguf", Variant("", ()), options))
    return made


def check_prune_counts(info: ModelInfo, prune: tuple[int, ...]) -> list[int]:
    counts = sorted(set(prune)) or [0]
    if counts == [0]:
        return counts
    n_layer = info.llm.n_layer if info.llm else 0
    too_many = [n for n in counts if n < 0 or n >= n_layer]
    if too_many:
        raise RecipeError(
            f"{info.path.name} has {n_layer} layers: it cannot lose "
            f"{', '.join(map(str, too_many))}",
            hint=f"--prune takes counts from 0 to {max(n_layer - 1, 0)}, e.g. --prune 0,2,4",
        )
    return counts


def chosen_removal(
    store: ResultStore,
    model: Path,
    info: ModelInfo,
    base_sha: str,
    n: int,
    calibration_text: str | None,
    eval_text: str,
    out_dir: Path,
    say: Progress,
) -> tuple[int, ...]:
    """The ``n`` blocks to remove: scored and measured once, then read from the store."""
    calibration, evaluation = split_texts(calibration_text, eval_text)
    settings = json.dumps(
        {"calibration_sha256": hashlib.sha256(calibration.encode()).hexdigest(),
         "eval_sha256": hashlib.sha256(evaluation.encode()).hexdigest()},
        sort_keys=True,
    )  # fmt: skip
    key = f"remove {n} of {info.llm.n_layer if info.llm else '?'}"
    found = store.find_quality(PRUNE_CHOICE_METHOD, base_sha, key, settings)
    if found is not None:
        layers = tuple(found["layers"])
        say(f"prune {n}: layers {', '.join(map(str, layers))} (chosen before, from the store)")
        return layers
    work = make_work_dir(out_dir / f"{model.stem}-prune{n}")
    try:
        meter = RemovalMeter(model, work, evaluation, n_ctx=512, threads=None, progress=say)
        choice = choose_removal(meter, calibration, n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = choice.best
    store.add_quality(
        {"method": PRUNE_CHOICE_METHOD, "base_sha256": base_sha, "candidate_sha256": key,
         "settings": settings, "candidate_name": f"{model.stem}-prune{n}",
         "kld_mean": best.loss if best else None},
        choice.to_dict(),
    )  # fmt: skip
    return choice.layers


def healed_student(model: Path, info: ModelInfo, base_sha: str, layers: tuple[int, ...],
                   calibration_text: str | None, heal: dict[str, Any], output: Path,
                   say: Progress) -> Artifact:  # fmt: skip
    """The pruned student trained to imitate ``model`` (on the calibration text, the same
    one the removal was scored on), as a float GGUF the ladder's types are made from."""
    text, _ = split_texts(calibration_text, None)
    distill = step("distill", teacher=base_sha, text=hashlib.sha256(text.encode()).hexdigest(),
                   **heal)  # fmt: skip
    float_type = "F32" if info.file_type == "F32" else "F16"
    recipe = (step("prune", layers=layers), distill, step("quantize", type=float_type))
    say(f"prune{len(layers)}: healing the student (distillation)")
    made = run_recipe(model, info, backend("gguf"), None, recipe, None,
                      ShrinkOptions(passes=recipe[:-1], text=text), output=output,
                      progress=say, for_profile=False)  # fmt: skip
    return made.artifact


def beaten(candidates: list[SweepCandidate]) -> list[SweepCandidate]:
    """Each pruned candidate with the plain quantization that beats it, if one does: no
    larger, no more lossy (and better in one of the two) and, where both speeds are known,
    not slower beyond the noise: pruning bought nothing there."""
    plain = [c for c in candidates if not c.pruned]
    out = []
    for c in candidates:
        if c.pruned:
            better = [
                p for p in plain
                if p.size_bytes <= c.size_bytes and p.loss <= c.loss
                and (p.size_bytes < c.size_bytes or p.loss < c.loss)
                and not (p.speed and c.speed and p.speed < c.speed * (1 - TIE_FLOOR))
            ]  # fmt: skip
            if better:
                best = min(better, key=lambda p: (p.loss, p.size_bytes))
                c = replace(c, beaten_by=best.quant)
        out.append(c)
    return out
