"""Small llama-architecture GGUF models, made from nothing but this package.

The files are complete enough for llama.cpp to load, tokenize, evaluate and
quantize them: every hyper-parameter key the "llama" architecture reads, every
tensor, and a real SentencePiece-style ("llama") vocabulary trained here by
byte-pair merges over ``corpus.txt``.  The weights are random but scaled like a
freshly initialised transformer, so logits stay finite; a shared direction in
the embeddings makes the output layer lean towards tokens that are frequent in
the corpus, so sampled text is word salad rather than uniform noise.

Nothing here downloads anything.  The same arguments always give a
byte-identical file (gguf-py writes no timestamps and all randomness comes
from one seeded ``numpy.random.Generator``).
"""

from __future__ import annotations

import functools
import heapq
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SPM_SPACE = "\u2581"  # "▁": how SentencePiece writes a space inside a piece
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_BYTE_TOKENS = 256
FTYPES = ("f32", "f16", "bf16")
INIT_STD = 0.02
NORM_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0


@dataclass(frozen=True)
class LlamaPreset:
    """The shape of one test model: llama hyper-parameters and vocabulary size."""

    name: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_params(self) -> int:
        """Every weight in the file, norms included."""
        e, kv_dim = self.n_embd, self.head_dim * self.n_head_kv
        per_block = 2 * e * e + 2 * e * kv_dim + 3 * e * self.n_ff + 2 * e
        return self.n_layer * per_block + 2 * self.n_vocab * e + e

    @property
    def n_params_2d(self) -> int:
        """Weights stored in the requested ftype (everything except the 1-D norms)."""
        return self.n_params - (2 * self.n_layer + 1) * self.n_embd


SIZES: dict[str, LlamaPreset] = {
    # n_embd 128: no row is a multiple of 256, so K-quants fall back (a case worth testing).
    "nano": LlamaPreset(
        "nano", n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=384, n_vocab=512
    ),
    "tiny": LlamaPreset(
        "tiny", n_embd=256, n_layer=4, n_head=8, n_head_kv=4, n_ff=512, n_vocab=1024
    ),
    "small": LlamaPreset(
        "small", n_embd=512, n_layer=4, n_head=8, n_head_kv=8, n_ff=1024, n_vocab=2048
    ),
    "medium": LlamaPreset(
        "medium", n_embd=768, n_layer=4, n_head=12, n_head_kv=4, n_ff=2048, n_vocab=4096
    ),
    "large": LlamaPreset(
        "large", n_embd=1024, n_layer=4, n_head=16, n_head_kv=4, n_ff=2816, n_vocab=4096
    ),
}


@dataclass(frozen=True)
class SpmVocab:
    """A llama/SentencePiece vocabulary: pieces, scores and token types, index = token id.

    ``log_prior`` is the log of each piece's relative frequency in the training
    text after segmentation (very low for control, byte and unused tokens).
    ``n_merges`` is how many merged pieces the vocabulary holds; the rest of the
    ids above the single characters are ``<unused{i}>`` padding, because the
    shipped corpus only yields so many merges.
    """

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    token_types: tuple[int, ...]
    log_prior: tuple[float, ...]
    n_merges: int
    n_unused: int


def corpus_text() -> str:
    """The English text the vocabulary is trained on (shipped with the package)."""
    return resources.files(__package__).joinpath("corpus.txt").read_text(encoding="utf-8")


def _pretokens(text: str) -> Counter[str]:
    # Like SentencePiece's defaults: split at whitespace, keep letters, digits and
    # punctuation apart, mark each word start with "▁".  Digits stay single (as
    # llama's tokenizer splits them).
    counts: Counter[str] = Counter()
    for word in text.split():
        for i, part in enumerate(re.findall(r"[^\W\d_]+|\d|[^\w\s]+", word)):
            counts[SPM_SPACE + part if i == 0 else part] += 1
    return counts


