"""Turn a Hugging Face tokenizer into llama.cpp's tokenizer metadata.

Three kinds are handled, each the way llama.cpp's own tokenizers expect:

- SentencePiece BPE ("llama"): ``tokenizer.model`` (decoded here from its
  protobuf, so the sentencepiece package is not needed) or a ``tokenizer.json``
  BPE model with byte fallback (how transformers stores Llama, Mistral, Phi-3
  and Gemma tokenizers).  llama.cpp merges the adjacent pair whose joined piece
  has the highest score, so a merged piece's score is minus the rank of the
  merge that made it.
- Byte-level BPE ("gpt2"): the vocabulary and merges of ``tokenizer.json``,
  plus ``tokenizer.ggml.pre`` naming the pre-tokenizer regex llama.cpp should
  use.  llama.cpp's converter finds that name by hashing the tokenizer's output
  on a test string (which needs transformers); here it is read from the
  pre-tokenizer the file declares, compared with the regexes llama.cpp
  implements (see :data:`BPE_PRE_TOKENIZERS`).
- WordPiece ("bert"): llama.cpp's WPM tokenizer wants word-initial pieces
  prefixed with "▁" and continuation pieces without their "##".

Special tokens come from ``tokenizer_config.json`` (then ``config.json``),
whether to add BOS/EOS from the tokenizer's post-processor, and the chat
template from ``tokenizer_config.json`` or ``chat_template.jinja``/``.json``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.errors import ModelFileError, UnsupportedFormatError

SPM_SPACE = "\u2581"  # "▁": a space inside a SentencePiece piece

# gguf.TokenType values (kept as ints so this module imports nothing heavy).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

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

SENTENCEPIECE_TYPES = {1: NORMAL, 2: UNKNOWN, 3: CONTROL, 4: USER_DEFINED, 5: UNUSED, 6: BYTE}
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class Vocab:
    """Everything llama.cpp needs to tokenize exactly like the source tokenizer."""

    model: str  # tokenizer.ggml.model: "llama", "gpt2" or "bert"
    pre: str  # tokenizer.ggml.pre
    source: str  # the file it came from
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    scores: tuple[float, ...] | None = None
    merges: tuple[str, ...] = ()
    special_ids: tuple[tuple[str, int], ...] = ()  # ("bos", 1), ("eos", 2), ...
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_sep: bool | None = None
    add_space_prefix: bool | None = None
    lowercase: bool | None = None
    strip_accents: bool | None = None
    chat_template: str | tuple[dict[str, str], ...] | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def size(self) -> int:
        return len(self.tokens)


def load_vocab(directory: str | Path, n_vocab: int | None = None) -> Vocab:
    """Read the tokenizer of checkpoint ``directory``; pad it to ``n_vocab`` ids."""
    directory = Path(directory)
    tok_json_path = directory / "tokenizer.json"
    spm_path = directory / "tokenizer.model"
    config = _read_json(directory / "tokenizer_config.json") or {}

    tok_json = _read_json(tok_json_path)
    kind = _json_kind(tok_json, tok_json_path) if tok_json is not None else None
    if kind in ("byte-bpe", "wordpiece"):
        base = _bpe_vocab(tok_json) if kind == "byte-bpe" else _wordpiece_vocab(tok_json, config)
    elif spm_path.is_file():
        base = _sentencepiece_vocab(spm_path, tok_json, config)
    elif kind == "spm-bpe":
        base = _spm_bpe_vocab(tok_json)
    elif (directory / "vocab.txt").is_file():
        base = _wordpiece_vocab_txt(directory / "vocab.txt", config)
    else:
        raise ModelFileError(
            f"{directory} has no tokenizer: none of tokenizer.json, tokenizer.model, vocab.txt",
            hint="copy the tokenizer files that came with the model into the checkpoint directory",
        )
    tokens = list(base.tokens)
    types = list(base.token_types)
    scores = list(base.scores) if base.scores is not None else None
    notes = list(base.notes)
    if n_vocab is not None and n_vocab > len(tokens):
        # The embedding has more rows than the tokenizer has tokens (Qwen2.5, Phi-3):
        # llama.cpp needs one token per row, so the spare rows get unused placeholders.
        for i in range(len(tokens), n_vocab):
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            if scores is not None:
                scores.append(-1000.0)
    elif n_vocab is not None and n_vocab < len(tokens):
        raise ModelFileError(
            f"the tokenizer has {len(tokens)} tokens but the model's embedding has {n_vocab} rows",
            hint="the tokenizer files belong to another model: copy the matching ones",
        )

    token_ids = {t: i for i, t in reversed(list(enumerate(base.raw_tokens)))}
    specials, add_flags = _special_tokens(directory, tok_json, config, token_ids, base)
    return Vocab(
        model=base.model,
        pre=base.pre,
        source=base.source,
        tokens=tuple(tokens),
        token_types=tuple(types),
        scores=tuple(scores) if scores is not None else None,
        merges=base.merges,
        special_ids=tuple(specials.items()),
        add_bos=add_flags.get("bos"),
        add_eos=add_flags.get("eos"),
        add_sep=add_flags.get("sep"),
        add_space_prefix=base.add_space_prefix,
        lowercase=base.lowercase,
        strip_accents=base.strip_accents,
        chat_template=_chat_template(directory, config),
        notes=tuple(notes),
    )


@dataclass
class _Base:
    model: str
    pre: str
    source: str
    tokens: list[str]  # as llama.cpp wants them (WordPiece: with "▁", without "##")
    token_types: list[int]
    raw_tokens: list[str]  # as the source tokenizer spells them, to look up special tokens
    scores: list[float] | None = None
    merges: tuple[str, ...] = ()
    add_space_prefix: bool | None = None
    lowercase: bool | None = None
    strip_accents: bool | None = None
    default_add_bos: bool = False
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} is not valid JSON ({exc})",
            hint=f"copy or download {path.name} again",
        ) from exc


def _walk(component: Any, key: str) -> list[dict[str, Any]]:
    """A normalizer/pre-tokenizer/decoder and, for a Sequence, its members, flattened."""
    if not isinstance(component, dict):
        return []
    members = component.get(key)
    if component.get("type") == "Sequence" and isinstance(members, list):
        out: list[dict[str, Any]] = []
        for member in members:
            out.extend(_walk(member, key))
        return out
    return [component]


def _json_kind(tok_json: Any, path: Path) -> str:
    model = tok_json.get("model") if isinstance(tok_json, dict) else None
    if not isinstance(model, dict):
        raise ModelFileError(f"{path} has no tokenizer model", hint=f"copy {path.name} again")
    model_type = model.get("type") or ("BPE" if "merges" in model else None)
    if model_type == "WordPiece":
        return "wordpiece"
    if model_type == "BPE":
        pre = _walk(tok_json.get("pre_tokenizer"), "pretokenizers")
        dec = _walk(tok_json.get("decoder"), "decoders")
        if any(p.get("type") == "ByteLevel" for p in pre + dec) and not model.get("byte_fallback"):
            return "byte-bpe"
        return "spm-bpe"
    raise UnsupportedFormatError(
        f"{path} holds a {model_type} tokenizer, which edgeshrink cannot convert yet",
        hint="supported tokenizers: SentencePiece BPE, byte-level BPE, WordPiece",
    )


def _added_tokens(tok_json: Any) -> list[dict[str, Any]]:
    added = tok_json.get("added_tokens") if isinstance(tok_json, dict) else None
    return [a for a in added or [] if isinstance(a, dict) and "id" in a and "content" in a]


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
    added = _added_tokens(tok_json)
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


def _bpe_vocab(tok_json: dict[str, Any]) -> _Base:
    model = tok_json["model"]
    tokens, types = _vocab_table(tok_json, model.get("vocab") or {})
    base = _Base(
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
    pre = _walk(tok_json.get("pre_tokenizer"), "pretokenizers")
    normalizers = _walk(tok_json.get("normalizer"), "normalizers")
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


def _spm_bpe_vocab(tok_json: dict[str, Any]) -> _Base:
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
        for p in _walk(tok_json.get("pre_tokenizer"), "pretokenizers")
    ):
        notes.append(
            "tokenizer.json's Metaspace adds no prefix space to text that already starts with "
            "a space; llama.cpp (like SentencePiece) always adds one, so such text gets one "
            "more '\u2581'"
        )
    return _Base(
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
    for norm in _walk(tok_json.get("normalizer"), "normalizers"):
        if norm.get("type") == "Prepend" and norm.get("prepend") == SPM_SPACE:
            return True
    for pre in _walk(tok_json.get("pre_tokenizer"), "pretokenizers"):
        if pre.get("type") == "Metaspace":
            scheme = pre.get("prepend_scheme")
            if scheme is None:
                return bool(pre.get("add_prefix_space", True))
            return scheme in ("always", "first")
    return False


def _wordpiece_vocab(tok_json: dict[str, Any], config: dict[str, Any]) -> _Base:
    model = tok_json["model"]
    raw, types = _vocab_table(tok_json, model.get("vocab") or {})
    prefix = model.get("continuing_subword_prefix") or "##"
    unk = model.get("unk_token")
    lowercase, strip_accents = False, None
    for norm in _walk(tok_json.get("normalizer"), "normalizers"):
        if norm.get("type") == "BertNormalizer":
            lowercase = bool(norm.get("lowercase", True))
            strip_accents = norm.get("strip_accents")
        elif norm.get("type") == "Lowercase":
            lowercase = True
        elif norm.get("type") == "StripAccents":
            strip_accents = True
    return _wordpiece_base(raw, types, prefix, unk, lowercase, strip_accents, "tokenizer.json")


def _wordpiece_vocab_txt(path: Path, config: dict[str, Any]) -> _Base:
    raw = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    specials = {
        _token_text(config.get(f"{kind}_token")) for kind in ("unk", "sep", "pad", "cls", "mask")
    } | {"[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"}
    types = [CONTROL if t in specials else NORMAL for t in raw]
    lowercase = bool(config.get("do_lower_case", True))
    strip = config.get("strip_accents")
    unk = _token_text(config.get("unk_token")) or "[UNK]"
    return _wordpiece_base(raw, types, "##", unk, lowercase, strip, "vocab.txt")


def _wordpiece_base(
    raw: list[str],
    types: list[int],
    prefix: str,
    unk: str | None,
    lowercase: bool,
    strip_accents: bool | None,
    source: str,
) -> _Base:
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
    return _Base(
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


@dataclass(frozen=True)
class SentencePieceModel:
    """What llama.cpp needs from a SentencePiece ``tokenizer.model`` protobuf."""

    pieces: tuple[tuple[str, float, int], ...]  # (piece, score, SentencePiece type)
    model_type: int  # 1 unigram, 2 BPE, 3 word, 4 char
    byte_fallback: bool
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool


def parse_sentencepiece_model(data: bytes) -> SentencePieceModel:
    """Decode the parts of a SentencePiece ModelProto that describe its vocabulary.

    Protobuf wire format, fields as in sentencepiece_model.proto: ModelProto
    1 = pieces (1 piece, 2 score, 3 type), 2 = trainer_spec (3 model_type,
    35 byte_fallback), 3 = normalizer_spec (3 add_dummy_prefix,
    4 remove_extra_whitespaces).
    """
    pieces: list[tuple[str, float, int]] = []
    model_type, byte_fallback = 1, False
    add_dummy_prefix, remove_extra = True, True
    for number, value in _proto_fields(data):
        if number == 1 and isinstance(value, bytes):
            piece, score, kind = "", 0.0, 1
            for n, v in _proto_fields(value):
                if n == 1 and isinstance(v, bytes):
                    piece = v.decode("utf-8")
                elif n == 2 and isinstance(v, int):
                    score = struct.unpack("<f", struct.pack("<I", v))[0]
                elif n == 3 and isinstance(v, int):
                    kind = v
            pieces.append((piece, score, kind))
        elif number == 2 and isinstance(value, bytes):
            for n, v in _proto_fields(value):
                if n == 3 and isinstance(v, int):
                    model_type = v
                elif n == 35 and isinstance(v, int):
                    byte_fallback = bool(v)
        elif number == 3 and isinstance(value, bytes):
            for n, v in _proto_fields(value):
                if n == 3 and isinstance(v, int):
                    add_dummy_prefix = bool(v)
                elif n == 4 and isinstance(v, int):
                    remove_extra = bool(v)
    return SentencePieceModel(
        tuple(pieces), model_type, byte_fallback, add_dummy_prefix, remove_extra
    )


def _proto_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one protobuf message; fixed32 values as raw uint32."""
    out: list[tuple[int, int | bytes]] = []
    pos, end = 0, len(data)

    def varint() -> int:
        nonlocal pos
        result, shift = 0, 0
        while True:
            if pos >= end:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 1:
            out.append((number, struct.unpack_from("<Q", data, pos)[0]))
            pos += 8
        elif wire == 2:
            length = varint()
            if pos + length > end:
                raise ValueError("truncated length-delimited field")
            out.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 5:
            out.append((number, struct.unpack_from("<I", data, pos)[0]))
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def _sentencepiece_vocab(path: Path, tok_json: Any, config: dict[str, Any]) -> _Base:
    try:
        spm = parse_sentencepiece_model(path.read_bytes())
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{path} is not a SentencePiece model ({exc})",
            hint="copy or download tokenizer.model again",
        ) from exc
    if not spm.pieces:
        raise ModelFileError(f"{path} holds no pieces", hint="copy or download it again")
    if spm.model_type != 2:
        kind = {1: "unigram", 3: "word", 4: "char"}.get(spm.model_type, str(spm.model_type))
        raise UnsupportedFormatError(
            f"{path} is a SentencePiece {kind} model; edgeshrink converts SentencePiece BPE only",
            hint="supported tokenizers: SentencePiece BPE, byte-level BPE, WordPiece",
        )
    tokens = [p for p, _, _ in spm.pieces]
    scores = [s for _, s, _ in spm.pieces]
    types = [SENTENCEPIECE_TYPES.get(k, NORMAL) for _, _, k in spm.pieces]
    notes: list[str] = []
    # Tokens added on top of the SentencePiece model (chat markers and the like).
    extra: list[tuple[int, str, bool]] = [
        (int(a["id"]), a["content"], bool(a.get("special"))) for a in _added_tokens(tok_json)
    ]
    for idx, data in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(data, dict) and "content" in data:
            extra.append((int(idx), data["content"], bool(data.get("special"))))
    for idx, text, special in sorted(extra):
        while idx >= len(tokens):
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(UNUSED)
        if types[idx] in (CONTROL, UNKNOWN, BYTE) and tokens[idx] == text:
            continue
        tokens[idx] = text if special else text.replace(SPM_SPACE, " ")
        scores[idx] = -1000.0
        types[idx] = CONTROL if special else USER_DEFINED
    if spm.remove_extra_whitespaces:
        notes.append(
            "tokenizer.model collapses runs of spaces; llama.cpp does not, so text with "
            "repeated spaces tokenizes differently"
        )
    return _Base(
        model="llama",
        pre="default",
        source="tokenizer.model",
        tokens=tokens,
        token_types=types,
        raw_tokens=list(tokens),
        scores=scores,
        add_space_prefix=spm.add_dummy_prefix,
        default_add_bos=True,
        notes=notes,
    )


