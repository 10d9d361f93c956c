"""GGUF memory: the bytes of tensor data after quantizing (llama.cpp's rules where they
move the size) and llama.cpp's peak resident memory at a context length."""

from __future__ import annotations

from edgeshrink.errors import ModelFileError
from edgeshrink.formats.base import MemoryEstimate, ModelInfo
from edgeshrink.formats.gguf.quant_types import UNQUANTIZED, quant_type

MIB = 1024 * 1024


def type_bytes(type_name: str, n_elements: int) -> int:
    """Bytes of ``n_elements`` values stored as ggml type ``type_name``."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return n_elements * size // block


def _block_size(type_name: str) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]


# llama.cpp's fallback when a row is not a multiple of the type's block size
# (llama-quant.cpp: tensor_type_fallback).
_FALLBACK = {
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
    "IQ4_XS": "IQ4_NL",
    "IQ3_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL",
    "IQ2_S": "IQ4_NL",
    "IQ2_XS": "IQ4_NL",
    "IQ2_XXS": "IQ4_NL",
    "IQ1_S": "IQ4_NL",
    "IQ1_M": "IQ4_NL",
    "TQ1_0": "Q4_0",
    "TQ2_0": "Q4_0",
}


def fitting_type(type_name: str, row: int) -> str:
    """The type llama.cpp stores a tensor of ``row``-wide rows in when asked for ``type_name``."""
    if row % _block_size(type_name) == 0:
        return type_name
    fallback = _FALLBACK.get(type_name, "F16")
    return fallback if row % _block_size(fallback) == 0 else "F16"


def estimate_weight_bytes(shapes: list[tuple[str, tuple[int, ...], str]], quant: str) -> int:
    """Bytes of tensor data after quantizing tensors ``shapes`` (see tensor_shapes) to ``quant``.

    Follows llama.cpp's rules where they move the size: 1-D tensors stay F32,
    the output matrix goes to Q6_K (Q8_0 for Q8_0), rows that are not a
    multiple of the block size fall back, and K-quant mixes cost their
    documented effective bits per weight.  Exact sizes come from `shrink`.
    """
    qtype = quant_type(quant)
    base = qtype.base_type
    mix_factor = 1.0
    if base not in UNQUANTIZED:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[base]]
        mix_factor = max(1.0, qtype.bpw / (8.0 * size / block))
    total = 0
    for name, shape, current in shapes:
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        if len(shape) < 2:
            total += type_bytes(current, n_elements)
            continue
        if qtype.name in UNQUANTIZED:
            total += type_bytes(qtype.name, n_elements)
            continue
        is_output = name == "output.weight"
        target = ("Q8_0" if base == "Q8_0" else "Q6_K") if is_output else base
        target = fitting_type(target, shape[0])
        factor = 1.0 if is_output or target != base else mix_factor
        total += int(type_bytes(target, n_elements) * factor)
    return total


def estimate_memory(
    info: ModelInfo,
    weights_bytes: int,
    context: int,
    *,
    n_ubatch: int = 512,
    flash_attn: bool = True,
) -> MemoryEstimate:
    """Peak resident memory of llama.cpp on a CPU running ``info`` at ``context``.

    KV cache: F16 K and V for every layer and position.  Compute buffer: the
    logits of one micro-batch plus the widest intermediate activations; without
    flash attention the attention scores of one micro-batch join them.
    Overhead: the Python interpreter, llama.cpp and its libraries.  Checked
    against the agent's measured peak RSS on the test models (tests/
    test_memory_estimate.py): within ±20% from 1 to 110 MB models and 512 to
    4096 tokens of context.
    """
    shape = info.llm
    if shape is None:
        raise ModelFileError(
            f"{info.path}: no LLM hyper-parameters in the GGUF metadata",
            hint="edgeshrink estimates memory for decoder LLMs",
        )
    ubatch = min(n_ubatch, context)
    kv = 2 * shape.n_layer * context * shape.n_embd_kv * 2
    widest = max(shape.n_ff, shape.n_embd) * 3 + shape.n_embd * 4
    compute = 4 * ubatch * (shape.n_vocab + widest)
    if not flash_attn:
        compute += 4 * ubatch * context * shape.n_head
    overhead = 48 * MIB
    return MemoryEstimate(
        weights_bytes=int(weights_bytes),
        kv_cache_bytes=int(kv),
        compute_bytes=int(compute),
        overhead_bytes=overhead,
        context=context,
    )
