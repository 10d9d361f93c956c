"""Real tokenizers for the test checkpoints, trained on corpus.txt with the ``tokenizers``
library (and ``sentencepiece`` for a ``tokenizer.model``), laid out the way each architecture's
real checkpoints lay theirs out."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

SPM_SPACE = "\u2581"

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


def corpus_text() -> str:
    return resources.files(__package__).joinpath("corpus.txt").read_text(encoding="utf-8")


def _corpus_lines() -> list[str]:
    return [line for line in corpus_text().splitlines() if line.strip()]


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class TokenizerFiles:
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
) -> TokenizerFiles:
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
    write_json(directory / "tokenizer_config.json", config)
    return TokenizerFiles(
        tok.get_vocab_size(),
        tok.token_to_id(bos),
        tok.token_to_id(eos),
        tok.token_to_id(pad) if pad else None,
        "tokenizer.json",
    )


def _byte_level_tokenizer(kind: str, n_vocab: int, directory: Path) -> TokenizerFiles:
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
    write_json(directory / "tokenizer_config.json", config)
    return TokenizerFiles(
        tok.get_vocab_size(),
        tok.token_to_id(bos) if bos else None,
        tok.token_to_id(eos),
        tok.token_to_id(pad) if pad else None,
        "tokenizer.json",
    )


def _wordpiece_tokenizer(n_vocab: int, directory: Path) -> TokenizerFiles:
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
    write_json(
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
    write_json(
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
    write_json(
        directory / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": 64,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
        },
    )
    return TokenizerFiles(
        tok.get_vocab_size(), cls_id, sep_id, tok.token_to_id("[PAD]"), "tokenizer.json"
    )


def _sentencepiece_tokenizer(n_vocab: int, directory: Path) -> TokenizerFiles:
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
    write_json(
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
    return TokenizerFiles(processor.get_piece_size(), 2, 1, 0, "tokenizer.model")


def make_tokenizer(
    kind: str,
    directory: str | os.PathLike[str],
    n_vocab: int = 400,
    added_specials: Sequence[str] = (),
) -> TokenizerFiles:
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
