"""Reading a GGUF file: its header checked against the file's size before gguf-py reads
it (check_gguf_layout), read_gguf, and what `inspect` reports (inspect_gguf)."""

from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from edgeshrink.errors import ModelFileError
from edgeshrink.formats.base import LlmShape, ModelInfo, TensorTypeCount
from edgeshrink.formats.gguf.quant_types import FORMAT

GGUF_MAGIC = b"GGUF"


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
