"""Inspect, plan and shrink .tflite models with ai-edge-quantizer, on real files.

The models are written straight into the flatbuffer (edgeshrink.testmodels.
tflite_models), so no TensorFlow is needed.  Tolerances (measured, with margin):
fp16 and weight-only/dynamic int8 keep mean cosine > 0.999 on the MLP; full
int8 > 0.99; the digits classifier loses < 2 accuracy points in every mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("sklearn")

from support import run_cli  # noqa: E402

from edgeshrink.artifacts import load_artifact  # noqa: E402
from edgeshrink.errors import ModelFileError, QuantizationError, UnsupportedFormatError  # noqa: E402
from edgeshrink.formats import detect_format  # noqa: E402
from edgeshrink.formats.tflite import (  # noqa: E402
    QUANT_TYPES,
    CalibrationError,
    TfliteRunner,
    fix_operator_versions,
    inspect_tflite,
    plan_tflite,
)
from edgeshrink.plan import ShrinkOptions  # noqa: E402
from edgeshrink.profiles import get_profile  # noqa: E402
from edgeshrink.quality import evaluate  # noqa: E402
from edgeshrink.shrink import shrink_model  # noqa: E402
from edgeshrink.testmodels.onnx_models import write_digits_npz  # noqa: E402
from edgeshrink.testmodels.tflite_models import (  # noqa: E402
    make_convnet_tflite,
    make_digits_tflite,
    make_mlp_tflite,
    write_random_inputs_npz,
)

PI4 = "raspberry-pi-4-4gb"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tflite-shrink")
    mlp = make_mlp_tflite(out / "mlp.tflite")
    conv = make_convnet_tflite(out / "conv.tflite")
    digits, _ = make_digits_tflite(out / "digits.tflite")
    return {
        "dir": out,
        "mlp": mlp,
        "mlp_cal": write_random_inputs_npz(mlp, out / "mlp-cal.npz", samples=64),
        "conv": conv,
        "conv_cal": write_random_inputs_npz(conv, out / "conv-cal.npz", samples=16),
        "digits": digits,
        "digits_cal": write_digits_npz(out / "digits-cal.npz", split="train", limit=256),
        "digits_test": write_digits_npz(out / "digits-test.npz", split="test"),
    }


@pytest.fixture(scope="module")
def shrunk(files: dict[str, Path]) -> dict[str, Path]:
    """The digits classifier in every mode, for a Pi 4."""
    made = {}
    for quant in QUANT_TYPES:
        options = ShrinkOptions(quant=quant, calibration=files["digits_cal"])
        result = shrink_model(
            files["digits"], get_profile(PI4), options, output=files["dir"] / f"d-{quant}.tflite"
        )
        assert result.artifact.quant == quant
        made[quant] = result.artifact.path
    return made


def test_inspect_float_models(files: dict[str, Path]) -> None:
    assert detect_format(files["mlp"]) == "tflite"
    info = inspect_tflite(files["mlp"])
    meta = dict(info.metadata)
    assert (info.format, info.file_type, info.is_quantized) == ("tflite", "FP32", False)
    assert info.n_params == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert meta["operators"] == [{"op": "FULLY_CONNECTED", "version": 1, "count": 3}]
    assert meta["signature_key"] == "serving_default"
    [x] = meta["inputs"]
    assert (x["name"], x["dtype"], x["shape"], x["quantization"]) == (
        "input", "float32", ["batch", 64], None,
    )  # fmt: skip
    assert meta["compute"]["kind"] == "matmul"
    conv = dict(inspect_tflite(files["conv"]).metadata)
    assert conv["compute"]["kind"] == "conv" and conv["compute"]["conv_share"] > 0.9
    assert conv["inputs"][0]["shape"] == [1, 32, 32, 3]
    assert {o["op"] for o in conv["operators"]} == {"CONV_2D", "MEAN", "FULLY_CONNECTED"}


def test_inspect_says_how_each_mode_is_quantized(shrunk: dict[str, Path]) -> None:
    expected = {
        "float32": ("FP32", None, False),
        "fp16": ("FP16", "fp16", False),
        "weight-only-int8": ("INT8-WEIGHT-ONLY", "weight-only-int8", True),
        "dynamic-int8": ("INT8-DYNAMIC", "dynamic-int8", True),
        "int8": ("INT8", "int8", True),
        "int8-int8-io": ("INT8 (int8 I/O)", "int8-int8-io", True),
    }
    for quant, (file_type, quantization, per_channel) in expected.items():
        info = inspect_tflite(shrunk[quant])
        meta = dict(info.metadata)
        assert (info.file_type, meta["quantization"], meta["per_channel"]) == (
            file_type, quantization, per_channel,
        ), quant  # fmt: skip
    io = dict(inspect_tflite(shrunk["int8-int8-io"]).metadata)
    [pixels] = io["inputs"]
    assert (pixels["type"], pixels["dtype"], pixels["storage_dtype"]) == ("INT8", "float32", "int8")
    assert pixels["quantization"]["scale"][0] > 0 and not pixels["quantization"]["per_channel"]
    # Signature names survive quantization, even where tensor names change.
    assert [o["name"] for o in io["outputs"]] == ["logits", "probabilities"]
    float_io = dict(inspect_tflite(shrunk["int8"]).metadata)
    assert [i["type"] for i in float_io["inputs"] + float_io["outputs"]] == ["FLOAT32"] * 3


def test_dynamic_range_fully_connected_declares_v12(
    shrunk: dict[str, Path], tmp_path: Path
) -> None:
    meta = dict(inspect_tflite(shrunk["dynamic-int8"]).metadata)
    assert {"op": "FULLY_CONNECTED", "version": 12, "count": 2} in meta["operators"]
    assert any("tflite-runtime 2.14 does not run it" in n for n in meta["runtime_notes"])
    manifest = load_artifact(shrunk["dynamic-int8"])
    assert any("FULLY_CONNECTED v1 -> v12" in n for n in manifest.notes)
    # Per-tensor weights make the v3 kernel that older runtimes have.
    per_tensor = shrink_model(
        shrunk["float32"], get_profile(PI4), ShrinkOptions(quant="dynamic-int8", per_channel=False),
        output=tmp_path / "per-tensor.tflite",
    )  # fmt: skip
    meta = dict(inspect_tflite(per_tensor.artifact.path).metadata)
    assert {o["version"] for o in meta["operators"] if o["op"] == "FULLY_CONNECTED"} == {3}
    assert meta["per_channel"] is False and meta["runtime_notes"] == []
    # Idempotent: a model whose versions are right is left alone.
    data = shrunk["dynamic-int8"].read_bytes()
    assert fix_operator_versions(data) == (data, [])


def test_digits_accuracy_in_every_mode(shrunk: dict[str, Path], files: dict[str, Path]) -> None:
    for quant, path in shrunk.items():
        report = evaluate(files["digits"], path, inputs=files["digits_test"], labels="labels")
        accuracy = report.metric("accuracy")
        assert accuracy.reference == pytest.approx(0.9722, abs=0.01)
        assert accuracy.value >= accuracy.reference - 0.02, (quant, accuracy)
        assert report.metric("top1_agreement", "logits").value >= 0.98, quant
        assert report.n_samples == 360 and report.format == "tflite"


def test_mlp_and_conv_agreement(files: dict[str, Path], tmp_path: Path) -> None:
    profile = get_profile(PI4)
    for name, bound in (("mlp", 0.99), ("conv", 0.98)):
        for quant in ("fp16", "weight-only-int8", "dynamic-int8", "int8"):
            out = shrink_model(
                files[name], profile,
                ShrinkOptions(quant=quant, calibration=files[f"{name}_cal"]),
                output=tmp_path / f"{name}-{quant}.tflite",
            ).artifact.path  # fmt: skip
            report = evaluate(files[name], out, inputs=files[f"{name}_cal"])
            cosine = report.metric("cosine_mean", "logits").value
            assert cosine > (0.9999 if quant == "fp16" else bound), (name, quant, cosine)


def test_plan_picks_per_profile(files: dict[str, Path]) -> None:
    info = inspect_tflite(files["digits"])
    picks = {
        profile: plan_tflite(info, get_profile(profile), ShrinkOptions()).quant
        for profile in ("imx8mp", "pixel-8", PI4)
    }
    assert picks == {"imx8mp": "int8-int8-io", "pixel-8": "dynamic-int8", PI4: "dynamic-int8"}
    calibrated = ShrinkOptions(calibration=files["digits_cal"])
    assert plan_tflite(info, get_profile("pixel-8"), calibrated).quant == "int8"
    imx = plan_tflite(info, get_profile("imx8mp"), ShrinkOptions())
    assert "libvx_delegate.so" in imx.reason and "needs calibration data" in imx.reason
    assert [c.quant for c in imx.candidates] == list(QUANT_TYPES)
    sizes = {c.quant: c.weights_bytes for c in imx.candidates}
    assert sizes["float32"] > sizes["fp16"] > sizes["dynamic-int8"]


def test_static_int8_needs_calibration(files: dict[str, Path], tmp_path: Path) -> None:
    profile = get_profile("imx8mp")
    with pytest.raises(CalibrationError, match=r"needs calibration data.*'pixels' \[batch, 64\]"):
        shrink_model(files["digits"], profile, ShrinkOptions(), output=tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()
    result = shrink_model(
        files["digits"], profile, ShrinkOptions(allow_random_calibration=True),
        output=tmp_path / "random.tflite",
    )  # fmt: skip
    assert result.artifact.quant == "int8-int8-io"
    assert any(
        n.startswith("WARNING: calibrated on 32 random inputs") for n in result.artifact.notes
    )
    bad = tmp_path / "bad.npz"
    import numpy as np

    np.savez(bad, other=np.zeros((4, 64), np.float32), more=np.zeros((4, 3), np.float32))
    with pytest.raises(CalibrationError, match="no array for input 'pixels'"):
        shrink_model(files["digits"], profile, ShrinkOptions(calibration=bad))
    with pytest.raises(QuantizationError, match="onnxruntime's"):
        shrink_model(
            files["digits"], profile,
            ShrinkOptions(calibration=files["digits_cal"], calibration_method="entropy"),
        )  # fmt: skip


def test_reuse_and_refusals(
    files: dict[str, Path], shrunk: dict[str, Path], tmp_path: Path
) -> None:
    profile = get_profile(PI4)
    options = ShrinkOptions(quant="int8", calibration=files["digits_cal"])
    first = shrink_model(files["digits"], profile, options, output=tmp_path / "r.tflite")
    again = shrink_model(files["digits"], profile, options, output=tmp_path / "r.tflite")
    assert not first.reused and again.reused
    other = ShrinkOptions(quant="int8", calibration=files["digits_test"])
    assert not shrink_model(files["digits"], profile, other, output=tmp_path / "r.tflite").reused
    with pytest.raises(QuantizationError, match="already quantized"):
        shrink_model(shrunk["int8"], profile, ShrinkOptions(quant="dynamic-int8"))
    with pytest.raises(QuantizationError, match="not a TFLite quantization"):
        shrink_model(files["digits"], profile, ShrinkOptions(quant="Q4_0"))


def test_bad_files_are_one_clear_error(files: dict[str, Path], tmp_path: Path) -> None:
    data = files["mlp"].read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated TFLite file"):
        inspect_tflite(cut)
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="not a TFLITE file"):
        detect_format(garbage)
    with pytest.raises(UnsupportedFormatError, match="not a TFLite flatbuffer"):
        inspect_tflite(garbage)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        inspect_tflite(empty)


def test_runner_batches_without_resizing(shrunk: dict[str, Path]) -> None:
    import numpy as np

    path = shrunk["int8-int8-io"]
    runner = TfliteRunner(path, inspect_tflite(path))
    pixels = np.linspace(0, 16, 7 * 64, dtype=np.float32).reshape(7, 64)
    outputs = runner.run({"pixels": pixels})
    assert outputs["probabilities"].shape == (7, 10)
    assert outputs["probabilities"].dtype == np.float32
    assert np.allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=0.05)


def test_cli_inspect_shrink_eval(files: dict[str, Path], tmp_path: Path) -> None:
    doc = json.loads(run_cli("inspect", str(files["conv"]), "--json").stdout)
    assert doc["format"] == "tflite" and doc["metadata"]["compute"]["kind"] == "conv"
    out = tmp_path / "cli.tflite"
    done = run_cli(
        "shrink", str(files["digits"]), "--profile", "imx8mp", "--calibration",
        str(files["digits_cal"]), "-o", str(out), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["artifact"]["quant"] == "int8-int8-io"
    done = run_cli(
        "eval", str(files["digits"]), str(out), "--inputs", str(files["digits_test"]),
        "--labels", "labels", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    accuracy = next(m for m in report["metrics"] if m["name"] == "accuracy")
    assert accuracy["value"] >= accuracy["reference"] - 0.02
    no_cal = run_cli("shrink", str(files["digits"]), "--profile", "imx8mp", "-o", str(out))
    assert no_cal.returncode == 1 and "--allow-random-calibration" in no_cal.stderr
