"""Check that the on-device agent measures like llama.cpp's own llama-bench.

    python scripts/bench_agent_vs_llama_bench.py                  # build, make a model, compare
    python scripts/bench_agent_vs_llama_bench.py --model M.gguf --threads 1 2 --rounds 3 --json

llama-bench is built once from the llama.cpp inside the llama-cpp-python source
distribution of the installed version (see llama_tools.py), so both sides run
the same llama.cpp.  The two run as separate processes, interleaved round by
round (llama-bench, agent, llama-bench, agent, ...) because the machine is
shared and its speed drifts; each round's agent/llama-bench ratio is taken and
the median over rounds must lie within --tolerance of 1.  Exit code 0 when every
(threads, metric) pair passes, 1 when one fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_tools import (  # noqa: E402  (sibling module of this script)
    default_cache_dir,
    ensure_llama_tool,
    installed_version,
)

import edgeshrink.agent  # noqa: E402
from edgeshrink.errors import EdgeshrinkError  # noqa: E402

MIN_MODEL_BYTES = 50_000_000
AGENT_SCRIPT = Path(edgeshrink.agent.__file__).resolve().parent / "edgeshrink_agent.py"
RUN_TIMEOUT_S = 1800.0


class ComparisonError(EdgeshrinkError, RuntimeError):
    """llama-bench or the agent failed, or printed something that is not a result."""

    default_hint = "read the run's stderr log named in the message"


@dataclass
class Side:
    """Samples (tok/s) of one program for one (threads, metric), per round."""

    rounds: list[list[float]] = field(default_factory=list)

    @property
    def samples(self) -> list[float]:
        return [value for round_samples in self.rounds for value in round_samples]

    def round_means(self) -> list[float]:
        return [statistics.fmean(samples) for samples in self.rounds]

    def summary(self) -> dict:
        samples = self.samples
        return {
            "mean": statistics.fmean(samples) if samples else None,
            "stddev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
            "samples": [round(value, 3) for value in samples],
            "round_means": [round(value, 3) for value in self.round_means()],
        }


@dataclass
class Comparison:
    threads: int
    metric: str  # "pp512", "tg128"
    llama_bench: Side = field(default_factory=Side)
    agent: Side = field(default_factory=Side)

    def round_ratios(self) -> list[float]:
        return [
            agent / bench
            for agent, bench in zip(
                self.agent.round_means(), self.llama_bench.round_means(), strict=True
            )
            if bench > 0
        ]

    def ratio(self) -> float | None:
        ratios = self.round_ratios()
        return statistics.median(ratios) if ratios else None

    def passes(self, tolerance: float) -> bool:
        ratio = self.ratio()
        return ratio is not None and abs(ratio - 1.0) <= tolerance


# --------------------------------------------------------------------------- model


def default_model(models_dir: Path, threads: int) -> Path:
    """The "large" test model quantized to Q8_0 (~57 MB), or its F16 original
    (~107 MB) if the Q8_0 file came out under MIN_MODEL_BYTES.  Made once."""
    from edgeshrink.formats.gguf import quantize_gguf
    from edgeshrink.testmodels import make_llama_gguf

    f16 = models_dir / "tiny-llama-large-f16.gguf"
    q8 = models_dir / "tiny-llama-large-q8_0.gguf"
    if not f16.is_file():
        make_llama_gguf(f16, size="large", ftype="f16")
    if not q8.is_file():
        fd, partial = tempfile.mkstemp(prefix=".q8_0-", suffix=".gguf", dir=models_dir)
        os.close(fd)
        try:
            quantize_gguf(f16, partial, "Q8_0", threads=threads)
            os.replace(partial, q8)
        finally:
            Path(partial).unlink(missing_ok=True)
    return q8 if q8.stat().st_size >= MIN_MODEL_BYTES else f16


# --------------------------------------------------------------------------- runs


def _run(cmd: list[str], log_path: Path, what: str) -> str:
    """Run cmd, keep its stderr in log_path, return its stdout."""
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, timeout=RUN_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise ComparisonError(f"{what} ran longer than {RUN_TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
        raise ComparisonError(f"{what} exited with {proc.returncode} (log {log_path}):\n{tail}")
    return proc.stdout


def run_llama_bench(
    binary: Path, model: Path, args: argparse.Namespace, threads: int, log_path: Path
) -> dict:
    """One llama-bench process; returns {metric: samples, "_config": {...}}."""
    cmd = [
        str(binary),
        "-m",
        str(model),
        "-p",
        str(args.prompt_tokens),
        "-n",
        str(args.gen_tokens),
        "-r",
        str(args.reps),
        "-t",
        str(threads),
        "-fa",
        "1" if args.flash_attn == "on" else "0",
        "-o",
        "json",
    ]
    stdout = _run(cmd, log_path, "llama-bench")
    try:
        tests = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise ComparisonError(f"llama-bench printed no JSON (log {log_path}): {exc}") from exc
    found: dict = {"_config": {}}
    for test in tests:
        if test["n_prompt"] > 0 and test["n_gen"] == 0:
            metric = f"pp{test['n_prompt']}"
        elif test["n_gen"] > 0 and test["n_prompt"] == 0:
            metric = f"tg{test['n_gen']}"
        else:
            continue
        found[metric] = [float(value) for value in test["samples_ts"]]
        found["_config"][metric] = {
            key: test.get(key)
            for key in ("n_threads", "n_batch", "n_ubatch", "flash_attn", "type_k", "type_v")
        }
        found["_config"]["build_commit"] = test.get("build_commit")
    return found


def run_agent(
    agent: Path, model: Path, args: argparse.Namespace, threads: int, log_path: Path
) -> dict:
    """One agent process; returns {metric: samples, "_config": resolved params}."""
    cmd = [
        sys.executable,
        str(agent),
        "bench",
        "--model",
        str(model),
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--gen-tokens",
        str(args.gen_tokens),
        "--reps",
        str(args.reps),
        "--threads",
        str(threads),
        "--flash-attn",
        args.flash_attn,
    ]
    stdout = _run(cmd, log_path, "the agent")
    try:
        document = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise ComparisonError(f"the agent printed no JSON (log {log_path}): {exc}") from exc
    if document.get("status") != "ok":
        raise ComparisonError(
            f"the agent reported status {document.get('status')!r}: {document.get('error')}"
        )
    llm = document["llm"]
    return {
        f"pp{args.prompt_tokens}": [float(v) for v in llm["pp_tok_s"]["samples"]],
        f"tg{args.gen_tokens}": [float(v) for v in llm["tg_tok_s"]["samples"]],
        "_config": document.get("params", {}).get("resolved", {}),
    }


def config_mismatches(bench_config: dict, agent_config: dict, prompt_metric: str) -> list[str]:
    """Settings in which the two runs differ (they should not)."""
    pp = bench_config.get(prompt_metric, {})
    pairs = [
        ("threads", pp.get("n_threads"), agent_config.get("threads")),
        ("n_ubatch", pp.get("n_ubatch"), agent_config.get("ubatch_size")),
        ("flash_attn", bool(pp.get("flash_attn")), bool(agent_config.get("flash_attn"))),
    ]
    return [
        f"{name}: llama-bench {bench} vs agent {agent}"
        for name, bench, agent in pairs
        if bench != agent
    ]


# --------------------------------------------------------------------------- report


def _fmt(summary: dict) -> str:
    return f"{summary['mean']:9.1f} ± {summary['stddev']:6.1f}"


def render_table(comparisons: list[Comparison], tolerance: float) -> str:
    header = (
        f"{'threads':>7}  {'metric':<7}  {'llama-bench tok/s':>18}  {'agent tok/s':>18}"
        f"  {'agent/llama-bench':>17}  {'rounds':<23}  result"
    )
    lines = [header, "-" * len(header)]
    for comp in comparisons:
        ratio = comp.ratio()
        rounds = " ".join(f"{value:.3f}" for value in comp.round_ratios())
        lines.append(
            f"{comp.threads:>7}  {comp.metric:<7}  {_fmt(comp.llama_bench.summary()):>18}"
            f"  {_fmt(comp.agent.summary()):>18}  {ratio:>17.3f}  {rounds:<23}"
            f"  {'PASS' if comp.passes(tolerance) else 'FAIL'}"
        )
    lines.append(f"target: median of per-round ratios within 1 ± {tolerance:.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--model", type=Path, help="GGUF to run (default: make a ≥50 MB one)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({1, cores}),
        help=f"thread counts to compare (default: 1 and the core count, {cores})",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per run (default 5)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--flash-attn", choices=("on", "off"), default="on")
    parser.add_argument(
        "--tolerance", type=float, default=0.05, help="allowed |ratio - 1| (default 0.05)"
    )
    parser.add_argument("--agent", type=Path, default=AGENT_SCRIPT, help="agent script to run")
    parser.add_argument("--cache-dir", type=Path, help="default: ~/.cache/edgeshrink/llama.cpp-VER")
    parser.add_argument("--sdist-dir", type=Path, help="an extracted llama-cpp-python source tree")
    parser.add_argument(
        "--also-perplexity", action="store_true", help="also build llama-perplexity"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.reps < 1 or any(t < 1 for t in args.threads):
        parser.error("--rounds, --reps and --threads must be positive")
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        version = installed_version()
        cache_dir = args.cache_dir or default_cache_dir(version)
        tool_timings = {}
        tools = ["llama-bench"] + (["llama-perplexity"] if args.also_perplexity else [])
        for name in tools:
            started = time.perf_counter()
            path = ensure_llama_tool(
                name, version, cache_dir, sdist_dir=args.sdist_dir, progress=say
            )
            tool_timings[name] = {"path": str(path), "seconds": time.perf_counter() - started}
        llama_bench = Path(tool_timings["llama-bench"]["path"])

        if args.model is None:
            models_dir = cache_dir / "models"
            models_dir.mkdir(parents=True, exist_ok=True)
            model = default_model(models_dir, max(args.threads))
        else:
            model = args.model
        model_bytes = model.stat().st_size
        say(f"model {model} ({model_bytes / 1e6:.1f} MB); llama-cpp-python {version}")
        if model_bytes < MIN_MODEL_BYTES:
            say(f"warning: the model is under {MIN_MODEL_BYTES / 1e6:.0f} MB; timings are noisier")

        log_dir = cache_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
        log_dir.mkdir(parents=True, exist_ok=True)
        metrics = [f"pp{args.prompt_tokens}", f"tg{args.gen_tokens}"]
        comparisons: list[Comparison] = []
        configs: dict = {}
        for threads in args.threads:
            by_metric = {metric: Comparison(threads, metric) for metric in metrics}
            comparisons.extend(by_metric.values())
            for index in range(args.rounds):
                say(f"threads {threads}: round {index + 1}/{args.rounds}")
                stem = f"t{threads}-r{index + 1}"
                bench = run_llama_bench(
                    llama_bench, model, args, threads, log_dir / f"{stem}-llama-bench.log"
                )
                agent = run_agent(args.agent, model, args, threads, log_dir / f"{stem}-agent.log")
                for metric, comp in by_metric.items():
                    if metric not in bench or metric not in agent:
                        raise ComparisonError(f"{metric} missing from llama-bench or agent output")
                    comp.llama_bench.rounds.append(bench[metric])
                    comp.agent.rounds.append(agent[metric])
                configs[threads] = {"llama_bench": bench["_config"], "agent": agent["_config"]}
                for mismatch in config_mismatches(bench["_config"], agent["_config"], metrics[0]):
                    say(f"warning: threads {threads}: settings differ, {mismatch}")
    except EdgeshrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1

    all_pass = all(comp.passes(args.tolerance) for comp in comparisons)
    if args.json:
        document = {
            "llama_cpp_python": version,
            "tools": tool_timings,
            "model": {"path": str(model), "size_bytes": model_bytes},
            "params": {
                "threads": args.threads,
                "rounds": args.rounds,
                "reps": args.reps,
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "flash_attn": args.flash_attn,
                "tolerance": args.tolerance,
            },
            "configs": configs,
            "logs": str(log_dir),
            "results": [
                {
                    "threads": comp.threads,
                    "metric": comp.metric,
                    "llama_bench": comp.llama_bench.summary(),
                    "agent": comp.agent.summary(),
                    "round_ratios": [round(value, 4) for value in comp.round_ratios()],
                    "ratio": comp.ratio(),
                    "pass": comp.passes(args.tolerance),
                }
                for comp in comparisons
            ],
            "all_pass": all_pass,
        }
        print(json.dumps(_rounded(document), indent=2))
    else:
        print(render_table(comparisons, args.tolerance))
        print(f"logs: {log_dir}")
    return 0 if all_pass else 1


def _rounded(value):
    """JSON-ready copy with floats kept to 4 decimals."""
    if isinstance(value, dict):
        return {str(key): _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


if __name__ == "__main__":
    sys.exit(main())
