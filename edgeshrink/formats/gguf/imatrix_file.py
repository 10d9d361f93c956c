"""llama.cpp's importance-matrix files: read, write, and checked against a model.

The format is llama-imatrix's (tools/imatrix/imatrix.cpp, common/imatrix-loader.cpp),
so a file either tool makes works in the other and in llama-quantize:

- a GGUF whose ``general.type`` is ``imatrix``, with ``imatrix.datasets`` (the texts'
  names), ``imatrix.chunk_count`` and ``imatrix.chunk_size``;
- for each weight ``W`` that multiplies activations, two F32 tensors:
  ``W.in_sum2`` (ne = [columns, matrices]: the sum of the squared activations that
  multiply each input column) and ``W.counts`` (ne = [1, matrices]: how many activation
  rows went in). The importance of a column is ``in_sum2 / counts``.

The legacy ``.dat`` format (llama-imatrix ``--output-format dat``) is read too.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.errors import ImatrixError
from edgeshrink.formats.gguf.reader import GGUF_MAGIC, read_gguf, tensor_shapes
from edgeshrink.util import atomic_path

SUMS_SUFFIX, COUNTS_SUFFIX = ".in_sum2", ".counts"
KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = (
    "imatrix.datasets",
    "imatrix.chunk_count",
    "imatrix.chunk_size",
)
# What llama-quantize records in a model quantized with an imatrix (tools/quantize).
QUANTIZE_KEYS = (
    "quantize.imatrix.file",
    "quantize.imatrix.dataset",
    "quantize.imatrix.entries_count",
    "quantize.imatrix.chunks_count",
)
MAX_LEGACY_ENTRIES = 1 << 20
MAX_NAME = 1 << 12


@dataclass(frozen=True)
class Imatrix:
    """Per weight: the summed squared activations of each input column, one row per matrix
    (``sums``, float32), and how many activation rows each matrix saw (``counts``)."""

    sums: dict[str, Any] = field(compare=False)  # name -> float32 array (matrices, columns)
    counts: dict[str, Any] = field(compare=False)  # name -> int64 array (matrices,)
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # a .dat file: sums are means x calls, counts the calls

    def means(self) -> dict[str, Any]:
        """What llama-quantize hands the quantizer: the mean squared activation of each
        column, flattened over the matrices (1 where a matrix saw nothing)."""
        import numpy as np

        out = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].astype(np.float32)[:, None]
            # A matrix that saw nothing: 1 (GGUF), its stored values (legacy), as llama-quantize.
            unseen = sums.copy() if self.legacy else np.ones_like(sums)
            mean = np.divide(sums, counts, out=unseen, where=counts > 0)
            out[name] = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        return out

    def columns(self, name: str) -> int:
        return int(self.sums[name].size)


def read_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read an importance matrix made by llama-imatrix or edgeshrink (GGUF or legacy .dat)."""
    path = Path(path)
    if not path.is_file():
        raise ImatrixError(f"{path}: no such file", hint="check the --imatrix path")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == GGUF_MAGIC:
        return _read_gguf_imatrix(path)
    return _read_legacy(path)


def _read_gguf_imatrix(path: Path) -> Imatrix:
    import numpy as np
    from gguf.constants import GGMLQuantizationType

    reader = read_gguf(path)
    parts: dict[str, dict[str, Any]] = {}
    for t in reader.tensors:
        for suffix in (SUMS_SUFFIX, COUNTS_SUFFIX):
            if t.name.endswith(suffix):
                if t.tensor_type != GGMLQuantizationType.F32:
                    raise ImatrixError(f"{path}: {t.name} is {t.tensor_type.name}, not F32")
                parts.setdefault(t.name[: -len(suffix)], {})[suffix] = t
    if not parts:
        raise ImatrixError(
            f"{path}: a GGUF file without importance-matrix tensors (*.in_sum2, *.counts)",
            hint="give a file made by `edgeshrink imatrix` or llama-imatrix",
        )
    sums, counts = {}, {}
    for name, pair in sorted(parts.items()):
        if len(pair) != 2:
            raise ImatrixError(f"{path}: {name} has sums without counts, or counts without sums")
        values = np.asarray(pair[SUMS_SUFFIX].data, dtype=np.float32).reshape(-1)
        n = np.asarray(pair[COUNTS_SUFFIX].data, dtype=np.float32).reshape(-1)
        if not n.size or values.size % n.size:
            raise ImatrixError(f"{path}: {name} has {values.size} sums for {n.size} matrices")
        sums[name] = values.reshape(n.size, -1).copy()
        counts[name] = np.rint(n).astype(np.int64)
    fields = reader.fields

    def scalar(key: str) -> int:
        f = fields.get(key)
        return int(f.contents()) if f is not None and f.types else 0

    datasets = fields.get(KEY_DATASETS)
    names = tuple(str(d) for d in datasets.contents()) if datasets is not None else ()
    return Imatrix(sums, counts, names, scalar(KEY_CHUNK_COUNT), scalar(KEY_CHUNK_SIZE))


