"""The compact reference a device scores a GGUF candidate against: the base model's
log-probabilities over the evaluation text, as its top k per position, the rest's mass and
a few samples of the rest, with the tokens themselves (edgeshrink/agent/device_quality.py
describes the file and what the device computes from it).

Made from the same cached base log-probabilities the host's ``evaluate_llm`` reads, so the
host and the device score against the same numbers, and cached itself: the same base, text
and settings give the same bytes, found again, never rebuilt.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from edgeshrink.agent import device_quality as dq
from edgeshrink.errors import EvalError
from edgeshrink.formats.gguf.quality import (
    base_log_probs,
    default_eval_text,
    llama_cpp_version,
    vocab_facts,
)
from edgeshrink.formats.gguf.reader import inspect_gguf
from edgeshrink.util import atomic_path, cache_dir, sha256_file

Progress = Callable[[str], None]
ROWS_PER_BLOCK = 256


def reference_key(parts: list[str]) -> str:
    return hashlib.sha256("|".join([dq.REFERENCE_SCHEMA, *parts]).encode()).hexdigest()[:32]


def make_llm_reference(
    base: str | os.PathLike[str],
    *,
    text: str | None = None,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """The reference file for ``base`` over ``text`` in chunks of ``n_ctx`` (cached)."""
    import numpy as np

    say = progress or (lambda _m: None)
    base = Path(base)
    text = text if text is not None else default_eval_text()
    trained = inspect_gguf(base).llm
    if trained and trained.context_length and n_ctx > trained.context_length:
        raise EvalError(
            f"{base.name} was trained on {trained.context_length} tokens of context; chunks of "
            f"{n_ctx} would score it where it was never meant to run",
            hint=f"evaluate in chunks of {trained.context_length} tokens or fewer (a longer text is cut"
            " into more chunks)",
        )
    base_sha = sha256_file(base)
    text_sha = hashlib.sha256(text.encode()).hexdigest()
    settings = [base_sha, text_sha, str(n_ctx), str(max_chunks), llama_cpp_version() or "",
                str(dq.TOP_K), str(dq.TAIL_SAMPLES)]  # fmt: skip
    cached = cache_dir("references") / f"{reference_key(settings)}.esref"
    if cached.exists():
        return cached
    facts = vocab_facts(base)
    tokens, log_probs, _ = base_log_probs(
        base, text, n_ctx, max_chunks=max_chunks, threads=threads or os.cpu_count() or 1,
        progress=say,
    )  # fmt: skip
    n_chunks = len(tokens) // n_ctx
    targets = dq.scored_targets(np, tokens, n_ctx, n_chunks)
    say(
        f"reference: top {dq.TOP_K} and {dq.TAIL_SAMPLES} samples of the rest at {len(targets)} positions"
    )
    rng = np.random.default_rng(0)
    blocks = [
        dq.llm_reference_rows(
            np, log_probs[lo : lo + ROWS_PER_BLOCK], targets[lo : lo + ROWS_PER_BLOCK], rng,
            dq.TOP_K, dq.TAIL_SAMPLES,
        )
        for lo in range(0, len(targets), ROWS_PER_BLOCK)
    ]  # fmt: skip
    arrays = {"tokens": np.asarray(tokens, dtype=np.int32)}
    arrays.update({name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]})
    header = {
        "kind": "llm-text",
        "base": {"name": base.name, "sha256": base_sha, "size": base.stat().st_size},
        "tokenizer": {"n_vocab": facts.n_vocab, "sha256": facts.fingerprint},
        "bos": facts.bos,
        "text_sha256": text_sha,
        "n_ctx": n_ctx,
        "n_chunks": n_chunks,
        "n_scored": int(len(targets)),
        "top_k": dq.TOP_K,
        "tail_samples": dq.TAIL_SAMPLES,
        "log_prob_floor": dq.LOG_PROB_FLOOR,
        "made_with": {"llama-cpp-python": llama_cpp_version()},
    }
    with atomic_path(cached) as tmp, open(tmp, "wb") as handle:
        dq.write_reference(handle, header, arrays)
    return cached
