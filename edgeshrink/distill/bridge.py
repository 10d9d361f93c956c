"""GGUF <-> PyTorch for training: a llama-family GGUF as a transformers model, and a
trained model back into a GGUF with the same metadata and vocabulary.

The reverse of the converter's tensor map (edgeshrink/convert): every tensor is
dequantized by gguf-py (any type), renamed, and the q/k rows llama.cpp stores permuted
for its RoPE layout are put back in the order transformers expects; writing undoes it
again. A model llama.cpp runs from the written file computes what the trained torch
model computes (tests/test_distill.py holds the two to the same logits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshrink.errors import RecipeError, RuntimeMissingError

# GGUF architectures transformers' LlamaForCausalLM computes exactly as llama.cpp does.
LLAMA_ARCHES = ("llama",)
BLOCK_MAP = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}  # fmt: skip
TOP_MAP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def import_torch() -> tuple[Any, Any]:
    """torch and transformers, or one error naming the extra that brings them."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise RuntimeMissingError(
            f"distillation trains with PyTorch and transformers, which are not installed ({exc})",
            hint="pip install 'edgeshrink[distill]' (torch CPU and transformers)",
        ) from exc
    return torch, transformers


@dataclass(frozen=True)
class GgufShape:
    """What a llama GGUF's metadata says about its shape (for the transformers config)."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int
    context_length: int
    rms_eps: float
    rope_theta: float
    tied: bool


def read_shape(reader: Any, path: Path) -> GgufShape:
    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    if arch not in LLAMA_ARCHES:
        raise RecipeError(
            f"{path.name} is a {arch} model; distillation from GGUF trains llama-family models",
            hint="distill its Hugging Face checkpoint instead (transformers loads every family)",
        )
    names = {t.name for t in reader.tensors}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    n_embd = int(field(f"{arch}.embedding_length"))
    n_head = int(field(f"{arch}.attention.head_count"))
    return GgufShape(
        arch=arch, n_vocab=int(embd.shape[-1]), n_embd=n_embd, n_layer=int(field(f"{arch}.block_count")),
        n_head=n_head, n_head_kv=int(field(f"{arch}.attention.head_count_kv", n_head)),
        n_ff=int(field(f"{arch}.feed_forward_length")),
        head_dim=int(field(f"{arch}.attention.key_length", n_embd // n_head)),
        context_length=int(field(f"{arch}.context_length", 2048)),
        rms_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(field(f"{arch}.rope.freq_base", 10000.0)),
        tied="output.weight" not in names,
    )  # fmt: skip


def rope_rows(weights: Any, n_head: int, *, to_gguf: bool) -> Any:
    """llama.cpp keeps each head's q/k rows as interleaved pairs; transformers as halves."""
    rows = weights.shape[0]
    if to_gguf:
        return (
            weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape)
        )
    return (
        weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def hf_name(gguf_name: str) -> str | None:
    stem, _, kind = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, index, part = stem.split(".", 2)
        mapped = BLOCK_MAP.get(part)
        return f"model.layers.{index}.{mapped}.{kind}" if mapped else None
    mapped = TOP_MAP.get(stem)
    return f"{mapped}.{kind}" if mapped else None


def load_gguf_model(
    path: str | os.PathLike[str], *, dtype: str = "float32"
) -> tuple[Any, GgufShape]:
    """A transformers LlamaForCausalLM holding ``path``'s weights, dequantized."""
    import gguf
    import numpy as np

    torch, transformers = import_torch()
    path = Path(path)
    reader = gguf.GGUFReader(path)
    shape = read_shape(reader, path)
    config = transformers.LlamaConfig(
        vocab_size=shape.n_vocab, hidden_size=shape.n_embd, intermediate_size=shape.n_ff,
        num_hidden_layers=shape.n_layer, num_attention_heads=shape.n_head,
        num_key_value_heads=shape.n_head_kv, head_dim=shape.head_dim,
        max_position_embeddings=shape.context_length, rms_norm_eps=shape.rms_eps,
        rope_theta=shape.rope_theta, tie_word_embeddings=shape.tied, attention_bias=False,
        mlp_bias=False,
    )  # fmt: skip
    state = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None:
            continue  # e.g. rope_freqs: computed by transformers from the config
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        values = values.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        if tensor.name.endswith("attn_q.weight"):
            values = rope_rows(values, shape.n_head, to_gguf=False)
        elif tensor.name.endswith("attn_k.weight"):
            values = rope_rows(values, shape.n_head_kv, to_gguf=False)
        state[name] = torch.from_numpy(np.ascontiguousarray(values))
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (shape.tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise RecipeError(
            f"{path.name}: tensors do not match a {shape.arch} model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
            hint="distill its Hugging Face checkpoint instead",
        )
    if shape.tied:
        model.tie_weights()
    return model, shape


def write_gguf_model(model: Any, template: str | os.PathLike[str], out: str | os.PathLike[str],
                     *, matrix_type: str = "F16") -> Path:  # fmt: skip
    """Write ``out``: ``template``'s metadata and vocabulary with ``model``'s weights
    (matrices as ``matrix_type``, norms F32), the general.file_type updated."""
    import gguf
    import numpy as np

    template, out = Path(template), Path(out)
    reader = gguf.GGUFReader(template)
    shape = read_shape(reader, template)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(str(out), arch=shape.arch, endianess=gguf.GGUFEndian.LITTLE)
    ftype = gguf.LlamaFileType.MOSTLY_F16 if matrix_type == "F16" else gguf.LlamaFileType.ALL_F32
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(ftype)
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None or name not in state:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            values = values.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        else:
            values = state[name]
            if tensor.name.endswith("attn_q.weight"):
                values = rope_rows(values, shape.n_head, to_gguf=True)
            elif tensor.name.endswith("attn_k.weight"):
                values = rope_rows(values, shape.n_head_kv, to_gguf=True)
        if values.ndim >= 2 and matrix_type == "F16":
            writer.add_tensor(tensor.name, np.ascontiguousarray(values.astype(np.float16)))
        else:
            writer.add_tensor(tensor.name, np.ascontiguousarray(values.astype(np.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
