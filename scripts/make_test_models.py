"""Write the llama-architecture GGUF test models (one preset or all of them).

    python scripts/make_test_models.py --size small --ftype f16 -o out/models/
    python scripts/make_test_models.py --size all -o out/models/

Prints one line per file: path, size in MB and seconds taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edgeshrink.testmodels import FTYPES, SIZES, make_llama_gguf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=[*SIZES, "all"], default="all", help="preset to write")
    parser.add_argument("--ftype", choices=FTYPES, default="f16", help="type of the 2-D weights")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    parser.add_argument("--ctx", type=int, default=2048, help="llama.context_length to record")
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("out/models"), help="directory")
    args = parser.parse_args(argv)

    sizes = list(SIZES) if args.size == "all" else [args.size]
    for size in sizes:
        dest = args.out_dir / f"tiny-llama-{size}-{args.ftype}.gguf"
        started = time.perf_counter()
        path = make_llama_gguf(dest, size=size, ftype=args.ftype, seed=args.seed, n_ctx=args.ctx)
        elapsed = time.perf_counter() - started
        print(f"{path}\t{path.stat().st_size / 1e6:.1f} MB\t{elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
