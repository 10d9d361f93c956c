"""plan chooses a type that fits the device; shrink makes it atomically with a manifest."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from support import needs_llama_cpp

from edgeshrink.artifacts import load_artifact, manifest_path_for
from edgeshrink.errors import DoesNotFitError, ModelFileError, QuantizationError
from edgeshrink.formats import gguf
from edgeshrink.formats.gguf.plan import plan_gguf
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import get_profile
from edgeshrink.shrink import default_output_path, shrink_gguf
from edgeshrink.util import sha256_file


def profile_with_budget(profile_id: str, budget_mb: int):
    """A real profile whose RAM is cut so the budget is ``budget_mb`` (reserved kept)."""
    p = get_profile(profile_id)
    ram = p.reserved_mb + int(budget_mb / p.budget_fraction) + 1
    return replace(p, ram_mb=ram)


def test_plan_picks_the_highest_quality_type_that_fits(small_f16: Path) -> None:
    import math

    info = gguf.inspect_gguf(small_f16)
    roomy = plan_gguf(info, get_profile("raspberry-pi-5-8gb"))
    assert roomy.quant == "Q8_0"
    assert "highest-quality" in roomy.reason
    assert all(c.fits for c in roomy.candidates)

    by_quant = {c.quant: c for c in roomy.candidates}
    # A budget just above the Q6_K estimate and below Q8_0's must choose Q6_K.
    budget = math.ceil(by_quant["Q6_K"].estimate.total_mb)
    assert budget < by_quant["Q8_0"].estimate.total_mb
    tight = plan_gguf(info, profile_with_budget("raspberry-pi-4-4gb", budget))
    assert tight.quant == "Q6_K"
    assert "Q8_0 does not" in tight.reason
    assert tight.chosen.estimate.total_mb <= tight.budget_mb


def test_plan_prefer_speed_takes_the_profile_default(tiny_f16: Path) -> None:
    info = gguf.inspect_gguf(tiny_f16)
    pi5 = get_profile("raspberry-pi-5-8gb")
    fast = plan_gguf(info, pi5, ShrinkOptions(prefer="speed"))
    assert fast.quant == pi5.default_quant_for("gguf")


def test_plan_refuses_with_the_numbers_when_nothing_fits(tiny_f16: Path) -> None:
    info = gguf.inspect_gguf(tiny_f16)
    starved = profile_with_budget("raspberry-pi-zero-2w", 10)
    with pytest.raises(DoesNotFitError) as err:
        plan_gguf(info, starved)
    assert "MB" in str(err.value) and f"budget of {starved.id} is {starved.budget_mb} MB" in str(
        err.value
    )


def test_plan_with_an_explicit_type_that_does_not_fit_suggests_one_that_does(
    small_f16: Path,
) -> None:
    info = gguf.inspect_gguf(small_f16)
    ladder = {c.quant: c for c in plan_gguf(info, get_profile("raspberry-pi-5-8gb")).candidates}
    budget = int((ladder["Q4_0"].estimate.total_mb + ladder["Q8_0"].estimate.total_mb) / 2)
    small = profile_with_budget("raspberry-pi-4-2gb", budget)
    with pytest.raises(DoesNotFitError, match="at Q8_0 does not fit") as err:
        plan_gguf(info, small, ShrinkOptions(quant="Q8_0"))
    assert "--quant" in err.value.hint


def test_longer_context_needs_more_memory(tiny_f16: Path) -> None:
    info = gguf.inspect_gguf(tiny_f16)
    pi5 = get_profile("raspberry-pi-5-8gb")
    short = plan_gguf(info, pi5, ShrinkOptions(context=512))
    long = plan_gguf(info, pi5, ShrinkOptions(context=32768))
    assert long.chosen.estimate.kv_cache_bytes == 64 * short.chosen.estimate.kv_cache_bytes


def test_default_output_goes_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        default_output_path(Path("/models/llama-3b-f16.gguf"), "Q4_K_M")
        == tmp_path / "llama-3b-q4_k_m.gguf"
    )
    assert default_output_path(Path("/m/x.BF16.gguf"), "Q8_0") == tmp_path / "x-q8_0.gguf"


@needs_llama_cpp
def test_shrink_writes_a_verified_artifact_and_manifest(tiny_f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-q4_0.gguf"
    result = shrink_gguf(
        tiny_f16, get_profile("raspberry-pi-5-8gb"), ShrinkOptions(quant="Q4_0"), output=out
    )
    assert not result.reused
    art = result.artifact
    assert art.path == out and out.exists()
    assert art.sha256 == sha256_file(out)
    assert art.size_bytes == out.stat().st_size < tiny_f16.stat().st_size / 3
    assert art.source_sha256 == sha256_file(tiny_f16)
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest["schema"] == "edgeshrink.artifact/2"
    # Below 5 bits, an importance matrix over edgeshrink's calibration text by default.
    assert [{k: v for k, v in s.items() if not k.startswith("imatrix") and k != "recorded"}
            for s in manifest["recipe"]] == [{"pass": "quantize", "type": "Q4_0"}]  # fmt: skip
    assert len(manifest["recipe"][0]["imatrix"]) == 64
    assert manifest["quant"] == "Q4_0" and manifest["profile_id"] == "raspberry-pi-5-8gb"
    assert manifest["tool_versions"]["llama-cpp-python"]
    assert manifest["tool_versions"]["gguf"]
    assert gguf.inspect_gguf(out).file_type == "Q4_0"
    # only the artifact and its manifest: no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, manifest_path_for(out).name]
    )
    assert load_artifact(out).sha256 == art.sha256

    again = shrink_gguf(
        tiny_f16, get_profile("raspberry-pi-5-8gb"), ShrinkOptions(quant="Q4_0"), output=out
    )
    assert again.reused and again.artifact.sha256 == art.sha256


@needs_llama_cpp
def test_a_version_1_manifest_is_still_read_and_reused(tiny_f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-q8_0.gguf"
    pi5 = get_profile("raspberry-pi-5-8gb")
    first = shrink_gguf(tiny_f16, pi5, ShrinkOptions(quant="Q8_0"), output=out)
    manifest = manifest_path_for(out)
    doc = json.loads(manifest.read_text())
    # What edgeshrink 0.1 wrote: schema /1, no structured recipe.
    old = {k: v for k, v in doc.items() if k != "recipe"} | {"schema": "edgeshrink.artifact/1"}
    manifest.write_text(json.dumps(old))
    assert load_artifact(out).recipe == ({"pass": "quantize", "type": "Q8_0"},)
    again = shrink_gguf(tiny_f16, pi5, ShrinkOptions(quant="Q8_0"), output=out)
    assert again.reused and again.artifact.sha256 == first.artifact.sha256
    manifest.write_text(json.dumps(doc | {"schema": "edgeshrink.artifact/3"}))
    with pytest.raises(ModelFileError, match="schema 'edgeshrink.artifact/3'"):
        load_artifact(out)


@needs_llama_cpp
def test_a_changed_artifact_is_not_reused(tiny_f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-q8_0.gguf"
    pi5 = get_profile("raspberry-pi-5-8gb")
    first = shrink_gguf(tiny_f16, pi5, ShrinkOptions(quant="Q8_0"), output=out)
    with open(out, "r+b") as handle:
        handle.seek(-10, 2)
        handle.write(b"corrupted!")
    with pytest.raises(ModelFileError, match="sha256 does not match"):
        load_artifact(out)
    redone = shrink_gguf(tiny_f16, pi5, ShrinkOptions(quant="Q8_0"), output=out)
    assert not redone.reused and redone.artifact.sha256 == first.artifact.sha256


@needs_llama_cpp
def test_a_failed_quantization_leaves_no_file(tiny_f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    q8 = shrink_gguf(
        tiny_f16,
        get_profile("raspberry-pi-5-8gb"),
        ShrinkOptions(quant="Q8_0"),
        output=tmp_path / "q8.gguf",
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(QuantizationError, match="already quantized"):
        shrink_gguf(
            q8.artifact.path,
            get_profile("raspberry-pi-5-8gb"),
            ShrinkOptions(quant="Q4_0"),
            output=out,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_shrink_refuses_to_overwrite_its_input(tiny_f16: Path) -> None:
    with pytest.raises(ModelFileError, match="overwrite the input"):
        shrink_gguf(
            tiny_f16,
            get_profile("raspberry-pi-5-8gb"),
            ShrinkOptions(quant="Q8_0"),
            output=tiny_f16,
        )
