"""quantize_gguf: llama.cpp's own quantizer (``llama_model_quantize`` through
llama-cpp-python), run in a child process, and what it did (fallbacks, tensor types)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from edgeshrink.errors import QuantizationError, RuntimeMissingError
from edgeshrink.formats.base import TensorTypeCount
from edgeshrink.formats.gguf.imatrix_file import check_imatrix_fits, imatrix_kv, read_imatrix
from edgeshrink.formats.gguf.quant_types import quant_type, supported_by_llama_cpp
from edgeshrink.formats.gguf.reader import inspect_gguf, tensor_shapes


@dataclass(frozen=True)
class QuantizeOutcome:
    output: Path
    quant: str
    seconds: float
    fallbacks: tuple[tuple[str, str, str], ...]  # (tensor, wanted type, used type)
    tensor_types: tuple[TensorTypeCount, ...]
    llama_cpp_version: str
    log_tail: str
    # With dry_run: the type llama.cpp would give each tensor (nothing is written).
    planned: tuple[tuple[str, str], ...] = ()


_FALLBACK_LINE = re.compile(
    r"warning:\s+(?P<name>\S+)\s+- ncols\s+\d+ not divisible by\s+\d+ \(required for type\s+"
    r"(?P<wanted>\S+)\).*?-> falling back to\s+(?P<used>\S+)"
)

# llama.cpp's line for each tensor: "[  3/272] blk.0.attn_k.weight - [576, 192, 1, 1],
# type = q4_1, size = 0.07 MiB -> 0.07 MiB (q5_0)"; a tensor kept as it is has no "(type)".
_TENSOR_LINE = re.compile(
    r"^\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[[^\]]*\], type =\s*(?P<type>\w+), "
    r"size =[^(\n]*(?:\((?P<new>\w+)\))?",
    re.MULTILINE,
)

_WORKER = r"""
import json, sys, time, ctypes
args = json.loads(sys.argv[1])
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = args["ftype"]
params.nthread = args["threads"]
params.allow_requantize = args["allow_requantize"]
params.only_copy = args["only_copy"]
params.pure = args["pure"]
params.dry_run = args["dry_run"]
prune = (ctypes.c_int32 * (len(args["prune"]) + 1))(*args["prune"], -1)  # -1 ends the list
if args["prune"]:
    params.prune_layers = ctypes.cast(prune, ctypes.POINTER(ctypes.c_int32))
keep = []  # what the C arrays point into stays alive until the end
if args["imatrix"]:  # {name, data, size}, ended by a NULL name
    import numpy as np
    with np.load(args["imatrix"]) as data:
        arrays = {n: np.ascontiguousarray(data[n], dtype=np.float32) for n in data.files}
    entries = (llama_cpp.llama_model_imatrix_data * (len(arrays) + 1))()
    for entry, (name, values) in zip(entries, sorted(arrays.items())):
        keep += [name.encode(), values]
        entry.name, entry.size = keep[-2], values.size
        entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
if args["tensor_types"]:  # {pattern, type}, ended by a NULL pattern
    overrides = (llama_cpp.llama_model_tensor_override * (len(args["tensor_types"]) + 1))()
    for entry, (pattern, ggml_type) in zip(overrides, args["tensor_types"]):
        keep.append(pattern.encode())
        entry.pattern, entry.type = keep[-1], ggml_type
    params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
if args["kv"]:  # ended by an empty key
    kv = (llama_cpp.llama_model_kv_override * (len(args["kv"]) + 1))()
    for entry, (key, value) in zip(kv, args["kv"]):
        entry.key = key.encode()
        if isinstance(value, str):
            entry.tag, entry.value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()[:127]
        else:
            entry.tag, entry.value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, value
    params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(llama_cpp.llama_model_kv_override))
start = time.perf_counter()
rc = llama_cpp.llama_model_quantize(args["src"].encode(), args["dst"].encode(), ctypes.byref(params))
sys.stdout.write(json.dumps({"rc": int(rc), "seconds": time.perf_counter() - start,
                             "version": llama_cpp.__version__}))
