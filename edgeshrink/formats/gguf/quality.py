"""How much a quantized GGUF model lost against its base, the llama-perplexity way.

The method is llama.cpp's ``llama-perplexity --kl-divergence``, so the figures
can be compared with published tables:

- tokenize the text once (with BOS when the vocabulary asks for it) and cut it
  into chunks of ``n_ctx`` tokens; each chunk starts with BOS in place of its
  first token;
- score only the second half of each chunk (positions ``n_ctx/2`` to
  ``n_ctx-2`` predict the next token), so every scored token has at least
  half a context behind it;
- keep the base model's log-probabilities of those positions (computed once,
  cached on disk as float16, keyed by the model's sha256, the text's sha256,
  ``n_ctx`` and the chunk count);
- for the candidate, report perplexity, its ratio and difference to the base,
  the mean/median/p99/max KL divergence, "same top token" and RMS Δp, each
  with llama.cpp's uncertainty formulas.

KL divergence terms where the base log-probability is below -16 are skipped,
as llama.cpp skips them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgeshrink.agent import device_quality as dq
from edgeshrink.agent.edgeshrink_agent import avoid_amx, fill_batch
from edgeshrink.errors import (
    EvalError,  # noqa: F401 (re-exported)
    ModelFileError,
    QuantizationError,
    RuntimeMissingError,
)
from edgeshrink.formats.gguf.quantize import llama_cpp_version
from edgeshrink.formats.gguf.reader import inspect_gguf, is_encoder
from edgeshrink.util import atomic_path, cache_dir, sha256_file, shipped_text

Progress = Callable[[str], None]
LOG_PROB_FLOOR = dq.LOG_PROB_FLOOR
CACHE_VERSION = 1


@dataclass(frozen=True)
class Estimate:
    value: float
    uncertainty: float


@dataclass(frozen=True)
class LlmQualityReport:
    base: str
    candidate: str
    text_sha256: str
    n_ctx: int
    n_chunks: int
    n_scored: int
    ppl_base: Estimate
    ppl: Estimate
    ppl_ratio: Estimate
    ppl_diff: Estimate
    ln_ppl_ratio: Estimate
    kld_mean: Estimate
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top: Estimate  # fraction 0..1
    rms_dp: Estimate  # fraction 0..1
    seconds: float
    base_cached: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LlmBudget:
    """Bounds on llama-perplexity's figures (a report's ``to_dict()``), for eval, sweep and prune."""

    max_kld: float | None = None
    max_ppl_increase: float | None = None  # a fraction: 0.05 allows PPL 5% above the original
    min_same_top: float | None = None  # a fraction: 0.9 asks for 90% same top token

    def describe(self) -> str:
        parts = []
        if self.max_kld is not None:
            parts.append(f"KLD ≤ {self.max_kld:g}")
        if self.max_ppl_increase is not None:
            parts.append(f"PPL ≤ +{self.max_ppl_increase:.1%}")
        if self.min_same_top is not None:
            parts.append(f"same top token ≥ {self.min_same_top:.1%}")
        return ", ".join(parts) or "no quality budget"

    def failures(self, quality: dict[str, Any]) -> list[str]:
        failed = []
        kld = quality["kld_mean"]["value"]
        ratio = quality["ppl_ratio"]["value"]
        same = quality["same_top"]["value"]
        if self.max_kld is not None and kld > self.max_kld:
            failed.append(f"KLD {kld:.4f} > {self.max_kld:g}")
        if self.max_ppl_increase is not None and ratio - 1 > self.max_ppl_increase:
            failed.append(f"PPL +{ratio - 1:.2%} > +{self.max_ppl_increase:.1%}")
        if self.min_same_top is not None and same < self.min_same_top:
            failed.append(f"same top {same:.1%} < {self.min_same_top:.1%}")
        return failed


def default_eval_text() -> str:
    """A short English text the project wrote itself (edgeshrink/data/eval-en.txt)."""
    return shipped_text("eval-en.txt")


# --------------------------------------------------------------------------- llama.cpp


_LOG_CALLBACK: Any = None
_LOG_TAIL: list[str] = []


def quiet_llama_log(llama_cpp: Any) -> None:
    """Keep llama.cpp's log off the terminal (its last lines explain a failure)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    @llama_cpp.llama_log_callback
    def _keep(level: int, text: bytes, _user: Any) -> None:
        _LOG_TAIL.append(text.decode("utf-8", "replace"))
        del _LOG_TAIL[:-50]

    _LOG_CALLBACK = _keep  # a reference must outlive the C side's use of it
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


