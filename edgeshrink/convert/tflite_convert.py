"""Front ends that make .tflite models, each an optional extra.

- Keras (``.keras``/``.h5``) and SavedModel directories: TensorFlow's own
  ``TFLiteConverter`` (``pip install tensorflow-cpu``), at float32, fp16,
  dynamic range, or full int8 from a representative data set with float or int8
  inputs and outputs.  weight-only-int8 is not a converter mode: the float
  conversion goes through ai-edge-quantizer for it.
- PyTorch modules: litert-torch (``pip install litert-torch``), float32; its
  output then shrinks like any float .tflite.

``shrink_to_tflite`` is the whole step for ``edgeshrink shrink SRC --to tflite``:
convert to float32 once (kept beside the artifact with its own manifest, so
``eval`` has a base to compare with), plan on that float model, then make the
planned type with the converter and verify it in ai-edge-litert before it is
renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import default_output_path, quantize_pass
from edgeshrink.errors import (
    ModelFileError,
    QuantizationError,
    RuntimeMissingError,
    UnsupportedFormatError,
)
from edgeshrink.formats import backend
from edgeshrink.formats.base import Backend, Built, ModelInfo
from edgeshrink.formats.tflite.quantize import calibration_batches, check_calibration_method
from edgeshrink.passes import step
from edgeshrink.pipeline import ShrinkResult, run_recipe, shrink_model
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile
from edgeshrink.util import first_line, sha256_file

Progress = Callable[[str], None]
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
CONVERTER_QUANTS = ("float32", "fp16", "dynamic-int8", "int8", "int8-int8-io")


def source_kind(path: str | os.PathLike[str]) -> str:
    """ "saved_model" or "keras", or one clear error."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory", hint="check the path")
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved_model"
    if path.is_file() and path.suffix.lower() in KERAS_SUFFIXES:
        return "keras"
    raise UnsupportedFormatError(
        f"{path}: not a SavedModel directory (saved_model.pb) or a Keras file "
        f"({', '.join(KERAS_SUFFIXES)})",
        hint="--to tflite converts TensorFlow models; a .tflite file shrinks as it is",
    )


def _import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise RuntimeMissingError(
            f"converting to TFLite needs TensorFlow, which is not installed: {exc}",
            hint="pip install tensorflow-cpu (a 274 MB wheel), or convert elsewhere and shrink "
            "the .tflite",
        ) from exc
    return tf


def source_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a directory's relative paths and file hashes, in order."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def convert_with_tflite_converter(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    quant: str = "float32",
    *,
    representative: Sequence[dict[str, Any]] | None = None,
) -> list[str]:
    """Write ``dst`` from a SavedModel directory or Keras file with TFLiteConverter.

    ``representative``: feeds keyed by the signature's input names, for full int8.
    Returns notes for the manifest.
    """
    if quant not in CONVERTER_QUANTS:
        raise QuantizationError(
            f"TFLiteConverter makes {', '.join(CONVERTER_QUANTS)}, not {quant}",
            hint="weight-only-int8 goes through ai-edge-quantizer on the float32 conversion",
        )
    tf = _import_tensorflow()
    src = Path(src)
    if source_kind(src) == "saved_model":
        converter = tf.lite.TFLiteConverter.from_saved_model(str(src))
    else:
        model = tf.keras.models.load_model(str(src))
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    notes = [f"converted by TensorFlow {tf.__version__} TFLiteConverter ({quant})"]
    if quant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quant in ("int8", "int8-int8-io"):
        if not representative:
            raise QuantizationError(
                f"{quant} conversion needs a representative data set",
                hint="pass --calibration data.npz, or --allow-random-calibration",
            )
        feeds = list(representative)

        def dataset() -> Iterable[dict[str, Any]]:
            yield from feeds

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if quant == "int8-int8-io":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        notes.append(f"representative data set: {len(feeds)} feeds")
    try:
        data = converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError and more
        first = first_line(exc)
        raise QuantizationError(
            f"{src.name}: TFLiteConverter failed at {quant}: {first}",
            hint="try --quant float32 or dynamic-int8; EDGESHRINK_DEBUG=1 shows the traceback",
        ) from exc
    Path(dst).write_bytes(data)
    return notes


def convert_torch_module(
    module: Any, sample_args: tuple[Any, ...], dst: str | os.PathLike[str]
) -> Path:
    """Write ``dst``: a float32 .tflite of a PyTorch module, with litert-torch."""
    try:
        import litert_torch
    except ImportError as exc:
        raise RuntimeMissingError(
            f"converting PyTorch modules needs litert-torch: {exc}",
            hint="pip install litert-torch (it needs torch < 2.15)",
        ) from exc
    dst = Path(dst)
    edge_model = litert_torch.convert(module.eval(), tuple(sample_args))
    edge_model.export(str(dst))
    return dst


def _base_path(src: Path, out: Path) -> Path:
    stem = src.name if src.is_dir() else src.stem
    return out.parent / f"{stem}-float32.tflite"


def tflite_backend() -> Backend:
    return backend("tflite")


