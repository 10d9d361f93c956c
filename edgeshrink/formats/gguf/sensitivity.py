"""How much each tensor of a GGUF model loses at each type: measured, not guessed.

Every weight matrix is quantized by llama.cpp's own quantizer (with the importance
matrix, as the real file will be) to every type it may get in a mix, read back,
dequantized with gguf-py and compared with the original: the loss of a tensor at a
type is its imatrix-weighted squared error relative to its imatrix-weighted energy,

    loss = sum_j imatrix_j * sum_i (W_ij - Q_ij)^2  /  sum_j imatrix_j * sum_i W_ij^2

(the noise-to-signal ratio of that matrix's output over the calibration text; columns
weigh 1 where there is no imatrix entry, as for the token embeddings), scaled for each
kind of tensor by the KL divergence a unit of it costs there (measured once per model:
that kind's tensors at about 4.5 bits, over the calibration text). One quantizer
run per type a tensor can take, each tensor at a different type in the same run, so
no tensor is quantized twice to the same type. Kept in the cache per model, imatrix
and llama.cpp version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.errors import EvalError
from edgeshrink.formats.gguf.estimate import fitting_type
from edgeshrink.formats.gguf.imatrix_file import read_imatrix
from edgeshrink.formats.gguf.quality import evaluate_llm
from edgeshrink.formats.gguf.quant_types import quant_type
from edgeshrink.formats.gguf.quantize import llama_cpp_version, quantize_gguf
from edgeshrink.formats.gguf.reader import inspect_gguf, read_gguf
from edgeshrink.util import atomic_path, cache_dir, sha256_file

Progress = Callable[[str], None]
METHOD = "imatrix-nsr/3"
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
    signal: float = 0.0  # the imatrix-weighted energy the losses are relative to

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "source_type": self.source_type, "signal": self.signal,
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
        fit = fitting_type(t, shape[0])  # a row no block divides falls back to F16
        if fit not in seen:
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
    text: str | None = None,
    progress: Progress | None = None,
) -> list[TensorLoss]:
    """Every mixable tensor's loss at every type it can take (see the module docstring),
    from the cache or measured in ``work`` (one quantizer run at a time); with the
    calibration ``text``, each kind of tensor's losses in KL divergence (kld_per_loss)."""
    say = progress or (lambda _m: None)
    src = Path(src)
    types, plain = mix_types(imatrix is not None), mix_types(False)
    key = hashlib.sha256(
        "|".join([
            METHOD, source_sha256 or sha256_file(src), sha256_file(imatrix) if imatrix else "-",
            ",".join(types), llama_cpp_version() or "",
            hashlib.sha256(text.encode()).hexdigest() if text is not None else "-",
        ]).encode()
    ).hexdigest()[:32]  # fmt: skip
    cached = cache_dir("mix") / f"{key}.json"
    if cached.is_file():
        doc = json.loads(cached.read_text(encoding="utf-8"))
        return [
            TensorLoss(name, tuple(d["shape"]), d["source_type"],
                       {t: (int(b), float(loss)) for t, (b, loss) in d["options"].items()},
                       float(d["signal"]))
            for name, d in doc.items()
        ]  # fmt: skip
    reader = read_gguf(src)
    tensors = {t.name: t for t in reader.tensors}
    shapes = [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors]
    means = read_imatrix(imatrix).means() if imatrix else {}
    todo = {  # the source's own type is copied, not measured: it loses nothing
        name: [t for t in candidate_types(shape, types if name in means else plain) if t != source]
        for name, shape, source in mixable(shapes)
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
        result.append(TensorLoss(name, shape, source_type, opts, float(signal[name] or 0.0)))
    factors = kld_per_loss(src, work, result, text, imatrix=imatrix, threads=threads,
                           allow_requantize=allow_requantize, progress=say)  # fmt: skip
    result = [scaled(t, factors.get(kind_of(t.name), 1.0)) for t in result]
    with atomic_path(cached) as tmp:
        tmp.write_text(json.dumps({t.name: t.to_dict() for t in result}), encoding="utf-8")
    return result


def kind_of(name: str) -> str:
    """A tensor's kind, the same in every block: ``blk.7.ffn_down.weight`` -> ``ffn_down.weight``."""
    return re.sub(r"^blk\.\d+\.", "", name)


def scaled(loss: TensorLoss, factor: float) -> TensorLoss:
    return replace(loss, options={t: (b, v * factor) for t, (b, v) in loss.options.items()})


def kld_per_loss(
    src: Path, work: Path, losses: list[TensorLoss], text: str | None, *, imatrix: Any,
    threads: int | None, allow_requantize: bool, progress: Progress,
) -> dict[str, float]:  # fmt: skip
    """How much KL divergence a unit of loss costs in each kind of tensor, measured: the
    tensors of one kind at about 4.5 bits (the rest as they are), against the summed loss
    predicted for them, over the calibration text. An error in a value projection or a
    down projection does not weigh what the same relative error in a query does."""
    if text is None:
        return {}
    info = inspect_gguf(src)
    n_ctx = min(512, info.llm.context_length) if info.llm and info.llm.context_length else 512
    kinds: dict[str, list[TensorLoss]] = {}
    for loss in losses:
        kinds.setdefault(kind_of(loss.name), []).append(loss)
    factors: dict[str, float] = {}
    for i, (kind, members) in enumerate(sorted(kinds.items()), 1):
        mid = {t.name: middle_option(t) for t in members}
        predicted = sum(t.options[mid[t.name]][1] for t in members)
        if predicted <= 0:
            continue
        progress(f"measuring what a loss costs in each kind of tensor: {kind} ({i}/{len(kinds)})")
        out = work / "kind.gguf"
        keep = {t.name: t.source_type for t in losses if t.name not in mid}
        quantize_gguf(src, out, "Q8_0", threads=threads, allow_requantize=allow_requantize,
                      imatrix=imatrix, tensor_types={**mid, **keep})  # fmt: skip
        try:
            report = evaluate_llm(src, out, text=text, n_ctx=n_ctx, max_chunks=2, threads=threads)
        except EvalError:
            return {}  # a text too short to measure with: the losses stay as measured
        finally:
            out.unlink(missing_ok=True)
        factors[kind] = max(report.kld_mean.value, 0.0) / predicted
    if factors:
        floor = 0.01 * sorted(factors.values())[len(factors) // 2]
        factors = {k: max(v, floor) for k, v in factors.items()}
    return factors


def middle_option(loss: TensorLoss) -> str:
    """The type nearest 4.5 bits per weight among those measured (not the source's own)."""
    n = 1
    for d in loss.shape:
        n *= d
    measured = [t for t in loss.options if t != loss.source_type] or [loss.source_type]
    return min(measured, key=lambda t: abs(loss.options[t][0] - n * 4.5 / 8))


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
