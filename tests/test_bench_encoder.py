"""Embedding models in GGUF (BERT and kin): `bench` reports what matters for them (inputs
embedded per second and the latency of one input), not a generation speed they do not
have, and a position table is never indexed past its rows (llama.cpp aborts there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import needs_llama_cpp, run_cli

from edgeshrink.agent import AGENT_PATH
from edgeshrink.convert import convert_hf_to_gguf
from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

pytestmark = needs_llama_cpp

QUICK = ("--runs", "5", "--min-seconds", "0", "--no-store")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT sentence-embedding model (mean pooling, trained at 64 positions) in GGUF."""
    work = tmp_path_factory.mktemp("bert-gguf")
    checkpoint = make_hf_checkpoint(work / "bert", "bert", "f32")
    return convert_hf_to_gguf(checkpoint.path, work / "bert-f16.gguf", outtype="f16").output


def _agent(*args: str) -> tuple[dict, str]:
    run = subprocess.run(
        [sys.executable, str(AGENT_PATH), "bench", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.stdout, f"the agent printed nothing (exit {run.returncode}): {run.stderr[-2000:]}"
    return json.loads(run.stdout), run.stderr


def test_bench_reports_embeddings_per_second_and_latency_not_generation(bert: Path) -> None:
    run = run_cli("bench", str(bert), "--prompt-tokens", "32", *QUICK)
    assert run.returncode == 0, run.stderr
    assert "embedding 32-token inputs" in run.stderr  # the progress line says what is timed
    lines = dict(
        line.split(None, 1) for line in run.stdout.splitlines() if len(line.split(None, 1)) == 2
    )
    assert "generation" not in lines and "prompt" not in lines, run.stdout
    assert "per 32-token input" in lines["latency"]
    assert "embeddings/s" in lines["throughput"] and "tok/s" in lines["throughput"]
    assert lines["embedding"].startswith("64 dims, mean pooling")

    doc = json.loads(run_cli("bench", str(bert), "--prompt-tokens", "32", *QUICK, "--json").stdout)
    result = doc["result"]
    assert result["status"] == "ok" and result["llm"] is None
    assert result["embedding"] == {"tokens_per_input": 32, "n_embd": 64, "pooling": "mean"}
    assert result["latency_ms"]["count"] >= 5 and result["latency_ms"]["p50"] > 0
    assert result["throughput_per_s"] > 0
    assert "gen_tokens" not in result["params"] and result["params"]["runs"] == 5


def test_default_bench_embeds_at_most_the_trained_length(bert: Path) -> None:
    """Before: the defaults (pp512 + tg128) on a BERT trained at 64 positions aborted the
    agent inside llama.cpp (GGML_ASSERT in get_rows, exit -6)."""
    run = run_cli("bench", str(bert), *QUICK)
    assert run.returncode == 0, run.stderr
    assert "embedding 64-token inputs (the longest it takes)" in run.stderr
    assert "per 64-token input" in run.stdout
    result = json.loads(run_cli("bench", str(bert), *QUICK, "--json").stdout)["result"]
    assert result["embedding"]["tokens_per_input"] == 64
    # the host chose the length: nothing to warn about (AMX: see test_llm_quality)
    assert [w for w in result["warnings"] if "AMX" not in w] == []


def test_the_agent_alone_never_runs_past_the_position_table(bert: Path) -> None:
    doc, _stderr = _agent(
        "--model", str(bert), "--prompt-tokens", "500", "--runs", "3", "--min-seconds", "0",
        "--check-output",
    )  # fmt: skip
    assert doc["status"] == "ok", doc["error"]
    assert doc["embedding"]["tokens_per_input"] == 64
    assert any("beyond the 64 tokens this embedding model takes" in w for w in doc["warnings"])
    check = doc["output_check"]
    assert check["finite"] and check["deterministic"], check


def _gpt2_like(path: Path, positions: int) -> Path:
    """A decoder with a learned position table (GPT-2's layout), as the gguf package writes it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_context_length(positions)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_feed_forward_length(16)
    writer.add_layer_norm_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(16)])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((16, 8), dtype=np.float32))
    writer.add_tensor("position_embd.weight", rng.standard_normal((positions, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_decoder_is_not_run_past_its_position_table(tmp_path: Path) -> None:
    model = _gpt2_like(tmp_path / "gpt2ish.gguf", positions=48)
    run = run_cli("bench", str(model), "--prompt-tokens", "40", "--gen-tokens", "16", "--no-store")
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "learned position table of 48 rows: 56 tokens" in run.stderr
    assert (
        "hint: bench with at most 48 tokens, e.g. --prompt-tokens 36 --gen-tokens 12" in run.stderr
    )
    assert "benchmarking on" not in run.stderr
