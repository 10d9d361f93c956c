"""Pruning: blocks scored with llama.cpp's forward pass, removed with its quantizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeshrink.artifacts import load_artifact
from edgeshrink.errors import RecipeError
from edgeshrink.formats import backend
from edgeshrink.passes import check_recipe, recipe_text, step
from tests.support import needs_llama_cpp, run_cli

pytestmark = needs_llama_cpp


def block_bytes(path: Path) -> dict[int, int]:
    import gguf

    sizes: dict[int, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk."):
            block = int(t.name.split(".")[1])
            sizes[block] = sizes.get(block, 0) + int(t.n_bytes)
    return sizes


def tensors(path: Path) -> dict[str, bytes]:
    import gguf

    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def test_a_recipe_is_validated_data() -> None:
    recipe = (step("prune", layers=[8, 7]), step("quantize", type="Q4_K_M"))
    assert recipe_text(recipe) == "prune(layers=[7, 8]) ▸ quantize(type=Q4_K_M)"
    assert [s.to_dict() for s in recipe] == [
        {"pass": "prune", "layers": [7, 8]}, {"pass": "quantize", "type": "Q4_K_M"},
    ]  # fmt: skip
    check_recipe(recipe, "gguf")
    with pytest.raises(RecipeError, match="prune is not available for onnx"):
        check_recipe(recipe, "onnx")
    with pytest.raises(RecipeError, match="out of order"):
        check_recipe(tuple(reversed(recipe)), "gguf")
    with pytest.raises(RecipeError, match="named twice"):
        step("prune", layers=[1, 1])
    with pytest.raises(RecipeError, match="start at 0"):
        step("prune", layers=[-1])
    with pytest.raises(RecipeError, match="no setting 'typ'") as err:
        step("quantize", typ="Q4_0")
    assert "type" in err.value.hint


def test_the_least_influential_block_costs_less_to_remove_than_the_most(
    stories: Path, tmp_path: Path
) -> None:
    from edgeshrink.passes.prune_choice import RemovalMeter, score_layers, split_texts

    calibration, evaluation = split_texts(None, None)
    scores = score_layers(stories, calibration, max_run=2)
    assert scores.n_layer == 5 and len(scores.influence) == 5
    assert len(scores.run_distance(2)) == 4
    assert all(0 < v < 1 for v in scores.influence)
    assert scores.n_tokens > 1000
    ranked = sorted(range(5), key=scores.influence.__getitem__)
    meter = RemovalMeter(
        stories, tmp_path, evaluation, n_ctx=256, threads=2, progress=lambda _m: None
    )
    cheap = meter.measure((ranked[0],), "lowest")
    dear = meter.measure((ranked[-1],), "highest")
    assert cheap.loss < dear.loss, (scores.influence, cheap.loss, dear.loss)


def test_remove_exact_layers_renumbers_and_saves_their_bytes(stories: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut.gguf"
    r = run_cli("prune", str(stories), "--remove", "1,3", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["layers"] == [1, 3] and doc["reused"] is False
    info = backend("gguf").inspect(out)
    assert info.llm.n_layer == 3
    before, after = block_bytes(stories), block_bytes(out)
    assert sorted(after) == [0, 1, 2]
    saved = stories.stat().st_size - out.stat().st_size
    assert abs(saved - (before[1] + before[3])) < 0.02 * (before[1] + before[3]) + 4096
    # the kept blocks are the original 0, 2 and 4, renumbered, bytes unchanged
    src, cut = tensors(stories), tensors(out)
    for new, old in ((0, 0), (1, 2), (2, 4)):
        assert cut[f"blk.{new}.attn_q.weight"] == src[f"blk.{old}.attn_q.weight"]
    art = load_artifact(out)
    assert art.recipe == ({"pass": "prune", "layers": [1, 3]}, {"pass": "quantize", "type": "F32"})
    again = run_cli("prune", str(stories), "--remove", "3,1", "-o", str(out), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reused"] is True
    other = run_cli("prune", str(stories), "--remove", "2", "-o", str(out), "--json")
    assert json.loads(other.stdout)["reused"] is False
    assert backend("gguf").inspect(out).llm.n_layer == 4


def test_a_quantized_file_is_pruned_without_requantizing(stories: Path, tmp_path: Path) -> None:
    q8 = tmp_path / "stories-q8_0.gguf"
    made = run_cli("shrink", str(stories), "-p", "raspberry-pi-5-8gb", "-q", "Q8_0", "-o", str(q8))
    assert made.returncode == 0, made.stderr
    out = tmp_path / "q8-cut.gguf"
    r = run_cli("prune", str(q8), "--remove", "0", "-o", str(out))
    assert r.returncode == 0, r.stderr
    src, cut = tensors(q8), tensors(out)
    for new in range(4):
        assert cut[f"blk.{new}.ffn_up.weight"] == src[f"blk.{new + 1}.ffn_up.weight"]
    assert backend("gguf").inspect(out).file_type == "Q8_0"


def test_prune_and_quantize_in_one_pass(stories: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut-q8.gguf"
    r = run_cli("prune", str(stories), "--remove", "4", "--quant", "Q8_0", "-o", str(out))
    assert r.returncode == 0, r.stderr
    info = backend("gguf").inspect(out)
    assert info.llm.n_layer == 4 and info.file_type == "Q8_0"
    assert [p["pass"] for p in load_artifact(out).recipe] == ["prune", "quantize"]


def test_layers_n_keeps_the_best_measured_candidate(stories: Path, tmp_path: Path) -> None:
    out = tmp_path / "best.gguf"
    plot = tmp_path / "scores.svg"
    r = run_cli(
        "prune", str(stories), "--layers", "2", "-o", str(out), "--plot", str(plot), "--json"
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    tried = doc["tried"]
    assert len(tried) >= 1 and all(len(t["layers"]) == 2 for t in tried)
    best = min(tried, key=lambda t: t["quality"]["kld_mean"]["value"])
    assert doc["layers"] == best["layers"]
    assert backend("gguf").inspect(out).llm.n_layer == 3
    svg = plot.read_text()
    assert svg.count("<rect") == 6  # the background and one bar per block


def test_a_budget_stops_where_the_next_removal_would_break_it(
    stories: Path, tmp_path: Path
) -> None:
    out = tmp_path / "budget.gguf"
    r = run_cli("prune", str(stories), "--max-kld", "0.0001", "-o", str(out))
    assert r.returncode == 1
    assert "removing even 1 layer of stories260K.gguf costs KLD" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
    loose = run_cli(
        "prune", str(stories), "--max-kld", "1.5", "--candidates", "2", "-o", str(out), "--json"
    )
    assert loose.returncode == 0, loose.stderr
    doc = json.loads(loose.stdout)
    kept = [t for t in doc["tried"] if t["layers"] == doc["layers"]]
    assert kept and kept[0]["quality"]["kld_mean"]["value"] <= 1.5
    assert "stopped at" in doc["stopped"] or "most allowed" in doc["stopped"]
    assert len(doc["scores"]) == len(doc["layers"]) + (0 if "most allowed" in doc["stopped"] else 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--remove", "9"], "has 5 layers (0 to 4); there is no layer 9"),
        (["--remove", "0,1,2,3,4"], "leaves none"),
        (["--remove", "1,x"], "not a list of layer numbers"),
        (["--layers", "5"], "it cannot lose 5"),
    ],
)
def test_bad_prune_requests_get_one_line(
    stories: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    r = run_cli("prune", str(stories), *args, "-o", str(tmp_path / "x.gguf"))
    assert r.returncode == 1, r.stdout
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "hint: " in r.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_prune_usage_errors(stories: Path) -> None:
    both = run_cli("prune", str(stories), "--layers", "1", "--remove", "2")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    nothing = run_cli("prune", str(stories))
    assert nothing.returncode == 2 and "say what to remove" in nothing.stderr


def test_prune_refuses_what_is_not_a_gguf_language_model(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from edgeshrink.testmodels.onnx_models import make_mlp_onnx

    model = make_mlp_onnx(tmp_path / "mlp.onnx")
    r = run_cli("prune", str(model), "--remove", "0")
    assert (
        r.returncode == 1 and "prune works on transformer language and embedding models" in r.stderr
    )


def test_sweep_crosses_removals_with_the_ladder_and_says_what_pruning_lost(
    stories: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", str(stories), "-p", "raspberry-pi-5-8gb", "--ladder", "Q8_0,Q4_0", "--prune", "0,1",
            "--max-kld", "0.5", "--output-dir", str(out), "--json"]  # fmt: skip
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    by_name = {c["quant"]: c for c in doc["candidates"]}
    # Types below 5 bits are made with an importance matrix too (the pruned ones are not).
    assert set(by_name) == {"Q8_0", "Q4_0", "Q4_0-imatrix", "Q8_0-prune1", "Q4_0-prune1"}
    assert load_artifact(Path(by_name["Q4_0-imatrix"]["path"])).recipe[-1]["imatrix"]
    assert "imatrix" not in load_artifact(Path(by_name["Q4_0-prune1"]["path"])).recipe[-1]
    removed = by_name["Q4_0-prune1"]["pruned"]
    assert len(removed) == 1 and by_name["Q8_0-prune1"]["pruned"] == removed
    for name, c in by_name.items():
        manifest = load_artifact(Path(c["path"]))
        passes = [s["pass"] for s in manifest.recipe]
        assert passes == (["prune", "quantize"] if c["pruned"] else ["quantize"]), name
        assert c["type"] == manifest.quant
        if c["pruned"]:
            assert manifest.recipe[0]["layers"] == removed
            assert c["size_bytes"] < by_name[c["type"]]["size_bytes"]  # a block's bytes fewer
            if c["beaten_by"]:  # named only when a plain type is no larger and no worse
                plain = by_name[c["beaten_by"]]
                assert not plain["pruned"]
                assert plain["size_bytes"] <= c["size_bytes"] and plain["loss"] <= c["loss"]
    # stories260K's blocks are not redundant: removing one costs far more than Q4_0
    assert by_name["Q4_0-prune1"]["loss"] > by_name["Q4_0"]["loss"]
    assert doc["pick"] in ("Q8_0", "Q4_0", "Q4_0-imatrix")
    again = run_cli(*args[:-1], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "chosen before, from the store" in again.stderr
    assert "beaten by" in again.stdout or "too lossy" in again.stdout


def test_sweep_refuses_a_prune_count_the_model_cannot_lose(stories: Path, tmp_path: Path) -> None:
    result = run_cli(
        "sweep", str(stories), "-p", "raspberry-pi-5-8gb", "--prune", "0,5", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: stories260K.gguf has 5 layers: it cannot lose 5")


def gguf_tensors(path: Path) -> dict[str, object]:
    import gguf

    return {t.name: t.data.copy() for t in gguf.GGUFReader(path).tensors}


def test_a_checkpoint_is_pruned_before_conversion(tmp_path: Path) -> None:
    """The chosen blocks leave the safetensors (the rest renumbered, config.json's count
    updated), then the checkpoint converts and quantizes like any other."""
    from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

    ck = make_hf_checkpoint(tmp_path / "Tiny", "llama", "f16", n_layer=3).path
    full = run_cli(
        "shrink", str(ck), "-p", "x86-64-host", "-q", "F16", "-o", str(tmp_path / "full.gguf")
    )
    assert full.returncode == 0, full.stderr
    r = run_cli("prune", str(ck), "--remove", "1", "-p", "x86-64-host", "-q", "Q8_0",
                "-o", str(tmp_path / "cut.gguf"), "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    art = load_artifact(Path(doc["artifact"]["path"]))
    assert art.quant == "Q8_0" and backend("gguf").inspect(art.path).llm.n_layer == 2
    converted = tmp_path / "Tiny-without-1-f16.gguf"  # the intermediate, beside the artifact
    first = load_artifact(converted)
    assert [s["pass"] for s in first.recipe] == ["prune", "quantize"]
    assert first.recipe[0]["layers"] == [1]
    before, after = gguf_tensors(tmp_path / "full.gguf"), gguf_tensors(converted)
    assert set(after) == {n for n in before if not n.startswith("blk.2.")}
    for name in after:  # block 2 became block 1, byte for byte; block 0 and the rest stay
        old = name.replace("blk.1.", "blk.2.") if name.startswith("blk.1.") else name
        assert (after[name] == before[old]).all(), name
    bad = run_cli("prune", str(ck), "--remove", "3", cwd=tmp_path)
    assert bad.returncode == 1 and "has 3 layers (0 to 2); there is no layer 3" in bad.stderr


def test_an_embedding_model_is_judged_by_embedding_cosine(tmp_path: Path) -> None:
    from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

    ck = make_hf_checkpoint(tmp_path / "MiniBert", "bert", "f32", n_layer=3).path
    r = run_cli("prune", str(ck), "--layers", "1", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["judged_by"] == "embedding cosine"
    assert doc["tried"] and all(0 < t["quality"]["cosine_mean"] <= 1 for t in doc["tried"])
    best = max(t["quality"]["cosine_mean"] for t in doc["tried"])
    assert (
        next(t for t in doc["tried"] if t["layers"] == doc["layers"])["quality"]["cosine_mean"]
        == best
    )
    art = Path(doc["artifact"]["path"])
    assert backend("gguf").inspect(art).llm.n_layer == 2
    wrong = run_cli("prune", str(ck), "--max-kld", "0.1", cwd=tmp_path)
    assert wrong.returncode == 1 and "--min-cosine" in wrong.stderr


def test_json_mode_shows_progress_on_a_terminal_and_keeps_stdout_clean(
    stories: Path, tmp_path: Path
) -> None:
    """--json keeps stdout one JSON document; progress still reaches a terminal on stderr
    (a long run piped into jq is not silent) but not a captured stderr."""
    import os
    import subprocess
    import sys

    primary, secondary = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgeshrink", "prune", str(stories), "--remove", "2",
             "-o", str(tmp_path / "p.gguf"), "--json"],
            stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=600,
        )  # fmt: skip
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0, seen
    assert json.loads(proc.stdout)["artifact"]["path"].endswith("p.gguf")
    assert "· removing layers 2" in seen.decode("utf-8", "replace"), seen
    captured = run_cli("prune", str(stories), "--remove", "2", "-o", str(tmp_path / "q.gguf"),
                       "--json")  # fmt: skip
    assert captured.returncode == 0 and "·" not in captured.stderr, captured.stderr
