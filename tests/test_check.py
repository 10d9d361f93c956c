"""The production checklist on the local device with real runtimes and real artifacts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support import needs_llama_cpp, run_cli

FAST = ["--reps", "1", "--prompt-tokens", "32", "--gen-tokens", "8"]


@pytest.fixture(scope="module")
def q8(stories: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("check") / "stories-q8_0.gguf"
    result = run_cli(
        "shrink", str(stories), "-p", "raspberry-pi-5-8gb", "-q", "Q8_0", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    return out


def items(doc: dict) -> dict[str, str]:
    return {i["name"]: i["status"] for i in doc["items"]}


@needs_llama_cpp
def test_a_good_artifact_passes_every_item_it_can_measure(
    q8: Path, stories: Path, tmp_path: Path
) -> None:
    result = run_cli("check", str(q8), "--base", str(stories), "--eval-ctx", "256", "--max-kld", "0.01",
                     "--min-tg-tok-s", "0.1", "--junit", str(tmp_path / "check.xml"), "--json", *FAST)  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    status = items(doc)
    assert doc["passed"] and doc["profile"] == "raspberry-pi-5-8gb"  # from the manifest
    for name in (
        "manifest",
        "bytes on device",
        "loads",
        "output sane",
        "memory",
        "speed",
        "quality",
    ):
        assert status[name] == "pass", doc
    assert status["thermal"] in ("pass", "skip")
    suite = ET.parse(tmp_path / "check.xml").getroot()
    assert suite.get("tests") == "8" and suite.get("failures") == "0"


@needs_llama_cpp
def test_failed_items_make_exit_code_1_and_say_why(q8: Path, stories: Path, tmp_path: Path) -> None:
    result = run_cli("check", str(q8), "--base", str(stories), "--eval-ctx", "256", "--max-kld", "0.00001",
                     "--min-tg-tok-s", "1000000000", "--junit", str(tmp_path / "check.xml"), *FAST)  # fmt: skip
    assert result.returncode == 1
    assert (
        "FAIL  speed" in result.stdout
        and "FAIL  quality" in result.stdout
        and "NOT ready" in result.stdout
    )
    assert "error:" in result.stderr and "speed" in result.stderr and "quality" in result.stderr
    suite = ET.parse(tmp_path / "check.xml").getroot()
    assert suite.get("failures") == "2"


@needs_llama_cpp
def test_a_file_without_manifest_fails_the_manifest_item(stories: Path) -> None:
    result = run_cli("check", str(stories), "--profile", "raspberry-pi-5-8gb", "--json", *FAST)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert items(doc)["manifest"] == "fail" and items(doc)["loads"] == "pass"


def test_onnx_artifact_with_accuracy_budget(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from edgeshrink.testmodels.onnx_models import make_digits_onnx, write_digits_npz

    base, _accuracy = make_digits_onnx(tmp_path / "digits.onnx")
    data = tmp_path / "test.npz"
    write_digits_npz(data, split="test")
    shrunk = run_cli(
        "shrink", str(base), "-p", "raspberry-pi-4-4gb", "-q", "int8-dynamic", cwd=tmp_path
    )
    assert shrunk.returncode == 0, shrunk.stderr
    result = run_cli("check", str(tmp_path / "digits-int8-dynamic.onnx"), "--base", str(base), "--eval", str(data),
                     "--labels", "labels", "--max-accuracy-drop", "2", "--max-latency-ms", "1000",
                     "--runs", "10", "--min-seconds", "0", "--json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    status = items(json.loads(result.stdout))
    assert (
        status["quality"] == "pass"
        and status["output sane"] == "pass"
        and status["speed"] == "pass"
    )
    # --min-agreement judges an ONNX artifact too (it was ignored for ONNX and TFLite)
    strict = run_cli("check", str(tmp_path / "digits-int8-dynamic.onnx"), "--base", str(base), "--eval", str(data),
                     "--labels", "labels", "--min-agreement", "1", "--runs", "10", "--min-seconds", "0",
                     "--json", cwd=tmp_path)  # fmt: skip
    quality = [i for i in json.loads(strict.stdout)["items"] if i["name"] == "quality"][0]
    assert strict.returncode == 1 and quality["status"] == "fail", quality
    assert "top-1 agreement of 'logits'" in quality["detail"] and "< 100.00%" in quality["detail"]
