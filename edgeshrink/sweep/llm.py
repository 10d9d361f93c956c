"""The sweep of a language model (GGUF): each type of the ladder made with llama.cpp's
quantizer and judged by its KL divergence from the original over a text."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edgeshrink.bench import BenchParams
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats import gguf
from edgeshrink.formats.gguf.plan import plan_gguf
from edgeshrink.formats.gguf.quality import default_eval_text, evaluate_llm
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile
from edgeshrink.shrink import shrink_gguf
from edgeshrink.store import ResultStore
from edgeshrink.sweep.choose import check_optimize, finish
from edgeshrink.sweep.device import measure_on_target
from edgeshrink.sweep.types import (
    DEFAULT_LADDER,
    QUALITY_METHOD,
    Progress,
    QualityBudget,
    SweepCandidate,
    SweepResult,
)
from edgeshrink.targets import Target
from edgeshrink.util import sha256_file


def sweep_gguf(
    model: str | os.PathLike[str],
    profile: HardwareProfile,
    *,
    budget: QualityBudget,
    ladder: tuple[str, ...] = DEFAULT_LADDER,
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
    out_dir = Path(output_dir) if output_dir else Path.cwd() / f"{model.stem}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = text if text is not None else default_eval_text()
    base_sha = sha256_file(model)
    settings = json.dumps(
        {"text_sha256": hashlib.sha256(text.encode()).hexdigest(),
         "n_ctx": eval_ctx, "chunks": eval_chunks},
        sort_keys=True,
    )  # fmt: skip
    candidates: list[SweepCandidate] = []
    with ResultStore(db) as store:
        for quant in ladder:
            options = ShrinkOptions(quant=quant, context=context, check_fit=False)
            estimate = plan_gguf(info, profile, options).chosen
            say(f"{quant}: quantizing")
            art = shrink_gguf(
                model,
                profile,
                options,
                output=out_dir / f"{model.stem}-{quant.lower()}.gguf",
                info=info,
            ).artifact
            quality = store.find_quality(QUALITY_METHOD, base_sha, art.sha256, settings)
            reused = quality is not None and not remeasure
            if not reused:
                say(f"{quant}: measuring quality against {model.name}")
                report = evaluate_llm(
                    model, art.path, text=text, n_ctx=eval_ctx, max_chunks=eval_chunks
                )
                quality = report.to_dict()
                store.add_quality(
                    {
                        "method": QUALITY_METHOD, "base_sha256": base_sha, "candidate_sha256": art.sha256,
                        "settings": settings, "candidate_name": art.path.name, "quant": quant,
                        "kld_mean": report.kld_mean.value, "ppl_ratio": report.ppl_ratio.value,
                        "same_top": report.same_top.value,
                    },
                    quality,
                )  # fmt: skip
            assert quality is not None
            candidates.append(
                SweepCandidate(
                    quant=quant,
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
                )
            )
    speed_source = "estimated from memory bandwidth"
    if target is not None:
        candidates = measure_on_target(
            candidates, profile, target, params or BenchParams(), db, remeasure, say
        )
        speed_source = f"measured on {target.name}"
    return finish(
        model, profile, target, budget, optimize, speed_source, candidates, plot,
        quality_source=f"{candidates[0].quality['n_scored']} tokens" if candidates else "",
    )  # fmt: skip
