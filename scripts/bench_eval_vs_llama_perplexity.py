#!/usr/bin/env python3
"""edgeshrink's quality figures against llama.cpp's own `llama-perplexity --kl-divergence`.

Builds llama-perplexity from the llama.cpp copy inside the installed
llama-cpp-python's source distribution (scripts/llama_tools.py, cached), then
on the same base model, candidates, text and context prints both tools' mean
PPL(Q), mean KLD, same-top-token and RMS Δp, their ratios (target: within 2%
relative) and the wall-time ratio.

    python scripts/bench_eval_vs_llama_perplexity.py                 # stories260K + Q8_0/Q4_K_M/Q4_0
    python scripts/bench_eval_vs_llama_perplexity.py --base model-f16.gguf --ctx 512 --text eval.txt
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_tools import ensure_llama_tool, no_extra_buffer_args  # noqa: E402

from edgeshrink.formats import gguf  # noqa: E402
from edgeshrink.formats.gguf.quality import default_eval_text, evaluate_llm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_STORIES = REPO.parent / "shared" / "models" / "stories260K.gguf"
TARGET = 0.02

PATTERNS = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([0-9.eE+-]+)",
    "kld": r"Mean\s+KLD:\s*([0-9.eE+-]+)",
    "same_top": r"Same top p:\s*([0-9.eE+-]+)",
    "rms_dp": r"RMS Δp\s*:\s*([0-9.eE+-]+)",
}


def llama_perplexity_figures(
    tool: Path, base: Path, cand: Path, text: Path, ctx: int, threads: int, work: Path
) -> tuple[dict, float]:
    logits = work / f"{base.stem}-{ctx}.kld"
    if not logits.exists():
        subprocess.run(
            [str(tool), "-m", str(base), "-f", str(text), "-c", str(ctx), "-t", str(threads),
             "--kl-divergence-base", str(logits), *no_extra_buffer_args("llama-perplexity")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(
        [str(tool), "-m", str(cand), "-c", str(ctx), "-t", str(threads), "--kl-divergence-base", str(logits),
         "--kl-divergence", *no_extra_buffer_args("llama-perplexity")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    figures = {}
    for name, pattern in PATTERNS.items():
        match = re.search(pattern, out)
        if match is None:
            raise SystemExit(f"could not find {name} in llama-perplexity's output:\n{out[-2000:]}")
        figures[name] = float(match.group(1))
    figures["same_top"] /= 100.0
    figures["rms_dp"] /= 100.0
    return figures, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base",
        type=Path,
        default=SHARED_STORIES,
        help="F32/F16 base model [default: stories260K]",
    )
    parser.add_argument(
        "--quants", default="Q8_0,Q4_K_M,Q4_0", help="candidates to make and compare"
    )
    parser.add_argument(
        "--text", type=Path, default=None, help="evaluation text [default: edgeshrink's]"
    )
    parser.add_argument("--ctx", type=int, default=256, help="chunk size (llama-perplexity -c)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.base.exists():
        print(f"error: no base model at {args.base}; pass --base", file=sys.stderr)
        return 1
    tool = ensure_llama_tool("llama-perplexity", progress=lambda m: print(m, file=sys.stderr))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text_path = args.text or work / "eval.txt"
        if args.text is None:
            text_path.write_text(default_eval_text(), encoding="utf-8")
        text = text_path.read_text(encoding="utf-8")
        for quant in args.quants.split(","):
            cand = gguf.quantize_gguf(args.base, work / f"{quant}.gguf", quant).output
            theirs, their_s = llama_perplexity_figures(
                tool, args.base, cand, text_path, args.ctx, args.threads, work
            )
            evaluate_llm(
                args.base, cand, text=text, n_ctx=args.ctx, threads=args.threads
            )  # base cached
            start = time.perf_counter()
            ours = evaluate_llm(args.base, cand, text=text, n_ctx=args.ctx, threads=args.threads)
            our_s = time.perf_counter() - start
            mine = {"ppl": ours.ppl.value, "kld": ours.kld_mean.value, "same_top": ours.same_top.value,
                    "rms_dp": ours.rms_dp.value}  # fmt: skip
            for metric in PATTERNS:
                ratio = mine[metric] / theirs[metric] if theirs[metric] else float("nan")
                rows.append({"quant": quant, "metric": metric, "edgeshrink": mine[metric],
                             "llama_perplexity": theirs[metric], "ratio": ratio,
                             "pass": abs(ratio - 1) <= TARGET})  # fmt: skip
            rows.append({"quant": quant, "metric": "wall_s (candidate pass)", "edgeshrink": our_s,
                         "llama_perplexity": their_s, "ratio": our_s / their_s, "pass": True})  # fmt: skip
    ok = all(r["pass"] for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "target_relative": TARGET, "pass": ok}, indent=2))
    else:
        print(
            f"{'type':<8} {'metric':<24} {'edgeshrink':>12} {'llama-perplexity':>17} {'ratio':>8}  verdict"
        )
        for r in rows:
            print(f"{r['quant']:<8} {r['metric']:<24} {r['edgeshrink']:>12.6g} {r['llama_perplexity']:>17.6g} "
                  f"{r['ratio']:>8.4f}  {'PASS' if r['pass'] else 'FAIL'}")  # fmt: skip
        print(
            f"target: quality figures within {TARGET:.0%} relative of llama-perplexity: {'PASS' if ok else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
