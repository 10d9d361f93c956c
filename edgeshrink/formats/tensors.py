"""Inputs and outputs of graph models (ONNX, TFLite): their specs, the data fed to them
(calibration and evaluation arrays, random inputs) and how `inspect` shows them.

Both graph backends describe their inputs and outputs as :class:`TensorSpec` in their
``ModelInfo.metadata``, so one reader of ``.npz``/``.npy`` data serves both.  numpy is
imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.errors import CalibrationError
from edgeshrink.formats.base import ModelInfo
from edgeshrink.util import sha256_file

if TYPE_CHECKING:
    import numpy as np

    from edgeshrink.plan import ShrinkOptions

# Calibration collects activation statistics for every sample: bound the count.
MAX_CALIBRATION_SAMPLES = 512
RANDOM_CALIBRATION_SAMPLES = 32
MAX_BATCH_ROWS = 32


# --------------------------------------------------------------------------- io specs


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape.

    A dimension is an int when fixed, its name (str) when symbolic, None when unknown.
    """

    name: str
    elem_type: str  # ONNX name: FLOAT, FLOAT16, INT64, ...
    dtype: str  # numpy name: float32, float16, int64, ...
    shape: tuple[int | str | None, ...]

    @property
    def symbolic(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.shape if not isinstance(d, int))

    def concrete_shape(self, fill: int = 1) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else fill for d in self.shape)

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"[{dims}] {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.elem_type,
            "dtype": self.dtype,
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TensorSpec:
        return cls(doc["name"], doc["type"], doc["dtype"], tuple(doc["shape"]))


def io_specs(info: ModelInfo) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """A graph model's inputs and outputs as TensorSpec, read from its metadata (a TFLite
    model's named by its signature), so the data readers below apply to every format."""
    meta = dict(info.metadata)
    return (
        tuple(TensorSpec.from_dict(d) for d in meta.get("inputs", ())),
        tuple(TensorSpec.from_dict(d) for d in meta.get("outputs", ())),
    )


def int_bounds_of(info: ModelInfo) -> dict[str, int]:
    return dict(dict(info.metadata).get("int_bounds") or {})


# --------------------------------------------------------------------------- input data


@dataclass(frozen=True)
class InputBatches:
    """Feeds for a session, cut from arrays stacked on their first axis.

    ``bounds[i]`` is the (start, stop) of batch i in the rows of the first axis,
    so labels (or any per-row data) can be cut the same way.
    """

    feeds: tuple[dict[str, Any], ...]
    bounds: tuple[tuple[int, int], ...]
    n_rows: int
    source: str


