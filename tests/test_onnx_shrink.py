"""Plan and shrink ONNX models with onnxruntime's own quantizers, on real files.

Tolerances (measured on these models, with margin):
- fp16: mean cosine > 0.9999 on every output;
- int8 (dynamic, static QDQ, static QOperator): mean cosine > 0.99 and top-1
  agreement >= 95% on the MLP and the conv net;
- digits classifier: static and dynamic int8 lose < 2 accuracy points on the
  360-sample test split (measured: 97.2% -> 96.7%).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")
pytest.importorskip("sklearn")

from edgeshrink.artifacts import load_artifact  # noqa: E402
from edgeshrink.errors import (  # noqa: E402
    DoesNotFitError,
    ModelFileError,
    QuantizationError,
    UnsupportedFormatError,
)
from edgeshrink.formats.onnx import CalibrationError, inspect_onnx, plan_onnx  # noqa: E402
from edgeshrink.formats.onnx.quality import evaluate_onnx  # noqa: E402
from edgeshrink.plan import ShrinkOptions  # noqa: E402
from edgeshrink.profiles import get_profile  # noqa: E402
from edgeshrink.shrink import plan_model, shrink_model  # noqa: E402
from edgeshrink.testmodels.onnx_models import (  # noqa: E402
    make_convnet_onnx,
    make_digits_onnx,
    make_mlp_onnx,
    write_digits_npz,
    write_random_inputs_npz,
)

PI4 = "raspberry-pi-4-4gb"
X86 = "x86-64-host"  # AVX2, no VNNI
N100 = "intel-n100-16gb"  # AVX-VNNI
JETSON = "jetson-orin-nano-8gb"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-shrink")


@pytest.fixture(scope="module")
def mlp(work: Path) -> dict[str, Path]:
    model = make_mlp_onnx(work / "mlp.onnx")
    return {
        "model": model,
        "calibration": write_random_inputs_npz(model, work / "mlp-cal.npz", samples=128),
        "eval": write_random_inputs_npz(model, work / "mlp-eval.npz", samples=64, seed=1),
    }


@pytest.fixture(scope="module")
def conv(work: Path) -> dict[str, Path]:
    model = make_convnet_onnx(work / "conv.onnx")
    return {
        "model": model,
        "calibration": write_random_inputs_npz(model, work / "conv-cal.npz", samples=32),
        "eval": write_random_inputs_npz(model, work / "conv-eval.npz", samples=16, seed=1),
    }


@pytest.fixture(scope="module")
def digits(work: Path) -> dict[str, Path]:
    model, _ = make_digits_onnx(work / "digits.onnx")
    return {
        "model": model,
        "calibration": write_digits_npz(work / "digits-train.npz", split="train", limit=256),
        "eval": write_digits_npz(work / "digits-test.npz", split="test"),
    }


def options(**kw) -> ShrinkOptions:
    return ShrinkOptions(**kw)


# --------------------------------------------------------------------------- plan


@pytest.mark.parametrize(
    ("profile_id", "conv_quant", "mlp_quant"),
    [(PI4, "int8-static", "int8-dynamic"), (N100, "int8-static", "int8-dynamic"),
     (JETSON, "fp16", "fp16")],
)  # fmt: skip
def test_plan_follows_profile_and_model_kind(
    profile_id: str, conv_quant: str, mlp_quant: str, conv: dict, mlp: dict
) -> None:
    profile = get_profile(profile_id)
    conv_plan = plan_model(inspect_onnx(conv["model"]), profile, options())
    mlp_plan = plan_model(inspect_onnx(mlp["model"]), profile, options())
    assert (conv_plan.quant, mlp_plan.quant) == (conv_quant, mlp_quant)
    assert [c.quant for c in conv_plan.candidates] == [
        "fp32",
        "fp16",
        "int8-static",
        "int8-dynamic",
    ]
    sizes = {c.quant: c.weights_bytes for c in conv_plan.candidates}
    assert sizes["fp32"] > sizes["fp16"] > sizes["int8-dynamic"] >= sizes["int8-static"]
    assert all(c.fits for c in conv_plan.candidates) and conv_plan.context is None
    if conv_quant == "int8-static":
        assert "Conv" in conv_plan.reason and "7.6x slower" in conv_plan.reason
        assert "--calibration" in conv_plan.reason
        assert "MatMul" in mlp_plan.reason and "no calibration" in mlp_plan.reason
    json.dumps(conv_plan.to_dict())


def test_int8_types_fit_the_cpu(conv: dict) -> None:
    info = inspect_onnx(conv["model"])
    arm = plan_onnx(info, get_profile(PI4), options()).reason
    x86 = plan_onnx(info, get_profile(X86), options()).reason
    vnni = plan_onnx(info, get_profile(N100), options()).reason
    assert "activations int8 symmetric, weights int8 per-channel" in arm and "ARM" in arm
    assert "activations uint8" in x86 and "7-bit" in x86 and "no VNNI" in x86
    assert "activations uint8" in vnni and "7-bit" not in vnni and "VNNI" in vnni
    per_tensor = plan_onnx(info, get_profile(PI4), options(per_channel=False)).reason
    assert "per-tensor" in per_tensor


def test_asked_quant_and_unknown_quant(mlp: dict) -> None:
    info = inspect_onnx(mlp["model"])
    plan = plan_onnx(info, get_profile(PI4), options(quant="INT8_STATIC_QOPERATOR"))
    assert plan.quant == "int8-static-qoperator" and "as asked" in plan.reason
    with pytest.raises(QuantizationError, match="'int4' is not an ONNX quantization") as caught:
        plan_onnx(info, get_profile(PI4), options(quant="int4"))
    assert "int8-dynamic" in caught.value.hint


def test_does_not_fit(work: Path) -> None:
    big = make_mlp_onnx(work / "big.onnx", features=512, hidden=(2048, 2048))
    info = inspect_onnx(big)
    pi = get_profile(PI4)
    small = dataclasses.replace(pi, ram_mb=85, reserved_mb=0, budget_fraction=1.0)
    with pytest.raises(DoesNotFitError, match="at fp32 does not fit") as caught:
        plan_onnx(info, small, options(quant="fp32"))
    assert caught.value.hint == "try --quant int8-dynamic"
    assert plan_onnx(info, small, options()).quant == "int8-dynamic"
    jetson = dataclasses.replace(get_profile(JETSON), ram_mb=80, reserved_mb=0, budget_fraction=1.0)
    fallback = plan_onnx(info, jetson, options())
    assert fallback.quant == "int8-dynamic" and "fp16 does not fit" in fallback.reason
    tiny = dataclasses.replace(pi, ram_mb=60, reserved_mb=0, budget_fraction=1.0)
    with pytest.raises(DoesNotFitError, match="at any ONNX type"):
        plan_onnx(info, tiny, options())


# --------------------------------------------------------------------------- shrink


def shrink(model: Path, out: Path, profile: str = PI4, **kw):
    return shrink_model(model, get_profile(profile), options(**kw), output=out)


@pytest.mark.parametrize("quant", ["fp16", "int8-dynamic", "int8-static", "int8-static-qoperator"])
@pytest.mark.parametrize("profile_id", [PI4, X86])
@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_every_mode_loads_and_agrees(
    which: str, profile_id: str, quant: str, mlp: dict, conv: dict, work: Path
) -> None:
    data = {"mlp": mlp, "conv": conv}[which]
    out = work / profile_id / f"{which}-{quant}.onnx"
    result = shrink(data["model"], out, profile_id, quant=quant, calibration=data["calibration"])
    art = result.artifact
    assert art.path == out and out.exists() and art.manifest_path.exists()
    assert (art.format, art.quant, art.profile_id) == ("onnx", quant, profile_id)
    assert art.size_bytes == out.stat().st_size
    assert art.tool_versions["onnxruntime"] and art.tool_versions["onnx"]
    assert art.recipe[-1]["pass"] == "quantize" and art.recipe[-1]["type"] == quant
    assert art.recipe_detail and art.recipe_detail.startswith(quant.split("-static")[0])
    assert not list(out.parent.glob(".*partial")) and not list(out.parent.glob(".*work"))
    expected_type = {
        "fp16": "FP16",
        "int8-dynamic": "INT8-DYNAMIC",
        "int8-static": "INT8-QDQ",
        "int8-static-qoperator": "INT8-QOPERATOR",
    }[quant]
    assert inspect_onnx(out).file_type == expected_type
    report = evaluate_onnx(data["model"], out, inputs=data["eval"])
    [agreement] = report.outputs
    if quant == "fp16":
        assert agreement.cosine_mean > 0.9999
        assert art.size_bytes < 0.6 * data["model"].stat().st_size
    else:
        assert agreement.cosine_mean > 0.99, agreement
        assert agreement.top1_agreement >= 0.95
        assert art.size_bytes < 0.5 * data["model"].stat().st_size


def test_static_int8_weights_are_chosen_by_measurement_not_assumed(
    digits: dict, work: Path
) -> None:
    """The plan never keeps a setting edgeshrink's own evaluation would reject: static int8
    measures per-channel against per-tensor weights on the calibration data and keeps the
    better, and it is at least as good as either forced choice on held-out data."""

    def agreement(path: Path) -> float:
        report = evaluate_onnx(digits["model"], path, inputs=digits["eval"], labels="labels")
        return report.metric("top1_agreement", "probabilities").value

    chosen = shrink(digits["model"], work / "digits-chosen.onnx", quant="int8-static",
                    calibration=digits["calibration"])  # fmt: skip
    note = next(n for n in chosen.artifact.notes if "output cosine on the calibration" in n)
    assert "per-channel vs" in note and "per-tensor" in note
    forced = {
        per_channel: agreement(
            shrink(
                digits["model"],
                work / f"digits-pc-{per_channel}.onnx",
                quant="int8-static",
                calibration=digits["calibration"],
                per_channel=per_channel,
            ).artifact.path
        )  # fmt: skip
        for per_channel in (True, False)
    }
    assert agreement(chosen.artifact.path) >= min(forced.values())
    assert agreement(chosen.artifact.path) > 0.98


@pytest.mark.parametrize("quant", ["int8-static", "int8-dynamic", "fp16"])
def test_digits_accuracy_survives_quantization(quant: str, digits: dict, work: Path) -> None:
    out = work / f"digits-{quant}.onnx"
    shrink(digits["model"], out, quant=quant, calibration=digits["calibration"])
    report = evaluate_onnx(digits["model"], out, inputs=digits["eval"], labels="labels")
    accuracy = report.metric("accuracy")
    assert report.n_samples == 360 and accuracy.output == "logits"
    assert 0.95 < accuracy.reference < 1.0 and 0.9 < accuracy.value <= 1.0
    assert accuracy.reference - accuracy.value < 0.02  # under 2 points
    assert report.metric("top1_agreement", "probabilities").value > 0.98


def test_default_plan_shrinks_conv_with_calibration(conv: dict, work: Path) -> None:
    out = work / "conv-default.onnx"
    result = shrink(conv["model"], out, calibration=conv["calibration"])
    assert result.plan.quant == "int8-static"
    assert any("calibrated on 32 samples from conv-cal.npz" in n for n in result.artifact.notes)
    assert any(n.startswith("pre-processed with quant_pre_process") for n in result.artifact.notes)


def test_rerun_reuses_and_new_calibration_redoes(conv: dict, work: Path) -> None:
    out = work / "conv-reuse.onnx"
    first = shrink(conv["model"], out, calibration=conv["calibration"])
    again = shrink(conv["model"], out, calibration=conv["calibration"])
    assert (first.reused, again.reused) == (False, True)
    assert again.artifact.sha256 == first.artifact.sha256
    other = write_random_inputs_npz(conv["model"], work / "conv-cal-2.npz", samples=8, seed=7)
    changed = shrink(conv["model"], out, calibration=other)
    assert changed.reused is False
    forced = shrink(conv["model"], out, calibration=other, force=True)
    assert forced.reused is False


def test_random_calibration_is_opt_in_and_recorded(conv: dict, work: Path) -> None:
    with pytest.raises(CalibrationError, match="needs calibration data") as caught:
        shrink(conv["model"], work / "conv-nocal.onnx")
    assert (
        "--calibration" in caught.value.hint and "--allow-random-calibration" in caught.value.hint
    )
    assert "[1, 3, 32, 32]" in caught.value.message
    assert not (work / "conv-nocal.onnx").exists()
    out = work / "conv-random.onnx"
    result = shrink(conv["model"], out, allow_random_calibration=True)
    manifest = json.loads(result.artifact.manifest_path.read_text())
    [warning] = [n for n in manifest["notes"] if n.startswith("WARNING")]
    assert "random inputs" in warning
    assert load_artifact(out).notes == result.artifact.notes


def test_calibration_from_a_directory_of_npy(mlp: dict, work: Path) -> None:
    import numpy as np

    folder = work / "cal-dir"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        np.save(folder / f"batch{i}.npy", rng.standard_normal((8, 64)).astype(np.float32))
    result = shrink(mlp["model"], work / "mlp-dir.onnx", quant="int8-static", calibration=folder)
    assert any("calibrated on 24 samples" in n for n in result.artifact.notes)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"inputs": ("float32", (16, 64))}, r"no array for input 'input'; the model expects \[batch, 64\] float32"),
        ({"input": ("float32", (16, 63))}, r"input 'input' has shape \[16, 63\], the model expects \[batch, 64\]"),
        ({"input": ("int64", (16, 64))}, r"input 'input' is int64, the model expects \[batch, 64\] float32"),
        ({"input": ("float32", (16,))}, r"input 'input' has shape \[16\], the model expects"),
    ],
    ids=["name", "shape", "dtype", "rank"],
)  # fmt: skip
def test_calibration_mismatch_is_one_clear_error(
    arrays: dict, message: str, mlp: dict, work: Path
) -> None:
    import numpy as np

    path = work / "bad-cal.npz"
    np.savez(path, **{k: np.zeros(shape, dtype) for k, (dtype, shape) in arrays.items()})
    with pytest.raises(CalibrationError, match=message) as caught:
        shrink(mlp["model"], work / "never.onnx", quant="int8-static", calibration=path)
    assert caught.value.hint
    assert not (work / "never.onnx").exists()


def test_fixed_batch_calibration_rows_must_divide(conv: dict, work: Path) -> None:
    import numpy as np

    path = work / "conv-stacked.npz"
    np.savez(path, image=np.zeros((4, 1, 3, 32, 32), np.float32))  # samples on a new axis: fine
    result = shrink(conv["model"], work / "conv-stacked.onnx", calibration=path)
    assert any("calibrated on 4 samples" in n for n in result.artifact.notes)
    np.savez(path, image=np.zeros((4, 3, 31, 32), np.float32))
    with pytest.raises(CalibrationError, match=r"expects \[1, 3, 32, 32\] float32"):
        shrink(conv["model"], work / "conv-never.onnx", calibration=path, force=True)


def test_external_data_models_shrink_to_external_data(work: Path) -> None:
    ext_dir = work / "ext"
    model = make_mlp_onnx(ext_dir / "mlp-ext.onnx", external_data=True)
    cal = write_random_inputs_npz(model, ext_dir / "cal.npz", samples=32)
    for quant in ("int8-dynamic", "int8-static", "fp16"):
        out = work / "ext-out" / f"mlp-ext-{quant}.onnx"
        result = shrink(model, out, quant=quant, calibration=cal)
        data = out.with_name(out.name + ".data")
        assert data.exists(), sorted(p.name for p in out.parent.iterdir())
        assert f"external data: {data.name}" in result.artifact.notes
        info = inspect_onnx(out)
        assert dict(info.metadata)["external_data"][0]["file"] == data.name
        report = evaluate_onnx(model, out, inputs=cal)
        assert report.outputs[0].cosine_mean > 0.99
    leftovers = [p.name for p in (work / "ext-out").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_already_quantized_and_fp16_sources_are_refused(mlp: dict, work: Path) -> None:
    int8 = work / "mlp-q.onnx"
    shrink(mlp["model"], int8, quant="int8-dynamic")
    with pytest.raises(QuantizationError, match="already quantized \\(INT8-DYNAMIC\\)"):
        shrink(int8, work / "mlp-qq.onnx", quant="int8-dynamic")
    fp16 = work / "mlp-h.onnx"
    shrink(mlp["model"], fp16, quant="fp16")
    with pytest.raises(QuantizationError, match="already FP16"):
        shrink(fp16, work / "mlp-hq.onnx", quant="int8-dynamic")


def test_output_may_not_overwrite_the_input(mlp: dict) -> None:
    with pytest.raises(ModelFileError, match="overwrite the input"):
        shrink(mlp["model"], mlp["model"], quant="int8-dynamic")


def test_opset_onnxruntime_cannot_run(work: Path) -> None:
    model = onnx.load(str(make_mlp_onnx(work / "opset-src.onnx")))
    model.opset_import[0].version = 30
    path = work / "opset30.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedFormatError, match=r"uses opset 30 of ai\.onnx; onnxruntime .* runs up to opset \d+") as caught:  # fmt: skip
        shrink(path, work / "opset30-int8.onnx", quant="int8-dynamic")
    assert "version_converter" in caught.value.hint


def test_not_onnx_and_truncated_through_shrink(mlp: dict, work: Path) -> None:
    fake = work / "fake.onnx"
    fake.write_text("definitely not protobuf")
    with pytest.raises(UnsupportedFormatError, match="not an ONNX file"):
        shrink(fake, work / "fake-out.onnx", quant="int8-dynamic")
    cut = work / "cut.onnx"
    cut.write_bytes(mlp["model"].read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        shrink(cut, work / "cut-out.onnx", quant="int8-dynamic")


def test_shrink_with_relative_paths_writes_nothing_but_its_output(
    digits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's tools drop temporary files into the current directory: edgeshrink runs
    them in its own work dir, and relative paths still work."""
    import shutil

    from support import run_cli

    for key in ("model", "calibration"):
        shutil.copy(digits[key], tmp_path / digits[key].name)
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    run = run_cli(
        "shrink", digits["model"].name, "-p", PI4, "-q", "int8-static",
        "--calibration", digits["calibration"].name, "-o", "out.onnx", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert set(os.listdir(tmp_path)) - before == {"out.onnx", "out.onnx.manifest.json"}
    notes = json.loads((tmp_path / "out.onnx.manifest.json").read_text())["notes"]
    assert any(n.startswith("pre-processed with quant_pre_process") for n in notes), notes
    assert "WARNING" not in run.stderr and "\x1b[" not in run.stderr
