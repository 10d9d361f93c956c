"""An ONNX model whose weights live in an external data file still runs on the device."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import run_cli

pytest.importorskip("onnxruntime")


def test_external_data_travels_with_the_model(tmp_path: Path) -> None:
    from edgeshrink.testmodels.onnx_models import make_mlp_onnx

    model = make_mlp_onnx(tmp_path / "ext" / "mlp-ext.onnx", external_data=True)
    data_files = [p for p in model.parent.iterdir() if p != model]
    assert data_files, "the maker must write an external data file"
    result = run_cli(
        "bench", str(model), "--target", "local", "--runs", "5", "--min-seconds", "0", "--json"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["result"]["status"] == "ok" and doc["result"]["latency_ms"]["count"] >= 5
    remote = Path(doc["push"]["remote"])
    assert Path(os.environ["EDGESHRINK_LOCAL_WORKDIR"]) in remote.parents
    for data in data_files:
        assert (remote.parent / data.name).read_bytes() == data.read_bytes()