class LlamaScorer:
    """One model and one context, scoring chunks through llama.cpp's low-level API
    (``eval_callback``: a ggml_backend_sched_eval_callback that sees the graph's tensors)."""

    def __init__(
        self, path: Path, n_ctx: int, threads: int, eval_callback: Any = None, *,
        embeddings: bool = False,
    ) -> None:  # fmt: skip
        try:
            import llama_cpp
        except ImportError as exc:
            raise RuntimeMissingError(
                "llama-cpp-python is not installed on the host; evaluation runs llama.cpp",
                hint="pip install 'edgeshrink[gguf]'",
            ) from exc
        self.ll = llama_cpp
        quiet_llama_log(llama_cpp)
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        avoid_amx(mparams, llama_cpp.llama_print_system_info().decode("utf-8", "replace"))
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            reason = "".join(_LOG_TAIL[-3:]).strip().replace("\n", " | ")
            raise ModelFileError(f"{path}: llama.cpp could not load this model: {reason}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = min(n_ctx, 512)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        if embeddings:
            # An encoder's batch is one non-causal micro-batch, and its output is pooled.
            cparams.embeddings = True
            cparams.n_ubatch = n_ctx
        if eval_callback is not None:
            cparams.cb_eval = eval_callback
            cparams.cb_eval_user_data = None
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise EvalError(f"{path}: llama.cpp could not create a context of {n_ctx} tokens")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = n_ctx
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)

    def __enter__(self) -> LlamaScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (self.ll.llama_token * capacity)()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, capacity, True, False)
        if n < 0:
            raise EvalError(f"tokenization needs {-n} tokens, more than expected")
        return list(buf[:n])

    @property
    def add_bos(self) -> bool:
        return bool(self.ll.llama_vocab_get_add_bos(self.vocab))

    @property
    def bos(self) -> int:
        return int(self.ll.llama_vocab_bos(self.vocab))

    @property
    def n_ctx_train(self) -> int:
        return int(self.ll.llama_model_n_ctx_train(self.model))

    def forward(self, tokens: list[int], first: int) -> None:
        """Run the graph over one chunk, positions first.. marked as outputs."""
        ll = self.ll
        memory = ll.llama_get_memory(self.ctx)
        if memory:
            ll.llama_memory_clear(memory, True)
        batch = self.batch
        fill_batch(batch, tokens, first)
        run = ll.llama_encode if ll.llama_model_has_encoder(self.model) else ll.llama_decode
        rc = run(self.ctx, batch)
        if rc != 0:
            raise EvalError(f"llama.cpp failed to decode a chunk (code {rc})")
        ll.llama_synchronize(self.ctx)

    def embedding(self, tokens: list[int]) -> Any:
        """The pooled embedding of ``tokens`` (an ``embeddings=True`` scorer), as float64."""
        import numpy as np

        self.forward(tokens, 0)
        n_embd = int(self.ll.llama_model_n_embd(self.model))
        pointer = None
        if int(self.ll.llama_pooling_type(self.ctx)) > 0:
            pointer = self.ll.llama_get_embeddings_seq(self.ctx, 0)
        if not pointer:  # no pooling: the mean of the tokens' states
            rows = [self.ll.llama_get_embeddings_ith(self.ctx, i) for i in range(len(tokens))]
            return np.mean([np.ctypeslib.as_array(r, shape=(n_embd,)) for r in rows], axis=0)
        return np.ctypeslib.as_array(pointer, shape=(n_embd,)).astype(np.float64)

    def chunk_logits(self, tokens: list[int], first: int) -> Any:
        """Logits (n_ctx - first, n_vocab) of positions first..n_ctx-1 of one chunk."""
        import numpy as np

        ll = self.ll
        self.forward(tokens, first)
        n_out = len(tokens) - first
        pointer = ll.llama_get_logits(self.ctx)
        array = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_out, self.n_vocab)
        )
        return array.copy()


