"""A streaming safetensors writer (tensor by tensor, so a gigabyte checkpoint is never held
whole) and the dtype round trips the test checkpoints store their weights with."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.convert.safetensors_reader import DTYPES

if TYPE_CHECKING:
    import numpy as np

# Bytes per element of every dtype the reader knows (edgeshrink/convert/safetensors_reader.py).
_ITEM_SIZE = {name: size for name, (_, size) in DTYPES.items()}


def _st_header(
    tensors: Sequence[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None
) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * _ITEM_SIZE[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer aligns the data to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Sequence[tuple[str, str, tuple[int, ...]]],
    arrays: Iterable[np.ndarray],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a safetensors file: ``tensors`` is (name, dtype such as "F32"/"BF16"/"I64", shape)
    in file order, ``arrays`` yields their data in that order (BF16 as uint16 bits), one at a
    time; the file appears under its name only once it is whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as handle:
            handle.write(_st_header(tensors, metadata))
            for (name, dtype, shape), array in zip(tensors, arrays, strict=True):
                if tuple(array.shape) != tuple(shape) or array.dtype.itemsize != _ITEM_SIZE[dtype]:
                    raise ValueError(
                        f"tensor {name}: got {array.dtype} {array.shape}, declared {dtype} {shape}"
                    )
                array.tofile(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def encode_weights(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> the array stored for ``dtype`` ("f32", "f16", or "bf16" as uint16 bits)."""
    import numpy as np

    if dtype == "f32":
        return values.astype(np.float32, copy=False)
    if dtype == "f16":
        return values.astype(np.float16)
    bits = values.astype(np.float32, copy=False).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(
        16
    )
    return rounded.astype(np.uint16)


def decode_weights(stored: np.ndarray, dtype: str) -> np.ndarray:
    import numpy as np

    if dtype == "bf16":
        return (stored.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return stored.astype(np.float32)
