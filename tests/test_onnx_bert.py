"""A BERT-style ONNX export (int64 input_ids, token_type_ids, attention_mask feeding
Gather embeddings) shrinks with every ONNX quantization type and benches without
--inputs: the random inputs edgeshrink makes are valid for what they index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import run_cli

pytest.importorskip("onnxruntime")

from edgeshrink.testmodels.onnx_models import make_bert_onnx, write_bert_npz  # noqa: E402

PI4 = "raspberry-pi-4-4gb"


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("bert")
    return {
        "model": make_bert_onnx(work / "bert.onnx"),
        "calibration": write_bert_npz(work / "bert-calibration.npz"),
    }


def test_the_host_reads_each_integer_inputs_table_from_the_graph(bert: dict) -> None:
    from edgeshrink.formats import detect_and_inspect

    bounds = dict(detect_and_inspect(bert["model"]).metadata)["int_bounds"]
    assert bounds == {"input_ids": 120, "token_type_ids": 2}


@pytest.mark.parametrize(
    ("quant", "data"),
    [
        ("fp16", ()),
        ("int8-dynamic", ()),
        ("int8-static", ("--calibration", "CAL")),
        ("int8-static", ("--allow-random-calibration",)),
        ("int8-static-qoperator", ("--calibration", "CAL")),
    ],
    ids=["fp16", "int8-dynamic", "int8-static", "int8-static-random", "int8-static-qoperator"],
)
def test_every_type_shrinks_and_benches_without_inputs(
    bert: dict, tmp_path: Path, quant: str, data: tuple[str, ...]
) -> None:
    out = tmp_path / f"bert-{quant}.onnx"
    extra = [str(bert["calibration"]) if a == "CAL" else a for a in data]
    shrunk = run_cli("shrink", str(bert["model"]), "-p", PI4, "-q", quant, *extra,
                     "-o", str(out), "--json", cwd=tmp_path)  # fmt: skip
    assert shrunk.returncode == 0, shrunk.stderr
    bench = run_cli("bench", str(out), "--runs", "5", "--min-seconds", "0", "--no-store",
                    "--json", cwd=tmp_path)  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    doc = json.loads(bench.stdout)["result"]
    assert doc["status"] == "ok" and doc["latency_ms"]["mean"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, out.name + ".manifest.json"]
    )  # nothing else in the working directory


def test_dim_sets_the_sequence_length_of_random_inputs(bert: dict, tmp_path: Path) -> None:
    """Before: a symbolic sequence dimension was always 1 in random inputs (a benchmark of
    one-token sentences); `--dim sequence=48` benches 48-token inputs, like
    onnxruntime_perf_test's free-dimension overrides, and the rest stay 1 with a warning."""
    args = (
        "bench",
        str(bert["model"]),
        "--runs",
        "3",
        "--min-seconds",
        "0",
        "--no-store",
        "--json",
    )
    one = json.loads(run_cli(*args, cwd=tmp_path).stdout)["result"]
    longer = run_cli(*args, "--dim", "sequence=48", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    doc = json.loads(longer.stdout)["result"]
    shapes = {i["name"]: i["shape"] for i in doc["params"]["resolved"]["inputs"]}
    assert shapes["input_ids"] == [1, 48] and shapes["attention_mask"] == [1, 48]
    symbolic = [w for w in doc["warnings"] if "symbolic dimension(s)" in w]
    assert symbolic and all("dimension(s) batch set to 1 (--dim NAME=N" in w for w in symbolic)
    assert {i["name"]: i["shape"] for i in one["params"]["resolved"]["inputs"]}["input_ids"] == [
        1,
        1,
    ]
    bad = run_cli("bench", str(bert["model"]), "--dim", "sequence", "--no-store", cwd=tmp_path)
    assert bad.returncode == 2 and "NAME=N" in bad.stderr and "Traceback" not in bad.stderr
