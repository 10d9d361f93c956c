"""The importance matrix of a GGUF model, computed with llama.cpp's own forward pass.

For every matrix multiplication by a weight of the model's blocks, the mean of the
squared activations that multiply each of the weight's input columns, over a
calibration text: the quantizer then spends its precision where the inputs are large
(llama.cpp's ``llama_model_quantize_params.imatrix``). Computed as llama-imatrix does:

- tokenize the text once (with BOS when the vocabulary asks for it), cut it into
  chunks of ``chunk_size`` tokens (512, or the trained context if shorter), each chunk
  starting with BOS in place of its first token, every position an output;
- decode each chunk from an empty cache; the context's eval callback
  (hooks.MatmulInputs) sums the squared inputs of every MUL_MAT by a ``blk.*`` weight
  with at least 16 rows.

The result is written in llama.cpp's imatrix GGUF format (imatrix_file.py) and kept in
the cache under the model's sha256, the text's sha256 and the settings.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import EvalDataError, EvalError, ImatrixError
from edgeshrink.formats.base import ModelInfo
from edgeshrink.formats.gguf.hooks import MatmulInputs
from edgeshrink.formats.gguf.imatrix_file import (
    Imatrix,
    check_imatrix_fits,
    read_imatrix,
    write_imatrix,
)
from edgeshrink.formats.gguf.quality import LlamaScorer, chunk_tokens, quiet_llama_log
from edgeshrink.formats.gguf.quant_types import UNQUANTIZED, quant_type
from edgeshrink.formats.gguf.quantize import llama_cpp_version
from edgeshrink.formats.gguf.reader import inspect_gguf, is_encoder
from edgeshrink.util import cache_dir, sha256_file, shipped_text

Progress = Callable[[str], None]
CACHE_VERSION = 1
DEFAULT_CHUNK = 512
SHIPPED_CALIBRATION = "calib-en.txt"
IMATRIX_BELOW_BPW = 5.0  # types below this many bits per weight use an imatrix by default


@dataclass(frozen=True)
class CalibrationText:
    """A text an importance matrix is computed over, and the name it records for it."""

    text: str
    name: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @classmethod
    def read(cls, path: str | os.PathLike[str] | None) -> CalibrationText:
        """The text of ``path``, or the one edgeshrink ships (edgeshrink/data/calib-en.txt)."""
        if path is None:
            return cls(shipped_text(SHIPPED_CALIBRATION), f"edgeshrink/{SHIPPED_CALIBRATION}")
        path = Path(path)
        try:
            return cls(path.read_text(encoding="utf-8"), path.name)
        except (OSError, UnicodeDecodeError) as exc:
            raise EvalDataError(
                f"{path}: cannot read the calibration text: {exc}",
                hint="give a UTF-8 text file",
            ) from exc


@dataclass(frozen=True)
class ImatrixFile:
    """An importance matrix on disk, for one model: its path and sha256, and where it came
    from (``text_sha256`` is None for a file the user gave)."""

    path: Path
    sha256: str
    imatrix: Imatrix
    text_sha256: str | None
    cached: bool = False
    seconds: float = 0.0

    @property
    def datasets(self) -> str:
        return ", ".join(self.imatrix.datasets) or "unknown"


def wants_imatrix(quant: str, options: Any, info: ModelInfo, *, mix: bool = False) -> bool:
    """Whether ``quant`` is made with an importance matrix: when the options say so (a file
    given, --no-imatrix), when the type needs one, and by default for a decoder's types
    below 5 bits and for a size-budget mix (edgeshrink's own calibration text counts)."""
    if options.imatrix is not None:
        return True
    if options.use_imatrix is not None:
        return bool(options.use_imatrix)
    qtype = quant_type(quant)
    if qtype.needs_imatrix:
        return True
    if info.llm is None or is_encoder(info) or (info.is_quantized and qtype.name == info.file_type):
        return False  # nothing to compute it with, or the tensors are copied as they are
    return mix or (qtype.name not in UNQUANTIZED and qtype.bpw < IMATRIX_BELOW_BPW)


def chunk_size_for(model: str | os.PathLike[str], asked: int | None = None) -> int:
    """llama-imatrix's 512 tokens, or the trained context when it is shorter."""
    if asked:
        return asked
    info = inspect_gguf(model)
    trained = info.llm.context_length if info.llm else 0
    return min(DEFAULT_CHUNK, trained) if trained else DEFAULT_CHUNK


def compute_imatrix(
    model: str | os.PathLike[str],
    text: CalibrationText,
    *,
    chunk_size: int | None = None,
    max_chunks: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Imatrix:
    """The importance matrix of ``model`` over ``text`` (see the module's docstring)."""
    import numpy as np

    say = progress or (lambda _m: None)
    model = Path(model)
    n_ctx = chunk_size_for(model, chunk_size)
    hooks = MatmulInputs()
    with LlamaScorer(model, n_ctx, threads or os.cpu_count() or 1, hooks.callback) as scorer:
        tokens = scorer.tokenize(text.text)
        check_text_length(len(tokens), n_ctx, text, model)
        n_chunks = len(tokens) // n_ctx
        if max_chunks:
            n_chunks = min(n_chunks, max_chunks)
        for i in range(n_chunks):
            say(f"importance matrix: chunk {i + 1}/{n_chunks} of {n_ctx} tokens")
            scorer.forward(chunk_tokens(tokens, i, n_ctx, scorer), 0)
            if hooks.errors:
                raise EvalError(f"{model.name}: reading the graph failed: {hooks.errors[0]}")
            if hooks.experts:
                raise EvalError(
                    f"{model.name} routes tokens to experts ({sorted(hooks.experts)[0]}, ...): "
                    "edgeshrink does not compute importance matrices of mixture-of-experts models",
                    hint="compute one with llama-imatrix and pass it with --imatrix FILE",
                )
    if not hooks.sums:
        raise EvalError(
            f"{model.name}: llama.cpp's graph showed no matrix multiplication by a block weight",
            hint="this architecture names its weights differently; use llama-imatrix",
        )
    counts = {name: c.copy() for name, c in hooks.counts.items()}
    most = max(int(c.max()) for c in counts.values())
    return Imatrix(
        sums={name: s.astype(np.float32) for name, s in hooks.sums.items()},
        counts=counts,
        datasets=(text.name,),
        chunk_count=most // n_ctx,
        chunk_size=n_ctx,
    )


def imatrix_for(
    model: str | os.PathLike[str],
    text: CalibrationText,
    *,
    model_sha256: str | None = None,
    chunk_size: int | None = None,
    max_chunks: int | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ImatrixFile:
    """The importance matrix of ``model`` over ``text``, from the cache or computed once and
    kept there (keyed by the model's and the text's sha256, the settings and llama.cpp's
    version); ``force`` computes it again."""
    say = progress or (lambda _m: None)
    model = Path(model)
    n_ctx = chunk_size_for(model, chunk_size)
    key = hashlib.sha256(
        "|".join([
            str(CACHE_VERSION), model_sha256 or sha256_file(model), text.sha256, str(n_ctx),
            str(max_chunks or 0), llama_cpp_version() or "",
        ]).encode()
    ).hexdigest()[:32]  # fmt: skip
    path = cache_dir("imatrix") / f"{key}.imatrix.gguf"
    if path.is_file() and not force:
        try:
            return ImatrixFile(path, sha256_file(path), read_imatrix(path), text.sha256, True)
        except ImatrixError:
            path.unlink(missing_ok=True)  # a damaged cache entry is made again
    say(f"computing the importance matrix of {model.name} over {text.name} with llama.cpp")
    start = time.perf_counter()
    imatrix = compute_imatrix(
        model, text, chunk_size=n_ctx, max_chunks=max_chunks, threads=threads, progress=say
    )
    write_imatrix(imatrix, path)
    seconds = time.perf_counter() - start
    return ImatrixFile(path, sha256_file(path), imatrix, text.sha256, False, seconds)


@dataclass(frozen=True)
class ImatrixPlan:
    """What computing an importance matrix would do: the text's tokens and the chunks."""

    model: Path
    text: str
    n_tokens: int
    chunk_size: int
    chunks: int

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "text": self.text, "n_tokens": self.n_tokens,
                "chunk_size": self.chunk_size, "chunks": self.chunks}  # fmt: skip


def plan_imatrix(
    model: str | os.PathLike[str],
    text: CalibrationText,
    *,
    chunk_size: int | None = None,
    max_chunks: int | None = None,
) -> ImatrixPlan:
    """Tokenize ``text`` with ``model``'s vocabulary alone (no weights loaded) and count the
    chunks; a text shorter than one chunk is refused here as it would be later."""
    model = Path(model)
    n_ctx = chunk_size_for(model, chunk_size)
    n_tokens = len(vocabulary_tokens(model, text.text))
    check_text_length(n_tokens, n_ctx, text, model)
    chunks = n_tokens // n_ctx
    return ImatrixPlan(model, text.name, n_tokens, n_ctx, min(chunks, max_chunks or chunks))


def check_text_length(n_tokens: int, n_ctx: int, text: CalibrationText, model: Path) -> None:
    if n_tokens < n_ctx:
        raise EvalDataError(
            f"the calibration text {text.name} is {n_tokens} tokens for {model.name}, "
            f"shorter than one chunk of {n_ctx}",
            hint=f"give a calibration text of at least {n_ctx} tokens "
            f"(about {n_ctx * 4} characters of English)",
        )


def vocabulary_tokens(model: Path, text: str) -> list[int]:
    """``text`` tokenized as the importance matrix tokenizes it, from the vocabulary only."""
    import llama_cpp

    quiet_llama_log(llama_cpp)
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    loaded = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    if not loaded:
        raise EvalError(f"{model}: llama.cpp could not read this model's vocabulary")
    try:
        vocab = llama_cpp.llama_model_get_vocab(loaded)
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 16))()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
        return list(buf[: max(n, 0)]) if n >= 0 else [0] * -n
    finally:
        llama_cpp.llama_model_free(loaded)


def given_imatrix(path: str | os.PathLike[str], model: str | os.PathLike[str]) -> ImatrixFile:
    """An importance matrix the user gave (llama-imatrix's or edgeshrink's), checked to be
    one of ``model``."""
    path = Path(path)
    imatrix = read_imatrix(path)
    check_imatrix_fits(imatrix, model, path.name)
    return ImatrixFile(path, sha256_file(path), imatrix, None)
