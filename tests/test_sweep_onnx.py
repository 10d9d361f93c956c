"""The ONNX sweep: real quantizations of a trained digits classifier and a conv net,
real onnxruntime quality figures, real runs on `local`, a real SQLite store."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

from support import run_cli  # noqa: E402

from edgeshrink.artifacts import load_artifact  # noqa: E402
from edgeshrink.bench import BenchParams  # noqa: E402
from edgeshrink.profiles import get_profile  # noqa: E402
from edgeshrink.store import ResultStore  # noqa: E402
from edgeshrink.sweep import (  # noqa: E402
    ACCURACY_DROP_LABEL,
    COSINE_LOSS_LABEL,
    ONNX_LADDER,
    OutputQualityBudget,
    SweepError,
    onnx_ladder_step,
    sweep_onnx,
)
from edgeshrink.targets import local_target  # noqa: E402
from edgeshrink.testmodels.onnx_models import (  # noqa: E402
    make_convnet_onnx,
    make_digits_onnx,
    write_digits_npz,
)

PI4 = "raspberry-pi-4-4gb"
FAST = BenchParams(threads=1, runs=20, min_seconds=0.2, warmup=1)
INT8 = ("int8-dynamic", "int8-static-per-tensor", "int8-static-per-channel")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx-sweep")
    digits, _ = make_digits_onnx(out / "digits.onnx")
    return {
        "digits": digits,
        "cal": write_digits_npz(out / "digits-cal.npz", split="train", limit=256),
        "test": write_digits_npz(out / "digits-test.npz", split="test"),
        "conv": make_convnet_onnx(out / "conv.onnx"),
    }


def digits_sweep(files: dict[str, Path], out: Path, **kw):
    kw.setdefault("budget", OutputQualityBudget(max_accuracy_drop=2.0))
    return sweep_onnx(
        files["digits"], get_profile(PI4), calibration=files["cal"], eval_inputs=files["test"],
        labels="labels", output_dir=out, **kw,
    )  # fmt: skip


def test_digits_sweep_picks_within_the_accuracy_budget_and_stores_quality(
    files: dict[str, Path], tmp_path: Path
) -> None:
    result = digits_sweep(files, tmp_path / "out", plot=tmp_path / "sweep.svg")
    assert [c.quant for c in result.candidates] == list(ONNX_LADDER)
    assert result.loss_label == ACCURACY_DROP_LABEL and not result.skipped
    by = {c.quant: c for c in result.candidates}
    assert by["fp32"].loss == 0.0 and by["fp32"].size_bytes > by["int8-dynamic"].size_bytes
    for c in result.candidates:
        accuracy = next(m for m in c.quality["metrics"] if m["name"] == "accuracy")
        assert c.loss == pytest.approx((accuracy["reference"] - accuracy["value"]) * 100)
        assert c.fits and c.meets_quality  # int8 costs the digits well under 2 points
    pick = by[result.pick]
    assert pick.loss <= 2.0
    # No target: no speed to compare, so the pick falls back to the smallest, and says so.
    assert result.picked_by == "size" and result.optimize == "speed"
    assert pick.size_bytes == min(c.size_bytes for c in result.candidates)
    assert result.reason.startswith("no speed without --target")
    assert "accuracy drop ≤ 2 points" in result.reason
    assert result.pareto_speed == () and result.pick in result.pareto_size
    svg = (tmp_path / "sweep.svg").read_text()
    assert svg.count('class="point"') == len(ONNX_LADDER)  # the speed panel says why it is empty
    assert "speed not measured: pass --target" in svg and "accuracy drop (points)" in svg
    with ResultStore() as store:
        rows = store.query("SELECT quant, agreement, accuracy, kld_mean FROM quality ORDER BY id")
    assert [r["quant"] for r in rows] == list(ONNX_LADDER)
    assert all(0.9 < r["agreement"] <= 1 and 0.9 < r["accuracy"] <= 1 for r in rows)
    assert all(r["kld_mean"] is None for r in rows)

    again = digits_sweep(files, tmp_path / "out")
    assert all(c.quality_reused for c in again.candidates)
    assert [c.loss for c in again.candidates] == [c.loss for c in result.candidates]


def test_a_budget_no_candidate_meets_is_a_clear_answer(
    files: dict[str, Path], tmp_path: Path
) -> None:
    result = digits_sweep(
        files, tmp_path, ladder=INT8, budget=OutputQualityBudget(min_cosine=0.9999999)
    )
    assert result.pick is None
    assert "meets the quality budget (mean cosine ≥ 0.9999999)" in result.reason
    assert "the closest is" in result.reason and "mean cosine of" in result.reason

    cli = run_cli(
        "sweep", str(files["digits"]), "-p", PI4, "--calibration", str(files["cal"]),
        "--eval", str(files["test"]), "--labels", "labels", "--ladder", ",".join(INT8),
        "--min-cosine", "0.9999999", "--output-dir", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert cli.returncode == 1, cli.stderr
    assert "error: no candidate is good enough for this device" in cli.stderr
    assert "Traceback" not in cli.stderr
    assert re.search(r"^pick: no candidate that fits meets the quality budget", cli.stdout, re.M)


def test_on_local_latency_is_measured_once_and_reused(
    files: dict[str, Path], tmp_path: Path
) -> None:
    kw = dict(ladder=("fp32", "int8-dynamic", "int8-static-per-channel"),
              target=local_target(PI4), params=FAST)  # fmt: skip
    first = digits_sweep(files, tmp_path / "out", plot=tmp_path / "sweep.svg", **kw)
    assert first.speed_source == "measured on local" and first.picked_by == "speed"
    for c in first.candidates:
        m = c.measured
        assert m and m["status"] == "ok" and not c.measured_reused
        assert 0 < m["latency_p50_ms"] <= m["latency_p90_ms"] and m["throughput_per_s"] > 0
        assert c.speed == m["throughput_per_s"]
    fastest = max(first.candidates, key=lambda c: c.speed)
    assert first.pick == fastest.quant  # all are within 2 points of accuracy
    assert "inferences/s" in first.reason and "measured on local" in first.reason
    assert first.pareto_speed
    svg = (tmp_path / "sweep.svg").read_text()
    assert svg.count('class="point"') == 2 * len(first.candidates)
    assert "inferences/s (measured on local)" in svg

    again = digits_sweep(files, tmp_path / "out", **kw)
    assert all(c.measured_reused and c.quality_reused for c in again.candidates)
    for a, b in zip(first.candidates, again.candidates, strict=True):
        for key in ("latency_p50_ms", "latency_p90_ms", "throughput_per_s"):
            assert b.measured[key] == pytest.approx(a.measured[key])
    assert again.pick == first.pick


def test_conv_net_without_calibration_skips_static_int8_with_a_note(
    files: dict[str, Path], tmp_path: Path
) -> None:
    cli = run_cli("sweep", str(files["conv"]), "-p", PI4, "--output-dir", str(tmp_path / "a"),
                  cwd=tmp_path)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    for step in ("int8-static-per-tensor", "int8-static-per-channel"):
        assert f"skipped: {step}: static int8 needs calibration data (--calibration" in cli.stdout
    assert "quality on 64 random inputs (agreement only)" in cli.stdout
    assert "no speed without --target" in cli.stdout

    result = sweep_onnx(
        files["conv"], get_profile(PI4), budget=OutputQualityBudget(min_cosine=0.99),
        allow_random_calibration=True, output_dir=tmp_path / "b", samples=16,
    )  # fmt: skip
    assert not result.skipped and result.loss_label == COSINE_LOSS_LABEL
    static = [c for c in result.candidates if c.quant.startswith("int8-static")]
    assert len(static) == 2
    for c in static:
        assert c.warnings and "calibrated on 32 random inputs" in c.warnings[0]
        assert any(n.startswith("WARNING: calibrated on") for n in load_artifact(c.path).notes)
    # What the quantizer did is the manifest's recipe (edgeshrink.artifact/2), not a note.
    per_tensor, per_channel = (load_artifact(c.path).recipe_detail for c in static)
    assert "per_channel=False" in per_tensor
    assert "per_channel=True" in per_channel

    nothing = run_cli("sweep", str(files["conv"]), "-p", PI4, "--ladder", "int8-static",
                      "--output-dir", str(tmp_path / "c"), cwd=tmp_path)  # fmt: skip
    assert nothing.returncode == 1, nothing.stderr
    assert (
        "pick: no candidate was made: int8-static-per-channel: static int8 needs" in nothing.stdout
    )
    assert "error: no candidate of the ladder could be made" in nothing.stderr
    assert "hint: pass --calibration" in nothing.stderr


def test_steps_that_do_not_fit_are_listed_and_nothing_is_picked(
    files: dict[str, Path], tmp_path: Path
) -> None:
    pi = get_profile(PI4)
    tiny = replace(pi, ram_mb=pi.reserved_mb + 1)  # a budget far below onnxruntime's own needs
    result = digits_sweep(files, tmp_path, ladder=("fp32", "int8-dynamic"))
    assert result.pick
    starved = sweep_onnx(
        files["digits"], tiny, budget=OutputQualityBudget(), ladder=("fp32", "int8-dynamic"),
        output_dir=tmp_path,
    )  # fmt: skip
    assert starved.pick is None and "no candidate fits" in starved.reason
    # like the GGUF sweep: made and shown with their cost, marked as not fitting
    assert [c.quant for c in starved.candidates] == ["fp32", "int8-dynamic"]
    assert not any(c.fits for c in starved.candidates)


def test_ladder_names_and_bad_requests(files: dict[str, Path], tmp_path: Path) -> None:
    assert onnx_ladder_step("int8-static") == "int8-static-per-channel"
    assert onnx_ladder_step("QOperator") == "int8-static-qoperator"
    assert onnx_ladder_step("INT8_STATIC_PER_TENSOR") == "int8-static-per-tensor"
    with pytest.raises(SweepError, match="not a step of the ONNX sweep ladder"):
        onnx_ladder_step("q4_0")
    with pytest.raises(SweepError, match="needs labels"):
        sweep_onnx(files["digits"], get_profile(PI4), output_dir=tmp_path,
                   budget=OutputQualityBudget(max_accuracy_drop=1))  # fmt: skip
    with pytest.raises(SweepError, match="--labels needs --eval"):
        sweep_onnx(files["digits"], get_profile(PI4), output_dir=tmp_path, labels="labels",
                   budget=OutputQualityBudget())  # fmt: skip


def test_cli_refuses_options_of_the_other_format(
    files: dict[str, Path], nano_f32: Path, tmp_path: Path
) -> None:
    onnx = run_cli("sweep", str(files["digits"]), "-p", PI4, "--max-kld", "0.1",
                   "--eval-ctx", "128", cwd=tmp_path)  # fmt: skip
    assert onnx.returncode == 2
    assert "--max-kld, --eval-ctx apply to GGUF models only; digits.onnx is ONNX" in onnx.stderr
    assert "Traceback" not in onnx.stderr
    gguf = run_cli("sweep", str(nano_f32), "-p", PI4, "--calibration", str(files["cal"]),
                   "--max-accuracy-drop", "1", cwd=tmp_path)  # fmt: skip
    assert gguf.returncode == 2
    assert "apply to ONNX models only; nano-f32.gguf is GGUF" in gguf.stderr
    assert "--calibration" in gguf.stderr and "--max-accuracy-drop" in gguf.stderr
    assert not list(tmp_path.glob("*-sweep"))  # refused before anything was made


def test_cli_json_on_local(files: dict[str, Path], tmp_path: Path) -> None:
    args = ("sweep", str(files["digits"]), "-p", PI4, "--target", "local",
            "--calibration", str(files["cal"]), "--eval", str(files["test"]), "--labels", "labels",
            "--ladder", "fp16,int8-static", "--max-accuracy-drop", "2", "--threads", "1",
            "--runs", "10", "--min-seconds", "0.1")  # fmt: skip
    table = run_cli(*args, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert re.search(r"P50 MS +P90 MS +INF/S", table.stdout)
    assert "ACCURACY" in table.stdout and "int8-static-per-channel" in table.stdout
    doc = json.loads(run_cli(*args, "--json", cwd=tmp_path).stdout)
    assert doc["format"] == "onnx" and doc["loss"] == ACCURACY_DROP_LABEL
    assert doc["budget"] == {"max_accuracy_drop": 2.0, "min_agreement": None, "min_cosine": None}
    assert [c["quant"] for c in doc["candidates"]] == ["fp16", "int8-static-per-channel"]
    assert all(c["measured_reused"] and c["quality_reused"] for c in doc["candidates"])
    assert doc["pick"] in ("fp16", "int8-static-per-channel") and Path(doc["plot"]).exists()