def source_info(src: Path) -> ModelInfo:
    """What the pipeline needs to know of a TensorFlow source: it becomes a .tflite."""
    kind = source_kind(src)
    size = src.stat().st_size if src.is_file() else sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file()
    )  # fmt: skip
    return ModelInfo(
        path=src, format=tflite_backend().format, size_bytes=size, architecture=kind,
        name=src.name if src.is_dir() else src.stem, n_params=0, file_type="float32",
        is_quantized=False, tensor_types=(),
    )  # fmt: skip


class TfliteConverter(Backend):
    """TensorFlow's TFLiteConverter as the builder of a pipeline run: a SavedModel or
    Keras model in, a verified .tflite of one converter mode out."""

    tool = "TFLiteConverter"
    failure_hint = "try --quant float32 or dynamic-int8; EDGESHRINK_DEBUG=1 shows the traceback"

    def __init__(self, representative: Sequence[dict[str, Any]] | None = None,
                 notes: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.representative = representative
        self.extra_notes = notes
        self.format = tflite_backend().format

    def source_sha256(self, src: Path, info: ModelInfo) -> str:
        return source_sha256(src)

    def build(self, src: Path, work: Path, name: str, recipe: Any, *, info: ModelInfo,
              profile: Any, options: Any, progress: Any) -> Built:  # fmt: skip
        quant = recipe[-1].get("type")
        progress(f"converting {src.name} to {quant} .tflite with TFLiteConverter")
        made = work / name
        notes = convert_with_tflite_converter(src, made, quant, representative=self.representative)
        made_as = what_the_converter_made(made, quant)
        if made_as != quant:
            notes.append(f"{made_as}: TFLiteConverter's {quant} found no weight large enough to "
                         "quantize (it leaves tensors under 1024 elements as they are)")  # fmt: skip
        return Built(
            path=made, recipe=(quantize_pass(quant, f"{quant} TFLiteConverter"),),
            notes=(*self.extra_notes, *notes), quant=made_as,
        )  # fmt: skip

    def verify(self, built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
        return tflite_backend().verify(built, info, options, progress)


def shrink_to_tflite(
    src: str | os.PathLike[str],
    profile: HardwareProfile,
    options: ShrinkOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ShrinkResult:
    """Convert a SavedModel / Keras model to .tflite for ``profile`` (see the module doc):
    the float32 conversion, then the planned type, each one run of the pipeline."""
    options = options or ShrinkOptions()
    src = Path(src)
    info = source_info(src)
    fmt = tflite_backend()
    provisional = Path(output) if output else default_output_path(src, "float32", ".tflite")
    base = _base_path(src, provisional)
    float_options = dataclasses.replace(options, quant="float32")
    made_base = run_recipe(src, info, TfliteConverter(), None, (step("quantize", type="float32"),),
                           profile, float_options, output=base, progress=progress,
                           for_profile=False)  # fmt: skip
    base_info = fmt.inspect(base)
    plan = fmt.plan(base_info, profile, options)
    out = Path(output) if output else default_output_path(src, plan.quant, ".tflite")
    if plan.quant == "float32" and out.resolve() == base.resolve():
        return dataclasses.replace(made_base, plan=plan)
    if plan.quant not in CONVERTER_QUANTS or plan.quant == "float32":
        # A copy, or ai-edge-quantizer's weight-only (not a converter mode).
        return shrink_model(base, profile, options, output=out, progress=progress, info=base_info)
    representative, cal_notes = None, []
    if fmt.needs_calibration(plan.quant):
        check_calibration_method(options)
        batches, cal_notes = calibration_batches(base_info, options, plan.quant)
        representative = [sample for feed in batches.feeds for sample in _per_sample(feed)]
    converter = TfliteConverter(representative, (*cal_notes, f"float32 base: {base.name}"))
    result = run_recipe(src, info, converter, plan, (step("quantize", type=plan.quant),), profile,
                        options, output=out, progress=progress)  # fmt: skip
    made = result.artifact.quant
    if made != plan.quant:
        plan = dataclasses.replace(
            plan, quant=made,
            reason=f"{plan.reason}; {made}: TFLiteConverter's {plan.quant} found no weight "
            "large enough to quantize (it leaves tensors under 1024 elements as they are)",
        )  # fmt: skip
    return dataclasses.replace(result, plan=plan)


# What each converter mode leaves in the file when it quantized anything at all.
_WEIGHT_TYPES = {"dynamic-int8": {"INT8"}, "fp16": {"FLOAT16"}}


def what_the_converter_made(made: Path, quant: str) -> str:
    """The type the file really has: TFLiteConverter skips weights under 1024 elements,
    so a small model asked for dynamic-int8 or fp16 can come out float32, and the label
    must say so, not what was asked."""
    wanted = _WEIGHT_TYPES.get(quant)
    if wanted is None:
        return quant
    present = {t.type for t in tflite_backend().inspect(made).tensor_types}
    return quant if present & wanted else "float32"


def _per_sample(feed: dict[str, Any]) -> list[dict[str, Any]]:
    """The converter calibrates one sample at a time: split a feed's rows."""
    rows = min(len(v) for v in feed.values())
    return [{k: v[i : i + 1] for k, v in feed.items()} for i in range(rows)]