@dataclass(frozen=True)
class VocabFacts:
    """What a reference records of a model's vocabulary, read by llama.cpp as the device reads it."""

    n_vocab: int
    fingerprint: str  # device_quality.vocab_fingerprint of every token's text
    bos: int | None  # the token each chunk starts with, when the vocabulary asks for one


def vocab_facts(path: str | os.PathLike[str]) -> VocabFacts:
    """Load only ``path``'s vocabulary in llama.cpp (fast) and describe it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeMissingError(
            "llama-cpp-python is not installed on the host; the reference is made with llama.cpp",
            hint="pip install 'edgeshrink[gguf]'",
        ) from exc
    quiet_llama_log(llama_cpp)
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        reason = "".join(_LOG_TAIL[-3:]).strip().replace("\n", " | ")
        raise ModelFileError(f"{path}: llama.cpp could not load this model: {reason}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        texts = dq.llama_vocab_texts(llama_cpp, model, n_vocab)
        bos = (
            int(llama_cpp.llama_vocab_bos(vocab))
            if llama_cpp.llama_vocab_get_add_bos(vocab)
            else None
        )
        return VocabFacts(n_vocab, dq.vocab_fingerprint(texts), bos)
    finally:
        llama_cpp.llama_model_free(model)


def log_softmax(logits: Any) -> Any:
    import numpy as np

    return dq.log_softmax(np, logits)


def _chunks(tokens: list[int], n_ctx: int, max_chunks: int | None) -> int:
    n_chunks = len(tokens) // n_ctx
    if max_chunks:
        n_chunks = min(n_chunks, max_chunks)
    return n_chunks


def chunk_tokens(tokens: list[int], i: int, n_ctx: int, scorer: LlamaScorer) -> list[int]:
    chunk = tokens[i * n_ctx : (i + 1) * n_ctx]
    if scorer.add_bos:
        chunk = [scorer.bos, *chunk[1:]]
    return chunk


# --------------------------------------------------------------------------- base log-probs


def base_log_probs(
    base: Path,
    text: str,
    n_ctx: int,
    *,
    max_chunks: int | None,
    threads: int,
    progress: Progress | None = None,
) -> tuple[Any, Any, bool]:
    """(tokens, float16 log-probs of every scored position, whether it came from the cache)."""
    import numpy as np

    say = progress or (lambda _m: None)

    key = hashlib.sha256(
        "|".join(
            [
                str(CACHE_VERSION),
                sha256_file(base),
                hashlib.sha256(text.encode()).hexdigest(),
                str(n_ctx),
                str(max_chunks),
                llama_cpp_version() or "",
            ]
        ).encode()
    ).hexdigest()[:32]
    cached = cache_dir("logprobs") / f"{key}.npz"
    if cached.exists():
        with np.load(cached) as data:
            return data["tokens"], data["log_probs"], True
    first = n_ctx // 2
    with LlamaScorer(base, n_ctx, threads) as scorer:
        tokens = scorer.tokenize(text)
        n_chunks = _chunks(tokens, n_ctx, max_chunks)
        if len(tokens) < 2 * n_ctx:
            raise EvalError(
                f"the text has {len(tokens)} tokens; at n_ctx {n_ctx} it needs at least {2 * n_ctx}",
                hint="give a longer --text or a smaller --ctx",
            )
        rows = []
        for i in range(n_chunks):
            if i % max(1, n_chunks // 4) == 0:
                say(f"base model: chunk {i + 1}/{n_chunks}")
            logits = scorer.chunk_logits(chunk_tokens(tokens, i, n_ctx, scorer), first)
            rows.append(log_softmax(logits[:-1].astype(np.float64)).astype(np.float16))
    log_probs = np.concatenate(rows)
    tokens_arr = np.asarray(tokens[: n_chunks * n_ctx], dtype=np.int32)
    with atomic_path(cached) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, tokens=tokens_arr, log_probs=log_probs)
    return tokens_arr, log_probs, False


# --------------------------------------------------------------------------- evaluate


def evaluate_llm(
    base: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    text: str | None = None,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> LlmQualityReport:
    import numpy as np

    say = progress or (lambda _m: None)
    base, candidate = Path(base), Path(candidate)
    text = text if text is not None else default_eval_text()
    threads = threads or os.cpu_count() or 1
    start = time.perf_counter()
    tokens, base_lp, cached = base_log_probs(
        base, text, n_ctx, max_chunks=max_chunks, threads=threads, progress=say
    )
    first = n_ctx // 2
    per_chunk = n_ctx - 1 - first
    n_chunks = len(tokens) // n_ctx
    nll_parts, nll_base_parts, kld_parts, same_parts, dp_parts = [], [], [], [], []
    with LlamaScorer(candidate, n_ctx, threads) as scorer:
        check = scorer.tokenize(text)[: len(tokens)]
        if list(check) != tokens.tolist():
            raise EvalError(
                f"{candidate.name} tokenizes the text differently from {base.name}",
                hint="compare models that share one vocabulary (a base and its quantizations)",
            )
        for i in range(n_chunks):
            if i % max(1, n_chunks // 4) == 0:
                say(f"candidate: chunk {i + 1}/{n_chunks}")
            chunk = chunk_tokens(tokens.tolist(), i, n_ctx, scorer)
            logits = scorer.chunk_logits(chunk, first)[:-1].astype(np.float64)
            lp = log_softmax(logits)
            lp_base = base_lp[i * per_chunk : (i + 1) * per_chunk].astype(np.float64)
            targets = tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx]
            rows = np.arange(per_chunk)
            nll = -lp[rows, targets]
            nll_base = -lp_base[rows, targets]
            keep = lp_base > LOG_PROB_FLOOR
            kld = np.where(keep, np.exp(lp_base) * (lp_base - lp), 0.0).sum(axis=1)
            nll_parts.append(nll)
            nll_base_parts.append(nll_base)
            kld_parts.append(kld)
            same_parts.append(logits.argmax(axis=1) == lp_base.argmax(axis=1))
            dp_parts.append(np.exp(-nll) - np.exp(-nll_base))
    figures = dq.llm_summary(
        np, np.concatenate(nll_parts), np.concatenate(nll_base_parts), np.concatenate(kld_parts),
        np.concatenate(same_parts), np.concatenate(dp_parts),
    )  # fmt: skip
    return LlmQualityReport(
        base=str(base),
        candidate=str(candidate),
        text_sha256=hashlib.sha256(text.encode()).hexdigest(),
        n_ctx=n_ctx,
        n_chunks=n_chunks,
        seconds=time.perf_counter() - start,
        base_cached=cached,
        **estimates(figures),
    )


def estimates(figures: dict[str, Any]) -> dict[str, Any]:
    """The fields of an LlmQualityReport in a summary (llm_summary's, or a device's)."""
    out = {}
    for field in fields(LlmQualityReport):
        if field.name not in figures:
            continue
        value = figures[field.name]
        out[field.name] = Estimate(**value) if isinstance(value, dict) else value
    return out


def check_runs(
    path: Path, *, expected_layers: int | None = None, threads: int | None = None
) -> None:
    """Load ``path`` in llama.cpp and decode a short prompt: the layer count is the one
    expected and the logits are finite, or a QuantizationError says what is wrong."""
    import numpy as np

    encoder = is_encoder(inspect_gguf(path))
    try:
        scorer = LlamaScorer(path, 64, threads or os.cpu_count() or 1, embeddings=encoder)
    except (ModelFileError, EvalError) as exc:
        raise QuantizationError(
            f"{path.name}: the file llama.cpp wrote does not load: {exc.message}",
            hint="this architecture may not survive pruning in this llama.cpp; try other layers",
        ) from exc
    with scorer:
        n_layer = int(scorer.ll.llama_model_n_layer(scorer.model))
        if expected_layers is not None and n_layer != expected_layers:
            raise QuantizationError(
                f"{path.name}: llama.cpp reports {n_layer} layers, expected {expected_layers}",
                hint="this architecture's pruned metadata is not consistent; try other layers",
            )
        tokens = scorer.tokenize("Once upon a time, in a small town by the sea,")[:32]
        outputs = scorer.embedding(tokens) if encoder else scorer.chunk_logits(tokens, 0)
        if not np.all(np.isfinite(outputs)):
            raise QuantizationError(
                f"{path.name}: the {'embeddings' if encoder else 'logits'} are not finite after pruning",
                hint="remove other layers, or fewer",
            )
