"""Small Hugging Face checkpoints made from nothing but this package and ``tokenizers``.

Each preset is a tiny model of one architecture edgeshrink converts: a
``config.json`` as transformers writes it, random weights in safetensors (one
file or shards with ``model.safetensors.index.json``), and a real tokenizer
trained here on ``corpus.txt`` with the ``tokenizers`` library, laid out the way
the architecture's real checkpoints lay theirs out (SentencePiece-style BPE
with byte fallback for Llama/Mistral/Phi-3/Gemma, byte-level BPE for
Llama 3/Qwen2/SmolLM, WordPiece for BERT; Gemma 2 gets a SentencePiece
``tokenizer.model`` when the sentencepiece package is there).

Weights are scaled so activations stay near unit size and the logits spread
over several units: a conversion mistake (a missed RoPE reordering, a norm
off by one) changes them visibly.  The returned :class:`HfCheckpoint` holds
the weights as float32, exactly as stored (after rounding to the checkpoint's
dtype), so a reference forward pass needs no safetensors reader.

Nothing here downloads anything.  The safetensors writer streams tensor by
tensor, so ``scripts/bench_convert.py`` can make a checkpoint of a gigabyte
without holding it.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

SPM_SPACE = "\u2581"
DTYPES = ("f32", "f16", "bf16")
_ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
_ITEM_SIZE = {"F32": 4, "F16": 2, "BF16": 2}

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class HfPreset:
    """One tiny test model: its Hugging Face class, shape, tokenizer kind and config extras."""

    name: str
    hf_class: str
    model_type: str
    tokenizer: str  # see TOKENIZER_KINDS
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int | None = None
    n_ff: int = 128
    n_vocab_train: int = 400  # asked of the trainer; the small corpus may give fewer
    vocab_padding: int = 0  # extra embedding rows beyond the tokenizer, as Qwen2.5 and Phi-3 have
    tied: bool = False
    added_specials: tuple[
        str, ...
    ] = ()  # special tokens added after training (Phi-3's chat markers)
    extra: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


TOKENIZER_KINDS = (
    "spm-legacy",  # Llama/TinyLlama: Prepend("▁") + Replace normalizer, byte fallback
    "spm-metaspace",  # Mistral (legacy=False): Metaspace pre-tokenizer, prepend "first"
    "spm-noprefix",  # Gemma: spaces become "▁", no prefix space
    "sentencepiece",  # Gemma 2: tokenizer.model trained by sentencepiece (no prefix)
    "bpe-llama3",  # Llama 3: Split(regex) + ByteLevel, BOS added by the post-processor
    "bpe-qwen2",  # Qwen2: NFC + Split(regex) + ByteLevel, no BOS
    "bpe-smollm",  # SmolLM: Digits + ByteLevel(GPT-2 regex), no BOS
    "wordpiece",  # BERT: lowercasing WordPiece, [CLS] ... [SEP]
)

PRESETS: dict[str, HfPreset] = {
    p.name: p
    for p in (
        HfPreset(
            "llama",
            "LlamaForCausalLM",
            "llama",
            "spm-legacy",
            extra=(("rms_norm_eps", 1e-5), ("rope_theta", 10000.0)),
        ),
        HfPreset(
            "smollm",
            "LlamaForCausalLM",
            "llama",
            "bpe-smollm",
            n_head=4,
            n_head_kv=1,
            tied=True,
            extra=(("rms_norm_eps", 1e-5), ("rope_theta", 10000.0)),
        ),
        HfPreset(
            "llama3",
            "LlamaForCausalLM",
            "llama",
            "bpe-llama3",
            tied=True,
            extra=(
                ("rms_norm_eps", 1e-5),
                ("rope_theta", 500000.0),
                (
                    "rope_scaling",
                    {
                        "rope_type": "llama3",
                        "factor": 8.0,
                        "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64,
                    },
                ),
            ),
        ),
        HfPreset(
            "mistral",
            "MistralForCausalLM",
            "mistral",
            "spm-metaspace",
            head_dim=32,  # q is 4 x 32 = 128 wide while hidden is 64, as in Mistral Nemo
            extra=(("rms_norm_eps", 1e-5), ("rope_theta", 1000000.0), ("sliding_window", None)),
        ),
        HfPreset(
            "qwen2",
            "Qwen2ForCausalLM",
            "qwen2",
            "bpe-qwen2",
            tied=True,
            vocab_padding=12,
            extra=(
                ("rms_norm_eps", 1e-6),
                ("rope_theta", 1000000.0),
                ("use_sliding_window", False),
                ("sliding_window", 4096),
            ),
        ),
        HfPreset(
            "phi3",
            "Phi3ForCausalLM",
            "phi3",
            "spm-legacy",
            n_head_kv=4,
            vocab_padding=8,
            # llama.cpp looks these up by name in any model called phi3, as real Phi-3 has them.
            added_specials=("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"),
            extra=(
                ("rms_norm_eps", 1e-5),
                ("rope_theta", 10000.0),
                ("original_max_position_embeddings", 128),
                ("sliding_window", 127),
                ("rope_scaling", None),
            ),
        ),
        HfPreset(
            "gemma",
            "GemmaForCausalLM",
            "gemma",
            "spm-noprefix",
            n_head_kv=1,
            head_dim=32,
            tied=True,
            extra=(("rms_norm_eps", 1e-6), ("rope_theta", 10000.0)),
        ),
        HfPreset(
            "gemma2",
            "Gemma2ForCausalLM",
            "gemma2",
            "sentencepiece",
            head_dim=32,
            tied=True,
            extra=(
                ("rms_norm_eps", 1e-6),
                ("rope_theta", 10000.0),
                ("attn_logit_softcapping", 50.0),
                ("final_logit_softcapping", 30.0),
                # not head_dim: the converter folds the difference into q_proj
                ("query_pre_attn_scalar", 24),
                ("sliding_window", 4096),
            ),
        ),
        HfPreset(
            "bert",
            "BertModel",
            "bert",
            "wordpiece",
            n_head_kv=4,
            extra=(("layer_norm_eps", 1e-12), ("type_vocab_size", 2)),
        ),
    )
}


@dataclass(frozen=True)
class HfCheckpoint:
    """A checkpoint written by :func:`make_hf_checkpoint` and what a test needs to check it."""

    path: Path
    preset: HfPreset
    config: dict[str, Any]
    weights: dict[str, Any]  # HF name -> float32 numpy array, exactly as stored
    tokenizer_file: Path  # tokenizer.json or tokenizer.model
    dtype: str


def corpus_text() -> str:
    return resources.files(__package__).joinpath("corpus.txt").read_text(encoding="utf-8")


def _corpus_lines() -> list[str]:
    return [line for line in corpus_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- safetensors


def _st_header(
    tensors: Sequence[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None
) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * _ITEM_SIZE[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer aligns the data to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Sequence[tuple[str, str, tuple[int, ...]]],
    arrays: Iterable[np.ndarray],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a safetensors file: ``tensors`` is (name, "F32"|"F16"|"BF16", shape) in file order,
    ``arrays`` yields their data in that order (BF16 as uint16 bits), one at a time."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as handle:
            handle.write(_st_header(tensors, metadata))
            for (name, dtype, shape), array in zip(tensors, arrays, strict=True):
                if tuple(array.shape) != tuple(shape) or array.dtype.itemsize != _ITEM_SIZE[dtype]:
                    raise ValueError(
                        f"tensor {name}: got {array.dtype} {array.shape}, declared {dtype} {shape}"
                    )
                array.tofile(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def encode_weights(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> the array stored for ``dtype`` ("f32", "f16", or "bf16" as uint16 bits)."""
    import numpy as np

    if dtype == "f32":
        return values.astype(np.float32, copy=False)
    if dtype == "f16":
        return values.astype(np.float16)
    bits = values.astype(np.float32, copy=False).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(
        16
    )
    return rounded.astype(np.uint16)


