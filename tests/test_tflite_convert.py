"""Keras and SavedModel to .tflite with TensorFlow's TFLiteConverter (an optional extra).

Skipped without tensorflow (pip install tensorflow-cpu: a 274 MB wheel).  The
Keras model is the digits classifier's weights (scikit-learn's training), so the
accuracy of every converted type is a real number.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("sklearn")
tf = pytest.importorskip("tensorflow")

from edgeshrink.artifacts import load_artifact  # noqa: E402
from edgeshrink.convert.tflite_convert import shrink_to_tflite, source_kind  # noqa: E402
from edgeshrink.errors import UnsupportedFormatError  # noqa: E402
from edgeshrink.formats.tflite import inspect_tflite  # noqa: E402
from edgeshrink.plan import ShrinkOptions  # noqa: E402
from edgeshrink.profiles import get_profile  # noqa: E402
from edgeshrink.quality import evaluate  # noqa: E402
from edgeshrink.testmodels.onnx_models import train_digits_mlp, write_digits_npz  # noqa: E402


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tflite-convert")
    (w1, b1, w2, b2), _ = train_digits_mlp()
    pixels = tf.keras.Input((64,), name="pixels")
    scaled = tf.keras.layers.Rescaling(1.0 / 16.0)(pixels)
    hidden = tf.keras.layers.Dense(w1.shape[1], activation="relu")(scaled)
    logits = tf.keras.layers.Dense(10, name="logits")(hidden)
    model = tf.keras.Model(pixels, logits)
    model.layers[2].set_weights([w1, b1])
    model.layers[3].set_weights([w2, b2])
    model.save(out / "digits.keras")
    model.export(str(out / "saved_model"), verbose=False)
    return {
        "dir": out,
        "keras": out / "digits.keras",
        "saved_model": out / "saved_model",
        "calibration": write_digits_npz(out / "train.npz", split="train", limit=128),
        "test": write_digits_npz(out / "test.npz", split="test"),
    }


def test_source_kinds(sources: dict[str, Path], tmp_path: Path) -> None:
    assert source_kind(sources["keras"]) == "keras"
    assert source_kind(sources["saved_model"]) == "saved_model"
    with pytest.raises(UnsupportedFormatError, match="not a SavedModel directory"):
        source_kind(tmp_path)


@pytest.mark.parametrize("source", ["keras", "saved_model"])
def test_convert_every_type_and_keep_accuracy(source: str, sources: dict[str, Path]) -> None:
    out = sources["dir"] / source
    out.mkdir(exist_ok=True)
    profile = get_profile("raspberry-pi-4-4gb")
    expected = {
        "float32": ("FP32", "FLOAT32"),
        "fp16": ("FP16", "FLOAT32"),
        "dynamic-int8": ("INT8-DYNAMIC", "FLOAT32"),
        "int8": ("INT8", "FLOAT32"),
        "int8-int8-io": ("INT8 (int8 I/O)", "INT8"),
    }
    base = None
    for quant, (file_type, io_type) in expected.items():
        options = ShrinkOptions(quant=quant, calibration=sources["calibration"])
        result = shrink_to_tflite(
            sources[source], profile, options, output=out / f"digits-{quant}.tflite"
        )
        info = inspect_tflite(result.artifact.path)
        meta = dict(info.metadata)
        assert (info.file_type, meta["inputs"][0]["type"]) == (file_type, io_type), quant
        if quant not in ("float32",):  # float32 is the base conversion, or a copy of it
            assert any("TFLiteConverter" in n for n in result.artifact.notes), quant
        base = out / f"digits-{quant}.tflite" if quant == "float32" else base
        if quant == "dynamic-int8":  # TF 2.21's converter writes the v12 kernel itself
            assert any(o["version"] == 12 for o in meta["operators"])
        if base is not None and quant != "float32":
            report = evaluate(base, result.artifact.path, inputs=sources["test"], labels="labels")
            accuracy = report.metric("accuracy")
            assert accuracy.reference > 0.95
            assert accuracy.value >= accuracy.reference - 0.02, (quant, accuracy)
    assert load_artifact(out / "digits-float32.tflite").quant == "float32"


def test_default_plan_on_a_saved_model(sources: dict[str, Path], tmp_path: Path) -> None:
    result = shrink_to_tflite(
        sources["saved_model"], get_profile("pixel-8"), ShrinkOptions(),
        output=tmp_path / "digits-pixel8.tflite",
    )  # fmt: skip
    assert result.plan.quant == "dynamic-int8"
    assert (tmp_path / "saved_model-float32.tflite").is_file()  # the base for eval
    again = shrink_to_tflite(
        sources["saved_model"], get_profile("pixel-8"), ShrinkOptions(),
        output=tmp_path / "digits-pixel8.tflite",
    )  # fmt: skip
    assert again.reused
    weight_only = shrink_to_tflite(
        sources["saved_model"], get_profile("pixel-8"), ShrinkOptions(quant="weight-only-int8"),
        output=tmp_path / "digits-wo.tflite",
    )  # fmt: skip
    assert inspect_tflite(weight_only.artifact.path).file_type == "INT8-WEIGHT-ONLY"


def test_a_model_too_small_to_quantize_is_labelled_float32(tmp_path: Path) -> None:
    """TFLiteConverter leaves weights under 1024 elements float: a tiny Keras model asked
    for dynamic-int8 comes out float32, and the artifact says so, not what was asked."""
    x = tf.keras.Input((4,), name="x")
    model = tf.keras.Model(x, tf.keras.layers.Dense(3, name="y")(x))
    model.save(tmp_path / "tiny.keras")
    result = shrink_to_tflite(
        tmp_path / "tiny.keras", get_profile("pixel-8"), ShrinkOptions(quant="dynamic-int8"),
        output=tmp_path / "tiny-dynamic-int8.tflite",
    )  # fmt: skip
    assert result.artifact.quant == "float32"
    assert "no weight large enough to quantize" in result.plan.reason
    manifest = load_artifact(result.artifact.path)
    assert manifest.quant == "float32"