def _token_text(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _special_tokens(
    directory: Path,
    tok_json: Any,
    config: dict[str, Any],
    token_ids: dict[str, int],
    base: _Base,
) -> tuple[dict[str, int], dict[str, bool]]:
    names: dict[str, str] = {}
    for kind in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        text = _token_text(config.get(f"{kind}_token"))
        if text is not None:
            names[kind] = text

    add: dict[str, bool] = {}
    template = _post_processor_template(tok_json)
    if template is not None:
        first, last = template
        if base.model == "bert":
            names.setdefault("cls", first or "[CLS]")
            names.setdefault("sep", last or "[SEP]")
        else:
            if first is not None:
                names.setdefault("bos", first)
            add["bos"] = first is not None and first == names.get("bos")
            add["eos"] = last is not None and last == names.get("eos")
    for kind in ("bos", "eos"):
        if (
            base.model != "bert"
            and kind not in add
            and isinstance(config.get(f"add_{kind}_token"), bool)
        ):
            add[kind] = config[f"add_{kind}_token"]
    if base.model != "bert":
        add.setdefault("bos", base.default_add_bos)
        add.setdefault("eos", False)
    if base.model == "bert":
        # llama.cpp's WPM tokenizer puts BOS first and SEP last: BOS is BERT's [CLS].
        names.setdefault("cls", "[CLS]")
        names.setdefault("sep", "[SEP]")
        names["bos"] = names.pop("cls")
        add["sep"] = True

    ids: dict[str, int] = {}
    for kind, text in names.items():
        if kind == "cls":
            continue
        if text in token_ids:
            ids[kind] = token_ids[text]
    model_config = _read_json(directory / "config.json") or {}
    for kind in ("bos", "eos", "pad"):
        value = model_config.get(f"{kind}_token_id")
        if isinstance(value, list) and value:
            value = value[0]
        if kind not in ids and isinstance(value, int) and 0 <= value < len(base.tokens):
            ids[kind] = value
    if "unk" not in ids:
        unk = [i for i, t in enumerate(base.token_types) if t == UNKNOWN]
        if unk:
            ids["unk"] = unk[0]
    if add.get("bos") and "bos" not in ids:
        add["bos"] = False
    if add.get("eos") and "eos" not in ids:
        add["eos"] = False
    return ids, add


def _post_processor_template(tok_json: Any) -> tuple[str | None, str | None] | None:
    """The special tokens a tokenizer.json post-processor puts first and last, if it has one."""
    if not isinstance(tok_json, dict):
        return None
    post = tok_json.get("post_processor")
    for proc in _walk(post, "processors"):
        kind = proc.get("type")
        if kind == "TemplateProcessing":
            single = proc.get("single") or []

            def special(item: Any) -> str | None:
                if isinstance(item, dict) and "SpecialToken" in item:
                    return item["SpecialToken"].get("id")
                return None

            first = special(single[0]) if single else None
            last = special(single[-1]) if len(single) > 1 else None
            return first, last
        if kind in ("BertProcessing", "RobertaProcessing"):
            return (proc.get("cls") or [None])[0], (proc.get("sep") or [None])[0]
    return None if post is None else (None, None)


def _chat_template(
    directory: Path, config: dict[str, Any]
) -> str | tuple[dict[str, str], ...] | None:
    template = config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None:
        template = (_read_json(directory / "chat_template.json") or {}).get("chat_template")
    if isinstance(template, list):
        return tuple(
            {"name": str(t["name"]), "template": str(t["template"])}
            for t in template
            if isinstance(t, dict) and "name" in t and "template" in t
        )
    return template if isinstance(template, str) and template else None


def write_vocab(writer: Any, vocab: Vocab) -> None:
    """Add ``vocab`` to a gguf.GGUFWriter as llama.cpp's tokenizer.ggml.* keys."""
    from gguf.constants import Keys

    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(list(vocab.token_types))
    if vocab.scores is not None:
        writer.add_token_scores(list(vocab.scores))
    if vocab.merges:
        writer.add_token_merges(list(vocab.merges))
    for kind, idx in vocab.special_ids:
        getattr(writer, f"add_{kind}_token_id")(idx)
    if vocab.add_bos is not None:
        writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_sep is not None:
        writer.add_add_sep_token(vocab.add_sep)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.lowercase is not None:
        # Newer gguf-py names these keys; gguf 0.19 on PyPI does not, llama.cpp reads them.
        lower_key = getattr(
            Keys.Tokenizer, "NORMALIZER_LOWERCASE", "tokenizer.ggml.normalizer.lowercase"
        )
        strip_key = getattr(
            Keys.Tokenizer, "NORMALIZER_STRIP_ACCENTS", "tokenizer.ggml.normalizer.strip_accents"
        )
        writer.add_bool(lower_key, vocab.lowercase)
        if vocab.strip_accents is not None:
            writer.add_bool(strip_key, vocab.strip_accents)
    if vocab.chat_template is not None:
        template = vocab.chat_template
        writer.add_chat_template(template if isinstance(template, str) else list(template))
