"""What every tokenizer kind is read into before it becomes a :class:`~edgeshrink.convert.tokenizer.Vocab`:
llama.cpp's token types, the base vocabulary, and the JSON helpers the readers share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.errors import ModelFileError

SPM_SPACE = "\u2581"  # "▁": a space inside a SentencePiece piece

# gguf.TokenType values (kept as ints so this module imports nothing heavy).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class BaseVocab:
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


def read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} is not valid JSON ({exc})",
            hint=f"copy or download {path.name} again",
        ) from exc


def flatten_components(component: Any, key: str) -> list[dict[str, Any]]:
    """A normalizer/pre-tokenizer/decoder and, for a Sequence, its members, flattened."""
    if not isinstance(component, dict):
        return []
    members = component.get(key)
    if component.get("type") == "Sequence" and isinstance(members, list):
        out: list[dict[str, Any]] = []
        for member in members:
            out.extend(flatten_components(member, key))
        return out
    return [component]


def added_tokens(tok_json: Any) -> list[dict[str, Any]]:
    added = tok_json.get("added_tokens") if isinstance(tok_json, dict) else None
    return [a for a in added or [] if isinstance(a, dict) and "id" in a and "content" in a]


def token_text(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None
