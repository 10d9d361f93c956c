"""Vocabularies from ``tokenizer.json``: byte-level BPE ("gpt2", with the pre-tokenizer llama.cpp
must use), SentencePiece-style BPE with byte fallback ("llama"), and WordPiece ("bert", also
from a bare ``vocab.txt``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgeshrink.convert.vocab_base import (
    BYTE,
    CONTROL,
    NORMAL,
    SPM_SPACE,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    BaseVocab,
    added_tokens,
    flatten_components,
    token_text,
)
from edgeshrink.errors import ModelFileError, UnsupportedFormatError

# Byte-level BPE pre-tokenizers llama.cpp implements, as they appear in
# tokenizer.json, with the tokenizer.ggml.pre name that selects the same regex in
# llama.cpp (src/llama-vocab.cpp).  A "Split" regex is matched exactly.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_PRE_TOKENIZERS: dict[str, str] = {
    "gpt-2": "ByteLevel with its built-in GPT-2 regex (GPT-2, Phi-2, many small BPE models)",
    "smollm": "Digits(individual) then ByteLevel with the GPT-2 regex (SmolLM, StarCoder)",
    "llama-bpe": "Split(Llama-3 regex) then ByteLevel (Llama 3.x)",
    "qwen2": "Split(Qwen2 regex) then ByteLevel (Qwen2, Qwen2.5)",
}
_SPLIT_REGEX_PRE = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}

# Normalizers that leave ASCII and already-composed text as it is, so llama.cpp
# (which does not run them) still tokenizes the same as the tokenizers library.
_HARMLESS_BPE_NORMALIZERS = ("NFC",)
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def json_kind(tok_json: Any, path: Path) -> str:
    model = tok_json.get("model") if isinstance(tok_json, dict) else None
    if not isinstance(model, dict):
        raise ModelFileError(f"{path} has no tokenizer model", hint=f"copy {path.name} again")
    model_type = model.get("type") or ("BPE" if "merges" in model else None)
    if model_type == "WordPiece":
        return "wordpiece"
    if model_type == "BPE":
        pre = flatten_components(tok_json.get("pre_tokenizer"), "pretokenizers")
        dec = flatten_components(tok_json.get("decoder"), "decoders")
        if any(p.get("type") == "ByteLevel" for p in pre + dec) and not model.get("byte_fallback"):
            return "byte-bpe"
        return "spm-bpe"
    raise UnsupportedFormatError(
        f"{path} holds a {model_type} tokenizer, which edgeshrink cannot convert yet",
        hint="supported tokenizers: SentencePiece BPE, byte-level BPE, WordPiece",
    )


def _merge_strings(model: dict[str, Any]) -> list[str]:
    merges = model.get("merges") or []
    out: list[str] = []
    for merge in merges:
        if isinstance(merge, str):
            out.append(merge)
        elif isinstance(merge, list) and len(merge) == 2:
            # The pair form (transformers >= 4.45) allows spaces inside a piece; the
            # string form cannot hold them, so llama.cpp reads them shifted by 256.
            out.append(
                " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in p) for p in merge)
            )
        else:
            raise ModelFileError(
                f"tokenizer.json has a merge of unknown form: {merge!r}",
                hint="re-save the tokenizer with a current transformers version",
            )
    return out


def _vocab_table(tok_json: dict[str, Any], vocab: dict[str, int]) -> tuple[list[str], list[int]]:
    """Token strings by id (the model's vocabulary plus added tokens) and their types."""
    added = added_tokens(tok_json)
    size = max([*vocab.values(), *(int(a["id"]) for a in added), -1]) + 1
    tokens: list[str | None] = [None] * size
    types = [NORMAL] * size
    for text, idx in vocab.items():
        tokens[int(idx)] = text
    for a in added:
        idx = int(a["id"])
        tokens[idx] = a["content"]
        types[idx] = CONTROL if a.get("special") else USER_DEFINED
    out: list[str] = []
    for i, t in enumerate(tokens):
        if t is None:
            out.append(f"[PAD{i}]")
            types[i] = UNUSED
        else:
            out.append(t)
    return out, types


def bpe_vocab(tok_json: dict[str, Any]) -> BaseVocab:
    model = tok_json["model"]
    tokens, types = _vocab_table(tok_json, model.get("vocab") or {})
    base = BaseVocab(
        model="gpt2",
        pre=_bpe_pre(tok_json),
        source="tokenizer.json",
        tokens=tokens,
        token_types=types,
        raw_tokens=list(tokens),
        merges=tuple(_merge_strings(model)),
    )
    return base


def _bpe_pre(tok_json: dict[str, Any]) -> str:
    pre = flatten_components(tok_json.get("pre_tokenizer"), "pretokenizers")
    normalizers = flatten_components(tok_json.get("normalizer"), "normalizers")
    described = " + ".join(p.get("type", "?") for p in pre) or "none"
    unsupported = [
        n.get("type") for n in normalizers if n.get("type") not in _HARMLESS_BPE_NORMALIZERS
    ]
    if unsupported:
        raise UnsupportedFormatError(
            f"tokenizer.json normalizes text with {', '.join(map(str, unsupported))} before "
            "byte-level BPE, which llama.cpp does not reproduce",
            hint=_pre_hint(),
        )
    byte_level = [p for p in pre if p.get("type") == "ByteLevel"]
    if len(byte_level) != 1 or pre[-1] is not byte_level[0]:
        raise UnsupportedFormatError(
            f"tokenizer.json pre-tokenizer ({described}) does not end in one ByteLevel step",
            hint=_pre_hint(),
        )
    if byte_level[0].get("add_prefix_space"):
        raise UnsupportedFormatError(
            "tokenizer.json's ByteLevel pre-tokenizer adds a prefix space; llama.cpp's BPE does not",
            hint=_pre_hint(),
        )
    uses_gpt2_regex = byte_level[0].get("use_regex", True)
    steps = pre[:-1]
    if not steps and uses_gpt2_regex:
        return "gpt-2"
    if (
        len(steps) == 1
        and steps[0].get("type") == "Digits"
        and steps[0].get("individual_digits")
        and uses_gpt2_regex
    ):
        return "smollm"
    if len(steps) == 1 and steps[0].get("type") == "Split" and not uses_gpt2_regex:
        split = steps[0]
        regex = (split.get("pattern") or {}).get("Regex")
        if (
            regex in _SPLIT_REGEX_PRE
            and str(split.get("behavior", "")).lower() == "isolated"
            and not split.get("invert")
        ):
            return _SPLIT_REGEX_PRE[regex]
    raise UnsupportedFormatError(
        f"tokenizer.json's byte-level BPE pre-tokenizer ({described}) is not one llama.cpp "
        "is known to reproduce",
        hint=_pre_hint(),
    )


def _pre_hint() -> str:
    return "supported byte-level BPE pre-tokenizers: " + "; ".join(
        f"{name} = {what}" for name, what in BPE_PRE_TOKENIZERS.items()
    )


def spm_bpe_vocab(tok_json: dict[str, Any]) -> BaseVocab:
    model = tok_json["model"]
    tokens, types = _vocab_table(tok_json, model.get("vocab") or {})
    merges = _merge_strings(model)
    ids = {t: i for i, t in enumerate(tokens)}
    scores = [0.0] * len(tokens)
    for rank, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        merged = (left + right).replace(chr(ord(" ") + 256), " ")
        idx = ids.get(merged)
        if idx is not None and scores[idx] == 0.0:
            scores[idx] = -float(rank + 1)
    unk = model.get("unk_token")
    for i, t in enumerate(tokens):
        if _BYTE_PIECE.fullmatch(t):
            types[i] = BYTE
        elif t == unk:
            types[i] = UNKNOWN
        if types[i] in (CONTROL, USER_DEFINED, UNKNOWN):
            scores[i] = -1000.0 if types[i] != UNKNOWN else 0.0
    notes: list[str] = []
    if any(
        p.get("type") == "Metaspace" and p.get("prepend_scheme") in ("first", "always")
        for p in flatten_components(tok_json.get("pre_tokenizer"), "pretokenizers")
    ):
        notes.append(
            "tokenizer.json's Metaspace adds no prefix space to text that already starts with "
            "a space; llama.cpp (like SentencePiece) always adds one, so such text gets one "
            "more '\u2581'"
        )
    return BaseVocab(
        model="llama",
        pre="default",
        source="tokenizer.json",
        tokens=tokens,
        token_types=types,
        raw_tokens=list(tokens),
        scores=scores,
        add_space_prefix=_spm_json_prefix_space(tok_json),
        default_add_bos=True,
        notes=notes,
    )


def _spm_json_prefix_space(tok_json: dict[str, Any]) -> bool:
    for norm in flatten_components(tok_json.get("normalizer"), "normalizers"):
        if norm.get("type") == "Prepend" and norm.get("prepend") == SPM_SPACE:
            return True
    for pre in flatten_components(tok_json.get("pre_tokenizer"), "pretokenizers"):
        if pre.get("type") == "Metaspace":
            scheme = pre.get("prepend_scheme")
            if scheme is None:
                return bool(pre.get("add_prefix_space", True))
            return scheme in ("always", "first")
    return False


def wordpiece_vocab(tok_json: dict[str, Any], config: dict[str, Any]) -> BaseVocab:
    model = tok_json["model"]
    raw, types = _vocab_table(tok_json, model.get("vocab") or {})
    prefix = model.get("continuing_subword_prefix") or "##"
    unk = model.get("unk_token")
    lowercase, strip_accents = False, None
    for norm in flatten_components(tok_json.get("normalizer"), "normalizers"):
        if norm.get("type") == "BertNormalizer":
            lowercase = bool(norm.get("lowercase", True))
            strip_accents = norm.get("strip_accents")
        elif norm.get("type") == "Lowercase":
            lowercase = True
        elif norm.get("type") == "StripAccents":
            strip_accents = True
    return _wordpiece_base(raw, types, prefix, unk, lowercase, strip_accents, "tokenizer.json")


def wordpiece_vocab_txt(path: Path, config: dict[str, Any]) -> BaseVocab:
    raw = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    specials = {
        token_text(config.get(f"{kind}_token")) for kind in ("unk", "sep", "pad", "cls", "mask")
    } | {"[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"}
    types = [CONTROL if t in specials else NORMAL for t in raw]
    lowercase = bool(config.get("do_lower_case", True))
    strip = config.get("strip_accents")
    unk = token_text(config.get("unk_token")) or "[UNK]"
    return _wordpiece_base(raw, types, "##", unk, lowercase, strip, "vocab.txt")


def _wordpiece_base(
    raw: list[str],
    types: list[int],
    prefix: str,
    unk: str | None,
    lowercase: bool,
    strip_accents: bool | None,
    source: str,
) -> BaseVocab:
    tokens: list[str] = []
    for i, t in enumerate(raw):
        if t == unk:
            types[i] = UNKNOWN
        if types[i] in (CONTROL, UNKNOWN, UNUSED):
            tokens.append(t)
        elif t.startswith(prefix):
            tokens.append(t[len(prefix) :])
        else:
            tokens.append(SPM_SPACE + t)
    return BaseVocab(
        model="bert",
        pre="default",
        source=source,
        tokens=tokens,
        token_types=types,
        raw_tokens=raw,
        lowercase=lowercase,
        # BertNormalizer strips accents when it lowercases unless told otherwise.
        strip_accents=lowercase if strip_accents is None else bool(strip_accents),
    )
