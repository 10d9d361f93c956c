"""GGUF (llama.cpp) backend: inspect, quantization types, memory estimate, quantize.

gguf-py is the single source of truth for keys and tensor types; llama.cpp's own
quantizer (``llama_model_quantize`` through llama-cpp-python) does the work.
The quantizer runs in a child process: llama.cpp aborts the whole process on
some malformed inputs, and a child's abort is an error message, not a crash.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.errors import (
    BenchParamsError,
    ModelFileError,
    QuantizationError,
    RuntimeMissingError,
)
from edgeshrink.formats.base import Backend, LlmShape, MemoryEstimate, ModelInfo, TensorTypeCount

FORMAT = "gguf"

# The type names `llama-quantize` accepts (tools/quantize/quantize.cpp), minus COPY.
LLAMA_QUANTIZE_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_1",
    "Q5_0",
    "Q4_K",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_1",
    "Q4_0",
    "IQ4_NL",
    "IQ4_XS",
    "Q3_K",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "IQ3_M",
    "IQ3_S",
    "IQ3_XS",
    "IQ3_XXS",
    "Q2_K",
    "Q2_K_S",
    "IQ2_M",
    "IQ2_S",
    "IQ2_XS",
    "IQ2_XXS",
    "IQ1_M",
    "IQ1_S",
    "TQ2_0",
    "TQ1_0",
    "MXFP4_MOE",
)
GGUF_MAGIC = b"GGUF"
MIB = 1024 * 1024

# Approximate effective bits per weight of each llama.cpp file type (after llama.cpp's own
# quantize tool and checked against its output on our test models: mixes upgrade some
# tensors, so K-quant "M" types cost more than their base type).  Ordered from
# highest to lowest quality: this order is the ladder `plan` walks down.
_QUANT_TABLE: tuple[tuple[str, str | None, float, bool, str], ...] = (
    # name, base tensor type, effective bpw, needs importance matrix, note
    ("F32", "F32", 32.0, False, "no quantization"),
    ("F16", "F16", 16.0, False, "half precision, lossless for most models"),
    ("BF16", "BF16", 16.0, False, "bfloat16, lossless for bf16-trained models"),
    ("Q8_0", "Q8_0", 8.5, False, "near-lossless; fast on every CPU"),
    ("Q6_K", "Q6_K", 6.56, False, "very small loss"),
    ("Q5_K_M", "Q5_K", 5.69, False, "small loss"),
    ("Q5_K_S", "Q5_K", 5.54, False, "small loss"),
    ("Q5_1", "Q5_1", 6.0, False, "legacy 5-bit"),
    ("Q5_0", "Q5_0", 5.5, False, "legacy 5-bit"),
    ("Q4_K_M", "Q4_K", 4.89, False, "balanced; the usual default"),
    ("Q4_K_S", "Q4_K", 4.58, False, "slightly smaller than Q4_K_M"),
    ("Q4_1", "Q4_1", 5.0, False, "legacy 4-bit"),
    ("IQ4_NL", "IQ4_NL", 4.5, False, "non-linear 4-bit, 32-blocks"),
    ("Q4_0", "Q4_0", 4.5, False, "4-bit; repacked at load on ARM dotprod/i8mm and x86 AVX2"),
    ("IQ4_XS", "IQ4_XS", 4.25, False, "4.25-bit i-quant"),
    ("Q3_K_L", "Q3_K", 4.27, False, "3-bit, large mix"),
    ("Q3_K_M", "Q3_K", 3.91, False, "3-bit, noticeable loss"),
    ("IQ3_M", "IQ3_S", 3.66, False, "3-bit i-quant mix"),
    ("IQ3_S", "IQ3_S", 3.44, False, "3-bit i-quant"),
    ("Q3_K_S", "Q3_K", 3.5, False, "3-bit, large loss"),
    ("IQ3_XS", "IQ3_S", 3.3, True, "3-bit, needs an importance matrix"),
    ("IQ3_XXS", "IQ3_XXS", 3.06, True, "3-bit, needs an importance matrix"),
    ("Q2_K", "Q2_K", 3.0, False, "2-bit mix, large loss"),
    ("Q2_K_S", "Q2_K", 2.97, True, "2-bit, needs an importance matrix"),
    ("IQ2_M", "IQ2_S", 2.7, True, "2-bit, needs an importance matrix"),
    ("IQ2_S", "IQ2_S", 2.5, True, "2-bit, needs an importance matrix"),
    ("IQ2_XS", "IQ2_XS", 2.31, True, "2-bit, needs an importance matrix"),
    ("IQ2_XXS", "IQ2_XXS", 2.06, True, "2-bit, needs an importance matrix"),
    ("IQ1_M", "IQ1_M", 1.75, True, "1-bit, needs an importance matrix"),
    ("IQ1_S", "IQ1_S", 1.56, True, "1-bit, needs an importance matrix"),
    ("TQ2_0", "TQ2_0", 2.06, False, "ternary, only for ternary-trained models"),
    ("TQ1_0", "TQ1_0", 1.69, False, "ternary, only for ternary-trained models"),
)

# Types plan may pick on its own, best quality first.  Legacy, ternary and
# imatrix-only types are reachable with --quant but never chosen for the user.
PLAN_LADDER: tuple[str, ...] = (
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q4_K_M",
    "Q4_0",
    "IQ4_XS",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
)
UNQUANTIZED = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class GgufQuantType:
    name: str
    ftype: int
    base_type: str
    bpw: float
    needs_imatrix: bool
    note: str
    quality_rank: int


def _build_quant_types() -> dict[str, GgufQuantType]:
    from gguf.constants import LlamaFileType

    types: dict[str, GgufQuantType] = {}
    for rank, (name, base, bpw, imatrix, note) in enumerate(_QUANT_TABLE):
        member = "ALL_F32" if name == "F32" else f"MOSTLY_{name}"
        if member not in LlamaFileType.__members__:
            continue
        types[name] = GgufQuantType(
            name=name,
            ftype=int(LlamaFileType[member]),
            base_type=base or name,
            bpw=bpw,
            needs_imatrix=imatrix,
            note=note,
            quality_rank=rank,
        )
    return types


@functools.cache
def quant_types_table() -> dict[str, GgufQuantType]:
    """Every type this gguf-py knows, by name (built on first use: gguf-py is heavy)."""
    return _build_quant_types()


def __getattr__(name: str) -> Any:
    if name == "QUANT_TYPES":  # gguf.QUANT_TYPES still works, read lazily
        return quant_types_table()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def quant_type(name: str) -> GgufQuantType:
    """Look a llama.cpp type up by name, case-insensitively (``q4_k_m`` works)."""
    key = name.strip().upper()
    table = quant_types_table()
    if key in table:
        return table[key]
    import difflib

    close = difflib.get_close_matches(key, list(table), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise QuantizationError(
        f"unknown GGUF quantization type '{name}'",
        hint=hint + "run `edgeshrink quant-types` to list the llama.cpp types",
    )


def supported_by_llama_cpp(name: str) -> bool | None:
    """Whether the installed llama-cpp-python knows this file type (None: not installed)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    attr = "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
    return hasattr(llama_cpp, attr)


