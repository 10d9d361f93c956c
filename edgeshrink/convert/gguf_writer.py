"""Writing a GGUF file fast: header, metadata and tensor table through gguf-py, then the tensor
data by a few threads into a preallocated, shared mmap of the output (see hf_to_gguf.py)."""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.convert.safetensors_reader import Checkpoint
from edgeshrink.convert.tensor_plan import TensorJob
from edgeshrink.errors import ModelFileError

if TYPE_CHECKING:
    import numpy as np

BLOCK_BYTES = 32 * 1024 * 1024  # rows converted at a time: bounds the working memory

# progress(bytes written so far, bytes to write in all, GGUF name of the tensor just written)
ProgressFn = Callable[[int, int, str], None]


def streaming_writer_class() -> type:
    import gguf
    import numpy as np
    from gguf.constants import GGUFEndian, GGUFValueType

    class StreamingGGUFWriter(gguf.GGUFWriter):
        """A GGUFWriter that writes header, metadata and tensor table only (the data is
        written by :func:`write_tensor_data`), and packs big arrays quickly."""

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            # gguf-py packs arrays one element at a time (~20 us each): a 150k-token
            # vocabulary would take seconds.  Homogeneous str/int/float lists are
            # packed here in one go, byte for byte as gguf-py would; anything else,
            # and big-endian files, go the usual way.
            if (
                vtype != GGUFValueType.ARRAY
                or sub_type is not None
                or self.endianess != GGUFEndian.LITTLE
                or not isinstance(val, list)
                or not val
            ):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            kind = type(val[0])
            if kind not in (str, int, float) or not all(type(v) is kind for v in val):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            head = struct.pack("<I", vtype) if add_vtype else b""
            if kind is str:
                encoded = (v.encode("utf-8") for v in val)
                body = b"".join(struct.pack("<Q", len(b)) + b for b in encoded)
                ltype = GGUFValueType.STRING
            elif kind is int:
                ltype = GGUFValueType.INT32
                body = np.asarray(val, dtype="<i4").tobytes()
            else:
                ltype = GGUFValueType.FLOAT32
                body = np.asarray(val, dtype="<f4").tobytes()
            return head + struct.pack("<IQ", ltype, len(val)) + body

    return StreamingGGUFWriter


def write_tensor_data(
    writer: Any,
    jobs: list[TensorJob],
    ckpt: Checkpoint,
    progress: ProgressFn | None,
    rss: RssSampler,
    *,
    max_writers: int,
) -> int:
    """Write every job's data after the tensor table ``writer`` has written, by at most
    ``max_writers`` threads; returns the number of weights that overflowed F16."""
    fout = writer.fout[0]
    fout.flush()
    align = writer.data_alignment
    data_start = writer.ggml_pad(fout.tell(), align)
    offsets, end = [], data_start
    for job in jobs:
        offsets.append(end)
        end += writer.ggml_pad(job.nbytes, align)
    # GGUFWriter's file is write-only; a shared writable mapping needs read access too.
    fd = os.open(fout.name, os.O_RDWR)
    try:
        return _write_jobs(fd, end, offsets, jobs, ckpt, progress, rss, max_writers)
    finally:
        os.close(fd)


def _write_jobs(
    fd: int,
    end: int,
    offsets: list[int],
    jobs: list[TensorJob],
    ckpt: Checkpoint,
    progress: ProgressFn | None,
    rss: RssSampler,
    max_writers: int,
) -> int:
    import numpy as np

    preallocated = _preallocate(fd, end)
    total = sum(job.nbytes for job in jobs)
    dst_map = None
    if preallocated and end:
        try:
            dst_map = mmap.mmap(fd, end)
        except (OSError, OverflowError):  # no address space for it (a 32-bit host): pwrite
            dst_map = None
    dst = np.frombuffer(dst_map, dtype=np.uint8) if dst_map is not None else None
    can_drop = dst_map is not None and hasattr(mmap, "MADV_DONTNEED")
    dst_view = memoryview(dst_map) if dst_map is not None and hasattr(os, "preadv") else None

    def drop(first: int, last: int) -> None:
        """Out of this process's resident set; the dirty pages stay in the page cache."""
        if can_drop:
            first = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE
            last = last // mmap.PAGESIZE * mmap.PAGESIZE
            if last > first:
                dst_map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def read_into_place(job: TensorJob, pos: int) -> None:
        """A tensor kept as it is: read() straight into its place in the output mapping
        (one copy, in the kernel, and the source is never mapped into this process)."""
        assert job.source is not None and dst_view is not None
        src_fd, offset = ckpt.file_of(job.source.name).fileno(), job.source.offset
        done = 0
        while done < job.nbytes:
            count = min(BLOCK_BYTES, job.nbytes - done)
            got = os.preadv(src_fd, [dst_view[pos + done : pos + done + count]], offset + done)
            if got <= 0:
                raise ModelFileError(
                    f"{ckpt.file_of(job.source.name).path.name}: tensor {job.source.name!r} "
                    f"ends {job.nbytes - done} bytes early",
                    hint="the safetensors file changed or is truncated: copy it again",
                )
            drop(pos + done, pos + done + got)
            done += got

    def write_job(index: int) -> int:
        job, pos, overflow = jobs[index], offsets[index], [0]
        if job.is_copy and dst_view is not None:
            read_into_place(job, pos)
            return 0
        for block in _job_blocks(job, ckpt, overflow):
            n = block.nbytes
            if dst is None:
                data = memoryview(np.ascontiguousarray(block)).cast("B")
                while data:
                    written = os.pwrite(fd, data, pos)
                    data, pos = data[written:], pos + written
                continue
            np.copyto(dst[pos : pos + n].view(block.dtype).reshape(block.shape), block)
            drop(pos, pos + n)
            pos += n
        if job.source is not None:
            ckpt.release(job.source.name)
        return overflow[0]

    # Biggest first: the last tensors to finish are small ones, so the writers end together.
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].nbytes)
    workers = max(1, min(max_writers, _usable_cores(), len(jobs)))
    overflowed = done = 0
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gguf-write") as pool:
            pending = {pool.submit(write_job, i): i for i in order}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = pending.pop(future)
                        overflowed += future.result()  # re-raises a writer's error
                        rss.sample()
                        done += jobs[index].nbytes
                        if progress is not None:
                            progress(done, total, jobs[index].name)
            finally:
                for future in pending:
                    future.cancel()
    finally:
        dst = None  # the writers are done: the last view of the map goes
        if dst_view is not None:
            dst_view.release()
        if dst_map is not None:
            with contextlib.suppress(BufferError):  # a view kept alive by a traceback
                dst_map.close()
    return overflowed