def _read_legacy(path: Path) -> Imatrix:
    """The .dat format: n_entries, then per entry (name, calls, n values, values), then
    optionally the chunk count and the dataset's name; every length checked first."""
    import numpy as np

    data = path.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ImatrixError(
                f"{path}: not an importance matrix: {what} at byte {pos} needs {n} bytes, "
                f"{len(data) - pos} are left",
                hint="give a file made by `edgeshrink imatrix` or llama-imatrix",
            )
        pos += n
        return data[pos - n : pos]

    def i32(what: str) -> int:
        return struct.unpack("<i", take(4, what))[0]

    n_entries = i32("the entry count")
    if not 0 < n_entries <= MAX_LEGACY_ENTRIES:
        raise ImatrixError(
            f"{path}: not an importance matrix (it starts with an entry count of {n_entries})",
            hint="give a file made by `edgeshrink imatrix` or llama-imatrix",
        )
    sums, counts = {}, {}
    for i in range(n_entries):
        length = i32(f"entry {i}'s name length")
        if not 0 < length <= MAX_NAME:
            take(-1, f"entry {i}'s name of {length} bytes")
        name = take(length, f"entry {i}'s name").decode("utf-8", "replace")
        calls, n_values = i32(f"{name}'s calls"), i32(f"{name}'s value count")
        raw = take(4 * n_values, f"{name}'s {n_values} values")
        sums[name] = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(1, -1)
        counts[name] = np.array([calls], dtype=np.int64)
    chunk_count, datasets = 0, ()
    if len(data) - pos >= 8:
        chunk_count, length = struct.unpack_from("<ii", data, pos)
        if 0 < length <= len(data) - pos - 8:
            datasets = (data[pos + 8 : pos + 8 + length].decode("utf-8", "replace"),)
    return Imatrix(sums, counts, datasets, chunk_count, 0, legacy=True)


def write_imatrix(imatrix: Imatrix, path: str | os.PathLike[str]) -> Path:
    """Write ``imatrix`` as llama-imatrix writes its GGUF (same keys, names and order),
    under a temporary name renamed into place."""
    import gguf
    import numpy as np

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="")
        writer.kv_data[0].pop("general.architecture", None)  # llama-imatrix writes none
        writer.add_type("imatrix")
        writer.add_array(KEY_DATASETS, list(imatrix.datasets))
        writer.add_uint32(KEY_CHUNK_COUNT, imatrix.chunk_count)
        writer.add_uint32(KEY_CHUNK_SIZE, imatrix.chunk_size)
        for name in sorted(imatrix.sums):
            sums = np.ascontiguousarray(imatrix.sums[name], dtype=np.float32)
            counts = imatrix.counts[name].astype(np.float32).reshape(-1, 1)
            if len(sums) == 1:  # ggml drops trailing dimensions of 1 from what it writes
                sums, counts = sums.reshape(-1), counts.reshape(-1)
            writer.add_tensor(name + SUMS_SUFFIX, sums)
            writer.add_tensor(name + COUNTS_SUFFIX, counts)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def check_imatrix_fits(imatrix: Imatrix, model: str | os.PathLike[str], source: str) -> None:
    """Refuse an importance matrix made for another model: one of its entries names a
    tensor the model lacks, or has another column count, or it covers none of the
    model's matrices (llama.cpp would quantize those without it, silently)."""
    model = Path(model)
    shapes = {name: shape for name, shape, _type in tensor_shapes(model)}
    hint = f"compute one for this model: `edgeshrink imatrix {model.name}`"
    missing = sorted(n for n in imatrix.sums if n not in shapes)
    if missing:
        shown = ", ".join(missing[:2]) + (
            f" and {len(missing) - 2} more" if len(missing) > 2 else ""
        )
        raise ImatrixError(
            f"{source} is an importance matrix of another model: {model.name} has no tensor "
            f"{shown} ({len(missing)} of its {len(imatrix.sums)} entries)",
            hint=hint,
        )
    for name in sorted(imatrix.sums):
        shape = shapes[name]
        expected = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if imatrix.columns(name) != expected:
            raise ImatrixError(
                f"{source} is an importance matrix of another model: {name} takes "
                f"{expected} inputs in {model.name}, {imatrix.columns(name)} in the imatrix",
                hint=hint,
            )
    if not any(name.startswith("blk.") for name in imatrix.sums):
        raise ImatrixError(f"{source} covers none of {model.name}'s matrices", hint=hint)


def imatrix_kv(imatrix: Imatrix, file_name: str) -> list[tuple[str, str | int]]:
    """The metadata llama-quantize adds to a model quantized with ``imatrix``."""
    kv: list[tuple[str, str | int]] = [(QUANTIZE_KEYS[0], file_name[:127])]
    if imatrix.datasets:
        kv.append((QUANTIZE_KEYS[1], imatrix.datasets[0][:127]))
    kv.append((QUANTIZE_KEYS[2], len(imatrix.sums)))
    if imatrix.chunk_count > 0:
        kv.append((QUANTIZE_KEYS[3], imatrix.chunk_count))
    return kv