# --------------------------------------------------------------------------- inspect


def _field_value(field: Any) -> Any:
    from gguf.constants import GGUFValueType

    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        # Arrays can be huge (the vocabulary): callers only need their length.
        return len(field.data)
    return field.contents()


MAX_DIMS = 8  # GGML_MAX_DIMS is 4; a little slack for future files, none for garbage
MAX_ARRAY_NESTING = 4
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Damaged(ValueError):
    """A count or length in a GGUF header that the file's bytes cannot hold."""


def check_gguf_layout(data: Any, size: int) -> None:
    """Walk a GGUF header and check every count, length and tensor extent against the
    ``size`` bytes the file has, before anything is allocated from them.

    gguf-py's reader trusts the header: an array claiming 2^61 strings in a 72-byte file
    makes it loop and allocate without bound. Raises _Damaged naming the offset.
    """
    import struct

    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    pos = 0

    def take(n: int, what: str) -> int:
        nonlocal pos
        if n < 0 or pos + n > size:
            raise _Damaged(
                f"{what} at offset {pos} needs {n} bytes, the file has {size - pos} left"
            )
        start, pos = pos, pos + n
        return start

    def u32(what: str) -> int:
        return struct.unpack_from("<I", data, take(4, what))[0]

    def u64(what: str) -> int:
        return struct.unpack_from("<Q", data, take(8, what))[0]

    def string(what: str) -> None:
        take(u64(f"{what} length"), what)

    def value(kind: int, what: str, depth: int = 0) -> None:
        if kind in _SCALAR_BYTES:
            take(_SCALAR_BYTES[kind], what)
        elif kind == _STRING:
            string(what)
        elif kind == _ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise _Damaged(f"{what}: arrays nested deeper than {MAX_ARRAY_NESTING}")
            item, count = u32(f"{what} item type"), u64(f"{what} count")
            smallest = _SCALAR_BYTES.get(item, 8 if item in (_STRING, _ARRAY) else 0)
            if item not in _SCALAR_BYTES and item not in (_STRING, _ARRAY):
                raise _Damaged(f"{what}: unknown array item type {item}")
            if count * smallest > size - pos:
                raise _Damaged(
                    f"{what}: an array of {count} items at offset {pos} cannot fit in the "
                    f"{size - pos} bytes left"
                )
            if item in _SCALAR_BYTES:
                take(count * smallest, what)
            else:
                for _ in range(count):
                    value(item, what, depth + 1)
        else:
            raise _Damaged(f"{what}: unknown value type {kind} at offset {pos - 4}")

    take(4, "magic")
    version = u32("version")
    if version not in (2, 3):
        raise _Damaged(f"GGUF version {version} (this reader knows versions 2 and 3)")
    n_tensors, n_kv = u64("tensor count"), u64("key-value count")
    if n_kv * 12 > size - pos or n_tensors * 24 > size - pos:
        raise _Damaged(
            f"the header claims {n_kv} key-values and {n_tensors} tensors, more than "
            f"{size} bytes can hold"
        )
    alignment = 32
    for i in range(n_kv):
        key_at = pos
        key_length = u64(f"key {i} length")
        key = bytes(data[take(key_length, f"key {i}") : pos])
        kind = u32(f"key {i} type")
        name = key.decode("utf-8", "replace")
        if name == "general.alignment" and kind == 4:
            alignment = struct.unpack_from("<I", data, pos)[0] or 32
        value(kind, f"value of '{name}' (key at offset {key_at})")
    extents = []
    for i in range(n_tensors):
        string(f"tensor {i} name")
        n_dims = u32(f"tensor {i} dimension count")
        if not 0 < n_dims <= MAX_DIMS:
            raise _Damaged(f"tensor {i} has {n_dims} dimensions (at most {MAX_DIMS})")
        elements = 1
        for d in range(n_dims):
            elements *= u64(f"tensor {i} dimension {d}")
        kind = u32(f"tensor {i} type")
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise _Damaged(f"tensor {i} has unknown type {kind}") from None
        offset = u64(f"tensor {i} data offset")
        extents.append((i, offset, elements * block_bytes // block))
    data_start = -(-pos // alignment) * alignment
    for i, offset, n_bytes in extents:
        if data_start + offset + n_bytes > size:
            raise _Damaged(
                f"truncated GGUF file: tensor {i}'s data needs {data_start + offset + n_bytes} "
                f"bytes, the file has {size}"
            )


def read_gguf(path: str | os.PathLike[str]) -> Any:
    """Open a GGUF file with gguf-py, turning every failure into ModelFileError."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise ModelFileError(
            f"{path}: is a directory, not a GGUF file",
            hint="Hugging Face directories are not supported yet; give a .gguf file",
        )
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')",
            hint="give a .gguf file made by llama.cpp's converters",
        )
    import mmap

    from gguf import GGUFReader

    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            check_gguf_layout(data, size)
    except ValueError as exc:  # _Damaged, and mmap of an unreadable file
        raise ModelFileError(
            f"{path}: GGUF header is damaged or truncated ({size} bytes): {exc}",
            hint="copy or download the file again",
        ) from exc
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, TypeError) as exc:
        raise ModelFileError(
            f"{path}: GGUF header is damaged or truncated ({size} bytes): {exc}",
            hint="copy or download the file again",
        ) from exc
    needed = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if needed > size:
        raise ModelFileError(
            f"{path}: truncated GGUF file: tensor data needs {needed} bytes, file has {size}",
            hint="copy or download the file again",
        )
    return reader


def _llm_shape(fields: dict[str, Any], arch: str) -> LlmShape | None:
    def get(key: str, default: Any = None) -> Any:
        return fields.get(f"{arch}.{key}", default)

    n_embd = get("embedding_length")
    n_layer = get("block_count")
    if n_embd is None or n_layer is None:
        return None
    n_head = get("attention.head_count", 1)
    n_head_kv = get("attention.head_count_kv", n_head)
    # Per-layer head counts are stored as arrays in some models: the reader
    # returns their length, which is no head count, so fall back to n_head.
    if isinstance(n_head_kv, int) and isinstance(n_head, int) and n_head_kv > n_head:
        n_head_kv = n_head
    n_vocab = get("vocab_size") or fields.get("tokenizer.ggml.tokens") or 0
    return LlmShape(
        context_length=int(get("context_length", 0)),
        n_vocab=int(n_vocab),
        n_layer=int(n_layer),
        n_embd=int(n_embd),
        n_head=int(n_head),
        n_head_kv=int(n_head_kv),
        n_ff=int(get("feed_forward_length", 0) or 0),
        tokenizer=fields.get("tokenizer.ggml.model"),
    )


def _file_type_name(fields: dict[str, Any], histogram: Counter[str]) -> str:
    from gguf.constants import LlamaFileType

    raw = fields.get("general.file_type")
    if raw is not None:
        try:
            name = LlamaFileType(int(raw)).name
            return name.replace("MOSTLY_", "").replace("ALL_", "")
        except ValueError:
            pass
    # No file type recorded: name the type that holds most 2-D weights.
    return histogram.most_common(1)[0][0] if histogram else "unknown"


POSITION_TABLE = "position_embd.weight"
POSITION_ROWS = "edgeshrink.position_rows"  # a key of ModelInfo.metadata, not of the file


def is_encoder(info: ModelInfo) -> bool:
    """An embedding model (BERT and kin: non-causal attention, or an encoder-only
    architecture): it makes embeddings, it does not generate text."""
    meta = dict(info.metadata)
    return (
        meta.get(f"{info.architecture}.attention.causal") is False
        or info.architecture == "t5encoder"
    )


def position_rows(info: ModelInfo) -> int | None:
    """Rows of the model's learned position table, if it has one."""
    return dict(info.metadata).get(POSITION_ROWS)


def inspect_gguf(path: str | os.PathLike[str]) -> ModelInfo:
    path = Path(path)
    reader = read_gguf(path)
    fields = {
        name: _field_value(field)
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }
    arch = str(fields.get("general.architecture", "unknown"))
    counts: Counter[str] = Counter()
    params: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    for tensor in reader.tensors:
        type_name = tensor.tensor_type.name
        counts[type_name] += 1
        params[type_name] += int(tensor.n_elements)
        nbytes[type_name] += int(tensor.n_bytes)
    weight_hist: Counter[str] = Counter(
        {t.tensor_type.name: 0 for t in reader.tensors if len(t.shape) >= 2}
    )
    for t in reader.tensors:
        if len(t.shape) >= 2:
            weight_hist[t.tensor_type.name] += int(t.n_elements)
    file_type = _file_type_name(fields, weight_hist)
    histogram = tuple(
        TensorTypeCount(type=name, count=counts[name], n_params=params[name], n_bytes=nbytes[name])
        for name in sorted(counts, key=lambda n: -nbytes[n])
    )
    quantized = any(name not in ("F32", "F16", "BF16", "F64") for name in weight_hist)
    scalar_meta = tuple(
        (key, value)
        for key, value in fields.items()
        if isinstance(value, (str, int, float, bool))
        and not key.startswith("tokenizer.ggml.")
        or key in ("tokenizer.ggml.model", "tokenizer.ggml.pre")
    )
    for t in reader.tensors:
        if t.name == POSITION_TABLE and len(t.shape) == 2:
            # Learned absolute positions (BERT, GPT-2): a position past the table's rows
            # aborts llama.cpp, it does not just degrade the output.
            scalar_meta += ((POSITION_ROWS, int(t.shape[1])),)
    return ModelInfo(
        path=path,
        format=FORMAT,
        size_bytes=path.stat().st_size,
        architecture=arch,
        name=fields.get("general.name"),
        n_params=sum(params.values()),
        file_type=file_type,
        is_quantized=quantized,
        tensor_types=histogram,
        llm=_llm_shape(fields, arch),
        metadata=scalar_meta,
    )


def tensor_shapes(path: str | os.PathLike[str]) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape with ne[0] first as ggml stores it, type) of every tensor."""
    reader = read_gguf(path)
    return [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors]


# --------------------------------------------------------------------------- memory


def _type_bytes(type_name: str, n_elements: int) -> int:
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


def _fitting_type(type_name: str, row: int) -> str:
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
            total += _type_bytes(current, n_elements)
            continue
        if qtype.name in UNQUANTIZED:
            total += _type_bytes(qtype.name, n_elements)
            continue
        is_output = name == "output.weight"
        target = ("Q8_0" if base == "Q8_0" else "Q6_K") if is_output else base
        target = _fitting_type(target, shape[0])
        factor = 1.0 if is_output or target != base else mix_factor
        total += int(_type_bytes(target, n_elements) * factor)
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


# --------------------------------------------------------------------------- quantize


@dataclass(frozen=True)
class QuantizeOutcome:
    output: Path
    quant: str
    seconds: float
    fallbacks: tuple[tuple[str, str, str], ...]  # (tensor, wanted type, used type)
    tensor_types: tuple[TensorTypeCount, ...]
    llama_cpp_version: str
    log_tail: str


_FALLBACK_LINE = re.compile(
    r"warning:\s+(?P<name>\S+)\s+- ncols\s+\d+ not divisible by\s+\d+ \(required for type\s+"
    r"(?P<wanted>\S+)\).*?-> falling back to\s+(?P<used>\S+)"
)

_WORKER = r"""
import json, sys, time, ctypes
args = json.loads(sys.argv[1])
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = args["ftype"]
params.nthread = args["threads"]
params.allow_requantize = args["allow_requantize"]
start = time.perf_counter()
rc = llama_cpp.llama_model_quantize(args["src"].encode(), args["dst"].encode(), ctypes.byref(params))
sys.stdout.write(json.dumps({"rc": int(rc), "seconds": time.perf_counter() - start,
                             "version": llama_cpp.__version__}))
"""


def llama_cpp_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:
        return None


def quantize_gguf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    quant: str,
    *,
    threads: int | None = None,
    allow_requantize: bool = False,
    timeout_s: float | None = None,
) -> QuantizeOutcome:
    """Quantize ``src`` to ``dst`` with llama.cpp's own quantizer.

    ``dst`` must be a temporary name: the caller renames it into place once the
    manifest is written (see edgeshrink.shrink).
    """
    src, dst = Path(src), Path(dst)
    qtype = quant_type(quant)
    info = inspect_gguf(src)
    if info.is_quantized and not allow_requantize:
        raise QuantizationError(
            f"{src}: already quantized ({info.file_type}); re-quantizing loses more quality",
            hint="quantize from the F32/F16/BF16 original, or pass --allow-requantize",
        )
    if qtype.needs_imatrix:
        raise QuantizationError(
            f"{qtype.name} needs an importance matrix, which edgeshrink does not compute yet",
            hint="choose Q2_K, IQ3_S or a larger type",
        )
    if llama_cpp_version() is None:
        raise RuntimeMissingError(
            "llama-cpp-python is not installed on the host; it does the quantization",
            hint="pip install 'edgeshrink[gguf]'",
        )
    if supported_by_llama_cpp(qtype.name) is False:
        raise QuantizationError(
            f"the installed llama-cpp-python ({llama_cpp_version()}) does not know {qtype.name}",
            hint="upgrade llama-cpp-python, or run `edgeshrink quant-types`",
        )
    job = {
        "src": str(src),
        "dst": str(dst),
        "ftype": qtype.ftype,
        "threads": int(threads or os.cpu_count() or 1),
        "allow_requantize": bool(allow_requantize),
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER, json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise QuantizationError(
            f"llama.cpp's quantizer did not finish within {timeout_s:.0f} s",
            hint="give it more time or more threads",
        ) from exc
    log = proc.stderr
    tail = "\n".join(log.strip().splitlines()[-8:])
    result: dict[str, Any] = {}
    if proc.stdout.strip():
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except json.JSONDecodeError:
            result = {}
    if proc.returncode != 0 or result.get("rc") != 0 or not dst.exists():
        reason = _quantize_failure_reason(log) or f"exit code {proc.returncode}"
        free = shutil.disk_usage(dst.parent).free
        if "iostream error" in log and free < src.stat().st_size:
            # llama.cpp writes with std::ofstream: a full disk is only "iostream error".
            raise QuantizationError(
                f"llama.cpp could not write {src.stem} as {qtype.name}: the disk is full "
                f"({free / 2**20:.1f} MiB free in {dst.parent})",
                hint="free some space or write the artifact to another disk (-o PATH)",
            )
        raise QuantizationError(
            f"llama.cpp could not quantize {src.name} to {qtype.name}: {reason}",
            hint="run with EDGESHRINK_DEBUG=1 to see llama.cpp's log",
        )
    fallbacks = tuple((m["name"], m["wanted"], m["used"]) for m in _FALLBACK_LINE.finditer(log))
    out_info = inspect_gguf(dst)
    return QuantizeOutcome(
        output=dst,
        quant=qtype.name,
        seconds=float(result.get("seconds", 0.0)),
        fallbacks=fallbacks,
        tensor_types=out_info.tensor_types,
        llama_cpp_version=str(result.get("version", llama_cpp_version())),
        log_tail=tail,
    )


def _quantize_failure_reason(log: str) -> str | None:
    for line in reversed(log.splitlines()):
        lowered = line.lower()
        if "error" in lowered or "failed" in lowered or "exception" in lowered:
            return line.strip()
    return None


def off_type_tensors(path: str | os.PathLike[str], quant: str) -> list[tuple[str, str]]:
    """2-D tensors stored at another type than ``quant``'s main type (mix or fallback)."""
    base = quant_type(quant).base_type
    return [
        (name, type_name)
        for name, shape, type_name in tensor_shapes(path)
        if len(shape) >= 2 and type_name != base
    ]


# --------------------------------------------------------------------------- the backend


class GgufBackend(Backend):
    format = FORMAT
    label = "llama.cpp"
    runtime = "llama.cpp (llama-cpp-python)"
    evaluation = "llm-text"
    quant_types = LLAMA_QUANTIZE_TYPES
    sweep_ladder = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")

    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        return inspect_gguf(path)

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:
        from edgeshrink.plan import plan_gguf  # plan reads this module's tables

        return plan_gguf(info, profile, options)

    def shrink(self, src: Any, profile: Any, options: Any, **kw: Any) -> Any:
        from edgeshrink.shrink import shrink_gguf  # the pipeline calls backends

        return shrink_gguf(src, profile, options, **kw)

    def normalize_quant(self, name: str) -> str:
        return quant_type(name).name

    def measures_tokens(self, info: ModelInfo) -> bool:
        return not is_encoder(info)

    def agent_args(self, params: Any, remote_inputs: str | None = None) -> list[str]:
        args = [
            "--prompt-tokens", str(params.prompt_tokens),
            "--gen-tokens", str(params.gen_tokens),
            "--reps", str(params.reps),
            "--flash-attn", "on" if params.flash_attn else "off",
        ]  # fmt: skip
        if params.n_ctx:
            args += ["--n-ctx", str(params.n_ctx)]
        if params.no_mmap:
            args.append("--no-mmap")
        # An embedding model (BERT) is timed per input, like ONNX and TFLite models.
        return args + ["--runs", str(params.runs), "--min-seconds", str(params.min_seconds)]

    def bench_params(
        self, info: ModelInfo, params: Any, profile: Any, *, on_this_machine: bool
    ) -> tuple[Any, str]:
        """Benchmark lengths the model's positions allow, and a note when they were shortened.

        An embedding model takes at most its trained length (a BERT's position table has
        exactly that many rows): longer inputs are shortened to it. A decoder with a learned
        position table (GPT-2 and kin) cannot run past its rows either (llama.cpp aborts): it
        is refused here, with numbers that fit.
        """
        if is_encoder(info):
            trained = info.llm.context_length if info.llm else 0
            if trained and params.prompt_tokens > trained:
                return replace(params, prompt_tokens=trained), " (the longest it takes)"
            return params, ""
        rows = position_rows(info)
        used = params.n_ctx or params.prompt_tokens + params.gen_tokens
        if rows and used > rows:
            raise BenchParamsError(
                f"{info.path.name} has a learned position table of {rows} rows: {used} tokens"
                f" (--prompt-tokens {params.prompt_tokens} + --gen-tokens {params.gen_tokens})"
                " would run past it, which aborts llama.cpp",
                hint=f"bench with at most {rows} tokens, e.g. --prompt-tokens {rows * 3 // 4}"
                f" --gen-tokens {rows - rows * 3 // 4}",
            )
        return params, ""

    def bench_plan(self, info: ModelInfo, params: Any, note: str) -> str:
        if is_encoder(info):
            return (
                f"embedding {params.prompt_tokens}-token inputs{note},"
                f" at least {params.runs} runs and {params.min_seconds:g} s"
            )
        return f"{params.reps} reps of pp{params.prompt_tokens} + tg{params.gen_tokens}"

    def bench_warnings(self, info: ModelInfo, params: Any) -> tuple[str, ...]:
        """A benchmark context beyond the one the model was trained at: the speed is real,
        but not one the model would be used at."""
        if is_encoder(info):
            return ()  # the agent embeds at most the trained length, and says so
        from edgeshrink.plan import context_warnings  # plan reads this module's tables

        used = params.n_ctx or params.prompt_tokens + params.gen_tokens
        asked = (
            f"--n-ctx {params.n_ctx}"
            if params.n_ctx
            else f"--prompt-tokens {params.prompt_tokens} + --gen-tokens {params.gen_tokens}"
        )
        return context_warnings(
            info, used, asked=f"{asked} = {used} tokens",
            remedy="so this speed is not one it would be used at",
        )  # fmt: skip


BACKEND = GgufBackend()
