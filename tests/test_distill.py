"""Distillation on the CPU: a pruned stories260K (a real trained llama) healed with PyTorch
against the teacher llama.cpp runs, and written back as a GGUF llama.cpp runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import needs_llama_cpp, run_cli

from edgeshrink.artifacts import load_artifact
from edgeshrink.formats import backend
from edgeshrink.util import sha256_file

pytestmark = needs_llama_cpp
torch = pytest.importorskip("torch", reason="the distill extra (torch) is not installed")
pytest.importorskip("transformers", reason="the distill extra (transformers) is not installed")

FAST = ["--steps", "12", "--batch", "2", "--ctx", "128"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unlabeled English text from the Python documentation that ships with Python
    (pydoc's topics): in-domain enough for a story model to learn from, and local."""
    import pydoc_data.topics as topics

    text = "\n".join(" ".join(t.split()) for t in list(topics.topics.values())[:12])
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_gguf_becomes_a_torch_model_and_back_without_changing_its_outputs(
    stories: Path, tmp_path: Path
) -> None:
    import numpy as np

    from edgeshrink.distill.bridge import load_gguf_model, write_gguf_model
    from edgeshrink.formats.gguf.quality import LlamaScorer, log_softmax

    model, shape = load_gguf_model(stories)
    assert (shape.n_layer, shape.n_head, shape.n_head_kv, shape.n_vocab) == (5, 8, 4, 512)
    with LlamaScorer(stories, 64, 2) as scorer:
        tokens = scorer.tokenize("Once upon a time there was a little girl named Lily.")[:24]
        reference = scorer.chunk_logits(tokens, 0)
    with torch.no_grad():
        mine = model(torch.tensor([tokens])).logits[0].numpy()
    a, b = log_softmax(reference.astype(np.float64)), log_softmax(mine.astype(np.float64))
    assert float((np.exp(a) * (a - b)).sum(axis=1).mean()) < 1e-5
    out = write_gguf_model(model, stories, tmp_path / "again.gguf", matrix_type="F32")
    with LlamaScorer(out, 64, 2) as scorer:
        again = scorer.chunk_logits(tokens, 0)
    assert np.allclose(again, reference, atol=1e-4)


