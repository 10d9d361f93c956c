"""Read safetensors checkpoints without torch or the safetensors package.

The format is an 8-byte little-endian header length, a JSON header that maps
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the first byte after the header), then the raw bytes.
A checkpoint is one ``model.safetensors`` or several shards listed by
``model.safetensors.index.json``.

Tensors are handed out as views of a read-only ``mmap`` of their file, so
nothing is read until it is used; :meth:`SafetensorsFile.release` drops a
tensor's pages from this process's resident set once it has been written, so
the peak stays near the largest tensor, not the model.  BF16 has no numpy
dtype: its views are ``uint16`` holding the raw bits.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.errors import ModelFileError

if TYPE_CHECKING:
    import numpy as np

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# A header larger than this is not a safetensors header (the reference reader's own limit).
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype name -> (numpy dtype name, bytes per element).  BF16 is read as raw uint16.
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
    "F8_E4M3": ("u1", 1),
    "F8_E5M2": ("u1", 1),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, dtype, shape and byte range in that file."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in ``file``
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


class SafetensorsFile:
    """One safetensors file: its validated header and, once opened, a read-only mmap."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self.entries: dict[str, TensorEntry] = {}
        self._handle: Any = None
        self._mmap: mmap.mmap | None = None
        self._opening = threading.Lock()  # tensors may be read from several threads
        self._read_header()

    def _read_header(self) -> None:
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise self._error(f"is {size} bytes, too short for a safetensors header")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                    raise self._error(
                        f"declares a {header_len}-byte header but the file is {size} bytes"
                    )
                raw = handle.read(header_len)
        except FileNotFoundError as exc:
            raise ModelFileError(
                f"checkpoint file {self.path} does not exist",
                hint="the checkpoint is incomplete: copy or download the missing file",
            ) from exc
        except IsADirectoryError as exc:
            raise self._error("is a directory, not a safetensors file") from exc
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._error(f"has a header that is not JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise self._error("has a header that is not a JSON object")

        data_start = 8 + header_len
        data_len = size - data_start
        self.metadata = {
            str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()
        }
        for name, spec in header.items():
            self.entries[name] = self._entry(name, spec, data_start, data_len)

    def _entry(self, name: str, spec: Any, data_start: int, data_len: int) -> TensorEntry:
        try:
            dtype = str(spec["dtype"])
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._error(f"has a malformed header entry for tensor {name!r}") from exc
        if any(d < 0 for d in shape) or len(shape) > 8:
            raise self._error(f"gives tensor {name!r} the impossible shape {list(shape)}")
        if dtype not in DTYPES:
            raise self._error(
                f"stores tensor {name!r} as {dtype}, which edgeshrink cannot read",
                hint=f"readable dtypes: {', '.join(DTYPES)}",
            )
        n = 1
        for dim in shape:
            n *= dim
        expected = n * DTYPES[dtype][1]
        if end - begin != expected or begin < 0:
            raise self._error(
                f"gives tensor {name!r} {end - begin} bytes, but {dtype} {list(shape)} needs {expected}"
            )
        if end > data_len:
            raise self._error(
                f"is truncated: tensor {name!r} ends at byte {data_start + end} "
                f"but the file has {data_start + data_len}"
            )
        return TensorEntry(name, self.path, dtype, shape, data_start + begin, expected)

    def _error(self, what: str, *, hint: str | None = None) -> ModelFileError:
        return ModelFileError(
            f"{self.path} {what}",
            hint=hint or "the safetensors file is damaged or incomplete: copy or download it again",
        )

    def open(self) -> None:
        with self._opening:
            if self._handle is not None:
                return
            self._handle = open(self.path, "rb")  # noqa: SIM115 - lives as long as the mapping
            size = os.fstat(self._handle.fileno()).st_size
            if size == 0:
                self._mmap = None
                return
            self._mmap = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ)

    def fileno(self) -> int:
        self.open()
        return self._handle.fileno()

    def array(self, name: str) -> np.ndarray:
        """A read-only numpy view of tensor ``name`` (BF16 as raw uint16 bits)."""
        import numpy as np

        entry = self.entries[name]
        self.open()
        if entry.nbytes == 0 or self._mmap is None:
            return np.zeros(entry.shape, dtype=DTYPES[entry.dtype][0])
        view = np.frombuffer(
            self._mmap, dtype=DTYPES[entry.dtype][0], count=entry.n_elements, offset=entry.offset
        )
        return view.reshape(entry.shape)

    def release(self, name: str, begin: int = 0, end: int | None = None) -> None:
        """Drop bytes [begin, end) of tensor ``name`` from this process's resident set.

        The pages stay in the page cache; touching them again faults them back in.
        """
        entry = self.entries[name]
        if self._mmap is None or entry.nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        first = entry.offset + begin
        last = entry.offset + (entry.nbytes if end is None else min(end, entry.nbytes))
        start = first // page * page
        if last > start:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, last - start)

    def close(self) -> None:
        if self._mmap is not None:
            # A numpy view may still point into the mapping; it is unmapped with the view.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class Checkpoint:
    """Every tensor of a Hugging Face checkpoint directory, across its shards, by name."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.files: list[SafetensorsFile] = []
        self.entries: dict[str, TensorEntry] = {}
        self._by_path: dict[Path, SafetensorsFile] = {}
        for path in shard_paths(self.directory):
            shard = SafetensorsFile(path)
            self.files.append(shard)
            self._by_path[shard.path] = shard
            for name, entry in shard.entries.items():
                if name in self.entries:
                    raise ModelFileError(
                        f"tensor {name!r} is stored twice: in {self.entries[name].file.name} "
                        f"and in {path.name}",
                        hint="the checkpoint mixes files from two exports: remove the stale shards",
                    )
                self.entries[name] = entry
        self._check_index()

    def _check_index(self) -> None:
        index = self.directory / INDEX_NAME
        if not index.is_file():
            return
        weight_map = _read_index(index)
        missing = sorted(name for name in weight_map if name not in self.entries)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ModelFileError(
                f"{index.name} lists {len(missing)} tensor(s) that no shard holds: {shown}",
                hint="a shard is missing or stale: copy or download the checkpoint again",
            )

    @property
    def size_bytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[TensorEntry]:
        return iter(self.entries.values())

    def file_of(self, name: str) -> SafetensorsFile:
        return self._by_path[self.entries[name].file]

    def array(self, name: str) -> np.ndarray:
        return self.file_of(name).array(name)

    def release(self, name: str, begin: int = 0, end: int | None = None) -> None:
        self.file_of(name).release(name, begin, end)

    def close(self) -> None:
        for shard in self.files:
            shard.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_index(index: Path) -> dict[str, str]:
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
        weight_map = doc["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(
            f"{index} is not a valid safetensors index ({exc})",
            hint="copy or download model.safetensors.index.json again",
        ) from exc
    return {str(k): str(v) for k, v in weight_map.items()}


def shard_paths(directory: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint directory, in shard order.

    With an index, exactly the files it names (each must exist); otherwise
    ``model.safetensors``, or every ``*.safetensors`` file in sorted order.
    """
    directory = Path(directory)
    index = directory / INDEX_NAME
    if index.is_file():
        names = sorted(set(_read_index(index).values()))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise ModelFileError(
                f"{directory} is missing shard(s) {', '.join(missing)} named by {INDEX_NAME}",
                hint="the download is incomplete: copy or download the missing shards",
            )
        return [directory / n for n in names]
    if (directory / SINGLE_NAME).is_file():
        return [directory / SINGLE_NAME]
    found = sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    if not found:
        bins = sorted(p.name for p in directory.glob("*.bin"))
        hint = (
            f"only PyTorch pickles ({', '.join(bins[:3])}) are here; save the model with "
            "save_pretrained(..., safe_serialization=True) to get safetensors"
            if bins
            else "download the model's *.safetensors files into this directory"
        )
        raise ModelFileError(f"{directory} has no model.safetensors (or shards)", hint=hint)
    return found
