"""The llama GGUF test-model maker: real files, read back by gguf-py and run by llama.cpp."""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, TokenType

from edgeshrink.testmodels import SIZES, build_spm_vocab, make_llama_gguf

FAST_SIZES = ["nano", "tiny"]
ENGLISH = "The baker opens the door at five o'clock, and the small machine counts the wind."


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    return {size: make_llama_gguf(out / f"{size}.gguf", size=size) for size in FAST_SIZES}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_presets_cover_the_needed_shapes() -> None:
    assert {"nano", "tiny", "small", "medium", "large"} <= set(SIZES)
    f16_mb = {name: 2 * p.n_params_2d / 1e6 for name, p in SIZES.items()}
    assert f16_mb["nano"] < 2
    assert f16_mb["large"] >= 50  # a benchmark needs a model of at least 50 MB
    assert list(f16_mb.values()) == sorted(f16_mb.values())
    k_quant_ready = [p for p in SIZES.values() if p.n_embd % 256 == 0 and p.n_ff % 256 == 0]
    assert len(k_quant_ready) >= 3
    assert any(p.n_head_kv < p.n_head for p in SIZES.values())
    for p in SIZES.values():
        assert p.n_embd % p.n_head == 0 and p.n_head % p.n_head_kv == 0


@pytest.mark.parametrize("size", FAST_SIZES)
def test_same_arguments_give_identical_bytes(
    size: str, models: dict[str, Path], tmp_path: Path
) -> None:
    again = make_llama_gguf(tmp_path / "again.gguf", size=size)
    other_seed = make_llama_gguf(tmp_path / "seed1.gguf", size=size, seed=1)
    assert sha256(again) == sha256(models[size])
    assert sha256(other_seed) != sha256(models[size])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.gguf", "seed1.gguf"]


