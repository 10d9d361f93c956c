"""Hugging Face checkpoints through the normal commands: inspect, plan, shrink, deploy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import needs_llama_cpp, run_cli

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

    return make_hf_checkpoint(tmp_path_factory.mktemp("hf") / "TinyLlama", "llama", "bf16").path


def test_inspect_and_plan_read_the_checkpoint_without_converting(
    checkpoint: Path, tmp_path: Path
) -> None:
    info = json.loads(run_cli("inspect", str(checkpoint), "--json", cwd=tmp_path).stdout)
    assert (
        info["format"] == "hf" and info["architecture"] == "llama" and info["file_type"] == "BF16"
    )
    assert info["llm"]["n_layer"] >= 1 and info["memory_estimate"]["total_bytes"] > 0
    plan = json.loads(
        run_cli("plan", str(checkpoint), "-p", "raspberry-pi-4-4gb", "--json", cwd=tmp_path).stdout
    )
    assert plan["format"] == "hf" and plan["quant"] == "Q8_0"
    assert list(tmp_path.iterdir()) == []


@needs_llama_cpp
def test_shrink_converts_once_then_quantizes(checkpoint: Path, tmp_path: Path) -> None:
    first = run_cli(
        "shrink", str(checkpoint), "-p", "raspberry-pi-4-4gb", "-q", "Q8_0", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    assert "converting TinyLlama to GGUF (bf16)" in first.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["TinyLlama-bf16.gguf", "TinyLlama-bf16.gguf.manifest.json",
                     "TinyLlama-q8_0.gguf", "TinyLlama-q8_0.gguf.manifest.json"]  # fmt: skip
    second = run_cli(
        "shrink", str(checkpoint), "-p", "raspberry-pi-4-4gb", "-q", "Q4_0", cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert "reusing TinyLlama-bf16.gguf" in second.stderr and "converting" not in second.stderr
    manifest = json.loads((tmp_path / "TinyLlama-q4_0.gguf.manifest.json").read_text())
    assert manifest["quant"] == "Q4_0" and manifest["source_path"].endswith("TinyLlama-bf16.gguf")


@needs_llama_cpp
def test_deploy_a_checkpoint_to_local(checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli("deploy", str(checkpoint), "-p", "raspberry-pi-5-8gb", "--target", "local", "--reps", "1",
                     "--prompt-tokens", "32", "--gen-tokens", "8", "--json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["result"]["status"] == "ok" and doc["result"]["llm"]["tg_tok_s"]["mean"] > 0


def test_a_directory_that_is_not_a_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("inspect", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert "without config.json" in result.stderr and "hint:" in result.stderr


def test_an_unsupported_architecture_lists_the_supported_ones(tmp_path: Path) -> None:
    model = tmp_path / "weird"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"})
    )
    result = run_cli("plan", str(model), "-p", "raspberry-pi-5-8gb")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and "Mamba" in lines[0]
    assert "llama" in result.stderr and "qwen2" in result.stderr


@pytest.mark.parametrize("quant", ["F16", "F32"])
def test_a_float_type_asked_for_is_the_conversion_itself(
    checkpoint: Path, tmp_path: Path, quant: str
) -> None:
    """`-o NAME-f16.gguf --quant F16` writes the converted file there (it used to say the
    output would overwrite the input, the converted base having that very name)."""
    out = tmp_path / f"{checkpoint.name}-{quant.lower()}.gguf"
    args = ("shrink", str(checkpoint), "-p", "raspberry-pi-5-8gb", "--quant", quant,
            "-o", str(out), "--json")  # fmt: skip
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["reused"] is False and doc["artifact"]["quant"] == quant
    assert [p.name for p in tmp_path.glob("*.gguf")] == [out.name]
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["profile_id"] == "raspberry-pi-5-8gb"
    again = run_cli(*args)
    assert again.returncode == 0 and json.loads(again.stdout)["reused"] is True
