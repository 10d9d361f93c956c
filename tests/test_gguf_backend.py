"""GGUF inspect, memory estimates and quantization on real files with llama.cpp's quantizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import needs_llama_cpp

from edgeshrink.errors import ModelFileError, QuantizationError
from edgeshrink.formats import detect_and_inspect, gguf


def test_inspect_reads_the_shape_of_a_made_model(tiny_f16: Path) -> None:
    from edgeshrink.testmodels import SIZES

    preset = SIZES["tiny"]
    info = gguf.inspect_gguf(tiny_f16)
    assert info.format == "gguf"
    assert info.architecture == "llama"
    assert info.file_type == "F16"
    assert not info.is_quantized
    assert info.size_bytes == tiny_f16.stat().st_size
    assert info.llm is not None
    assert (info.llm.n_embd, info.llm.n_layer) == (preset.n_embd, preset.n_layer)
    assert (info.llm.n_head, info.llm.n_head_kv) == (preset.n_head, preset.n_head_kv)
    assert info.llm.n_vocab == preset.n_vocab
    assert info.llm.context_length == 2048
    assert info.llm.tokenizer == "llama"
    assert info.n_params == preset.n_params
    types = {t.type: t for t in info.tensor_types}
    assert set(types) == {"F16", "F32"}
    # every 1-D tensor (norms) is F32: two per layer plus the output norm
    assert types["F32"].count == 2 * preset.n_layer + 1


def test_inspect_reads_the_trained_shared_model(stories: Path) -> None:
    info = detect_and_inspect(stories)
    assert info.llm is not None
    assert (info.llm.n_embd, info.llm.n_layer, info.llm.n_head, info.llm.n_head_kv) == (64, 5, 8, 4)
    assert info.llm.n_vocab == 512
    assert info.file_type == "F32"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a GGUF file"),
        (b"PK\x03\x04 a zip file", "not a GGUF file"),
        (b"hello, this is text\n" * 10, "not a GGUF file"),
    ],
)
def test_files_that_are_not_gguf_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        detect_and_inspect(bad)


def test_truncated_gguf_names_the_missing_bytes(tiny_f16: Path, tmp_path: Path) -> None:
    data = tiny_f16.read_bytes()
    for keep in (len(data) // 2, 100):
        cut = tmp_path / f"cut-{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(ModelFileError, match="truncated|damaged"):
            gguf.inspect_gguf(cut)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        detect_and_inspect(tmp_path / "absent.gguf")
    with pytest.raises(ModelFileError, match="directory"):
        gguf.inspect_gguf(tmp_path)


def test_quant_type_lookup_is_case_insensitive_and_suggests() -> None:
    assert gguf.quant_type("q4_k_m").name == "Q4_K_M"
    with pytest.raises(QuantizationError, match="unknown GGUF quantization type 'Q4_K_X'") as err:
        gguf.quant_type("Q4_K_X")
    assert "Q4_K_M" in err.value.hint or "Q4_K_S" in err.value.hint


def test_every_ladder_type_is_known_to_gguf_py_and_ordered() -> None:
    ranks = [gguf.QUANT_TYPES[name].quality_rank for name in gguf.PLAN_LADDER]
    assert ranks == sorted(ranks)
    assert gguf.PLAN_LADDER[0] == "Q8_0"


def test_memory_estimate_counts_kv_cache_from_gqa_heads(tiny_f16: Path) -> None:
    info = gguf.inspect_gguf(tiny_f16)
    shape = info.llm
    est = gguf.estimate_memory(info, 1000, context=1024)
    head_dim = shape.n_embd // shape.n_head
    assert est.kv_cache_bytes == 2 * shape.n_layer * 1024 * head_dim * shape.n_head_kv * 2
    bigger = gguf.estimate_memory(info, 1000, context=2048)
    assert bigger.kv_cache_bytes == 2 * est.kv_cache_bytes
    assert bigger.total_bytes > est.total_bytes


@needs_llama_cpp
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "Q4_K_M", "Q6_K", "IQ4_XS", "Q2_K"])
def test_weight_estimate_is_close_to_what_llama_cpp_writes(
    tiny_f16: Path, tmp_path: Path, quant: str
) -> None:
    shapes = gguf.tensor_shapes(tiny_f16)
    estimate = gguf.estimate_weight_bytes(shapes, quant)
    out = tmp_path / f"{quant}.gguf"
    outcome = gguf.quantize_gguf(tiny_f16, out, quant, threads=2)
    actual = sum(t.n_bytes for t in outcome.tensor_types)
    assert abs(estimate - actual) / actual < 0.12, (quant, estimate, actual)


@needs_llama_cpp
def test_quantize_reports_llama_cpp_fallbacks(nano_f32: Path, tmp_path: Path) -> None:
    """nano's rows are 128 wide: K-quants (256-blocks) must fall back, and we must say so."""
    outcome = gguf.quantize_gguf(nano_f32, tmp_path / "q4km.gguf", "Q4_K_M", threads=2)
    assert outcome.fallbacks, "llama.cpp falls back on 128-wide rows; the outcome must list it"
    for tensor, wanted, used in outcome.fallbacks:
        assert tensor.endswith(".weight")
        assert wanted.lower().startswith("q") and used.lower() in {
            "q5_0",
            "q5_1",
            "q8_0",
            "f16",
            "q4_0",
        }
    written = {t.type for t in outcome.tensor_types}
    assert "Q4_K" not in written  # nothing could use the 256-block type


@needs_llama_cpp
def test_quantize_refuses_a_quantized_input_unless_asked(tiny_f16: Path, tmp_path: Path) -> None:
    q8 = tmp_path / "q8.gguf"
    gguf.quantize_gguf(tiny_f16, q8, "Q8_0", threads=2)
    with pytest.raises(QuantizationError, match="already quantized"):
        gguf.quantize_gguf(q8, tmp_path / "again.gguf", "Q4_0")
    outcome = gguf.quantize_gguf(q8, tmp_path / "again.gguf", "Q4_0", allow_requantize=True)
    assert outcome.output.exists()


def test_imatrix_types_without_an_imatrix_are_refused_with_a_way_out(
    tiny_f16: Path, tmp_path: Path
) -> None:
    with pytest.raises(QuantizationError, match="importance matrix") as err:
        gguf.quantize_gguf(tiny_f16, tmp_path / "x.gguf", "IQ2_XS")
    assert "--imatrix FILE" in err.value.hint


@needs_llama_cpp
@pytest.mark.parametrize(
    "quant",
    [
        q.name
        for q in gguf.QUANT_TYPES.values()
        if not q.needs_imatrix and gguf.supported_by_llama_cpp(q.name)
    ],
)
def test_every_supported_type_quantizes_and_is_what_it_says(
    tiny_f16: Path, tmp_path: Path, quant: str
) -> None:
    out = tmp_path / f"{quant}.gguf"
    outcome = gguf.quantize_gguf(
        tiny_f16, out, quant, threads=2, allow_requantize=quant in gguf.UNQUANTIZED
    )
    info = gguf.inspect_gguf(out)
    assert info.file_type == quant
    assert info.n_params == gguf.inspect_gguf(tiny_f16).n_params
    if quant not in gguf.UNQUANTIZED:
        assert info.is_quantized and outcome.output.stat().st_size < tiny_f16.stat().st_size