def test_bad_arguments_leave_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="huge"):
        make_llama_gguf(tmp_path / "m.gguf", size="huge")
    with pytest.raises(ValueError, match="q4_0"):
        make_llama_gguf(tmp_path / "m.gguf", size="nano", ftype="q4_0")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("size", "ftype", "file_type", "weight_type"),
    [
        ("nano", "f16", gguf.LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
        ("tiny", "f16", gguf.LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
        ("nano", "f32", gguf.LlamaFileType.ALL_F32, GGMLQuantizationType.F32),
        ("nano", "bf16", gguf.LlamaFileType.MOSTLY_BF16, GGMLQuantizationType.BF16),
    ],
)
def test_gguf_reader_sees_llama_metadata_and_tensors(
    size: str,
    ftype: str,
    file_type: int,
    weight_type: GGMLQuantizationType,
    models: dict[str, Path],
    tmp_path: Path,
) -> None:
    path = models[size] if ftype == "f16" else make_llama_gguf(tmp_path / "m.gguf", size, ftype)
    preset = SIZES[size]
    reader = gguf.GGUFReader(path)

    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == f"edgeshrink-tiny-llama-{size}"
    assert field(reader, "general.file_type") == file_type
    expected = {
        "llama.context_length": 2048,
        "llama.embedding_length": preset.n_embd,
        "llama.block_count": preset.n_layer,
        "llama.feed_forward_length": preset.n_ff,
        "llama.attention.head_count": preset.n_head,
        "llama.attention.head_count_kv": preset.n_head_kv,
        "llama.rope.dimension_count": preset.n_embd // preset.n_head,
        "llama.vocab_size": preset.n_vocab,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.add_bos_token") is True
    assert len(field(reader, "tokenizer.ggml.tokens")) == preset.n_vocab

    names = {
        TENSOR_NAMES[t] + ".weight"
        for t in (MODEL_TENSOR.TOKEN_EMBD, MODEL_TENSOR.OUTPUT_NORM, MODEL_TENSOR.OUTPUT)
    }
    per_block = [
        MODEL_TENSOR.ATTN_NORM,
        MODEL_TENSOR.ATTN_Q,
        MODEL_TENSOR.ATTN_K,
        MODEL_TENSOR.ATTN_V,
        MODEL_TENSOR.ATTN_OUT,
        MODEL_TENSOR.FFN_NORM,
        MODEL_TENSOR.FFN_GATE,
        MODEL_TENSOR.FFN_UP,
        MODEL_TENSOR.FFN_DOWN,
    ]
    names |= {
        TENSOR_NAMES[t].format(bid=b) + ".weight" for b in range(preset.n_layer) for t in per_block
    }
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == names
    for name, t in tensors.items():
        if name.endswith("_norm.weight"):
            assert t.tensor_type == GGMLQuantizationType.F32
            assert list(t.shape) == [preset.n_embd]
        else:
            assert t.tensor_type == weight_type, name
    kv_dim = preset.n_head_kv * preset.n_embd // preset.n_head
    assert list(tensors["blk.0.attn_k.weight"].shape) == [preset.n_embd, kv_dim]
    assert list(tensors["token_embd.weight"].shape) == [preset.n_embd, preset.n_vocab]
    weights = gguf.quants.dequantize(tensors["blk.0.ffn_up.weight"].data, weight_type)
    assert np.isfinite(weights).all() and 0.01 < float(weights.std()) < 0.05


def test_vocabulary_is_llama_shaped() -> None:
    vocab = build_spm_vocab(SIZES["tiny"].n_vocab)
    assert vocab.tokens[:3] == ("<unk>", "<s>", "</s>")
    assert vocab.tokens[3:259] == tuple(f"<0x{b:02X}>" for b in range(256))
    assert set(vocab.token_types[3:259]) == {TokenType.BYTE}
    assert len(vocab.tokens) == len(set(vocab.tokens)) == SIZES["tiny"].n_vocab
    merged = vocab.scores[259 : 259 + vocab.n_merges]
    assert list(merged) == sorted(merged, reverse=True)
    assert {"\u2581the", "\u2581and", "ing"} <= set(vocab.tokens)
    # A smaller vocabulary is a prefix of the merges of a larger one.
    small = build_spm_vocab(SIZES["nano"].n_vocab)
    assert small.tokens[259 : 259 + small.n_merges] == vocab.tokens[259 : 259 + small.n_merges]


# --- llama.cpp ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", FAST_SIZES)
def test_llama_cpp_tokenizes_english_into_pieces_and_back(
    size: str, models: dict[str, Path]
) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(models[size]), n_ctx=128, verbose=False, vocab_only=True)
    vocab = build_spm_vocab(SIZES[size].n_vocab)

    tokens = llm.tokenize(ENGLISH.encode(), add_bos=True)
    assert tokens[0] == 1
    pieces = [vocab.tokens[t] for t in tokens[1:]]
    assert not any(vocab.token_types[t] == TokenType.BYTE for t in tokens), pieces
    assert len(tokens) < len(ENGLISH) / 2, pieces
    assert "\u2581the" in pieces
    assert llm.detokenize(tokens).decode() == ENGLISH

    # Characters outside the vocabulary come back through the byte-fallback tokens.
    odd = "Caf\u00e9 na\u00efve \U0001f600, two  spaces\nand a new line."
    tokens = llm.tokenize(odd.encode(), add_bos=True)
    assert any(vocab.token_types[t] == TokenType.BYTE for t in tokens)
    assert llm.detokenize(tokens).decode() == odd


@pytest.mark.parametrize("size", FAST_SIZES)
def test_llama_cpp_evaluates_to_finite_logits(size: str, models: dict[str, Path]) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(models[size]), n_ctx=128, verbose=False, logits_all=True)
    tokens = llm.tokenize(ENGLISH.encode())
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: llm.n_tokens])
    assert logits.shape == (len(tokens), SIZES[size].n_vocab)
    assert np.isfinite(logits).all()
    assert logits.std() > 0.1  # not a flat distribution
    # The output layer leans towards tokens that are frequent in the corpus.
    prior = np.asarray(build_spm_vocab(SIZES[size].n_vocab).log_prior)
    assert np.corrcoef(logits[-1], prior)[0, 1] > 0.5


@pytest.mark.parametrize(
    ("ftype_name", "weight_type"),
    [("LLAMA_FTYPE_MOSTLY_Q8_0", "Q8_0"), ("LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_0")],
)
def test_llama_cpp_quantizes_tiny(
    ftype_name: str, weight_type: str, models: dict[str, Path], tmp_path: Path
) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    out = tmp_path / f"tiny-{weight_type}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(
        str(models["tiny"]).encode(), str(out).encode(), ctypes.byref(params)
    )
    assert rc == 0
    assert out.stat().st_size < models["tiny"].stat().st_size / 1.8

    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == weight_type
    assert types["blk.0.ffn_down.weight"] == weight_type
    assert types["blk.0.attn_norm.weight"] == "F32"

    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False, logits_all=True)
    llm.eval(llm.tokenize(b"The river runs through the valley."))
    assert np.isfinite(np.asarray(llm.scores[: llm.n_tokens])).all()


def test_the_hf_checkpoint_maker_runs_as_a_module(tmp_path) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "edgeshrink.testmodels.hf_checkpoints", "-o", str(tmp_path),
         "--preset", "llama", "--preset", "bert"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 2
    for preset in ("llama", "bert"):
        made = tmp_path / f"{preset}-f32"
        assert (made / "config.json").is_file() and list(made.glob("*.safetensors"))
