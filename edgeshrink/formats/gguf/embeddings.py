"""The quality of an embedding model (BERT and kin in GGUF): how close its sentence
embeddings stay to the original's, by cosine, over the sentences of a text.

KL divergence needs next-token logits, which an encoder does not have; what its users
keep is the embedding, so that is what is compared: each sentence of the text is
embedded by both models with llama.cpp (the model's own pooling) and the cosine of the
two vectors is averaged (and its worst and 5th-percentile values reported).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import EvalDataError
from edgeshrink.formats.gguf.quality import LlamaScorer, default_eval_text

MAX_SENTENCES = 256
MAX_TOKENS = 128  # per sentence; sentence encoders are trained on short inputs
MIN_SENTENCES = 8


@dataclass(frozen=True)
class EmbeddingReport:
    base: str
    candidate: str
    text_sha256: str
    n_inputs: int
    n_tokens: int
    cosine_mean: float
    cosine_p05: float
    cosine_min: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "embedding-cosine", **asdict(self)}


@dataclass(frozen=True)
class EmbeddingBudget:
    """Bounds on an EmbeddingReport's ``to_dict()``: the mean cosine at least this."""

    min_cosine: float | None = None

    def describe(self) -> str:
        return (
            "no quality budget" if self.min_cosine is None else f"mean cosine ≥ {self.min_cosine:g}"
        )

    def failures(self, quality: dict[str, Any]) -> list[str]:
        value = quality["cosine_mean"]
        if self.min_cosine is not None and value < self.min_cosine:
            return [f"mean cosine {value:.5f} < {self.min_cosine:g}"]
        return []


def sentences(text: str) -> list[str]:
    """The text's sentences (a line break or ., ! and ? followed by a space end one)."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [p.strip() for p in parts if len(p.strip().split()) >= 3][:MAX_SENTENCES]


def embed_all(path: Path, texts: list[str], threads: int) -> tuple[Any, int]:
    """Every text's pooled embedding (rows), and the tokens embedded."""
    import numpy as np

    with LlamaScorer(path, MAX_TOKENS, threads, embeddings=True) as scorer:
        limit = min(MAX_TOKENS, scorer.n_ctx_train or MAX_TOKENS)
        rows, n_tokens = [], 0
        for text in texts:
            tokens = scorer.tokenize(text)[:limit]
            n_tokens += len(tokens)
            rows.append(scorer.embedding(tokens))
    return np.array(rows), n_tokens


def evaluate_embeddings(
    base: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    text: str | None = None,
    threads: int | None = None,
) -> EmbeddingReport:
    import numpy as np

    start = time.perf_counter()
    text = text if text is not None else default_eval_text()
    inputs = sentences(text)
    if len(inputs) < MIN_SENTENCES:
        raise EvalDataError(
            f"the text has {len(inputs)} sentences; comparing embeddings needs at least "
            f"{MIN_SENTENCES}",
            hint="give a longer text, one sentence or more per line",
        )
    threads = threads or os.cpu_count() or 1
    a, n_tokens = embed_all(Path(base), inputs, threads)
    b, _ = embed_all(Path(candidate), inputs, threads)
    if a.shape != b.shape:
        raise EvalDataError(
            f"{Path(candidate).name} makes {b.shape[1]}-wide embeddings, {Path(base).name} "
            f"{a.shape[1]}-wide",
            hint="compare a model with its own shrunk version",
        )
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
    return EmbeddingReport(
        base=str(base), candidate=str(candidate),
        text_sha256=hashlib.sha256(text.encode()).hexdigest(), n_inputs=len(inputs),
        n_tokens=n_tokens, cosine_mean=float(cos.mean()),
        cosine_p05=float(np.percentile(cos, 5)), cosine_min=float(cos.min()),
        seconds=time.perf_counter() - start,
    )  # fmt: skip
