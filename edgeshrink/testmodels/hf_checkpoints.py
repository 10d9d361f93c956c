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

import argparse
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.convert.safetensors_writer import (
    decode_weights,
    encode_weights,
    write_safetensors,
)
from edgeshrink.testmodels.hf_tokenizers import (
    CHATML_TEMPLATE,
    LLAMA2_TEMPLATE,
    LLAMA3_REGEX,
    QWEN2_REGEX,
    SPM_SPACE,
    TOKENIZER_KINDS,
    TokenizerFiles,
    corpus_text,
    make_tokenizer,
    write_json,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CHATML_TEMPLATE",
    "DTYPES",
    "LLAMA2_TEMPLATE",
    "LLAMA3_REGEX",
    "PRESETS",
    "QWEN2_REGEX",
    "SPM_SPACE",
    "TOKENIZER_KINDS",
    "HfCheckpoint",
    "HfPreset",
    "corpus_text",
    "decode_weights",
    "encode_weights",
    "hf_tensor_plan",
    "main",
    "make_hf_checkpoint",
    "make_tokenizer",
    "random_weights",
    "write_safetensors",
]

DTYPES = ("f32", "f16", "bf16")
_ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


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


def _config(preset: HfPreset, tok: TokenizerFiles, n_vocab: int, dtype: str) -> dict[str, Any]:
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


def make_hf_checkpoint(
    directory: str | os.PathLike[str],
    preset: str = "llama",
    dtype: str = "f32",
    *,
    seed: int = 0,
    n_shards: int = 1,
    tokenizer: str | None = None,
    n_layer: int | None = None,
) -> HfCheckpoint:
    """Write a tiny Hugging Face checkpoint of ``preset`` (a key of PRESETS) into ``directory``.

    ``dtype`` is how the weights are stored ("f32", "f16", "bf16"); ``n_shards``
    > 1 splits them over model-0000i-of-0000N.safetensors with an index;
    ``tokenizer`` overrides the preset's tokenizer kind, ``n_layer`` its block count.
    """
    import numpy as np

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
    spec = PRESETS[preset] if n_layer is None else replace(PRESETS[preset], n_layer=n_layer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(
        tokenizer or spec.tokenizer, directory, spec.n_vocab_train, spec.added_specials
    )
    n_vocab = tok.size + spec.vocab_padding
    config = _config(spec, tok, n_vocab, dtype)
    write_json(directory / "config.json", config)

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
        write_json(
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