def decode_weights(stored: np.ndarray, dtype: str) -> np.ndarray:
    import numpy as np

    if dtype == "bf16":
        return (stored.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return stored.astype(np.float32)


# --------------------------------------------------------------------------- tokenizers


@dataclass(frozen=True)
class _TokenizerFiles:
    size: int  # number of token ids
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    main_file: str


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - a test dependency
        raise ImportError(
            "making HF test checkpoints needs the tokenizers package: pip install tokenizers"
        ) from exc
    return tokenizers


def _save_tokenizer(tok: Any, directory: Path, drop_added: Callable[[str], bool]) -> dict[str, Any]:
    doc = json.loads(tok.to_str())
    # Real checkpoints keep byte-fallback pieces in the model's vocabulary, not as added tokens.
    doc["added_tokens"] = [a for a in doc["added_tokens"] if not drop_added(a["content"])]
    (directory / "tokenizer.json").write_text(
        json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return doc


def _spm_style_tokenizer(
    kind: str, n_vocab: int, directory: Path, added_specials: Sequence[str] = ()
) -> _TokenizerFiles:
    tk = _tokenizers()
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "spm-noprefix":
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
        bos, eos, unk, pad = "<bos>", "<eos>", "<unk>", "<pad>"
    else:
        specials = ["<unk>", "<s>", "</s>"]
        bos, eos, unk, pad = "<s>", "</s>", "<unk>", None
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    tok = tk.Tokenizer(models.BPE(unk_token=unk, byte_fallback=True, fuse_unk=True))
    # Train on words that carry their "▁" (no merge across a word start), then tokenize
    # the whole text at once as SentencePiece does.
    scheme = "never" if kind == "spm-noprefix" else "always"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPM_SPACE, prepend_scheme=scheme, split=True
    )
    trainer = trainers.BpeTrainer(
        vocab_size=n_vocab, special_tokens=specials + byte_pieces, show_progress=False
    )
    tok.train_from_iterator(_corpus_lines(), trainer)
    if added_specials:
        tok.add_special_tokens(list(added_specials))
    if kind == "spm-legacy":
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend(SPM_SPACE), normalizers.Replace(" ", SPM_SPACE)]
        )
        tok.pre_tokenizer = None
    elif kind == "spm-metaspace":
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=SPM_SPACE, prepend_scheme="first", split=False
        )
    else:
        tok.normalizer = normalizers.Replace(" ", SPM_SPACE)
        tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([] if kind == "spm-noprefix" else [decoders.Strip(" ", 1, 0)])
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    _save_tokenizer(tok, directory, lambda t: t in byte_pieces)
    config = {
        "tokenizer_class": "GemmaTokenizer" if kind == "spm-noprefix" else "LlamaTokenizer",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": LLAMA2_TEMPLATE,
    }
    if pad:
        config["pad_token"] = pad
    _write_json(directory / "tokenizer_config.json", config)
    return _TokenizerFiles(
        tok.get_vocab_size(),
        tok.token_to_id(bos),
        tok.token_to_id(eos),
        tok.token_to_id(pad) if pad else None,
        "tokenizer.json",
    )