def inputs_fingerprint(path: str | os.PathLike[str]) -> str:
    """The sha256 of an inputs file, or of every .npy/.npz of a directory with its name."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz")):
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def read_arrays(path: str | os.PathLike[str], *, what: str = "input") -> dict[str, np.ndarray]:
    """Arrays of an .npz file, or of a directory of .npy/.npz files (concatenated on axis 0).

    In a directory, an .npz holds arrays keyed by input name; an .npy is named
    after its input (``input.npy``) or, for a single-input model, any name.
    """
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"{what} data {path}: no such file or directory")

    def load(file: Path) -> dict[str, np.ndarray]:
        try:
            if file.suffix == ".npy":
                return {file.stem: np.load(file, allow_pickle=False)}
            with np.load(file, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as exc:
            raise CalibrationError(
                f"{what} data {file}: not a readable .npz/.npy file: {exc}",
                hint="write it with numpy.savez(path, input_name=array)",
            ) from exc

    if path.is_file():
        if path.suffix not in (".npz", ".npy"):
            raise CalibrationError(
                f"{what} data {path}: expected an .npz file or a directory of .npy/.npz files",
                hint="write it with numpy.savez(path, input_name=array)",
            )
        return load(path)
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
    if not files:
        raise CalibrationError(f"{what} data {path}: the directory has no .npy or .npz files")
    parts: dict[str, list[np.ndarray]] = {}
    npy_unnamed: list[np.ndarray] = []
    for file in files:
        for key, array in load(file).items():
            parts.setdefault(key, []).append(array)
        if file.suffix == ".npy":
            npy_unnamed.append(parts[file.stem][-1])
    merged: dict[str, np.ndarray] = {}
    for key, arrays in parts.items():
        try:
            merged[key] = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        except ValueError as exc:
            raise CalibrationError(
                f"{what} data {path}: the arrays for '{key}' cannot be stacked: {exc}"
            ) from exc
    if npy_unnamed and len(parts) == len(npy_unnamed):
        # Every file was an .npy with its own name: for a single-input model they are
        # all samples of that input, whatever they are called.
        with contextlib.suppress(ValueError):
            merged["*"] = np.concatenate(npy_unnamed, axis=0)
    return merged


def _np_dtype(name: str) -> Any:
    import numpy as np

    try:
        return np.dtype(name)
    except TypeError:
        return None


def _kind(dtype: Any) -> str:
    import numpy as np

    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.integer):
        return "int"
    if np.issubdtype(dtype, np.bool_):
        return "bool"
    return str(dtype)


def make_batches(
    arrays: Mapping[str, np.ndarray],
    specs: Iterable[TensorSpec],
    *,
    source: str,
    what: str = "input",
    max_rows: int = MAX_BATCH_ROWS,
    limit_rows: int | None = None,
) -> InputBatches:
    """Cut ``arrays`` into feeds that match the model's declared inputs.

    Each array holds samples stacked on its first axis: either the model's own
    rank (``[N, 64]`` for ``[batch, 64]``; a fixed first dimension d takes N in
    steps of d) or one more axis (``[N, 1, 3, 32, 32]`` for ``[1, 3, 32, 32]``).
    Names, ranks, fixed dimensions and dtypes are checked; each mismatch is one
    error naming the input and the shape the model expects.
    """
    import numpy as np

    specs = list(specs)
    arrays = {k: v for k, v in arrays.items()}
    named = [k for k in arrays if k != "*"]
    if len(specs) == 1 and specs[0].name not in arrays:
        # Unnamed data fits a single-input model: numpy.savez(path, array) writes
        # "arr_0", and a directory of .npy files is gathered as "*".
        if "*" in arrays:
            arrays[specs[0].name] = arrays["*"]
        elif named == ["arr_0"]:
            arrays[specs[0].name] = arrays["arr_0"]
    prepared: dict[str, tuple[np.ndarray, int, bool]] = {}  # name -> (array, step, stacked)
    for spec in specs:
        expected = f"{spec.describe()} (samples stacked on the first axis)"
        if spec.name not in arrays:
            raise CalibrationError(
                f"{source}: no array for input '{spec.name}'; the model expects {expected}; "
                f"the file has: {', '.join(named) or 'nothing'}",
                hint=f"save it with numpy.savez(path, **{{'{spec.name}': array}})",
            )
        array = np.asarray(arrays[spec.name])
        want = _np_dtype(spec.dtype)
        if want is not None and array.dtype != want:
            if _kind(array.dtype) != _kind(want):
                raise CalibrationError(
                    f"{source}: input '{spec.name}' is {array.dtype}, the model expects {expected}",
                    hint=f"convert it with array.astype(numpy.{want.name})",
                )
            array = array.astype(want)
        rank = len(spec.shape)
        if array.ndim == rank and rank > 0:
            stacked = False
            rest, model_rest = array.shape[1:], spec.shape[1:]
            first = spec.shape[0]
            step = first if isinstance(first, int) and first > 0 else max_rows
            if isinstance(first, int) and first > 0 and array.shape[0] % first:
                raise CalibrationError(
                    f"{source}: input '{spec.name}' has {array.shape[0]} rows, not a multiple "
                    f"of the model's fixed first dimension {first}; the model expects {expected}",
                    hint=f"give a multiple of {first} rows",
                )
        elif array.ndim == rank + 1:
            stacked, step = True, 1
            rest, model_rest = array.shape[1:], spec.shape
        else:
            raise CalibrationError(
                f"{source}: input '{spec.name}' has shape {list(array.shape)}, the model "
                f"expects {expected}",
                hint="stack the samples on a new first axis, or on the model's batch axis",
            )
        for got, declared in zip(rest, model_rest, strict=True):
            if isinstance(declared, int) and declared > 0 and got != declared:
                raise CalibrationError(
                    f"{source}: input '{spec.name}' has shape {list(array.shape)}, the model "
                    f"expects {expected}",
                    hint="resize or reshape the data to the model's input shape",
                )
        prepared[spec.name] = (array, step, stacked)
    rows = {name: a.shape[0] for name, (a, _, _) in prepared.items()}
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"'{k}' {v}" for k, v in rows.items())
        raise CalibrationError(
            f"{source}: the inputs have different numbers of samples: {listing}",
            hint="give every input the same number of samples",
        )
    n_rows = next(iter(rows.values()), 0)
    if n_rows == 0:
        raise CalibrationError(f"{source}: the {what} data holds no samples")
    if limit_rows is not None:
        n_rows = min(n_rows, limit_rows)
    step = min(s for _, s, _ in prepared.values())
    feeds, bounds = [], []
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        feed = {}
        for name, (array, _, stacked) in prepared.items():
            feed[name] = array[start] if stacked else array[start:stop]
        feeds.append(feed)
        bounds.append((start, stop))
    return InputBatches(tuple(feeds), tuple(bounds), n_rows, source)


def random_integers(
    rng: Any, name: str, shape: tuple[int, ...], dtype: Any, bounds: Mapping[str, int]
) -> Any:
    """Valid random integers for an input (the agent's rule too): below the table the input
    indexes, masks all ones, token type ids zero."""
    import numpy as np

    lowered = name.lower()
    if "mask" in lowered:
        return np.ones(shape, dtype=dtype)
    if "token_type" in lowered or "segment" in lowered:
        return np.zeros(shape, dtype=dtype)
    return rng.integers(0, max(1, min(10, bounds.get(name, 10))), shape).astype(dtype)


def random_batches(
    specs: Iterable[TensorSpec],
    *,
    samples: int,
    seed: int,
    int_bounds: Mapping[str, int] | None = None,
) -> InputBatches:
    """Random inputs of the declared shapes (symbolic dimensions as 1), from a fixed seed;
    integers valid for what they index (see random_integers)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = []
    specs = list(specs)
    for _ in range(samples):
        feed = {}
        for spec in specs:
            shape = spec.concrete_shape(1)
            dtype = _np_dtype(spec.dtype) or np.dtype("float32")
            if _kind(dtype) == "float":
                feed[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif _kind(dtype) == "bool":
                feed[spec.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                feed[spec.name] = random_integers(rng, spec.name, shape, dtype, int_bounds or {})
        feeds.append(feed)
    bounds = tuple((i, i + 1) for i in range(samples))
    return InputBatches(tuple(feeds), bounds, samples, "random inputs")


def fingerprint_calibration(batches: InputBatches) -> str:
    digest = hashlib.sha256()
    for feed in batches.feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(feed[name].tobytes())
    return digest.hexdigest()[:16]


def calibration_feeds(
    info: ModelInfo, options: ShrinkOptions, *, what: str, instead: str, seed: int = 0
) -> tuple[InputBatches, list[str]]:
    """The calibration feeds for ``what`` (static int8, full integer), and the notes they
    deserve: the user's --calibration data, or random inputs when they allowed them.
    ``instead`` is the backend's quantization that needs no calibration data."""
    inputs, _ = io_specs(info)
    notes: list[str] = []
    if options.calibration is None:
        if not options.allow_random_calibration:
            shapes = "; ".join(f"'{s.name}' {s.describe()}" for s in inputs)
            raise CalibrationError(
                f"{what} of {info.path.name} needs calibration data: a few hundred "
                f"representative inputs for {shapes}",
                hint="pass --calibration data.npz (keys: the input names), or "
                "--allow-random-calibration to calibrate on random inputs (recorded as a "
                f"warning), or --quant {instead}",
            )
        batches = random_batches(
            inputs, samples=RANDOM_CALIBRATION_SAMPLES, seed=seed, int_bounds=int_bounds_of(info)
        )
        symbolic = sorted({d for s in inputs for d in s.symbolic})
        notes.append(
            f"WARNING: calibrated on {RANDOM_CALIBRATION_SAMPLES} random inputs "
            "(standard normal floats) from the declared shapes"
            + (f", symbolic dimensions {', '.join(symbolic)} as 1" if symbolic else "")
            + ", not on real data: activation ranges, and so accuracy, may be poor"
        )
        return batches, notes
    arrays = read_arrays(options.calibration, what="calibration")
    batches = make_batches(
        arrays,
        inputs,
        source=f"calibration data {options.calibration}",
        what="calibration",
        limit_rows=MAX_CALIBRATION_SAMPLES,
    )
    notes.append(f"calibrated on {batches.n_rows} samples from {Path(options.calibration).name}")
    return batches, notes


# --------------------------------------------------------------------------- inspect lines


def io_text(tensor: dict) -> str:
    """An input/output as stored: a quantized int8 tensor shows int8 with its scale and
    zero point (edgeshrink still accepts float data for it and quantizes it)."""
    shape = ",".join(str(d) for d in tensor["shape"])
    stored = tensor.get("storage_dtype") or tensor["dtype"]
    text = f"{tensor['name']} {stored}[{shape}]"
    quant = tensor.get("quantization")
    if quant and stored != tensor["dtype"]:
        scale, zero = quant.get("scale"), quant.get("zero_point")
        scale = scale[0] if isinstance(scale, list) and len(scale) == 1 else scale
        zero = zero[0] if isinstance(zero, list) and len(zero) == 1 else zero
        text += (
            f" (scale {scale:.4g}, zero point {zero})"
            if isinstance(scale, float)
            else " (quantized)"
        )
    return text


def graph_details(info: ModelInfo) -> list[tuple[str, Any]]:
    """The `inspect` lines of a graph model (ONNX, TFLite): its inputs, outputs, operators."""
    meta = dict(info.metadata)
    io = [io_text(t) for t in meta.get("inputs", [])]
    out = [io_text(t) for t in meta.get("outputs", [])]
    ops = sorted((meta.get("op_histogram") or {}).items(), key=lambda kv: -kv[1])
    if meta.get("operators"):  # TFLite: operator versions matter (old runtimes refuse new ones)
        ops = [(f"{o['op']} v{o['version']}", o["count"]) for o in meta["operators"]]
    compute = meta.get("compute") or {}
    return [
        ("opset", ", ".join(f"{d} {v}" for d, v in (meta.get("opset") or {}).items()) or "-"),
        ("inputs", "; ".join(io)),
        ("outputs", "; ".join(out)),
        ("operators", ", ".join(f"{op} {n}" for op, n in ops[:8]) + (" …" if len(ops) > 8 else "")),
        ("compute", f"{compute.get('kind', '?')}-heavy ({compute.get('conv_share', 0):.0%} of multiply-adds in Conv)"),
        ("quantization", meta.get("quantization") or "none"),
        ("external data", ", ".join(e["file"] for e in meta.get("external_data") or []) or "none"),
    ]  # fmt: skip
