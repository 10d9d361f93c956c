"""`sweep` on a TFLite model: the TFLite backend's modes as the ladder, judged by output
agreement and accuracy as the ONNX sweep is (real ai-edge-quantizer, real LiteRT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("sklearn")

from support import run_cli  # noqa: E402

from edgeshrink.sweep import ACCURACY_DROP_LABEL  # noqa: E402
from edgeshrink.testmodels.onnx_models import write_digits_npz  # noqa: E402
from edgeshrink.testmodels.tflite_models import make_digits_tflite  # noqa: E402

PI4 = "raspberry-pi-4-4gb"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tflite-sweep")
    model, _ = make_digits_tflite(out / "digits.tflite")
    return {
        "model": model,
        "cal": write_digits_npz(out / "cal.npz", split="train", limit=128),
        "test": write_digits_npz(out / "test.npz", split="test"),
    }


def test_tflite_sweep_picks_within_the_accuracy_budget(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    args = ("sweep", str(digits["model"]), "-p", PI4, "--calibration", str(digits["cal"]),
            "--eval", str(digits["test"]), "--labels", "labels", "--max-accuracy-drop", "1")  # fmt: skip
    table = run_cli(*args, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "ACCURACY" in table.stdout and "dynamic-int8" in table.stdout
    doc = json.loads(run_cli(*args, "--json", cwd=tmp_path).stdout)
    assert doc["format"] == "tflite" and doc["loss"] == ACCURACY_DROP_LABEL
    made = [c["quant"] for c in doc["candidates"]]
    assert made == ["float32", "fp16", "weight-only-int8", "dynamic-int8", "int8"]
    for c in doc["candidates"]:
        assert Path(c["path"]).suffix == ".tflite" and Path(c["path"]).exists()
        assert c["format"] == "tflite"
    sizes = {c["quant"]: c["size_bytes"] for c in doc["candidates"]}
    assert sizes["int8"] < sizes["fp16"] < sizes["float32"]
    # No target: there is no TFLite speed estimate, so the smallest good-enough one.
    assert doc["picked_by"] == "size"
    good = [c for c in doc["candidates"] if c["meets_quality"]]
    assert doc["pick"] == min(good, key=lambda c: c["size_bytes"])["quant"]
    for c in good:
        accuracy = next(m for m in c["quality"]["metrics"] if m["name"] == "accuracy")
        assert (accuracy["reference"] - accuracy["value"]) * 100 <= 1
    # The second run reused every artifact and every quality measurement.
    assert all(c["quality_reused"] for c in doc["candidates"])


def test_tflite_sweep_refuses_a_quantized_start_and_gguf_options(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    shrunk = run_cli("shrink", str(digits["model"]), "-p", PI4, "--quant", "dynamic-int8",
                     "-o", str(tmp_path / "d8.tflite"), cwd=tmp_path)  # fmt: skip
    assert shrunk.returncode == 0, shrunk.stderr
    again = run_cli("sweep", str(tmp_path / "d8.tflite"), "-p", PI4, cwd=tmp_path)
    assert again.returncode == 1
    assert "a TFLite sweep starts from the float32 original" in again.stderr
    assert "Traceback" not in again.stderr
    foreign = run_cli("sweep", str(digits["model"]), "-p", PI4, "--max-kld", "0.1", cwd=tmp_path)
    assert foreign.returncode == 2
    assert "--max-kld apply to GGUF models only; digits.tflite is TFLITE" in foreign.stderr