def _byte_level_tokenizer(kind: str, n_vocab: int, directory: Path) -> _TokenizerFiles:
    tk = _tokenizers()
    from tokenizers import (
        Regex,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if kind == "bpe-llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
        bos, eos, pad = "<|begin_of_text|>", "<|end_of_text|>", None
        pre = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif kind == "bpe-qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        bos, eos, pad = None, "<|im_end|>", "<|endoftext|>"
        pre = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        bos, eos, pad = "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"
        pre = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    tok = tk.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    if kind == "bpe-qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_vocab,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer)
    if kind == "bpe-llama3":
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    elif kind == "bpe-qwen2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _save_tokenizer(tok, directory, lambda t: False)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "chat_template": CHATML_TEMPLATE,
    }
    if pad:
        config["pad_token"] = pad
    if kind == "bpe-qwen2":
        config["add_prefix_space"] = False
    _write_json(directory / "tokenizer_config.json", config)
    return _TokenizerFiles(
        tok.get_vocab_size(),
        tok.token_to_id(bos) if bos else None,
        tok.token_to_id(eos),
        tok.token_to_id(pad) if pad else None,
        "tokenizer.json",
    )


def _wordpiece_tokenizer(n_vocab: int, directory: Path) -> _TokenizerFiles:
    tk = _tokenizers()
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = tk.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=n_vocab, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(_corpus_lines(), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    _save_tokenizer(tok, directory, lambda t: False)
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": True,
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        },
    )
    # sentence-transformers layout: mean pooling over the token embeddings.
    _write_json(
        directory / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ],
    )
    (directory / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        directory / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": 64,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
        },
    )
    return _TokenizerFiles(
        tok.get_vocab_size(), cls_id, sep_id, tok.token_to_id("[PAD]"), "tokenizer.json"
    )