"""


def llama_cpp_version() -> str | None:
    try:
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
    prune_layers: tuple[int, ...] = (),
    imatrix: str | os.PathLike[str] | None = None,
    tensor_types: Mapping[str, str] | None = None,
    pure: bool = False,
    dry_run: bool = False,
) -> QuantizeOutcome:
    """Quantize ``src`` to ``dst`` with llama.cpp's own quantizer; ``prune_layers`` (0-based)
    are removed in the same pass, and when ``quant`` is the file's own type the tensors
    are copied, not requantized.

    ``imatrix`` is an importance-matrix file of ``src`` (llama-imatrix's format; checked to
    belong to this model), recorded in the output's metadata as llama-quantize records it.
    ``tensor_types`` gives some tensors (by exact name) a ggml type of their own, as
    ``llama-quantize --tensor-type``; ``pure`` puts every tensor at ``quant``'s base type.
    ``dry_run`` writes nothing and returns the type each tensor would get (``planned``).

    ``dst`` must be a temporary name: the caller renames it into place once the
    manifest is written (see edgeshrink.shrink).
    """
    src, dst = Path(src), Path(dst)
    qtype = quant_type(quant)
    info = inspect_gguf(src)
    only_copy = bool(prune_layers) and qtype.name == info.file_type
    if info.llm is not None and prune_layers:
        check_prune_layers(prune_layers, info.llm.n_layer, src.name)
    if info.is_quantized and not allow_requantize and not only_copy:
        raise QuantizationError(
            f"{src}: already quantized ({info.file_type}); re-quantizing loses more quality",
            hint="quantize from the F32/F16/BF16 original, or pass --allow-requantize",
        )
    if qtype.needs_imatrix and imatrix is None:
        raise QuantizationError(
            f"{qtype.name} needs an importance matrix and none was given",
            hint="let edgeshrink compute one (drop --no-imatrix) or give one with --imatrix FILE",
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
        "only_copy": only_copy,
        "prune": sorted(prune_layers),
        "pure": bool(pure),
        "dry_run": bool(dry_run),
        "tensor_types": [
            [f"^{re.escape(name)}$", ggml_type_number(t)]
            for name, t in (tensor_types or {}).items()
        ],
        "imatrix": None,
        "kv": [],
    }
    means = dst.with_name(f".{dst.name}.imatrix.npz")
    try:
        if imatrix is not None:
            job["imatrix"], job["kv"] = str(means), imatrix_arrays(imatrix, src, means)
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
    finally:
        means.unlink(missing_ok=True)
    log = proc.stderr
    tail = "\n".join(log.strip().splitlines()[-8:])
    result: dict[str, Any] = {}
    if proc.stdout.strip():
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except json.JSONDecodeError:
            result = {}
    if proc.returncode != 0 or result.get("rc") != 0 or not (dry_run or dst.exists()):
        reason = _quantize_failure_reason(log) or f"exit code {proc.returncode}"
        free = shutil.disk_usage(dst.parent).free
        if "iostream error" in log and free < src.stat().st_size:
            # llama.cpp writes with std::ofstream: a full disk is only "iostream error".
            raise QuantizationError(
                f"llama.cpp could not write {src.stem} as {qtype.name}: the disk is full "
                f"({free / 2**20:.1f} MiB free in {dst.parent})",
                hint="free some space or write the artifact to another disk (-o PATH)",
            )
        if os.environ.get("EDGESHRINK_DEBUG") == "1":
            sys.stderr.write(f"llama.cpp's log (quantizing {src.name} to {qtype.name}):\n{log}\n")
        raise QuantizationError(
            f"llama.cpp could not quantize {src.name} to {qtype.name}: {reason}",
            hint="run with EDGESHRINK_DEBUG=1 to see llama.cpp's log",
        )
    fallbacks = tuple((m["name"], m["wanted"], m["used"]) for m in _FALLBACK_LINE.finditer(log))
    planned = tuple(
        (m["name"], (m["new"] or m["type"]).upper()) for m in _TENSOR_LINE.finditer(log)
    )
    return QuantizeOutcome(
        output=dst,
        quant=qtype.name,
        seconds=float(result.get("seconds", 0.0)),
        fallbacks=fallbacks,
        tensor_types=() if dry_run else inspect_gguf(dst).tensor_types,
        llama_cpp_version=str(result.get("version", llama_cpp_version())),
        log_tail=tail,
        planned=planned if dry_run else (),
    )


def ggml_type_number(name: str) -> int:
    """ggml's number of a tensor type (``Q4_K`` -> 12), as the quantizer's overrides take it."""
    from gguf.constants import GGMLQuantizationType

    try:
        return int(GGMLQuantizationType[name.upper()])
    except KeyError:
        raise QuantizationError(f"ggml has no tensor type {name!r}") from None


def imatrix_arrays(
    path: str | os.PathLike[str], src: Path, out: Path
) -> list[tuple[str, str | int]]:
    """Write the means the quantizer takes from imatrix file ``path`` (checked against
    ``src``) to ``out`` (.npz); return the metadata llama-quantize records with them."""
    import numpy as np

    path = Path(path)
    loaded = read_imatrix(path)
    check_imatrix_fits(loaded, src, path.name)
    with open(out, "wb") as handle:
        np.savez(handle, **loaded.means())
    return imatrix_kv(loaded, path.name)


def check_prune_layers(layers: tuple[int, ...], n_layer: int, name: str) -> None:
    """Refuse a prune list llama.cpp would misread: out of range, or every block."""
    outside = [i for i in layers if not 0 <= i < n_layer]
    if outside:
        raise QuantizationError(
            f"{name} has {n_layer} layers (0 to {n_layer - 1}); there is no layer "
            f"{', '.join(map(str, outside))}",
            hint=f"name layers from 0 to {n_layer - 1}",
        )
    if len(set(layers)) >= n_layer:
        raise QuantizationError(
            f"removing {len(set(layers))} of {name}'s {n_layer} layers leaves none",
            hint=f"remove at most {n_layer - 1}",
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
