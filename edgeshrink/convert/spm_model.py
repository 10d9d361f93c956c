"""SentencePiece ``tokenizer.model`` files, decoded here from their protobuf (the sentencepiece
package is not needed), and the vocabulary llama.cpp's "llama" tokenizer wants from them."""

from __future__ import annotations

import struct
from dataclasses import dataclass
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
)
from edgeshrink.errors import ModelFileError, UnsupportedFormatError

SENTENCEPIECE_TYPES = {1: NORMAL, 2: UNKNOWN, 3: CONTROL, 4: USER_DEFINED, 5: UNUSED, 6: BYTE}


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


def sentencepiece_vocab(path: Path, tok_json: Any, config: dict[str, Any]) -> BaseVocab:
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
        (int(a["id"]), a["content"], bool(a.get("special"))) for a in added_tokens(tok_json)
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
    return BaseVocab(
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