def _sentencepiece_tokenizer(n_vocab: int, directory: Path) -> _TokenizerFiles:
    try:
        import sentencepiece as spm
    except ImportError as exc:
        raise ImportError(
            "the 'sentencepiece' tokenizer kind needs the sentencepiece package: "
            "pip install sentencepiece (or pass tokenizer='spm-noprefix')"
        ) from exc
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=n_vocab,
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        split_digits=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "GemmaTokenizer",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "add_bos_token": True,
            "add_eos_token": False,
            "chat_template": (
                "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] "
                "+ '\\n' + message['content'] + '<end_of_turn>\\n' }}{% endfor %}"
            ),
        },
    )
    return _TokenizerFiles(processor.get_piece_size(), 2, 1, 0, "tokenizer.model")


def make_tokenizer(
    kind: str,
    directory: str | os.PathLike[str],
    n_vocab: int = 400,
    added_specials: Sequence[str] = (),
) -> _TokenizerFiles:
    """Train a tokenizer of ``kind`` (see TOKENIZER_KINDS) on corpus.txt into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if kind in ("spm-legacy", "spm-metaspace", "spm-noprefix"):
        return _spm_style_tokenizer(kind, n_vocab, directory, added_specials)
    if kind in ("bpe-llama3", "bpe-qwen2", "bpe-smollm"):
        return _byte_level_tokenizer(kind, n_vocab, directory)
    if kind == "wordpiece":
        return _wordpiece_tokenizer(n_vocab, directory)
    if kind == "sentencepiece":
        return _sentencepiece_tokenizer(n_vocab, directory)
    raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(TOKENIZER_KINDS)}")


# --------------------------------------------------------------------------- weights


def hf_tensor_plan(preset: HfPreset, n_vocab: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, role) of every weight of ``preset``, in the order transformers saves them."""
    e, hd, ff = preset.n_embd, preset.attn_head_dim, preset.n_ff
    q, kv = preset.n_head * hd, preset.n_head_kv * hd
    plan: list[tuple[str, tuple[int, ...], str]] = []
    if preset.model_type == "bert":
        plan += [
            ("embeddings.word_embeddings.weight", (n_vocab, e), "embedding"),
            ("embeddings.position_embeddings.weight", (64, e), "embedding"),
            ("embeddings.token_type_embeddings.weight", (2, e), "embedding"),
            ("embeddings.LayerNorm.weight", (e,), "norm"),
            ("embeddings.LayerNorm.bias", (e,), "bias"),
        ]
        for i in range(preset.n_layer):
            p = f"encoder.layer.{i}."
            for part in ("query", "key", "value"):
                plan += [
                    (f"{p}attention.self.{part}.weight", (e, e), "linear"),
                    (f"{p}attention.self.{part}.bias", (e,), "bias"),
                ]
            plan += [
                (f"{p}attention.output.dense.weight", (e, e), "linear"),
                (f"{p}attention.output.dense.bias", (e,), "bias"),
                (f"{p}attention.output.LayerNorm.weight", (e,), "norm"),
                (f"{p}attention.output.LayerNorm.bias", (e,), "bias"),
                (f"{p}intermediate.dense.weight", (ff, e), "linear"),
                (f"{p}intermediate.dense.bias", (ff,), "bias"),
                (f"{p}output.dense.weight", (e, ff), "linear"),
                (f"{p}output.dense.bias", (e,), "bias"),
                (f"{p}output.LayerNorm.weight", (e,), "norm"),
                (f"{p}output.LayerNorm.bias", (e,), "bias"),
            ]
        plan += [("pooler.dense.weight", (e, e), "linear"), ("pooler.dense.bias", (e,), "bias")]
        return plan

    gemma = preset.model_type.startswith("gemma")
    plan.append(("model.embed_tokens.weight", (n_vocab, e), "embedding"))
    for i in range(preset.n_layer):
        p = f"model.layers.{i}."
        plan.append((f"{p}input_layernorm.weight", (e,), "gemma_norm" if gemma else "norm"))
        if preset.model_type == "phi3":
            plan.append((f"{p}self_attn.qkv_proj.weight", (q + 2 * kv, e), "linear"))
        else:
            plan += [
                (f"{p}self_attn.q_proj.weight", (q, e), "linear"),
                (f"{p}self_attn.k_proj.weight", (kv, e), "linear"),
                (f"{p}self_attn.v_proj.weight", (kv, e), "linear"),
            ]
            if preset.model_type == "qwen2":
                plan += [
                    (f"{p}self_attn.q_proj.bias", (q,), "bias"),
                    (f"{p}self_attn.k_proj.bias", (kv,), "bias"),
                    (f"{p}self_attn.v_proj.bias", (kv,), "bias"),
                ]
        plan.append((f"{p}self_attn.o_proj.weight", (e, q), "linear"))
        norm = "gemma_norm" if gemma else "norm"
        plan.append((f"{p}post_attention_layernorm.weight", (e,), norm))
        if preset.model_type == "gemma2":
            plan += [
                (f"{p}pre_feedforward_layernorm.weight", (e,), norm),
                (f"{p}post_feedforward_layernorm.weight", (e,), norm),
            ]
        if preset.model_type == "phi3":
            plan.append((f"{p}mlp.gate_up_proj.weight", (2 * ff, e), "linear"))
        else:
            plan += [
                (f"{p}mlp.gate_proj.weight", (ff, e), "linear"),
                (f"{p}mlp.up_proj.weight", (ff, e), "linear"),
            ]
        plan.append((f"{p}mlp.down_proj.weight", (e, ff), "linear"))
    plan.append(("model.norm.weight", (e,), "gemma_norm" if gemma else "norm"))
    if not preset.tied:
        plan.append(("lm_head.weight", (n_vocab, e), "linear"))
    return plan


