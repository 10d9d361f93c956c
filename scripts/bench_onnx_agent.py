"""Check that the agent's ONNX latency matches a bare onnxruntime loop.

    python scripts/bench_onnx_agent.py                       # make the test models, compare
    python scripts/bench_onnx_agent.py --model M.onnx --threads 1 2 --rounds 5 --json

Both sides run the same model with the same session options (intra-op threads,
one inter-op thread, sequential execution, ORT_ENABLE_ALL, CPU provider), the
same inputs (the seeded random inputs the agent makes from the declared shapes,
or the first sample of --inputs) and the same rule (warm-up, then at least
--runs runs and at least --min-seconds).  Each side is its own process, and the
two alternate round by round (bare, agent, agent, bare, ...) because the machine
is shared and its speed drifts.  Before each round the script waits (up to
--quiet-wait-s) until other processes use at most --max-foreign-load cores, and
a round during which they used more is set aside as noisy.  The median over the
quiet rounds of the agent/bare ratio of mean latency must lie within
--tolerance of 1.  Exit code 0 when every (model, threads) pair passes, 1 when
one fails or had no quiet round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeshrink.agent import AGENT_PATH

# The bare loop: nothing but onnxruntime, numpy and perf_counter.  It builds its
# inputs exactly as the agent does, so both sides feed identical arrays.
BARE_LOOP = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort

job = json.loads(sys.argv[1])
options = ort.SessionOptions()
options.intra_op_num_threads = job["threads"]
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.log_severity_level = 3
session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
         "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
         "tensor(bool)": "bool", "tensor(double)": "float64"}
rng = np.random.default_rng(job["seed"])
arrays = dict(np.load(job["inputs"])) if job["inputs"] else None
feeds = {}
for meta in session.get_inputs():
    dims, dtype = list(meta.shape), types[meta.type]
    if arrays is not None:
        array = arrays[meta.name]
        rows = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1
        feeds[meta.name] = np.ascontiguousarray(array[:rows].astype(dtype))
        continue
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in dims]
    if np.dtype(dtype).kind == "f":
        feeds[meta.name] = rng.standard_normal(shape).astype(dtype)
    else:
        feeds[meta.name] = rng.integers(0, 10, shape).astype(dtype)
for _ in range(job["warmup"]):
    session.run(None, feeds)
run, perf = session.run, time.perf_counter
samples = []
min_end = perf() + job["min_seconds"]
while True:
    t0 = perf()
    run(None, feeds)
    t1 = perf()
    samples.append(t1 - t0)
    if len(samples) >= job["runs"] and t1 >= min_end:
        break
ms = sorted(1000.0 * s for s in samples)
print(json.dumps({"mean": sum(ms) / len(ms), "p50": ms[len(ms) // 2], "count": len(ms)}))
"""


