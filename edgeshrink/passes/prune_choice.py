"""Choosing what to prune: every block scored with llama.cpp's forward pass, the best-ranked
removals measured against the original, and the stopping rule for a quality budget.
(The prune pass itself, its settings, is declared in edgeshrink/passes/prune.py.)"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import EvalDataError, EvalError, QualityBudgetError, RecipeError
from edgeshrink.formats import backend
from edgeshrink.formats.gguf import is_encoder, position_rows, quantize_gguf
from edgeshrink.formats.gguf.embeddings import evaluate_embeddings
from edgeshrink.formats.gguf.hooks import BlockStates
from edgeshrink.formats.gguf.quality import (
    LlamaScorer,
    chunk_tokens,
    default_eval_text,
    evaluate_llm,
)
from edgeshrink.util import shipped_text

# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class LayerScores:
    """How much each block changes its input, measured with llama.cpp's forward pass.

    ``influence[i]`` is ShortGPT's Block Influence of block ``i``: 1 - the mean cosine
    between its input and output hidden states (arXiv 2403.03853). ``runs[n][i]`` is
    the angular distance arccos(cos)/pi between the input of block ``i`` and the output
    of block ``i + n - 1`` (Gromov et al., arXiv 2403.17887): a small one says the run
    of ``n`` blocks starting at ``i`` does little.
    """

    model: str
    n_layer: int
    n_tokens: int
    text_sha256: str
    seconds: float
    influence: tuple[float, ...]
    runs: tuple[tuple[int, tuple[float, ...]], ...]

    def run_distance(self, n: int) -> tuple[float, ...]:
        return dict(self.runs)[n]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["runs"] = {str(n): list(v) for n, v in self.runs}
        return doc


def score_layers(
    model: str | os.PathLike[str],
    text: str,
    *,
    max_run: int = 1,
    n_ctx: int = 512,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> LayerScores:
    """Score every block of a GGUF model over ``text`` (chunks of ``n_ctx`` tokens; the
    first position of each chunk, an attention sink, is left out)."""
    import numpy as np

    say = progress or (lambda _m: None)
    model = Path(model)
    start = time.perf_counter()
    n_layer = _layer_count(model)
    if max_run >= n_layer:
        raise RecipeError(
            f"{model.name} has {n_layer} layers: removing {max_run} leaves too few",
            hint=f"remove at most {n_layer - 1}",
        )
    info = backend("gguf").inspect(model)
    hooks = BlockStates(n_layer, info.llm.n_embd if info.llm else 0)
    sums = {n: np.zeros(n_layer - n + 1) for n in range(1, max_run + 1)}
    counted = 0
    encoder = is_encoder(info)
    if encoder:  # a learned position table: never past the trained length
        n_ctx = min(n_ctx, position_rows(info) or n_ctx)
    with LlamaScorer(model, n_ctx, threads or os.cpu_count() or 1, hooks.callback,
                     embeddings=encoder) as scorer:  # fmt: skip
        tokens = scorer.tokenize(text)
        n_chunks = max(1, len(tokens) // n_ctx)
        if len(tokens) < 32:
            raise EvalDataError(
                f"the calibration text has {len(tokens)} tokens; scoring needs at least 32",
                hint="give a longer --text",
            )
        for i in range(n_chunks):
            if i % max(1, n_chunks // 10) == 0:
                say(f"scoring layers: chunk {i + 1}/{n_chunks}")
            chunk = chunk_tokens(tokens, i, n_ctx, scorer) if len(tokens) >= n_ctx else tokens
            scorer.forward(chunk, 0)  # every position is an output: the last block's rows too
            states = hooks.take()
            missing = [j for j, s in enumerate(states) if s is None or len(s) != len(chunk)]
            if missing and not hooks.fallback:  # this graph names its block outputs otherwise
                hooks.fallback = True
                scorer.forward(chunk, 0)
                states = hooks.take()
                missing = [j for j, s in enumerate(states) if s is None or len(s) != len(chunk)]
            if missing:
                raise EvalError(
                    f"{model.name}: llama.cpp's graph did not show the hidden states of "
                    f"{len(missing)} of {n_layer + 1} block boundaries "
                    f"({'; '.join(hooks.errors[-1:]) or 'names not found'})",
                    hint="this architecture names its block outputs differently; use --remove",
                )
            unit = [
                s[1:] / np.maximum(np.linalg.norm(s[1:], axis=1, keepdims=True), 1e-12)
                for s in states
            ]
            for n, total in sums.items():
                for j in range(n_layer - n + 1):
                    total[j] += float(np.clip((unit[j] * unit[j + n]).sum(axis=1), -1, 1).sum())
            counted += len(chunk) - 1
    mean_cos = {n: total / counted for n, total in sums.items()}
    return LayerScores(
        model=str(model),
        n_layer=n_layer,
        n_tokens=counted,
        text_sha256=hashlib.sha256(text.encode()).hexdigest(),
        seconds=time.perf_counter() - start,
        influence=tuple(float(1 - c) for c in mean_cos[1]),
        runs=tuple(
            (n, tuple(float(np.arccos(np.clip(c, -1, 1)) / np.pi) for c in cos))
            for n, cos in mean_cos.items()
        ),
    )


def _layer_count(model: Path) -> int:

    info = backend("gguf").inspect(model)
    if info.llm is None:
        raise RecipeError(
            f"{model.name} ({info.architecture}) has no transformer blocks llama.cpp can prune",
            hint="prune works on GGUF language models and encoders",
        )
    return info.llm.n_layer


def candidate_removals(
    scores: LayerScores, n: int, limit: int = 3
) -> list[tuple[tuple[int, ...], str]]:
    """The few removals of ``n`` blocks the scores rank best, each with the rule that
    proposed it: the contiguous runs that change their input least, then the ``n``
    blocks of lowest influence (which need not be contiguous)."""
    picks: list[tuple[tuple[int, ...], str]] = []
    if n in dict(scores.runs):
        runs = scores.run_distance(n)
        for start in sorted(range(len(runs)), key=runs.__getitem__)[:2]:
            picks.append(
                (
                    tuple(range(start, start + n)),
                    f"run of {n} from block {start}: angular distance {runs[start]:.4f}",
                )
            )
    lowest = tuple(sorted(sorted(range(scores.n_layer), key=scores.influence.__getitem__)[:n]))
    picks.append((lowest, f"the {n} blocks of lowest influence"))
    unique: dict[tuple[int, ...], str] = {}
    for layers, why in picks:
        unique.setdefault(layers, why)
    return list(unique.items())[:limit]


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Tried:
    """One removal that was measured: the original's layers it removes and its quality."""

    layers: tuple[int, ...]
    why: str
    quality: dict[str, Any]  # an LLM or embedding report's to_dict(), against the unpruned model

    @property
    def loss(self) -> float:
        """Lower is better: the mean KL divergence (LLMs), 1 - mean cosine (encoders)."""
        return removal_loss(self.quality)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "why": self.why, "quality": self.quality}