def random_weights(shape: tuple[int, ...], role: str, rng: np.random.Generator) -> np.ndarray:
    """Random float32 weights scaled so every layer's output stays near unit size."""
    import numpy as np

    w = rng.standard_normal(shape, dtype=np.float32)
    if role == "linear":
        w *= np.float32(1.0 / math.sqrt(shape[-1]))
    elif role == "embedding":
        w *= np.float32(0.5)
    elif role == "norm":
        w = np.float32(1.0) + np.float32(0.1) * w
    elif role in ("gemma_norm", "bias"):
        w *= np.float32(0.1)  # gemma scales by 1 + w
    return w


# --------------------------------------------------------------------------- configs


def _config(preset: HfPreset, tok: _TokenizerFiles, n_vocab: int, dtype: str) -> dict[str, Any]:
    torch_dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]
    if preset.model_type == "bert":
        config: dict[str, Any] = {
            "architectures": [preset.hf_class],
            "model_type": "bert",
            "hidden_size": preset.n_embd,
            "intermediate_size": preset.n_ff,
            "num_hidden_layers": preset.n_layer,
            "num_attention_heads": preset.n_head,
            "max_position_embeddings": 64,
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            "pad_token_id": tok.pad_id,
            "vocab_size": n_vocab,
            "torch_dtype": torch_dtype,
        }
    else:
        config = {
            "architectures": [preset.hf_class],
            "model_type": preset.model_type,
            "hidden_size": preset.n_embd,
            "intermediate_size": preset.n_ff,
            "num_hidden_layers": preset.n_layer,
            "num_attention_heads": preset.n_head,
            "num_key_value_heads": preset.n_head_kv,
            "max_position_embeddings": 128,
            "hidden_act": "gelu_pytorch_tanh" if preset.model_type.startswith("gemma") else "silu",
            "vocab_size": n_vocab,
            "tie_word_embeddings": preset.tied,
            "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id,
            "torch_dtype": torch_dtype,
        }
        if preset.head_dim is not None:
            config["head_dim"] = preset.head_dim
        if preset.model_type == "gemma2":
            config["hidden_activation"] = "gelu_pytorch_tanh"
        if preset.model_type == "qwen2":
            config["attention_bias"] = True
    config.update(dict(preset.extra))
    return config


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_hf_checkpoint(
    directory: str | os.PathLike[str],
    preset: str = "llama",
    dtype: str = "f32",
    *,
    seed: int = 0,
    n_shards: int = 1,
    tokenizer: str | None = None,
) -> HfCheckpoint:
    """Write a tiny Hugging Face checkpoint of ``preset`` (a key of PRESETS) into ``directory``.

    ``dtype`` is how the weights are stored ("f32", "f16", "bf16"); ``n_shards``
    > 1 splits them over model-0000i-of-0000N.safetensors with an index;
    ``tokenizer`` overrides the preset's tokenizer kind.
    """
    import numpy as np

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
    spec = PRESETS[preset]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(
        tokenizer or spec.tokenizer, directory, spec.n_vocab_train, spec.added_specials
    )
    n_vocab = tok.size + spec.vocab_padding
    config = _config(spec, tok, n_vocab, dtype)
    _write_json(directory / "config.json", config)

    rng = np.random.default_rng(seed)
    plan = hf_tensor_plan(spec, n_vocab)
    weights: dict[str, np.ndarray] = {}
    stored: dict[str, np.ndarray] = {}
    for name, shape, role in plan:
        values = random_weights(shape, role, rng)
        stored[name] = encode_weights(values, dtype)
        weights[name] = decode_weights(stored[name], dtype)

    st_dtype = _ST_DTYPE[dtype]
    shards = [plan[i::n_shards] for i in range(n_shards)] if n_shards > 1 else [plan]
    weight_map: dict[str, str] = {}
    for index, part in enumerate(shards):
        fname = (
            f"model-{index + 1:05d}-of-{n_shards:05d}.safetensors"
            if n_shards > 1
            else "model.safetensors"
        )
        specs = [(name, st_dtype, shape) for name, shape, _ in part]
        write_safetensors(
            directory / fname, specs, (stored[name] for name, _, _ in part), {"format": "pt"}
        )
        weight_map.update({name: fname for name, _, _ in part})
    if n_shards > 1:
        total = sum(stored[n].nbytes for n in stored)
        _write_json(
            directory / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )
    return HfCheckpoint(
        path=directory,
        preset=spec,
        config=config,
        weights=weights,
        tokenizer_file=directory / tok.main_file,
        dtype=dtype,
    )


def main(argv: list[str] | None = None) -> int:
    """Write a tiny Hugging Face checkpoint of every architecture preset into one directory.

    python -m edgeshrink.testmodels.hf_checkpoints -o out/hf [--preset llama] [--dtype bf16]
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("out/hf"))
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append",
                        help="only this preset (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPES, default="f32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for preset in args.preset or sorted(PRESETS):
        made = make_hf_checkpoint(
            args.out_dir / f"{preset}-{args.dtype}", preset, args.dtype, seed=args.seed
        )
        size = sum(f.stat().st_size for f in made.path.iterdir())
        print(f"{made.path}\t{preset}\t{size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