def test_healing_lowers_the_held_out_kld_and_the_recipe_says_how(
    stories: Path, corpus: Path, tmp_path: Path
) -> None:
    args = ["distill", str(stories), "--remove", "3", "--text", str(corpus), *FAST, "--json"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    before, after = doc["before"]["kld_mean"]["value"], doc["after"]["kld_mean"]["value"]
    assert after < before, (before, after)
    art = load_artifact(Path(doc["artifact"]["path"]))
    assert [s["pass"] for s in art.recipe] == ["prune", "distill", "quantize"]
    trained = json.loads(art.recipe[1]["detail"])
    assert trained["steps"] == 12 and trained["first_loss"] > trained["last_loss"]
    assert trained["peak_rss_mb"] > 0 and trained["tokens_per_s"] > 0
    assert backend("gguf").inspect(art.path).llm.n_layer == 4
    # the same bytes, text and settings: found, not trained again
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["reused"] is True
    # a fixed seed and a step budget give the same student
    other = run_cli(*args[:-1], "-o", str(tmp_path / "twin.gguf"), cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert sha256_file(tmp_path / "twin.gguf") == art.sha256


def test_near_cuts_trains_only_the_blocks_beside_the_cut(
    stories: Path, corpus: Path, tmp_path: Path
) -> None:
    r = run_cli("distill", str(stories), "--remove", "2", "--train", "near-cuts", "--text",
                str(corpus), *FAST, "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    trained = json.loads(
        load_artifact(Path(json.loads(r.stdout)["artifact"]["path"])).recipe[1]["detail"]
    )
    assert trained["trained_blocks"] == [1, 2]  # teacher blocks 1 and 3, beside the cut at 2


def test_bad_students_and_texts_get_one_line(
    stories: Path, tiny_f16: Path, corpus: Path, tmp_path: Path
) -> None:
    other = run_cli(
        "distill",
        str(stories),
        "--student",
        str(tiny_f16),
        "--text",
        str(corpus),
        *FAST,
        cwd=tmp_path,
    )
    assert other.returncode == 1
    assert "is not a pruned copy of stories260K.gguf: vocabulary" in other.stderr
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.\n" * 20, encoding="utf-8")
    r = run_cli("distill", str(stories), "--remove", "1", "--text", str(short), *FAST, cwd=tmp_path)
    assert r.returncode == 1 and "distillation needs at least 600" in r.stderr
    none = run_cli("distill", str(stories), "--text", str(corpus), cwd=tmp_path)
    assert none.returncode == 2 and "say which student to train" in none.stderr


def test_without_torch_the_error_names_the_extra(stories: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgeshrink.cli.main import main\n"
        f"main(['distill', {str(stories)!r}, '--remove', '1', '--steps', '1'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "pip install 'edgeshrink[distill]'" in r.stderr


def test_ctrl_c_keeps_a_checkpoint_and_resume_goes_on(
    stories: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "healed.gguf"
    argv = [sys.executable, "-m", "edgeshrink", "distill", str(stories), "--remove", "3", "--text",
            str(corpus), "--steps", "200", "--batch", "1", "--ctx", "64", "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        lines.append(line)
        if "training: [ 10%]" in line or not line:
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "training stopped after step" in rest and "--resume" in rest
    checkpoint = tmp_path / ".healed.gguf.distill.pt"
    assert checkpoint.exists() and not out.exists()
    saved_step = torch.load(checkpoint, weights_only=False)["step"]
    assert saved_step >= 20
    resumed = run_cli(
        *argv[3:], "--resume", "--json", cwd=tmp_path, env={**os.environ, "EDGESHRINK_DEBUG": "1"}
    )
    assert resumed.returncode == 0, resumed.stderr
    facts = json.loads(resumed.stdout)["training"]
    assert facts["resumed_from"] == saved_step and facts["steps"] == 200
    assert not checkpoint.exists() and out.exists()


def test_sweep_heal_adds_a_healed_twin_of_every_pruned_candidate(
    stories: Path, tmp_path: Path
) -> None:
    r = run_cli("sweep", str(stories), "-p", "raspberry-pi-5-8gb", "--ladder", "Q8_0", "--prune", "0,1",
                "--heal", "--heal-steps", "8", "--output-dir", str(tmp_path / "sw"), "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    by_name = {c["quant"]: c for c in json.loads(r.stdout)["candidates"]}
    assert set(by_name) == {"Q8_0", "Q8_0-prune1", "Q8_0-prune1-healed"}
    healed, pruned = by_name["Q8_0-prune1-healed"], by_name["Q8_0-prune1"]
    assert healed["healed"] and not pruned["healed"] and healed["pruned"] == pruned["pruned"]
    made_from = load_artifact(Path(healed["path"])).source_path
    student = load_artifact(Path(made_from))
    assert [s["pass"] for s in student.recipe] == ["prune", "distill", "quantize"]
    assert student.recipe[0]["layers"] == pruned["pruned"]
    # The candidate's recipe is the whole story: the student's steps, then its type.
    assert [s["pass"] for s in healed["recipe"]] == ["prune", "distill", "quantize"]
    assert healed["recipe"][-1]["type"] == "Q8_0"
    bad = run_cli("sweep", str(stories), "-p", "raspberry-pi-5-8gb", "--heal", cwd=tmp_path)
    assert bad.returncode == 2 and "--heal heals pruned candidates" in bad.stderr


def test_an_embedding_model_is_healed_on_its_checkpoint(corpus: Path, tmp_path: Path) -> None:
    """BERT-style: the student is the checkpoint without a block, trained so its pooled
    embeddings match the teacher's (MSE), then converted; judged by embedding cosine."""
    from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

    ck = make_hf_checkpoint(tmp_path / "MiniBert", "bert", "f32", n_layer=3).path
    r = run_cli("distill", str(ck), "--remove", "1", "--text", str(corpus), "--steps", "25", "--json",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["before"]["kind"] == "embedding-cosine"
    assert doc["after"]["cosine_mean"] > doc["before"]["cosine_mean"]
    art = load_artifact(Path(doc["artifact"]["path"]))
    assert backend("gguf").inspect(art.path).llm.n_layer == 2
    assert [s["pass"] for s in art.recipe] == ["prune", "distill", "quantize"]
    assert json.loads(art.recipe[1]["detail"])["steps"] == 25


def test_teacher_targets_keep_only_the_top_k_of_each_chunk(stories: Path) -> None:
    """Each chunk's top-k, not its whole [positions x vocabulary] arrays: a slice of
    argpartition's result kept the full array alive (20 GB for SmolLM2's 197 chunks)."""
    import tracemalloc

    import numpy as np

    from edgeshrink.distill.targets import teacher_targets

    n_vocab = backend("gguf").inspect(stories).llm.n_vocab
    rng = np.random.default_rng(0)
    chunks = [[1, *rng.integers(3, n_vocab, 127).tolist()] for _ in range(48)]
    one_chunk = 128 * n_vocab * 8  # one chunk's float64 log-probs
    tracemalloc.start()
    try:
        targets = teacher_targets(stories, chunks, temperature=2.0, threads=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert targets.top_ids.shape == (48, 128, 32)
    kept = sum(
        a.nbytes for a in (targets.tokens, targets.top_ids, targets.top_logp, targets.rest_logp)
    )
    # The kept targets (the lists, then the arrays), plus a few chunks' worth of work.
    assert peak < 2 * kept + 8 * one_chunk, (peak, kept, one_chunk)


def test_the_memory_estimate_covers_the_measured_peak(corpus: Path, tmp_path: Path) -> None:
    """The check before training must not pass a run that then runs out of memory: the
    estimate is at least the process's measured peak, and not wildly above it (it was
    3.0 GB against a measured 4.6 GB for SmolLM2 without 4 blocks)."""
    from edgeshrink.testmodels import make_llama_gguf

    teacher = make_llama_gguf(tmp_path / "large-f16.gguf", size="large", ftype="f16")
    r = run_cli("distill", str(teacher), "--remove", "1", "--text", str(corpus), "--steps", "2",
                "--batch", "4", "--ctx", "256", "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    trained = json.loads(
        load_artifact(Path(json.loads(r.stdout)["artifact"]["path"])).recipe[1]["detail"]
    )
    peak, estimate = trained["peak_rss_mb"], trained["memory_estimate_mb"]
    assert peak <= estimate <= 1.5 * peak, (peak, estimate)


def test_the_peak_memory_is_the_process_own_not_its_parent() -> None:
    """getrusage's ru_maxrss carries the parent's peak across fork + exec: a distill run
    from the test suite's 2.4 GB process reported 2.4 GB. VmHWM starts again at exec."""
    held = bytearray(1 << 30)
    held[:: 1 << 12] = b"\1" * len(range(0, 1 << 30, 1 << 12))  # resident, not just reserved
    code = "from edgeshrink.util import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    del held
    assert float(child.stdout) < 512, child.stdout