def _learn_merges(words: Counter[str], max_merges: int) -> tuple[list[str], Counter[str]]:
    """Byte-pair merges over ``words``: the merged pieces in rank order and piece counts.

    Ties between equally frequent pairs go to the lexicographically smallest
    pair, so the result depends only on the text.  Pair counts are updated
    incrementally (only the words that contain the merged pair are touched),
    which keeps training to a few tens of milliseconds.
    """
    seqs = [list(w) for w in sorted(words)]
    freqs = [words[w] for w in sorted(words)]
    pair_count: Counter[tuple[str, str]] = Counter()
    pair_words: dict[tuple[str, str], set[int]] = {}
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:], strict=False):
            pair_count[pair] += freqs[i]
            pair_words.setdefault(pair, set()).add(i)
    heap = [(-count, pair) for pair, count in pair_count.items()]
    heapq.heapify(heap)

    pieces: list[str] = []
    seen: set[str] = set()
    while heap and len(pieces) < max_merges:
        neg_count, pair = heapq.heappop(heap)
        if neg_count == 0 or pair_count.get(pair, 0) != -neg_count:
            continue  # stale heap entry: the pair's count changed since it was pushed
        merged = pair[0] + pair[1]
        changed: set[tuple[str, str]] = set()
        for i in sorted(pair_words.pop(pair)):
            seq, freq = seqs[i], freqs[i]
            for old in zip(seq, seq[1:], strict=False):
                pair_count[old] -= freq
                changed.add(old)
            out: list[str] = []
            j = 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == pair[0] and seq[j + 1] == pair[1]:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for new in zip(out, out[1:], strict=False):
                pair_count[new] += freq
                pair_words.setdefault(new, set()).add(i)
                changed.add(new)
        del pair_count[pair]
        changed.discard(pair)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
        if merged not in seen:  # two different splits can spell the same piece
            seen.add(merged)
            pieces.append(merged)

    piece_counts: Counter[str] = Counter()
    for seq, freq in zip(seqs, freqs, strict=True):
        for piece in seq:
            piece_counts[piece] += freq
    return pieces, piece_counts


@functools.lru_cache(maxsize=8)
def build_spm_vocab(n_vocab: int) -> SpmVocab:
    """Train a llama ("SentencePiece BPE") vocabulary of exactly ``n_vocab`` tokens.

    Layout, as in Meta's llama tokenizer: ``<unk>`` ``<s>`` ``</s>``, the 256
    byte-fallback tokens ``<0x00>``..``<0xFF>``, merged pieces by rank (score =
    -rank, so llama.cpp's SPM tokenizer applies them in training order), then
    the single characters, then ``<unused{i}>`` padding if the corpus ran out of
    merges.
    """
    from gguf.constants import TokenType

    text = corpus_text()
    words = _pretokens(text)
    # Printable ASCII always has its own piece, so plain English never needs byte fallback.
    chars = sorted({c for w in words for c in w} | {chr(c) for c in range(0x21, 0x7F)})
    n_fixed = 3 + N_BYTE_TOKENS + len(chars)
    if n_vocab < n_fixed:
        raise ValueError(
            f"n_vocab={n_vocab} is below the {n_fixed} fixed tokens (specials, bytes, characters)"
        )
    pieces, piece_counts = _learn_merges(words, n_vocab - n_fixed)
    n_unused = n_vocab - n_fixed - len(pieces)

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(N_BYTE_TOKENS)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    types += [TokenType.BYTE] * N_BYTE_TOKENS
    scores = [0.0] * len(tokens)
    tokens += pieces
    scores += [-float(rank) for rank in range(len(pieces))]
    tokens += chars
    scores += [-float(len(pieces) + i) for i in range(len(chars))]
    types += [TokenType.NORMAL] * (len(pieces) + len(chars))
    tokens += [f"<unused{i}>" for i in range(n_unused)]
    scores += [0.0] * n_unused
    types += [TokenType.UNUSED] * n_unused
    if len(set(tokens)) != len(tokens):
        raise AssertionError("duplicate piece in the trained vocabulary")

    total = sum(piece_counts.values())
    log_prior = [math.log((piece_counts.get(t, 0) + 0.1) / total) for t in tokens]
    floor = min(log_prior[3 + N_BYTE_TOKENS : n_vocab - n_unused]) - 4.0
    for i, t in enumerate(types):
        if t != TokenType.NORMAL:
            log_prior[i] = floor
    return SpmVocab(
        tokens=tuple(tokens),
        scores=tuple(scores),
        token_types=tuple(int(t) for t in types),
        log_prior=tuple(log_prior),
        n_merges=len(pieces),
        n_unused=n_unused,
    )


