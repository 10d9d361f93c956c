"""Importance matrices and size-budget mixes, with the real llama.cpp on real model files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from support import needs_llama_cpp, run_cli

from edgeshrink.cli.common import ByteSize
from edgeshrink.errors import DoesNotFitError, EvalDataError, ImatrixError, QuantizationError
from edgeshrink.formats.gguf.imatrix_file import read_imatrix, write_imatrix
from edgeshrink.formats.gguf.mix import choose_mix, padded
from edgeshrink.formats.gguf.sensitivity import TensorLoss
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import get_profile
from edgeshrink.shrink import plan_model, shrink_gguf

pytestmark = needs_llama_cpp


@pytest.fixture(scope="module")
def calib_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: an imatrix or a loss table is computed once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def shared_cache(calib_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHRINK_CACHE", str(calib_cache))


def test_a_computed_imatrix_is_llama_cpps_format_and_reads_back(
    tiny_f16: Path, tmp_path: Path
) -> None:
    import numpy as np
    from gguf import GGUFReader

    out = tmp_path / "tiny.imatrix.gguf"
    done = run_cli("imatrix", str(tiny_f16), "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["entries"] == 28 and doc["chunk_size"] == 512 and doc["chunks"] >= 1
    raw = GGUFReader(out)
    assert raw.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in raw.fields  # llama-imatrix writes none
    assert raw.fields["imatrix.datasets"].contents() == ["edgeshrink/calib-en.txt"]
    names = [t.name for t in raw.tensors]
    assert names[:2] == ["blk.0.attn_k.weight.in_sum2", "blk.0.attn_k.weight.counts"]
    # One matrix: ggml writes the sums 1-D and the count as one value, as llama-imatrix does.
    assert [list(t.shape) for t in raw.tensors[:2]] == [[256], [1]]
    back = read_imatrix(out)
    counts = back.counts["blk.0.attn_k.weight"]
    assert counts[0] == doc["chunks"] * 512  # every token of every chunk, once
    means = back.means()["blk.0.attn_k.weight"]
    assert means.shape == (256,) and np.all(means > 0)
    again = tmp_path / "again.gguf"
    write_imatrix(back, again)
    assert again.read_bytes() == out.read_bytes()


def test_the_legacy_dat_format_reads_and_its_lengths_are_checked(tmp_path: Path) -> None:
    name = b"blk.0.ffn_down.weight"
    body = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name
    body += struct.pack("<ii", 10, 4) + struct.pack("<4f", 10, 20, 30, 40)
    body += struct.pack("<ii", 10, 5) + b"c.txt"
    dat = tmp_path / "old.dat"
    dat.write_bytes(body)
    loaded = read_imatrix(dat)
    assert loaded.legacy and loaded.datasets == ("c.txt",) and loaded.chunk_count == 10
    assert list(loaded.means()["blk.0.ffn_down.weight"]) == [1, 2, 3, 4]  # sums / calls
    dat.write_bytes(body[:20] + struct.pack("<ii", 10, 1 << 28))
    with pytest.raises(ImatrixError, match="needs"):
        read_imatrix(dat)


def test_types_below_5_bits_use_an_imatrix_by_default_and_the_recipe_names_it(
    tiny_f16: Path, tmp_path: Path
) -> None:
    profile = get_profile("x86-64-host")
    made = shrink_gguf(
        tiny_f16, profile, ShrinkOptions(quant="IQ3_XXS"), output=tmp_path / "a.gguf"
    )
    step = made.artifact.recipe[-1]
    assert step["type"] == "IQ3_XXS" and len(step["imatrix"]) == 64
    assert len(step["imatrix_text"]) == 64
    assert step["recorded"]["imatrix_datasets"] == ["edgeshrink/calib-en.txt"]
    assert any(t["type"] == "IQ3_XXS" for t in made.artifact.tensor_types)
    again = shrink_gguf(
        tiny_f16, profile, ShrinkOptions(quant="IQ3_XXS"), output=tmp_path / "a.gguf"
    )
    assert again.reused
    plain = shrink_gguf(tiny_f16, profile, ShrinkOptions(quant="Q8_0"), output=tmp_path / "b.gguf")
    assert "imatrix" not in plain.artifact.recipe[-1]
    off = ShrinkOptions(quant="Q4_K_M", use_imatrix=False)
    made = shrink_gguf(tiny_f16, profile, off, output=tmp_path / "c.gguf")
    assert made.artifact.recipe[-1] == {"pass": "quantize", "type": "Q4_K_M"}
    with pytest.raises(QuantizationError, match="--no-imatrix turns it off"):
        shrink_gguf(tiny_f16, profile, ShrinkOptions(quant="IQ2_XXS", use_imatrix=False),
                    output=tmp_path / "d.gguf")  # fmt: skip


def test_the_imatrix_makes_a_3_bit_stories_model_closer_to_its_original(
    stories: Path, tmp_path: Path
) -> None:
    from edgeshrink.formats.gguf.quality import evaluate_llm

    profile = get_profile("x86-64-host")
    klds = {}
    for use in (False, True):
        options = ShrinkOptions(quant="Q3_K_M", use_imatrix=use)
        made = shrink_gguf(stories, profile, options, output=tmp_path / f"s-{use}.gguf")
        klds[use] = evaluate_llm(stories, made.artifact.path, n_ctx=256).kld_mean.value
    assert klds[True] < klds[False]


def test_bad_input_is_one_line_with_a_hint(tiny_f16: Path, small_f16: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a small model. " * 5)
    done = run_cli("imatrix", str(tiny_f16), "--text", str(short), "-o", str(tmp_path / "x.gguf"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert (
        lines[-2].startswith("error: the calibration text short.txt is ")
        and "one chunk of 512" in lines[-2]
    )
    assert lines[-1].startswith("hint: ")
    mine = tmp_path / "tiny.imatrix.gguf"
    assert run_cli("imatrix", str(tiny_f16), "-o", str(mine)).returncode == 0
    done = run_cli("shrink", str(small_f16), "-p", "x86-64-host", "-q", "Q4_K_M", "--imatrix",
                   str(mine), "-o", str(tmp_path / "s.gguf"))  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "is an importance matrix of another model" in done.stderr
    done = run_cli("shrink", str(small_f16), "-p", "x86-64-host", "--max-size", "1MB")
    assert done.returncode == 1
    assert "the smallest mix is " in done.stderr and "the budget is 1.0 MB" in done.stderr


def test_a_size_budget_is_met_by_a_measured_mix(small_f16: Path, tmp_path: Path) -> None:
    profile = get_profile("x86-64-host")
    stock = shrink_gguf(
        small_f16, profile, ShrinkOptions(quant="Q4_K_M"), output=tmp_path / "q.gguf"
    )
    budget = stock.artifact.size_bytes
    options = ShrinkOptions(max_size=budget)
    plan = plan_model(art_info(small_f16), profile, options)
    assert plan.max_size == budget and plan.label.startswith("mix-")
    made = shrink_gguf(small_f16, profile, options, output=tmp_path / "m.gguf")
    art = made.artifact
    assert art.size_bytes <= budget
    step = art.recipe[-1]
    assert step["max_size"] == budget and step["imatrix"]
    mix = step["recorded"]["mix"]
    assert mix["start"] == plan.quant and set(mix["types"]) >= {"blk.0.ffn_down.weight"}
    assert step["recorded"]["eval"]["kld_mean"] >= 0
    assert shrink_gguf(small_f16, profile, options, output=tmp_path / "m.gguf").reused
    with pytest.raises(DoesNotFitError, match="the smallest mix is"):
        plan_model(art_info(small_f16), profile, ShrinkOptions(max_size=1_000_000))


def art_info(path: Path):
    from edgeshrink.formats import backend

    return backend("gguf").inspect(path)


def test_fit_takes_the_profiles_memory_less_the_context(small_f16: Path) -> None:
    profile = get_profile("raspberry-pi-zero-2w")
    plan = plan_model(art_info(small_f16), profile, ShrinkOptions(fit=True, context=512))
    assert plan.max_size and plan.max_size < profile.budget_mb * 2**20
    assert "less the KV cache at context 512" in plan.reason


def loss(name: str, options: dict[str, tuple[int, float]]) -> TensorLoss:
    return TensorLoss(name, (256, 256), "F16", options)


def test_the_mix_moves_the_sensitive_tensor_up_and_the_robust_one_down() -> None:
    sizes = {"Q4_K": 36864, "Q6_K": 53760, "Q8_0": 69632, "F16": 131072}
    sensitive = loss("blk.0.attn_v.weight", {"Q4_K": (sizes["Q4_K"], 0.05), "Q6_K": (sizes["Q6_K"], 0.01),
                                              "Q8_0": (sizes["Q8_0"], 0.002), "F16": (sizes["F16"], 0.0)})  # fmt: skip
    robust = loss("blk.0.ffn_up.weight", {"Q4_K": (sizes["Q4_K"], 0.003), "Q6_K": (sizes["Q6_K"], 0.001),
                                          "Q8_0": (sizes["Q8_0"], 0.0002), "F16": (sizes["F16"], 0.0)})  # fmt: skip
    start = {"blk.0.attn_v.weight": "Q6_K", "blk.0.ffn_up.weight": "Q6_K"}
    budget = 1000 + 2 * padded(sizes["Q6_K"])
    mix = choose_mix([sensitive, robust], start, budget, 1000, "Q6_K")
    assert mix.types == {"blk.0.attn_v.weight": "Q8_0", "blk.0.ffn_up.weight": "Q4_K"}
    assert mix.estimated_bytes <= budget and mix.loss < mix.start_loss
    assert (mix.moved_up, mix.moved_down) == (1, 1)
    tight = choose_mix([sensitive, robust], start, 1000 + 2 * sizes["Q4_K"], 1000, "Q6_K")
    assert set(tight.types.values()) == {"Q4_K"}


def test_sizes_read_as_people_write_them() -> None:
    size = ByteSize()
    assert size.convert("1.2GB", None, None) == 1_200_000_000
    assert size.convert("850MiB", None, None) == 850 * 2**20
    assert size.convert("300 MB", None, None) == 300_000_000
    assert size.convert("4096", None, None) == 4096
    with pytest.raises(Exception, match="not a size"):
        size.convert("12 parsecs", None, None)


def test_the_imatrix_of_an_unreadable_text_is_refused(tiny_f16: Path, tmp_path: Path) -> None:
    from edgeshrink.formats.gguf.imatrix import CalibrationText

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(EvalDataError, match="cannot read the calibration text"):
        CalibrationText.read(bad)


def test_the_sweep_labels_imatrix_variants_and_the_mix(stories: Path, tmp_path: Path) -> None:
    from edgeshrink.sweep import QualityBudget, sweep_gguf

    result = sweep_gguf(
        stories, get_profile("raspberry-pi-5-8gb"), budget=QualityBudget(max_kld=0.5),
        ladder=("Q8_0", "Q4_0"), imatrix=True, max_size=300_000, eval_ctx=256,
        output_dir=tmp_path, db=tmp_path / "r.db",
    )  # fmt: skip
    by = {c.quant: c for c in result.candidates}
    assert set(by) == {"Q8_0", "Q4_0", "Q4_0-imatrix", "mix-0.3mb"}  # Q8_0 is not below 5 bits
    assert "imatrix" not in by["Q4_0"].recipe[-1] and by["Q4_0-imatrix"].recipe[-1]["imatrix"]
    mix = by["mix-0.3mb"]
    assert mix.size_bytes <= 300_000 and mix.recipe[-1]["max_size"] == 300_000
    assert mix.kld == pytest.approx(mix.recipe[-1]["recorded"]["eval"]["kld_mean"], rel=0.5)
