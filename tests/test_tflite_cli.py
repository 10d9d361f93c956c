"""TFLite through the commands a user types: inspect, plan, shrink, bench, deploy, --to tflite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import run_cli

pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeshrink.testmodels.tflite_models import make_convnet_tflite

    return make_convnet_tflite(tmp_path_factory.mktemp("tfl") / "conv.tflite")


def test_inspect_shows_operator_versions(conv: Path) -> None:
    text = run_cli("inspect", str(conv)).stdout
    assert "CONV_2D v1 3" in text and "conv-heavy" in text
    info = json.loads(run_cli("inspect", str(conv), "--json").stdout)
    assert info["format"] == "tflite" and not info["is_quantized"]


def test_plan_for_the_npu_board_needs_calibration(conv: Path, tmp_path: Path) -> None:
    planned = json.loads(run_cli("plan", str(conv), "-p", "imx8mp", "--json").stdout)
    assert planned["quant"] == "int8-int8-io" and "libvx_delegate" in planned["reason"]
    refused = run_cli("shrink", str(conv), "-p", "imx8mp", cwd=tmp_path)
    assert refused.returncode == 1 and "calibration" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_deploy_with_random_calibration_runs_on_local(conv: Path, tmp_path: Path) -> None:
    result = run_cli("deploy", str(conv), "-p", "imx8mp", "--target", "local", "--allow-random-calibration",
                     "--runs", "20", "--min-seconds", "0", "--json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["result"]["status"] == "ok" and doc["result"]["latency_ms"]["p90"] > 0
    # the local target gets no NPU delegate: the profile's library is on the board, not here
    assert "--external-delegate" not in json.dumps(doc["result"]["params"])
    manifest = json.loads(Path(doc["artifact"] + ".manifest.json").read_text())
    assert any("random" in note.lower() for note in manifest["notes"])


def test_keras_model_converted_with_to_tflite(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    model = tf.keras.Sequential([tf.keras.Input(shape=(16,)), tf.keras.layers.Dense(8, activation="relu"),
                                 tf.keras.layers.Dense(4)])  # fmt: skip
    model.save(tmp_path / "tiny.keras")
    result = run_cli(
        "shrink",
        str(tmp_path / "tiny.keras"),
        "-p",
        "pixel-8",
        "--to",
        "tflite",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    art = Path(json.loads(result.stdout)["artifact"]["path"])
    assert art.suffix == ".tflite" and art.exists()
    assert json.loads(run_cli("inspect", str(art), "--json").stdout)["format"] == "tflite"


def test_no_delegate_is_a_value_and_the_missing_delegate_hint_names_it(
    conv: Path, tmp_path: Path
) -> None:
    """`--external-delegate none` runs on the CPU; a delegate the device lacks says so and
    names that value (it used to say 'bench without --external-delegate', which the user
    had not passed: the profile had)."""
    none = run_cli("bench", str(conv), "--external-delegate", "none", "--runs", "3",
                   "--min-seconds", "0", "--no-store", "--json")  # fmt: skip
    assert none.returncode == 0, none.stderr
    assert json.loads(none.stdout)["result"]["runtime"].get("external_delegate") is None
    missing = run_cli("bench", str(conv), "--external-delegate", str(tmp_path / "libvx.so"),
                      "--runs", "3", "--min-seconds", "0", "--no-store", "--json")  # fmt: skip
    assert missing.returncode == 1
    error = json.loads(missing.stdout)["result"]["error"]
    assert error["type"] == "delegate_missing" and "--external-delegate none" in error["hint"]


def test_inspect_shows_an_int8_io_models_inputs_as_stored(conv: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv-int8-io.tflite"
    made = run_cli("shrink", str(conv), "-p", "imx8mp", "-q", "int8-int8-io",
                   "--allow-random-calibration", "-o", str(out))  # fmt: skip
    assert made.returncode == 0, made.stderr
    shown = run_cli("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    inputs = next(line for line in shown.stdout.splitlines() if line.startswith("inputs"))
    assert " int8[" in inputs and "zero point" in inputs and "float32" not in inputs, inputs