def _tensor_plan(preset: LlamaPreset) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, numpy shape, role) for every tensor, in file order.

    numpy shapes are (rows, row length); GGUF stores them reversed, so the row
    length (what K-quants need to be a multiple of 256) is the last number.
    """
    from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

    def name(tensor: MODEL_TENSOR, bid: int = -1) -> str:
        return TENSOR_NAMES[tensor].format(bid=bid) + ".weight"

    e, kv_dim, v = preset.n_embd, preset.head_dim * preset.n_head_kv, preset.n_vocab
    yield name(MODEL_TENSOR.TOKEN_EMBD), (v, e), "embedding"
    for bid in range(preset.n_layer):
        yield name(MODEL_TENSOR.ATTN_NORM, bid), (e,), "norm"
        yield name(MODEL_TENSOR.ATTN_Q, bid), (e, e), "linear"
        yield name(MODEL_TENSOR.ATTN_K, bid), (kv_dim, e), "linear"
        yield name(MODEL_TENSOR.ATTN_V, bid), (kv_dim, e), "linear"
        yield name(MODEL_TENSOR.ATTN_OUT, bid), (e, e), "residual"
        yield name(MODEL_TENSOR.FFN_NORM, bid), (e,), "norm"
        yield name(MODEL_TENSOR.FFN_GATE, bid), (preset.n_ff, e), "linear"
        yield name(MODEL_TENSOR.FFN_UP, bid), (preset.n_ff, e), "linear"
        yield name(MODEL_TENSOR.FFN_DOWN, bid), (e, preset.n_ff), "residual"
    yield name(MODEL_TENSOR.OUTPUT_NORM), (e,), "norm"
    yield name(MODEL_TENSOR.OUTPUT), (v, e), "output"


def _encode(weights: np.ndarray, ftype: str) -> np.ndarray:
    import numpy as np

    if ftype == "f32":
        return weights.astype(np.float32, copy=False)
    if ftype == "f16":
        return weights.astype(np.float16)
    # bf16: numpy has no such dtype; round to nearest even as ggml does, store the raw bits.
    bits = weights.astype(np.float32, copy=False).view(np.uint32)
    bits = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    return bits.astype(np.uint16)


def _residual_norm(preset: LlamaPreset) -> float:
    """Rough length of a final hidden state's random part (embedding plus all blocks).

    Per entry, with weights of std s = INIT_STD and RMS-normed inputs: attention
    adds about s^2 * n_embd / sqrt(2 n_layer) per block (value, then output
    projection); the SwiGLU FFN adds about s / sqrt(2 n_layer) * sqrt(n_ff) * g^2 / 2
    with g = s * sqrt(n_embd) (silu(x) ~ x/2 near 0).  Sums of independent parts.
    """
    e, s, n_layer = preset.n_embd, INIT_STD, preset.n_layer
    attn = s * s * e / math.sqrt(2 * n_layer)
    g = s * math.sqrt(e)
    ffn = s / math.sqrt(2 * n_layer) * math.sqrt(preset.n_ff) * g * g / 2
    per_entry_var = s * s + n_layer * (attn * attn + ffn * ffn)
    return math.sqrt(e * per_entry_var)


def _weights(
    role: str,
    shape: tuple[int, ...],
    preset: LlamaPreset,
    rng: np.random.Generator,
    prior_dir: np.ndarray,
    log_prior: np.ndarray,
) -> np.ndarray:
    import numpy as np

    if role == "norm":
        return np.ones(shape, dtype=np.float32)
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(INIT_STD)
    if role == "residual":
        # GPT-2 style: projections back into the residual stream shrink with depth.
        w *= np.float32(1.0 / math.sqrt(2 * preset.n_layer))
    elif role == "embedding":
        # Every token carries the same component along prior_dir, about as long as
        # everything else the final hidden state will hold, so it keeps pointing
        # that way...
        w += np.float32(_residual_norm(preset)) * prior_dir
    elif role == "output":
        # ...and each output row has that direction scaled by the token's centred
        # log-frequency: the logits start from a unigram model of the corpus.
        # After RMS norm the hidden state has length sqrt(n_embd), about half of
        # its energy along prior_dir.
        centred = log_prior - log_prior.mean()
        w += (centred * math.sqrt(2.0 / preset.n_embd)).astype(np.float32)[:, None] * prior_dir
    return w


def make_llama_gguf(
    path: str | os.PathLike[str],
    size: str = "tiny",
    ftype: str = "f16",
    seed: int = 0,
    n_ctx: int = 2048,
) -> Path:
    """Write a small llama-architecture GGUF model to ``path`` and return the path.

    ``size`` is a key of :data:`SIZES`; ``ftype`` is "f32", "f16" or "bf16" (the
    2-D weights; norms stay F32 as llama.cpp's converters keep them).  The file
    is written under a temporary name in the same directory and renamed into
    place only when complete.
    """
    import gguf
    import numpy as np
    from gguf.constants import GGMLQuantizationType, LlamaFileType

    if size not in SIZES:
        raise ValueError(f"unknown test model size {size!r}; known sizes: {', '.join(SIZES)}")
    if ftype not in FTYPES:
        raise ValueError(f"unsupported ftype {ftype!r}; choose one of {', '.join(FTYPES)}")
    preset = SIZES[size]
    vocab = build_spm_vocab(preset.n_vocab)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)

    file_type, ggml_type, item_size = {
        "f32": (LlamaFileType.ALL_F32, GGMLQuantizationType.F32, 4),
        "f16": (LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16, 2),
        "bf16": (LlamaFileType.MOSTLY_BF16, GGMLQuantizationType.BF16, 2),
    }[ftype]

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_name(f"edgeshrink-tiny-llama-{size}")
        writer.add_description(
            "Random-weight llama test model made by edgeshrink.testmodels; output is gibberish."
        )
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(preset.n_embd)
        writer.add_block_count(preset.n_layer)
        writer.add_feed_forward_length(preset.n_ff)
        writer.add_head_count(preset.n_head)
        writer.add_head_count_kv(preset.n_head_kv)
        writer.add_rope_dimension_count(preset.head_dim)
        writer.add_rope_freq_base(ROPE_FREQ_BASE)
        writer.add_layer_norm_rms_eps(NORM_EPS)
        writer.add_vocab_size(preset.n_vocab)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(list(vocab.tokens))
        writer.add_token_scores(list(vocab.scores))
        writer.add_token_types(list(vocab.token_types))
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_unk_token_id(UNK_ID)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(True)

        plan = list(_tensor_plan(preset))
        for name, shape, role in plan:
            if role == "norm":
                writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * math.prod(shape))
            else:
                nbytes = item_size * math.prod(shape)
                writer.add_tensor_info(
                    name, shape, np.dtype(np.float32), nbytes, raw_dtype=ggml_type
                )

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # Tensors are made and written one at a time, so memory stays at one tensor.
        rng = np.random.default_rng(seed)
        prior_dir = rng.standard_normal(preset.n_embd).astype(np.float32)
        prior_dir /= np.linalg.norm(prior_dir)
        log_prior = np.asarray(vocab.log_prior, dtype=np.float32)
        for name, shape, role in plan:
            w = _weights(role, shape, preset, rng, prior_dir, log_prior)
            if not np.isfinite(w).all():
                raise AssertionError(f"non-finite weights in {name}")
            writer.write_tensor_data(w if role == "norm" else _encode(w, ftype))
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
