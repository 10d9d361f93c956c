"""ONNX test models made by the project, and `inspect` on them and on broken files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

from support import run_cli  # noqa: E402

from edgeshrink.errors import ModelFileError, UnsupportedFormatError  # noqa: E402
from edgeshrink.formats import detect_and_inspect  # noqa: E402
from edgeshrink.formats.onnx import inspect_onnx, io_specs  # noqa: E402
from edgeshrink.testmodels.onnx_models import (  # noqa: E402
    make_convnet_onnx,
    make_digits_onnx,
    make_mlp_onnx,
    write_digits_npz,
    write_random_inputs_npz,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    digits, _ = make_digits_onnx(out / "digits.onnx")
    return {
        "mlp": make_mlp_onnx(out / "mlp.onnx"),
        "conv": make_convnet_onnx(out / "conv.onnx"),
        "digits": digits,
        "external": make_mlp_onnx(out / "ext" / "mlp-ext.onnx", external_data=True),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_makers_are_deterministic(tmp_path: Path, models: dict[str, Path]) -> None:
    assert sha256(make_mlp_onnx(tmp_path / "a.onnx")) == sha256(models["mlp"])
    assert sha256(make_convnet_onnx(tmp_path / "b.onnx")) == sha256(models["conv"])
    assert sha256(make_digits_onnx(tmp_path / "c.onnx")[0]) == sha256(models["digits"])
    assert sha256(make_mlp_onnx(tmp_path / "d.onnx", seed=1)) != sha256(models["mlp"])


def test_digits_classifier_is_really_trained(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    path, sklearn_accuracy = make_digits_onnx(tmp_path / "digits.onnx")
    data = np.load(write_digits_npz(tmp_path / "test.npz", split="test"))
    assert data["pixels"].shape == (360, 64) and data["labels"].shape == (360,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(None, {"pixels": data["pixels"]})
    accuracy = float(np.mean(logits.argmax(1) == data["labels"]))
    assert accuracy == pytest.approx(sklearn_accuracy, abs=1e-9)
    assert accuracy > 0.95
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_inspect_mlp(models: dict[str, Path]) -> None:
    info = inspect_onnx(models["mlp"])
    meta = dict(info.metadata)
    assert (info.format, info.file_type, info.is_quantized, info.llm) == (
        "onnx",
        "FP32",
        False,
        None,
    )
    assert info.n_params == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert [(t.type, t.count, t.n_bytes) for t in info.tensor_types] == [
        ("FLOAT", 6, 4 * info.n_params)
    ]
    assert meta["opset"] == {"ai.onnx": 17}
    assert meta["inputs"] == [
        {"name": "input", "type": "FLOAT", "dtype": "float32", "shape": ["batch", 64]}
    ]
    assert meta["outputs"][0]["shape"] == ["batch", 10]
    assert meta["op_histogram"] == {"MatMul": 3, "Add": 3, "Relu": 2}
    assert meta["compute"]["kind"] == "matmul" and meta["compute"]["conv_macs"] == 0
    assert meta["quantization"] is None and meta["external_data"] == []
    inputs, outputs = io_specs(info)
    assert inputs[0].symbolic == ("batch",) and inputs[0].describe() == "[batch, 64] float32"
    json.dumps(info.to_dict())  # everything in it is JSON-friendly


def test_inspect_convnet_is_conv_heavy(models: dict[str, Path]) -> None:
    meta = dict(inspect_onnx(models["conv"]).metadata)
    assert meta["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert meta["op_histogram"]["Conv"] == 3 and meta["op_histogram"]["Gemm"] == 1
    compute = meta["compute"]
    # conv0 32x32x16 outputs x 27, conv1 16x16x32 x 144, conv2 16x16x32 x 288; Gemm 32x10
    assert compute["conv_macs"] == 32 * 32 * 16 * 27 + 16 * 16 * 32 * 144 + 16 * 16 * 32 * 288
    assert compute["matmul_macs"] == 320
    assert compute["kind"] == "conv" and compute["conv_share"] > 0.99


def test_inspect_digits_has_two_outputs(models: dict[str, Path]) -> None:
    info = detect_and_inspect(models["digits"])
    meta = dict(info.metadata)
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert meta["op_histogram"]["Softmax"] == 1 and meta["compute"]["kind"] == "matmul"


def test_inspect_external_data(models: dict[str, Path]) -> None:
    info = inspect_onnx(models["external"])
    meta = dict(info.metadata)
    [data] = meta["external_data"]
    assert data["file"] == "mlp-ext.onnx.data" and data["present"] and data["complete"]
    assert data["tensors"] == 6
    assert info.size_bytes > models["external"].stat().st_size + 300_000
    assert info.n_params == inspect_onnx(models["mlp"]).n_params


def test_inspect_recognises_quantized_graphs(tmp_path: Path, models: dict[str, Path]) -> None:
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    quantize_dynamic(str(models["mlp"]), str(tmp_path / "dyn.onnx"))
    assert inspect_onnx(tmp_path / "dyn.onnx").file_type == "INT8-DYNAMIC"

    class Reader:
        def __init__(self) -> None:
            import numpy as np

            rng = np.random.default_rng(0)
            self.feeds = iter(
                [{"input": rng.standard_normal((4, 64)).astype("float32")} for _ in range(4)]
            )

        def get_next(self):
            return next(self.feeds, None)

    for fmt, expected in ((QuantFormat.QDQ, "INT8-QDQ"), (QuantFormat.QOperator, "INT8-QOPERATOR")):
        out = tmp_path / f"{expected}.onnx"
        quantize_static(str(models["mlp"]), str(out), Reader(), quant_format=fmt)
        info = inspect_onnx(out)
        assert (info.file_type, info.is_quantized) == (expected, True)
        assert {t.type for t in info.tensor_types} >= {"INT8", "FLOAT"}


def test_random_inputs_writer(tmp_path: Path, models: dict[str, Path]) -> None:
    import numpy as np

    data = np.load(write_random_inputs_npz(models["conv"], tmp_path / "c.npz", samples=5))
    assert data["image"].shape == (5, 3, 32, 32) and data["image"].dtype == np.float32
    data = np.load(write_random_inputs_npz(models["mlp"], tmp_path / "m.npz", samples=7))
    assert data["input"].shape == (7, 64)


# --------------------------------------------------------------------------- bad files


def test_text_file_is_not_onnx(tmp_path: Path) -> None:
    fake = tmp_path / "notes.onnx"
    fake.write_text("hello, this is not a model\n")
    with pytest.raises(UnsupportedFormatError, match="not an ONNX file") as caught:
        inspect_onnx(fake)
    assert caught.value.hint


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        inspect_onnx(tmp_path / "empty.onnx")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_file(tmp_path: Path, models: dict[str, Path], keep: float) -> None:
    data = models["mlp"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="truncated or corrupt") as caught:
        inspect_onnx(cut)
    assert "again" in caught.value.hint


def test_missing_and_short_external_data(tmp_path: Path) -> None:
    model = make_mlp_onnx(tmp_path / "m.onnx", external_data=True)
    data = tmp_path / "m.onnx.data"
    blob = data.read_bytes()
    data.write_bytes(blob[:1000])
    with pytest.raises(ModelFileError, match=r"m\.onnx\.data is truncated: 1,000 bytes"):
        inspect_onnx(model)
    data.unlink()
    with pytest.raises(ModelFileError, match=r"external data file\(s\) missing: m\.onnx\.data"):
        inspect_onnx(model)


def test_cli_inspect_json(models: dict[str, Path]) -> None:
    result = run_cli("inspect", str(models["conv"]), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "onnx" and doc["file_type"] == "FP32"
    assert doc["metadata"]["op_histogram"]["Conv"] == 3


def test_cli_inspect_not_onnx_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "x.onnx"
    fake.write_bytes(b"PK\x03\x04 a zip, not a model")
    result = run_cli("inspect", str(fake))
    assert result.returncode == 1
    assert "error:" in result.stderr and "not an ONNX file" in result.stderr
    assert "Traceback" not in result.stderr


def test_maker_writes_every_model_and_data_file(tmp_path: Path, capsys) -> None:
    from edgeshrink.testmodels.onnx_models import main

    assert main(["-o", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [
            "mlp.onnx", "mlp-calibration.npz", "mlp-eval.npz",
            "convnet.onnx", "convnet-calibration.npz", "convnet-eval.npz",
            "digits.onnx", "digits-calibration.npz", "digits-test.npz",
        ]
    )  # fmt: skip
    assert "digits classifier test accuracy" in capsys.readouterr().out