@dataclass(frozen=True)
class PruneChoice:
    layers: tuple[int, ...]
    scores: tuple[LayerScores, ...]  # the first on the original; then one per re-scoring
    tried: tuple[Tried, ...]
    stopped: str  # why it stopped where it did

    @property
    def best(self) -> Tried | None:
        return next((t for t in self.tried if t.layers == self.layers), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers), "stopped": self.stopped,
            "scores": [s.to_dict() for s in self.scores], "tried": [t.to_dict() for t in self.tried],
        }  # fmt: skip


def split_texts(text: str | None, eval_text: str | None) -> tuple[str, str]:
    """(calibration, evaluation) text: a removal is chosen on one and judged on the other.
    The defaults are the two texts edgeshrink ships (data/calib-en.txt, data/eval-en.txt)."""

    calibration = text if text is not None else shipped_text("calib-en.txt")
    evaluation = eval_text if eval_text is not None else default_eval_text()
    if calibration.strip() == evaluation.strip():
        raise EvalDataError(
            "the calibration and the evaluation text are the same",
            hint="judge a removal on text it was not chosen on: give --eval-text another file",
        )
    return calibration, evaluation


class RemovalMeter:
    """Makes pruned copies of one model in a work dir and measures them against it."""

    def __init__(self, src: Path, work: Path, eval_text: str, *, n_ctx: int, threads: int | None,
                 progress: Callable[[str], None]) -> None:  # fmt: skip
        self.src, self.work, self.eval_text = src, work, eval_text
        self.n_ctx, self.threads, self.say = n_ctx, threads, progress
        info = backend("gguf").inspect(src)
        self.file_type = info.file_type
        self.encoder = is_encoder(info)

    def pruned(self, layers: tuple[int, ...]) -> Path:
        out = self.work / f"pruned-{'-'.join(map(str, layers))}.gguf"
        if not out.exists():
            quantize_gguf(self.src, out, self.file_type, threads=self.threads, prune_layers=layers)
        return out

    def measure(self, layers: tuple[int, ...], why: str) -> Tried:
        self.say(f"measuring the removal of layers {', '.join(map(str, layers))} ({why})")
        if self.encoder:
            report: Any = evaluate_embeddings(self.src, self.pruned(layers), text=self.eval_text,
                                              threads=self.threads)  # fmt: skip
        else:
            report = evaluate_llm(self.src, self.pruned(layers), text=self.eval_text,
                                  n_ctx=self.n_ctx, threads=self.threads)  # fmt: skip
        return Tried(layers, why, report.to_dict())


