"""Output agreement and accuracy of a shrunk ONNX model, as a library and as `edgeshrink eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

import numpy as np  # noqa: E402
from support import run_cli  # noqa: E402

from edgeshrink.errors import (
    EvalDataError,  # noqa: E402
    UnsupportedFormatError,  # noqa: E402
)
from edgeshrink.formats.onnx.quality import evaluate_onnx  # noqa: E402
from edgeshrink.formats.outputs import output_agreement  # noqa: E402
from edgeshrink.plan import ShrinkOptions  # noqa: E402
from edgeshrink.profiles import get_profile  # noqa: E402
from edgeshrink.quality import QualityBudget, evaluate  # noqa: E402
from edgeshrink.shrink import shrink_model  # noqa: E402
from edgeshrink.testmodels.onnx_models import (  # noqa: E402
    make_digits_onnx,
    make_mlp_onnx,
    write_digits_npz,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("quality")
    model, _ = make_digits_onnx(out / "digits.onnx")
    cal = write_digits_npz(out / "train.npz", split="train", limit=256)
    int8 = shrink_model(
        model,
        get_profile("raspberry-pi-4-4gb"),
        ShrinkOptions(quant="int8-static", calibration=cal),
        output=out / "digits-int8.onnx",
    ).artifact.path
    return {
        "model": model,
        "int8": int8,
        "test": write_digits_npz(out / "test.npz", split="test"),
        "dir": out,
    }


def test_output_agreement_arithmetic() -> None:
    base = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    cand = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
    agreement = output_agreement("y", base, cand)
    assert agreement.max_abs_error == 2.0 and agreement.max_abs_reference == 2.0
    assert agreement.mean_abs_error == pytest.approx(4.0 / 9.0)
    # rows: identical (1), orthogonal (0), both zero (1)
    assert agreement.cosine_mean == pytest.approx(2.0 / 3.0) and agreement.cosine_min == 0.0
    assert agreement.top1_agreement == pytest.approx(2.0 / 3.0)
    assert output_agreement("v", base[:, 0], cand[:, 0]).top1_agreement is None


def test_identical_models_agree_exactly(digits: dict) -> None:
    report = evaluate_onnx(digits["model"], digits["model"], inputs=digits["test"], labels="labels")
    for output in report.outputs:
        assert output.max_abs_error == 0.0 and output.cosine_min == pytest.approx(1.0)
    accuracy = report.metric("accuracy")
    assert accuracy.value == accuracy.reference and accuracy.change == 0.0


def test_int8_report_has_every_metric(digits: dict) -> None:
    report = evaluate(digits["model"], digits["int8"], inputs=digits["test"], labels="labels")
    assert (report.kind, report.format, report.n_samples) == ("output-agreement", "onnx", 360)
    names = {(m.name, m.output) for m in report.metrics}
    for output in ("logits", "probabilities"):
        for metric in ("cosine_mean", "cosine_min", "max_abs_error", "mean_abs_error"):
            assert (metric, output) in names
        assert ("top1_agreement", output) in names
    accuracy = report.metric("accuracy")
    assert 0.0 <= accuracy.reference - accuracy.value < 0.02
    assert report.verdict is None
    doc = report.to_dict()
    json.dumps(doc)
    assert doc["metrics"][-1]["name"] == "accuracy" and doc["metrics"][-1]["change"] <= 0


def test_budget_gives_a_verdict(digits: dict) -> None:
    ok = evaluate_onnx(
        digits["model"],
        digits["int8"],
        inputs=digits["test"],
        labels="labels",
        budget=QualityBudget(min_cosine=0.99, max_accuracy_drop=2.0),
    )
    assert ok.verdict == "pass"
    strict = QualityBudget(min_cosine=0.999999999, max_accuracy_drop=0.0).apply(ok)
    assert strict.verdict == "fail"
    assert {m.name for m in strict.metrics if m.passed is False} >= {"cosine_mean"}


def test_random_inputs_without_a_file(digits: dict) -> None:
    report = evaluate_onnx(digits["model"], digits["int8"], samples=10, seed=3)
    assert report.n_samples == 10 and report.inputs is None
    assert "agreement only" in report.notes[0]
    with pytest.raises(EvalDataError, match="--labels needs --inputs"):
        evaluate_onnx(digits["model"], digits["int8"], labels="labels")


def test_mismatched_models_and_data(digits: dict, tmp_path: Path) -> None:
    other = make_mlp_onnx(tmp_path / "mlp.onnx")
    with pytest.raises(EvalDataError, match="compare a model|has inputs"):
        evaluate_onnx(digits["model"], other)
    with pytest.raises(EvalDataError, match="no array 'y'"):
        evaluate_onnx(digits["model"], digits["int8"], inputs=digits["test"], labels="y")
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((4, 60), np.float32))
    with pytest.raises(EvalDataError, match=r"input 'pixels' has shape \[4, 60\]"):
        evaluate_onnx(digits["model"], digits["int8"], inputs=bad)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(UnsupportedFormatError, match="is gguf but"):
        evaluate(gguf, digits["model"])


def test_cli_eval_text_and_json(digits: dict) -> None:
    args = ["eval", str(digits["model"]), str(digits["int8"]), "--inputs", str(digits["test"])]
    text = run_cli(*args, "--labels", "labels")
    assert text.returncode == 0, text.stderr
    assert "360 samples" in text.stdout and "TOP-1 AGREE" in text.stdout
    assert "accuracy" in text.stdout and "points" in text.stdout
    result = run_cli(*args, "--labels", "labels", "--json", "--max-accuracy-drop", "2")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "pass" and doc["n_samples"] == 360
    accuracy = [m for m in doc["metrics"] if m["name"] == "accuracy"][0]
    assert accuracy["reference"] > 0.95 and accuracy["value"] > 0.95
    failing = run_cli(*args, "--min-cosine", "1")
    assert failing.returncode == 1 and "verdict: fail" in failing.stdout
    assert "fails the quality budget: cosine_mean of 'logits'" in failing.stderr
    # --min-agreement judges ONNX too (it was ignored here, though sweep applied it):
    # int8 agrees with float on 359 of the 360 digits
    disagreeing = run_cli(*args, "--min-agreement", "0.999")
    assert disagreeing.returncode == 1 and "top1_agreement of 'logits'" in disagreeing.stderr
    assert run_cli(*args, "--min-agreement", "0.99").returncode == 0
    # a cosine above 1 cannot be met: refused as a usage error, as sweep refused it
    beyond = run_cli(*args, "--min-cosine", "1.1")
    assert beyond.returncode == 2 and "--min-cosine" in beyond.stderr
    missing = run_cli(*args, "--labels", "nope")
    assert missing.returncode == 1 and "error: " in missing.stderr and "hint: " in missing.stderr
