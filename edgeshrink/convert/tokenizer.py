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

The readers of each kind are in tokenizer_json.py and spm_model.py; what they share
(token types, the base vocabulary) in vocab_base.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.convert.spm_model import (
    SENTENCEPIECE_TYPES,
    SentencePieceModel,
    parse_sentencepiece_model,
    sentencepiece_vocab,
)
from edgeshrink.convert.tokenizer_json import (
    BPE_PRE_TOKENIZERS,
    GPT2_REGEX,
    LLAMA3_REGEX,
    QWEN2_REGEX,
    bpe_vocab,
    json_kind,
    spm_bpe_vocab,
    wordpiece_vocab,
    wordpiece_vocab_txt,
)
from edgeshrink.convert.vocab_base import (
    BYTE,
    CONTROL,
    NORMAL,
    SPM_SPACE,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    BaseVocab,
    flatten_components,
    read_json,
    token_text,
)
from edgeshrink.errors import ModelFileError

__all__ = [
    "BPE_PRE_TOKENIZERS",
    "BYTE",
    "CONTROL",
    "GPT2_REGEX",
    "LLAMA3_REGEX",
    "NORMAL",
    "QWEN2_REGEX",
    "SENTENCEPIECE_TYPES",
    "SPM_SPACE",
    "UNKNOWN",
    "UNUSED",
    "USER_DEFINED",
    "SentencePieceModel",
    "Vocab",
    "load_vocab",
    "parse_sentencepiece_model",
    "write_vocab",
]


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
    config = read_json(directory / "tokenizer_config.json") or {}

    tok_json = read_json(tok_json_path)
    kind = json_kind(tok_json, tok_json_path) if tok_json is not None else None
    if kind in ("byte-bpe", "wordpiece"):
        base = bpe_vocab(tok_json) if kind == "byte-bpe" else wordpiece_vocab(tok_json, config)
    elif spm_path.is_file():
        base = sentencepiece_vocab(spm_path, tok_json, config)
    elif kind == "spm-bpe":
        base = spm_bpe_vocab(tok_json)
    elif (directory / "vocab.txt").is_file():
        base = wordpiece_vocab_txt(directory / "vocab.txt", config)
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


def _special_tokens(
    directory: Path,
    tok_json: Any,
    config: dict[str, Any],
    token_ids: dict[str, int],
    base: BaseVocab,
) -> tuple[dict[str, int], dict[str, bool]]:
    names: dict[str, str] = {}
    for kind in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        text = token_text(config.get(f"{kind}_token"))
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
    model_config = read_json(directory / "config.json") or {}
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
    for proc in flatten_components(post, "processors"):
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
        template = (read_json(directory / "chat_template.json") or {}).get("chat_template")
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
