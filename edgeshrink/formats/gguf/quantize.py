"""quantize_gguf: llama.cpp's own quantizer (``llama_model_quantize`` through
llama-cpp-python), run in a child process, and what it did (fallbacks, tensor types)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from edgeshrink.errors import QuantizationError, RuntimeMissingError
from edgeshrink.formats.base import TensorTypeCount
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
params.only_copy = args["only_copy"]
prune = (ctypes.c_int32 * (len(args["prune"]) + 1))(*args["prune"], -1)  # -1 ends the list
if args["prune"]:
    params.prune_layers = ctypes.cast(prune, ctypes.POINTER(ctypes.c_int32))
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
) -> QuantizeOutcome:
    """Quantize ``src`` to ``dst`` with llama.cpp's own quantizer; ``prune_layers`` (0-based)
    are removed in the same pass, and when ``quant`` is the file's own type the tensors
    are copied, not requantized.

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
        "only_copy": only_copy,
        "prune": sorted(prune_layers),
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
        if os.environ.get("EDGESHRINK_DEBUG") == "1":
            sys.stderr.write(f"llama.cpp's log (quantizing {src.name} to {qtype.name}):\n{log}\n")
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
