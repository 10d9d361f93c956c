"""ONNX end to end through the `local` target: bench an artifact, deploy a float model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

from support import run_cli  # noqa: E402

from edgeshrink.bench import BenchParams  # noqa: E402
from edgeshrink.deploy import bench_model, deploy_model  # noqa: E402
from edgeshrink.plan import ShrinkOptions  # noqa: E402
from edgeshrink.profiles import get_profile  # noqa: E402
from edgeshrink.store import ResultStore  # noqa: E402
from edgeshrink.targets import local_target  # noqa: E402
from edgeshrink.testmodels.onnx_models import (  # noqa: E402
    make_convnet_onnx,
    make_digits_onnx,
    write_digits_npz,
    write_random_inputs_npz,
)

PI4 = "raspberry-pi-4-4gb"
FAST = BenchParams(threads=1, runs=20, min_seconds=0.2, warmup=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx-deploy")
    conv = make_convnet_onnx(out / "conv.onnx")
    digits, _ = make_digits_onnx(out / "digits.onnx")
    return {
        "dir": out,
        "conv": conv,
        "conv_cal": write_random_inputs_npz(conv, out / "conv-cal.npz", samples=16),
        "digits": digits,
        "digits_test": write_digits_npz(out / "digits-test.npz", split="test"),
    }


def test_deploy_conv_for_a_pi_through_the_library(files: dict[str, Path], tmp_path: Path) -> None:
    profile = get_profile(PI4)
    outcome = deploy_model(
        files["conv"],
        profile,
        local_target(profile.id),
        FAST,
        ShrinkOptions(calibration=files["conv_cal"]),
        output=files["dir"] / "conv-pi4.onnx",
        db=tmp_path / "results.db",
    )
    art = outcome.shrink.artifact
    assert (art.quant, art.format, art.profile_id) == ("int8-static", "onnx", PI4)
    result = outcome.bench.result
    assert result.ok, result.error_message
    assert result.runtime == "onnxruntime" and result.latency_ms is not None
    assert result.latency_ms.samples >= 20 and result.latency_ms.p90 >= result.latency_ms.p50
    assert result.throughput_per_s and result.peak_rss_mb and result.load_s
    # The plan's memory estimate (mostly Python + numpy + onnxruntime here) is close.
    estimate = outcome.shrink.plan.chosen.estimate.total_mb
    assert 0.75 < estimate / result.peak_rss_mb < 1.25, (estimate, result.peak_rss_mb)
    with ResultStore(tmp_path / "results.db") as store:
        [row] = store.list_results()
    assert (row.format, row.quant, row.status) == ("onnx", "int8-static", "ok")
    assert row.latency_ms == pytest.approx(result.latency_ms.mean)
    assert row.latency_p90_ms == pytest.approx(result.latency_ms.p90)
    assert row.artifact_sha256 == art.sha256


def test_bench_pushes_the_inputs_file(files: dict[str, Path], tmp_path: Path) -> None:
    params = BenchParams(threads=1, runs=10, min_seconds=0.1, inputs=files["digits_test"])
    outcome = bench_model(files["digits"], local_target(), params, db=tmp_path / "r.db")
    assert outcome.artifact is None  # a plain model, not an edgeshrink artifact
    result = outcome.result
    assert result.ok, result.error_message
    resolved = result.document["params"]["resolved"]
    assert resolved["input_source"] == "file"
    assert Path(result.document["params"]["inputs"]).name == files["digits_test"].name
    assert resolved["inputs"][0]["shape"] == [1, 64]


def test_cli_bench_local_json(files: dict[str, Path]) -> None:
    result = run_cli(
        "bench", str(files["conv"]), "--target", "local", "--json", "--threads", "1",
        "--runs", "10", "--min-seconds", "0.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)["result"]
    assert doc["status"] == "ok" and doc["latency_ms"]["count"] >= 10
    assert doc["runtime"]["name"] == "onnxruntime"


def test_cli_deploy_onnx_end_to_end(files: dict[str, Path]) -> None:
    out = files["dir"] / "cli" / "conv-cli.onnx"
    result = run_cli(
        "deploy", str(files["conv"]), "--profile", PI4, "--target", "local",
        "--calibration", str(files["conv_cal"]), "-o", str(out), "--json",
        "--threads", "1", "--runs", "10", "--min-seconds", "0.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["plan"]["quant"] == "int8-static" and doc["artifact"] == str(out)
    assert doc["result"]["status"] == "ok" and doc["result"]["latency_ms"]["count"] >= 10
    no_cal = run_cli("deploy", str(files["conv"]), "--profile", PI4, "--target", "local")
    assert no_cal.returncode == 1
    assert (
        "needs calibration data" in no_cal.stderr and "--allow-random-calibration" in no_cal.stderr
    )
