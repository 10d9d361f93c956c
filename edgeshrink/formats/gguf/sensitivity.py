"""How much each tensor of a GGUF model loses at each type: measured, not guessed.

Every weight matrix is quantized by llama.cpp's own quantizer (with the importance
matrix, as the real file will be) to every type it may get in a mix, read back,
dequantized with gguf-py and compared with the original: the loss of a tensor at a
type is its imatrix-weighted squared error relative to its imatrix-weighted energy,

    loss = sum_j imatrix_j * sum_i (W_ij - Q_ij)^2  /  sum_j imatrix_j * sum_i W_ij^2

(the noise-to-signal ratio of that matrix's output over the calibration text; columns
weigh 1 where there is no imatrix entry, as for the token embeddings). One quantizer
run per type a tensor can take, each tensor at a different type in the same run, so
no tensor is quantized twice to the same type. Kept in the cache per model, imatrix
and llama.cpp version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshrink.formats.gguf.estimate import fitting_type
from edgeshrink.formats.gguf.imatrix_file import read_imatrix
from edgeshrink.formats.gguf.quality import cache_dir
from edgeshrink.formats.gguf.quant_types import quant_type
from edgeshrink.formats.gguf.quantize import llama_cpp_version, quantize_gguf
from edgeshrink.formats.gguf.reader import read_gguf
from edgeshrink.util import atomic_path, sha256_file

Progress = Callable[[str], None]
METHOD = "imatrix-nsr/1"
# The ggml types a tensor may get in a mix, smallest first, each with the llama.cpp file
# type whose quantization makes it (types llama.cpp cannot use for a tensor fall back to
# one it can: a 576-wide row takes no K-quant).
MIX_TYPES: dict[str, str] = {
    "IQ2_XXS": "IQ2_XXS", "Q2_K": "Q2_K", "IQ3_XXS": "IQ3_XXS", "Q3_K": "Q3_K_M",
    "IQ4_XS": "IQ4_XS", "Q4_0": "Q4_0", "IQ4_NL": "IQ4_NL", "Q4_K": "Q4_K_M", "Q4_1": "Q4_1",
    "Q5_0": "Q5_0", "Q5_K": "Q5_K_M", "Q5_1": "Q5_1", "Q6_K": "Q6_K", "Q8_0": "Q8_0",
}  # fmt: skip


@dataclass(frozen=True)
class TensorLoss:
    """One weight matrix: its shape (ggml order), its type in the source, and per type it
    can be stored in, (bytes, loss); the source's own type costs nothing."""

    name: str
    shape: tuple[int, ...]
    source_type: str
    options: dict[str, tuple[int, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "source_type": self.source_type,
                "options": {t: list(v) for t, v in self.options.items()}}  # fmt: skip


def mix_types(with_imatrix: bool) -> tuple[str, ...]:
    """The types a mix may use: those that need an importance matrix only with one."""
    return tuple(t for t, ftype in MIX_TYPES.items() if with_imatrix or not needs_imatrix(ftype))


def needs_imatrix(ftype: str) -> bool:
    return quant_type(ftype).needs_imatrix


def mixable(
    shapes: list[tuple[str, tuple[int, ...], str]],
) -> list[tuple[str, tuple[int, ...], str]]:
    """The tensors a mix gives a type: llama.cpp's quantizable weights (2-D and up)."""
    return [s for s in shapes if len(s[1]) >= 2 and s[0].endswith(".weight")]


def candidate_types(shape: tuple[int, ...], types: tuple[str, ...]) -> list[str]:
    """The distinct types a tensor of ``shape`` ends up in when asked for each of ``types``."""
    seen: list[str] = []
    for t in types:
        fit = fitting_type(t, shape[0])
        if fit not in seen and fit in MIX_TYPES:
            seen.append(fit)
    return seen


def measure_losses(
    src: str | os.PathLike[str],
    work: Path,
    *,
    imatrix: str | os.PathLike[str] | None,
    source_sha256: str | None = None,
    allow_requantize: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> list[TensorLoss]:
    """Every mixable tensor's loss at every type it can take (see the module docstring),
    from the cache or measured in ``work`` (one quantizer run at a time)."""
    say = progress or (lambda _m: None)
    src = Path(src)
    types, plain = mix_types(imatrix is not None), mix_types(False)
    key = hashlib.sha256(
        "|".join([
            METHOD, source_sha256 or sha256_file(src), sha256_file(imatrix) if imatrix else "-",
            ",".join(types), llama_cpp_version() or "",
        ]).encode()
    ).hexdigest()[:32]  # fmt: skip
    cached = cache_dir("mix") / f"{key}.json"
    if cached.is_file():
        doc = json.loads(cached.read_text(encoding="utf-8"))
        return [
            TensorLoss(name, tuple(d["shape"]), d["source_type"],
                       {t: (int(b), float(loss)) for t, (b, loss) in d["options"].items()})
            for name, d in doc.items()
        ]  # fmt: skip
    reader = read_gguf(src)
    tensors = {t.name: t for t in reader.tensors}
    shapes = [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors]
    means = read_imatrix(imatrix).means() if imatrix else {}
    todo = {
        name: candidate_types(shape, types if name in means else plain)
        for name, shape, _t in mixable(shapes)
    }
    options: dict[str, dict[str, tuple[int, float]]] = {name: {} for name in todo}
    signal = {name: None for name in todo}
    runs = max((len(v) for v in todo.values()), default=0)
    for run in range(runs):
        wanted = {name: ts[run] for name, ts in todo.items() if len(ts) > run}
        say(f"measuring each tensor's loss: quantizer run {run + 1}/{runs} "
            f"({len(wanted)} tensors, {', '.join(sorted(set(wanted.values())))})")  # fmt: skip
        out = work / f"losses-{run}.gguf"
        # Tensors with nothing to measure in this run keep their type: llama.cpp copies them.
        kept = {name: tensors[name].tensor_type.name for name in todo if name not in wanted}
        quantize_gguf(src, out, "Q8_0", threads=threads, allow_requantize=allow_requantize,
                      imatrix=imatrix, tensor_types={**wanted, **kept})  # fmt: skip
        made = {t.name: t for t in read_gguf(out).tensors}
        for name in wanted:
            q = made[name]
            original = as_float(tensors[name])
            if signal[name] is None:
                signal[name] = weighted_energy(original, None, means.get(name))
            err = weighted_energy(original, as_float(q), means.get(name))
            options[name][q.tensor_type.name] = (int(q.n_bytes), err / max(signal[name], 1e-30))
        out.unlink(missing_ok=True)
    result = []
    for name, shape, source_type in mixable(shapes):
        opts = options[name]
        opts.setdefault(source_type, (int(tensors[name].n_bytes), 0.0))
        result.append(TensorLoss(name, shape, source_type, opts))
    with atomic_path(cached) as tmp:
        tmp.write_text(json.dumps({t.name: t.to_dict() for t in result}), encoding="utf-8")
    return result


def as_float(tensor: Any) -> Any:
    """A GGUF tensor's values as float32, shape (..., rows, columns)."""
    import numpy as np
    from gguf.quants import dequantize

    values = dequantize(np.asarray(tensor.data), tensor.tensor_type)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.asarray(values, dtype=np.float32).reshape(shape)


def weighted_energy(original: Any, quantized: Any, imatrix: Any) -> float:
    """sum_j imatrix_j * sum_i (original - quantized)_ij^2 (of ``original`` alone when
    ``quantized`` is None), each matrix of a 3-D weight with its own imatrix row."""
    import numpy as np

    columns = original.shape[-1]
    diff = original if quantized is None else original - quantized
    diff = diff.reshape(-1, original.shape[-2], columns)
    per_column = np.einsum("mij,mij->mj", diff, diff, dtype=np.float64)
    if imatrix is None:
        return float(per_column.sum())
    weights = np.asarray(imatrix, dtype=np.float64).reshape(-1, columns)
    if len(weights) != len(per_column):
        weights = np.broadcast_to(weights.mean(axis=0), per_column.shape)
    return float((per_column * weights).sum())