def _cpu_busy_s() -> float:
    """Seconds all CPUs spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class ForeignLoad:
    """Average number of cores other processes kept busy since it was made."""

    def __init__(self) -> None:
        self.started, self.busy, self.own = time.perf_counter(), _cpu_busy_s(), _own_cpu_s()

    def cores(self) -> float:
        wall = max(time.perf_counter() - self.started, 1e-6)
        foreign = (_cpu_busy_s() - self.busy) - (_own_cpu_s() - self.own)
        return max(foreign, 0.0) / wall


def wait_for_quiet(max_load: float, max_wait_s: float) -> None:
    deadline = time.perf_counter() + max_wait_s
    while time.perf_counter() < deadline:
        window = ForeignLoad()
        time.sleep(0.5)
        if window.cores() <= max_load:
            return


def run_bare(model: Path, args: argparse.Namespace, threads: int) -> dict:
    job = {
        "model": str(model),
        "threads": threads,
        "seed": args.seed,
        "warmup": args.warmup,
        "runs": args.runs,
        "min_seconds": args.min_seconds,
        "inputs": str(args.inputs) if args.inputs else None,
    }
    done = subprocess.run(
        [sys.executable, "-c", BARE_LOOP, json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bare loop failed on {model}: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def run_agent(model: Path, args: argparse.Namespace, threads: int) -> dict:
    argv = [
        sys.executable, str(AGENT_PATH), "bench", "--model", str(model), "--format", "onnx",
        "--threads", str(threads), "--warmup", str(args.warmup), "--seed", str(args.seed),
        "--runs", str(args.runs), "--min-seconds", str(args.min_seconds),
        "--execution-provider", "cpu",
    ]  # fmt: skip
    if args.inputs:
        argv += ["--inputs", str(args.inputs)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    doc = json.loads(done.stdout)
    if doc.get("status") != "ok":
        raise SystemExit(f"agent failed on {model}: {doc.get('error')}")
    return doc["latency_ms"]


def default_models(out: Path) -> list[Path]:
    """A conv net (64x64 input, ~1 ms a run) and a wide MLP, made by the project."""
    from edgeshrink.testmodels.onnx_models import make_convnet_onnx, make_mlp_onnx

    return [
        make_convnet_onnx(out / "convnet-64.onnx", size=64),
        make_mlp_onnx(out / "mlp-1024.onnx", features=512, hidden=(1024, 1024)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="ONNX model (repeatable)")
    parser.add_argument("--inputs", type=Path, default=None, help=".npz inputs for both sides")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--max-foreign-load", type=float, default=0.3, help="cores others may use")
    parser.add_argument(
        "--quiet-wait-s", type=float, default=20.0, help="wait for quiet, per round"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        models = args.model or default_models(Path(tmp))
        results = []
        for model in models:
            for threads in args.threads:
                quiet, noisy = [], []
                for round_no in range(args.rounds):
                    wait_for_quiet(args.max_foreign_load, args.quiet_wait_s)
                    window = ForeignLoad()
                    if round_no % 2 == 0:
                        bare = run_bare(model, args, threads)
                        agent = run_agent(model, args, threads)
                    else:
                        agent = run_agent(model, args, threads)
                        bare = run_bare(model, args, threads)
                    load = window.cores()
                    entry = {
                        "bare_mean_ms": bare["mean"],
                        "agent_mean_ms": agent["mean"],
                        "ratio_mean": agent["mean"] / bare["mean"],
                        "ratio_p50": agent["p50"] / bare["p50"],
                        "foreign_load": round(load, 3),
                    }
                    (quiet if load <= args.max_foreign_load else noisy).append(entry)
                    if not args.json:
                        print(
                            f"{model.name} t={threads} round {round_no + 1}: "
                            f"bare {bare['mean']:.4f} ms ({bare['count']} runs), "
                            f"agent {agent['mean']:.4f} ms ({agent['count']} runs), "
                            f"ratio {entry['ratio_mean']:.3f}, foreign load {load:.2f} cores",
                            file=sys.stderr,
                        )
                judged = quiet or noisy

                def median(key: str, rounds: list[dict] = judged) -> float:
                    return statistics.median(r[key] for r in rounds)

                ratio = median("ratio_mean")
                results.append(
                    {
                        "model": model.name,
                        "threads": threads,
                        "bare_mean_ms": median("bare_mean_ms"),
                        "agent_mean_ms": median("agent_mean_ms"),
                        "ratio_mean": ratio,
                        "ratio_p50": median("ratio_p50"),
                        "quiet_rounds": len(quiet),
                        "rounds": quiet + noisy,
                        "verdict": (
                            "NOISY"
                            if not quiet
                            else "PASS"
                            if abs(ratio - 1.0) <= args.tolerance
                            else "FAIL"
                        ),
                    }
                )
    if args.json:
        print(json.dumps({"tolerance": args.tolerance, "results": results}, indent=2))
    else:
        print(
            f"{'model':<18} {'thr':>3} {'bare ms':>9} {'agent ms':>9} {'ratio':>6} {'p50':>6}"
            f"  {'quiet':>5}  result"
        )
        for r in results:
            print(
                f"{r['model']:<18} {r['threads']:>3} {r['bare_mean_ms']:>9.4f} "
                f"{r['agent_mean_ms']:>9.4f} {r['ratio_mean']:>6.3f} {r['ratio_p50']:>6.3f}"
                f"  {r['quiet_rounds']:>2}/{len(r['rounds']):<2}  {r['verdict']}"
            )
        print(
            "ms: median over rounds of each run's mean latency; ratio: agent/bare, median over "
            f"quiet rounds; target 1 ± {args.tolerance:.2f}"
        )
    return 0 if all(r["verdict"] == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