def removal_loss(quality: dict[str, Any]) -> float:
    """Lower is better: KLD from an LLM report, 1 - mean cosine from an embedding report."""
    if quality.get("kind") == "embedding-cosine":
        return 1.0 - float(quality["cosine_mean"])
    return float(quality["kld_mean"]["value"])


def _original_index(kept: list[int], layers: tuple[int, ...]) -> tuple[int, ...]:
    """Blocks of a pruned model, named by their index in the original."""
    return tuple(kept[i] for i in layers)


def choose_removal(
    meter: RemovalMeter, calibration: str, n: int, *, candidates: int = 3
) -> PruneChoice:
    """Score the blocks, measure the best-ranked removals of ``n`` and keep the best measured."""
    scores = score_layers(
        meter.src, calibration, max_run=n, threads=meter.threads, progress=meter.say
    )
    tried = tuple(
        meter.measure(layers, why) for layers, why in candidate_removals(scores, n, candidates)
    )
    best = min(tried, key=lambda t: t.loss)
    return PruneChoice(best.layers, (scores,), tried, f"removed the {n} asked for")


def prune_to_budget(meter: RemovalMeter, calibration: str, budget: Any, *, candidates: int = 3,
                    max_layers: int | None = None) -> PruneChoice:  # fmt: skip
    """Remove one block more at a time, re-scoring the pruned model each time, while the
    best measured removal stays within ``budget`` (an LlmBudget); say why it stopped."""
    n_layer = _layer_count(meter.src)
    limit = min(max_layers or n_layer - 1, n_layer - 1)
    removed: tuple[int, ...] = ()
    all_scores: list[LayerScores] = []
    tried: list[Tried] = []
    current = meter.src
    stopped = f"removed {limit} layers, the most allowed"
    while len(removed) < limit:
        kept = [i for i in range(n_layer) if i not in removed]
        scores = score_layers(current, calibration, threads=meter.threads, progress=meter.say)
        all_scores.append(scores)
        ranked = sorted(range(len(kept)), key=scores.influence.__getitem__)[:candidates]
        step_tried = []
        for block in ranked:
            layers = tuple(sorted((*removed, kept[block])))
            why = f"block {kept[block]}: influence {scores.influence[block]:.4f}" + (
                " after re-scoring" if removed else ""
            )
            step_tried.append(meter.measure(layers, why))
        tried += step_tried
        best = min(step_tried, key=lambda t: t.loss)
        failures = budget.failures(best.quality)
        if failures:
            cost = "; ".join(failures)
            if not removed:
                raise QualityBudgetError(
                    f"removing even 1 layer of {meter.src.name} costs {cost}",
                    hint="loosen the budget, or quantize instead of pruning",
                )
            stopped = f"stopped at {len(removed)}: removing layer {(set(best.layers) - set(removed)).pop()} as well would cost {cost}"
            break
        removed = best.layers
        current = meter.pruned(removed)
    return PruneChoice(removed, tuple(all_scores), tuple(tried), stopped)