def _preallocate(fd: int, size: int) -> bool:
    """Give the output its final size; True when its blocks are reserved (mmap is safe).
    A full disk fails here (ENOSPC), before any tensor data is written."""
    try:
        os.posix_fallocate(fd, 0, size)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    os.ftruncate(fd, size)
    return False


@contextlib.contextmanager
def disk_full_is_an_error(path: Path, needed: int) -> Iterator[None]:
    """ENOSPC anywhere in the writing (header, preallocation, pwrite) as one clear error."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(path.absolute().parent).free
        raise ModelFileError(
            f"not enough disk space for {path.name}: it needs {needed / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free in {path.absolute().parent}",
            hint="free some space or write the GGUF to another disk (-o PATH)",
        ) from exc


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _to_out_type(
    block: np.ndarray, src_dtype: str, out_type: str, overflow: list[int]
) -> np.ndarray:
    import gguf
    import numpy as np
    from gguf.constants import GGMLQuantizationType

    if src_dtype == out_type:
        return np.ascontiguousarray(block)
    values = _as_f32(block, src_dtype)
    if out_type == "F32":
        return values
    if out_type == "F16":
        with np.errstate(over="ignore"):
            half = values.astype(np.float16)
        overflow[0] += int(np.count_nonzero(np.isinf(half)) - np.count_nonzero(np.isinf(values)))
        return half
    return gguf.quants.quantize(values, GGMLQuantizationType.BF16).view(np.uint16)


def _as_f32(block: np.ndarray, src_dtype: str) -> np.ndarray:
    import numpy as np

    if src_dtype == "BF16":
        return (block.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.ascontiguousarray(block, dtype=np.float32)


def _job_blocks(job: TensorJob, ckpt: Checkpoint, overflow: list[int]) -> Iterator[np.ndarray]:
    """The job's output in row order, as blocks (possibly strided views of the source)."""
    import numpy as np

    if job.data is not None:
        yield _to_out_type(np.asarray(job.data, dtype=np.float32), "F32", job.out_type, overflow)
        return
    assert job.source is not None
    src = ckpt.array(job.source.name)
    src_dtype = job.source.dtype
    if src.ndim == 0:
        src = src.reshape(1)
    rows = src.shape[0]
    row_f32_bytes = 4 * max(1, math.prod(src.shape[1:]))
    step = max(1, BLOCK_BYTES // row_f32_bytes)
    if job.permute_heads:
        head_rows = rows // job.permute_heads
        step = max(head_rows, step // head_rows * head_rows)
    row_bytes = src.nbytes // max(rows, 1)
    for start in range(0, rows, step):
        if start:
            # The previous block is written: give its source pages back, so a huge
            # embedding never sits in this process whole.
            ckpt.release(job.source.name, (start - step) * row_bytes, start * row_bytes)
        block = src[start : start + step]
        if job.permute_heads:
            # transformers' rotate-half layout -> llama.cpp's pairwise layout, per head:
            # within each head, row j*2+i comes from row i*(head_dim/2)+j.
            # A strided view: the writer copies it into place, no temporary.
            n = block.shape[0] // head_rows
            block = block.reshape(n, 2, head_rows // 2, *block.shape[1:]).swapaxes(1, 2)
        if job.add != 0.0 or job.scale != 1.0:
            values = _as_f32(block, src_dtype) * np.float32(job.scale) + np.float32(job.add)
            yield _to_out_type(values, "F32", job.out_type, overflow)
        else:
            yield _to_out_type(block, src_dtype, job.out_type, overflow)


class RssSampler:
    """The largest VmRSS seen at the sample points (each tensor's end, before its pages go).

    Sampling rather than VmHWM: the process's high-water mark may predate the
    conversion, and resetting it would disturb whoever else measures this process.
    """

    def __init__(self) -> None:
        self.peak_kb = 0
        self.available = os.path.exists("/proc/self/status")
        self.sample()

    def sample(self) -> None:
        if not self.available:
            return
        try:
            with open("/proc/self/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                        return
        except OSError:
            self.available = False

    @property
    def peak_mb(self) -> float | None:
        return self.peak_kb / 1024 if self.available else None


def gguf_dtype_args(out_type: str) -> tuple[Any, Any, int]:
    import numpy as np
    from gguf.constants import GGMLQuantizationType

    return {
        "F32": (np.dtype(np.float32), GGMLQuantizationType.F32, 4),
        "F16": (np.dtype(np.float16), GGMLQuantizationType.F16, 2),
        "BF16": (np.dtype(np.uint16), GGMLQuantizationType.BF16, 2),
    }[out_type]
