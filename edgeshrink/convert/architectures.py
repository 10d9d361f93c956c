"""The Hugging Face architectures edgeshrink converts, described as data.

Each :class:`ArchSpec` says which llama.cpp architecture a Hugging Face model
class becomes and what has to change on the way.  The rules follow llama.cpp's
own ``convert_hf_to_gguf.py`` and the model graphs in ``src/models/``:

- llama / mistral: llama.cpp's "llama" graph uses the original pairwise
  ("normal") RoPE layout, transformers the rotate-half layout, so the rows of
  every q/k projection are reordered within each head.
- qwen2, phi3, gemma, gemma2: rotate-half ("neox") RoPE in both; no reordering.
  qwen2 keeps its q/k/v biases; phi3 keeps its fused qkv and gate_up weights
  (llama.cpp splits them at run time).
- gemma, gemma2: RMSNorm scales by ``1 + w``, llama.cpp by ``w``, so 1 is added
  to every norm weight.  The sqrt(hidden) embedding scale is in llama.cpp's
  graph.  gemma2's attention scale is fixed by llama.cpp (1/sqrt(head_dim), or
  1/sqrt(hidden/heads) for the 46-layer 27B); a config whose
  ``query_pre_attn_scalar`` differs has the difference folded into q_proj.
- bert: encoder only; pooling from sentence-transformers' ``modules.json``.

Only names listed here are accepted; anything else is an UnsupportedFormatError
that lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Hugging Face tensors that never go into the GGUF (buffers and unused heads).
_COMMON_SKIPS = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attn.masked_bias")


@dataclass(frozen=True)
class ArchSpec:
    """How one family of Hugging Face model classes becomes a llama.cpp architecture."""

    family: str  # our name for it, as listed to users
    hf_classes: tuple[str, ...]  # config.json "architectures" values
    gguf_arch: str  # gguf.MODEL_ARCH member name
    rope_permute: bool = False
    norm_plus_one: bool = False
    ties_output_always: bool = False  # the output layer is always the embedding (gemma)
    tie_default: bool = False  # tie_word_embeddings when config.json does not say
    encoder: bool = False
    hidden_acts: tuple[str, ...] = ("silu",)
    skip_suffixes: tuple[str, ...] = _COMMON_SKIPS
    skip_prefixes: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ()
    example: str = ""


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec(
        family="llama",
        hf_classes=("LlamaForCausalLM", "LLaMAForCausalLM"),
        gguf_arch="LLAMA",
        rope_permute=True,
        example="TinyLlama, SmolLM/SmolLM2, Llama 2/3.x",
    ),
    ArchSpec(
        family="mistral",
        hf_classes=("MistralForCausalLM",),
        gguf_arch="LLAMA",
        rope_permute=True,
        example="Mistral 7B v0.1-v0.3",
    ),
    ArchSpec(
        family="qwen2",
        hf_classes=("Qwen2ForCausalLM",),
        gguf_arch="QWEN2",
        example="Qwen2, Qwen2.5",
    ),
    ArchSpec(
        family="phi3",
        hf_classes=("Phi3ForCausalLM",),
        gguf_arch="PHI3",
        example="Phi-3/Phi-3.5 mini",
    ),
    ArchSpec(
        family="gemma",
        hf_classes=("GemmaForCausalLM",),
        gguf_arch="GEMMA",
        norm_plus_one=True,
        ties_output_always=True,
        tie_default=True,
        hidden_acts=("gelu_pytorch_tanh", "gelu"),
        skip_suffixes=(*_COMMON_SKIPS, "lm_head.weight"),
        example="Gemma 2B/7B",
    ),
    ArchSpec(
        family="gemma2",
        hf_classes=("Gemma2ForCausalLM",),
        gguf_arch="GEMMA2",
        norm_plus_one=True,
        ties_output_always=True,
        tie_default=True,
        hidden_acts=("gelu_pytorch_tanh",),
        skip_suffixes=(*_COMMON_SKIPS, "lm_head.weight"),
        example="Gemma 2 2B/9B/27B",
    ),
    ArchSpec(
        family="bert",
        hf_classes=("BertModel", "BertForMaskedLM"),
        gguf_arch="BERT",
        encoder=True,
        hidden_acts=("gelu",),
        skip_suffixes=(*_COMMON_SKIPS, "embeddings.position_ids"),
        skip_prefixes=("pooler.", "cls."),
        strip_prefixes=("bert.",),
        example="BERT, MiniLM, bge, e5 (sentence embedding models)",
    ),
)

BY_HF_CLASS: dict[str, ArchSpec] = {
    name: spec for spec in ARCHITECTURES for name in spec.hf_classes
}


def supported_summary() -> str:
    return "; ".join(
        f"{spec.family} ({', '.join(spec.hf_classes)}: {spec.example})" for spec in ARCHITECTURES
    )


def hf_class_of(config: dict[str, Any]) -> str | None:
    names = config.get("architectures")
    if isinstance(names, list) and names:
        return str(names[0])
    return None


def find_spec(config: dict[str, Any]) -> ArchSpec | None:
    names = config.get("architectures")
    if isinstance(names, list) and names:
        return next((BY_HF_CLASS[n] for n in names if n in BY_HF_CLASS), None)
    # Some exports omit "architectures"; model_type then names the family.
    return next((s for s in ARCHITECTURES if s.family == config.get("model_type")), None)


@dataclass(frozen=True)
class Shape:
    """The hyper-parameters of a checkpoint, read from config.json with its defaults."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx: int
    head_dim_explicit: bool
    tied: bool


def _count(config: dict[str, Any], key: str, default: Any = None, *, minimum: int = 1) -> int:
    """A whole number of config.json at least ``minimum``; ValueError names the key and the
    value (a float, a bool, NaN, a negative or zero count)."""
    value = config[key] if default is None else config.get(key)
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(f"'{key}' = {value!r} (a whole number is needed)")
        value = int(value)
    if value < minimum or value > 1 << 40:
        raise ValueError(f"'{key}' = {value} (it must be from {minimum} to 2^40)")
    return value


def shape_of(spec: ArchSpec, config: dict[str, Any]) -> Shape:
    """Read the model's dimensions; KeyError names a missing config.json key, ValueError a
    count that is not a positive whole number or does not agree with the others."""
    n_embd = _count(config, "hidden_size")
    n_head = _count(config, "num_attention_heads")
    head_dim = config.get("head_dim")
    head_dim = _count(config, "head_dim") if head_dim is not None else None
    if head_dim is None and n_embd % n_head:
        raise ValueError(
            f"'hidden_size' = {n_embd} is not a multiple of 'num_attention_heads' = {n_head}"
        )
    n_head_kv = _count(config, "num_key_value_heads", n_head)
    if n_head % n_head_kv:
        raise ValueError(
            f"'num_attention_heads' = {n_head} is not a multiple of "
            f"'num_key_value_heads' = {n_head_kv}"
        )
    ctx_key = next((k for k in ("max_position_embeddings", "n_positions") if config.get(k)), None)
    n_ctx = _count(config, ctx_key, minimum=0) if ctx_key else 0
    tied = bool(config.get("tie_word_embeddings", spec.tie_default)) or spec.ties_output_always
    return Shape(
        n_vocab=_count(config, "vocab_size"),
        n_embd=n_embd,
        n_layer=_count(config, "num_hidden_layers"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim or n_embd // n_head,
        n_ff=_count(config, "intermediate_size"),
        n_ctx=n_ctx,
        head_dim_explicit=head_dim is not None and head_dim != n_embd // n_head,
        tied=tied,
    )
