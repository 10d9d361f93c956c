"""Check that the on-device agent measures like llama.cpp's own llama-bench.

    python scripts/bench_agent_vs_llama_bench.py                  # build, make a model, compare
    python scripts/bench_agent_vs_llama_bench.py --model M.gguf --threads 1 2 --rounds 3 --json

llama-bench is built once from the llama.cpp inside the llama-cpp-python source
distribution of the installed version (see llama_tools.py).  By default it is
linked against shared libraries and run with LD_LIBRARY_PATH pointing at the
installed binding's own libllama/libggml, so both sides execute the very same
library code and only the harness differs (a statically linked llama-bench ran
~3% faster in tg than the same llama-bench on the binding's shared libraries on
the 2-core reference machine; --llama-bench-libs static compares against it).  The two run as separate processes with the same threads,
flash attention, prompt/generation lengths and repetitions, interleaved round
by round (llama-bench, agent, llama-bench, agent, ...) because the machine is
shared and its speed drifts.

A round counts only if other processes kept at most --max-foreign-load cores
busy during both of its runs (from /proc/stat minus this script's own
children); noisy rounds are repeated, up to --max-noisy-rounds.  While a verdict
is NOISY after --rounds quiet rounds, more rounds follow, up to --max-rounds
(default 3 x --rounds), since the median narrows with more rounds.  The verdict
for each (threads, metric) is the median over quiet rounds of the per-round
ratio agent/llama-bench (each run summarised by --statistic), which must lie
within 1 ± --tolerance, judged with its ~95% interval (bench_stats.py: median ±
1.58 IQR/√n): PASS when the interval lies in the band, FAIL when wholly outside,
NOISY when it crosses an edge or no round was quiet: no verdict.

On a CPU with AMX, where the agent keeps the weights out of llama.cpp's extra
buffer types (llama.cpp issue 20824), llama-bench runs with --repack 0 too.

Exit code 0 when every (threads, metric) passes, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stats import band_verdict, median_interval  # noqa: E402  (sibling modules)
from llama_tools import (  # noqa: E402
    default_cache_dir,
    ensure_llama_tool,
    installed_version,
    no_extra_buffer_args,
    wheel_library_dir,
)

import edgeshrink.agent  # noqa: E402
from edgeshrink.errors import EdgeshrinkError  # noqa: E402
from edgeshrink.util import peak_rss_mb  # noqa: E402

MIN_MODEL_BYTES = 50_000_000
AGENT_SCRIPT = Path(edgeshrink.agent.__file__).resolve().parent / "edgeshrink_agent.py"
RUN_TIMEOUT_S = 1800.0


class ComparisonError(EdgeshrinkError, RuntimeError):
    """llama-bench or the agent failed, or printed something that is not a result."""

    default_hint = "read the run's stderr log named in the message"


STATISTICS = {
    "mean": statistics.fmean,
    "median": statistics.median,
    "best": max,
}


@dataclass
class Side:
    """Samples (tok/s) of one program for one (threads, metric), per round."""

    rounds: list[list[float]] = field(default_factory=list)

    @property
    def samples(self) -> list[float]:
        return [value for round_samples in self.rounds for value in round_samples]

    def per_round(self, statistic: str) -> list[float]:
        return [STATISTICS[statistic](samples) for samples in self.rounds]

    def summary(self) -> dict:
        samples = self.samples
        return {
            "mean": statistics.fmean(samples),
            "stddev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
            "median": statistics.median(samples),
            "best": max(samples),
            "rounds": [[round(value, 2) for value in samples] for samples in self.rounds],
        }


@dataclass
class Comparison:
    """One (threads, metric): quiet rounds, and the rounds rejected as noisy."""

    threads: int
    metric: str  # "pp512", "tg128"
    llama_bench: Side = field(default_factory=Side)
    agent: Side = field(default_factory=Side)
    noisy_llama_bench: Side = field(default_factory=Side)
    noisy_agent: Side = field(default_factory=Side)

    @property
    def judged_on_quiet(self) -> bool:
        return bool(self.llama_bench.rounds)

    def sides(self) -> tuple[Side, Side]:
        """(llama-bench, agent) rounds the verdict uses: the quiet ones, or all if none was."""
        if self.judged_on_quiet:
            return self.llama_bench, self.agent
        return self.noisy_llama_bench, self.noisy_agent

    def round_ratios(self, statistic: str) -> list[float]:
        bench, agent = self.sides()
        return [
            agent_value / bench_value
            for agent_value, bench_value in zip(
                agent.per_round(statistic), bench.per_round(statistic), strict=True
            )
        ]

    def ratio(self, statistic: str) -> float:
        return statistics.median(self.round_ratios(statistic))

    def verdict(self, statistic: str, tolerance: float) -> str:
        """band_verdict of the quiet rounds; NOISY (not a pass) when no round was quiet."""
        if not self.judged_on_quiet:
            return "NOISY"
        return band_verdict(self.round_ratios(statistic), tolerance)


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


# --------------------------------------------------------------------------- load


def _cpu_busy_s() -> float:
    """CPU seconds spent busy on all cores since boot (steal counts: the core was taken)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class ForeignLoad:
    """Average number of cores that other processes kept busy between start and stop."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.busy = _cpu_busy_s()
        self.own = _own_cpu_s()

    def cores(self) -> float:
        wall = max(time.perf_counter() - self.started, 1e-6)
        foreign = (_cpu_busy_s() - self.busy) - (_own_cpu_s() - self.own)
        return max(foreign, 0.0) / wall


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Sleep in 1 s windows until other processes use at most max_load cores, or
    max_wait_s passed; return the last window's foreign load."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        window = ForeignLoad()
        time.sleep(1.0)
        load = window.cores()
        if load <= max_load or time.perf_counter() >= deadline:
            return load


# --------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    samples: dict[str, list[float]]  # metric -> tok/s per repetition
    config: dict
    foreign_load: float  # cores other processes used during the run


def _run(
    cmd: list[str], log_path: Path, what: str, env: dict[str, str] | None = None
) -> tuple[str, float, float]:
    """Run cmd, keep its stderr in log_path; return its stdout, the foreign load and the
    peak RSS (MB) the kernel recorded for it (wait4's ru_maxrss)."""
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        load = ForeignLoad()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
        timer = threading.Timer(RUN_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            stdout = proc.stdout.read().decode("utf-8", "replace")
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        foreign = load.cores()
        log.write(f"\n# other processes used {foreign:.2f} cores during this run\n")
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
        raise ComparisonError(f"{what} exited with {proc.returncode} (log {log_path}):\n{tail}")
    return stdout, foreign, usage.ru_maxrss / 1024.0


@dataclass
class LlamaBenchTool:
    path: Path
    libs: str  # "wheel" or "static"
    env: dict[str, str] | None  # None: inherit this process's environment
    libraries: dict[str, str]  # soname -> file it resolves to (shared builds)


def _resolved_libraries(binary: Path, env: dict[str, str]) -> dict[str, str]:
    """soname -> path of the llama.cpp libraries the dynamic loader picks (via ldd)."""
    if shutil.which("ldd") is None:
        return {}
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, env=env, check=False
    ).stdout
    found = {}
    for line in out.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name.startswith(("libllama.", "libggml")):
            found[name] = rest.split(" (")[0]
    return found


def prepare_llama_bench(
    libs: str, version: str, cache_dir: Path, sdist_dir: Path | None, say: Callable[[str], None]
) -> LlamaBenchTool:
    """llama-bench either on the binding's own shared libraries ("wheel") or static."""
    if libs == "static":
        path = ensure_llama_tool(
            "llama-bench", version, cache_dir, sdist_dir=sdist_dir, progress=say
        )
        return LlamaBenchTool(path, libs, None, {})
    wheel_lib = wheel_library_dir()
    if wheel_lib is None:
        raise ComparisonError(
            "cannot find the installed llama_cpp/lib/libllama.so*",
            hint="use --llama-bench-libs static, or reinstall llama-cpp-python",
        )
    path = ensure_llama_tool(
        "llama-bench", version, cache_dir, shared=True, sdist_dir=sdist_dir, progress=say
    )
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        part for part in (str(wheel_lib), env.get("LD_LIBRARY_PATH", "")) if part
    )
    libraries = _resolved_libraries(path, env)
    strays = {name: where for name, where in libraries.items() if Path(where).parent != wheel_lib}
    if strays:
        raise ComparisonError(
            f"llama-bench would not load the binding's libraries from {wheel_lib}: {strays}",
            hint="use --llama-bench-libs static",
        )
    return LlamaBenchTool(path, libs, env, libraries)


def run_llama_bench(
    tool: LlamaBenchTool, model: Path, args: argparse.Namespace, threads: int, log_path: Path
) -> RunResult:
    cmd = [
        str(tool.path),
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
        args.flash_attn,
        "-o",
        "json",
        *no_extra_buffer_args("llama-bench"),
    ]
    stdout, foreign, _rss = _run(cmd, log_path, "llama-bench", tool.env)
    try:
        tests = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise ComparisonError(f"llama-bench printed no JSON (log {log_path}): {exc}") from exc
    samples, config = {}, {}
    for test in tests:
        if test["n_prompt"] > 0 and test["n_gen"] == 0:
            metric = f"pp{test['n_prompt']}"
        elif test["n_gen"] > 0 and test["n_prompt"] == 0:
            metric = f"tg{test['n_gen']}"
        else:
            continue
        samples[metric] = [float(value) for value in test["samples_ts"]]
        config[metric] = {
            key: test.get(key)
            for key in ("n_threads", "n_batch", "n_ubatch", "flash_attn", "type_k", "type_v")
        }
        config["build_commit"] = test.get("build_commit")
    return RunResult(samples, config, foreign)


def run_agent(
    agent: Path, model: Path, args: argparse.Namespace, threads: int, log_path: Path
) -> RunResult:
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
    stdout, foreign, kernel_rss_mb = _run(cmd, log_path, "the agent")
    try:
        document = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise ComparisonError(f"the agent printed no JSON (log {log_path}): {exc}") from exc
    if document.get("status") != "ok":
        raise ComparisonError(
            f"the agent reported status {document.get('status')!r}: {document.get('error')}"
        )
    llm = document["llm"]
    samples = {
        f"pp{args.prompt_tokens}": [float(v) for v in llm["pp_tok_s"]["samples"]],
        f"tg{args.gen_tokens}": [float(v) for v in llm["tg_tok_s"]["samples"]],
    }
    params = document.get("params", {})
    # llama.cpp clamps the micro-batch to n_ctx on both sides: compare what was asked.
    config = {**params.get("resolved", {}), "ubatch_asked": params.get("ubatch_size"),
              "peak_rss_mb": (document.get("memory") or {}).get("peak_rss_mb"),
              "kernel_peak_rss_mb": kernel_rss_mb}  # fmt: skip
    return RunResult(samples, config, foreign)


def config_mismatches(bench_config: dict, agent_config: dict, prompt_metric: str) -> list[str]:
    """Settings in which the two runs differ (they should not)."""
    pp = bench_config.get(prompt_metric, {})
    pairs = [
        ("threads", pp.get("n_threads"), agent_config.get("threads")),
        ("n_ubatch", pp.get("n_ubatch"), agent_config.get("ubatch_asked")),
        ("flash_attn", bool(pp.get("flash_attn")), bool(agent_config.get("flash_attn"))),
    ]
    return [
        f"{name}: llama-bench {bench} vs agent {agent}"
        for name, bench, agent in pairs
        if bench != agent
    ]


# --------------------------------------------------------------------------- report


def _fmt(summary: dict) -> str:
    return f"{summary['mean']:8.1f} ± {summary['stddev']:5.1f}"


def render_table(comparisons: list[Comparison], statistic: str, tolerance: float) -> str:
    header = (
        f"{'threads':>7}  {'metric':<6}  {'llama-bench tok/s':>17}  {'agent tok/s':>17}"
        f"  {'ratio':>5}  {'interval':>11}  {'result':<6}  {'quiet':>5}  per-round ratios"
    )
    lines = [header, "-" * (len(header) + 24)]
    for comp in comparisons:
        bench, agent = comp.sides()
        n_quiet = len(comp.llama_bench.rounds)
        quiet = f"{n_quiet}/{n_quiet + len(comp.noisy_llama_bench.rounds)}"
        rounds = " ".join(f"{value:.3f}" for value in comp.round_ratios(statistic))
        _median, low, high = median_interval(comp.round_ratios(statistic))
        lines.append(
            f"{comp.threads:>7}  {comp.metric:<6}  {_fmt(bench.summary()):>17}"
            f"  {_fmt(agent.summary()):>17}  {comp.ratio(statistic):>5.3f}"
            f"  {f'{low:.3f}-{high:.3f}':>11}  {comp.verdict(statistic, tolerance):<6}"
            f"  {quiet:>5}  {rounds}"
        )
    lines.append(
        "tok/s: mean ± sd of the quiet rounds' samples; ratio: agent/llama-bench, median over"
        f" quiet rounds of each run's {statistic}, and its ~95% interval (median ±"
        f" 1.58 IQR/√n), which must lie within 1 ± {tolerance:.2f}"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def compare_at(
    threads: int,
    llama_bench: LlamaBenchTool,
    model: Path,
    args: argparse.Namespace,
    log_dir: Path,
    say: Callable[[str], None],
) -> tuple[list[Comparison], dict]:
    """Interleave llama-bench and agent runs at one thread count until args.rounds
    rounds were quiet (or args.max_noisy_rounds were not); while a metric's verdict is
    NOISY after that, go on up to args.max_rounds quiet rounds: more rounds narrow the
    median where the spread is wide."""
    metrics = [f"pp{args.prompt_tokens}", f"tg{args.gen_tokens}"]
    by_metric = {metric: Comparison(threads, metric) for metric in metrics}
    config: dict = {}
    rss_ratios: list[float] = []
    n_quiet = n_noisy = 0

    def unsettled() -> bool:
        return n_quiet < args.max_rounds and any(
            comp.verdict(args.statistic, args.tolerance) == "NOISY" for comp in by_metric.values()
        )

    while n_noisy < args.max_noisy_rounds and (n_quiet < args.rounds or unsettled()):
        stem = f"t{threads}-r{n_quiet + n_noisy + 1}"
        # Alternate who goes first (ABBA...), so a drift of the machine's speed within a
        # round does not always favour the same side.
        runs = {}
        order = (
            ("llama-bench", "agent") if (n_quiet + n_noisy) % 2 == 0 else ("agent", "llama-bench")
        )
        for who in order:
            wait_for_quiet(args.max_foreign_load, args.quiet_wait_s)
            if who == "llama-bench":
                runs[who] = run_llama_bench(
                    llama_bench, model, args, threads, log_dir / f"{stem}-llama-bench.log"
                )
            else:
                runs[who] = run_agent(
                    args.agent, model, args, threads, log_dir / f"{stem}-agent.log"
                )
        bench, agent = runs["llama-bench"], runs["agent"]
        reported, kernel = agent.config.get("peak_rss_mb"), agent.config.get("kernel_peak_rss_mb")
        if reported and kernel and kernel > peak_rss_mb() * 1.05:
            rss_ratios.append(reported / kernel)
        elif reported and kernel:
            say(f"warning: threads {threads}: this script's own peak RSS reaches the agent's;"
                " wait4's ru_maxrss (which keeps the parent's peak across fork + exec) cannot"
                " check the agent's figure")  # fmt: skip
        quiet = max(bench.foreign_load, agent.foreign_load) <= args.max_foreign_load
        n_quiet, n_noisy = n_quiet + quiet, n_noisy + (not quiet)
        say(
            f"threads {threads}: round {n_quiet + n_noisy}: other processes used"
            f" {bench.foreign_load:.2f} / {agent.foreign_load:.2f} cores"
            f" -> {'quiet' if quiet else 'noisy, not counted'} ({n_quiet}/{args.rounds} quiet"
            + (", more while a verdict is NOISY)" if n_quiet > args.rounds else ")")
        )
        for metric, comp in by_metric.items():
            if metric not in bench.samples or metric not in agent.samples:
                raise ComparisonError(f"{metric} missing from the llama-bench or agent output")
            comp_bench = comp.llama_bench if quiet else comp.noisy_llama_bench
            comp_agent = comp.agent if quiet else comp.noisy_agent
            comp_bench.rounds.append(bench.samples[metric])
            comp_agent.rounds.append(agent.samples[metric])
        config = {"llama_bench": bench.config, "agent": agent.config}
        for mismatch in config_mismatches(bench.config, agent.config, metrics[0]):
            say(f"warning: threads {threads}: settings differ, {mismatch}")
    if rss_ratios:
        worst = max(rss_ratios, key=lambda r: abs(r - 1))
        config["rss_vs_kernel"] = {"ratios": rss_ratios, "worst": worst,
                                   "ok": abs(worst - 1) <= args.tolerance}  # fmt: skip
        say(
            f"threads {threads}: the agent's peak RSS / the kernel's (wait4 ru_maxrss):"
            f" {', '.join(f'{r:.3f}' for r in rss_ratios)}"
            f" -> {'PASS' if abs(worst - 1) <= args.tolerance else 'FAIL'} (within {args.tolerance:.0%})"
        )
    return list(by_metric.values()), config


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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per run (default 5)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--flash-attn", choices=("on", "off"), default="on")
    parser.add_argument(
        "--tolerance", type=float, default=0.05, help="allowed |ratio - 1| (default 0.05)"
    )
    parser.add_argument(
        "--statistic",
        choices=tuple(STATISTICS),
        default="median",
        help="per-run figure the ratio compares (default: median of the run's reps)",
    )
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.10,
        help="a round counts only if other processes kept at most this many cores busy"
        " during both runs (default 0.10)",
    )
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        help="while a verdict is NOISY after --rounds quiet rounds, go on up to this many"
        " (default: 3 x --rounds; equal to --rounds: never)",
    )
    parser.add_argument(
        "--max-noisy-rounds",
        type=int,
        default=None,
        help="give up on quiet rounds after this many noisy ones (default: 2 x --rounds)",
    )
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=30.0,
        help="before each run, wait up to this long for the machine to be quiet (default 30)",
    )
    parser.add_argument("--agent", type=Path, default=AGENT_SCRIPT, help="agent script to run")
    parser.add_argument("--cache-dir", type=Path, help="default: ~/.cache/edgeshrink/llama.cpp-VER")
    parser.add_argument("--sdist-dir", type=Path, help="an extracted llama-cpp-python source tree")
    parser.add_argument(
        "--llama-bench-libs",
        choices=("wheel", "static"),
        default="wheel",
        help="wheel (default): llama-bench linked against the installed binding's own"
        " libllama/libggml, so only the harness differs; static: a standalone build",
    )
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
    if args.max_noisy_rounds is None:
        args.max_noisy_rounds = 2 * args.rounds
    if args.max_rounds is None:
        args.max_rounds = 3 * args.rounds
    args.max_rounds = max(args.max_rounds, args.rounds)
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        version = installed_version()
        cache_dir = args.cache_dir or default_cache_dir(version)
        started = time.perf_counter()
        llama_bench = prepare_llama_bench(
            args.llama_bench_libs, version, cache_dir, args.sdist_dir, say
        )
        where = (
            f"on the binding's libraries in {wheel_library_dir()}"
            if llama_bench.libs == "wheel"
            else "statically linked"
        )
        say(f"llama-bench {llama_bench.path} ({where})")
        if no_extra_buffer_args("llama-bench"):
            say(
                "this CPU has AMX: the agent keeps weights out of llama.cpp's extra buffer"
                " types (llama.cpp issue 20824), so llama-bench runs with --repack 0 as well"
            )
        tools = {
            "llama-bench": {
                "path": str(llama_bench.path),
                "libs": llama_bench.libs,
                "libraries": llama_bench.libraries,
                "seconds": time.perf_counter() - started,
            }
        }
        if args.also_perplexity:
            started = time.perf_counter()
            path = ensure_llama_tool(
                "llama-perplexity", version, cache_dir, sdist_dir=args.sdist_dir, progress=say
            )
            tools["llama-perplexity"] = {
                "path": str(path),
                "seconds": time.perf_counter() - started,
            }

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
        comparisons: list[Comparison] = []
        configs: dict = {}
        for threads in args.threads:
            by_metric, configs[threads] = compare_at(
                threads, llama_bench, model, args, log_dir, say
            )
            comparisons.extend(by_metric)
    except EdgeshrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1

    all_pass = all(
        comp.verdict(args.statistic, args.tolerance) == "PASS" for comp in comparisons
    ) and all((c.get("rss_vs_kernel") or {}).get("ok", True) for c in configs.values())
    if args.json:
        document = {
            "llama_cpp_python": version,
            "tools": tools,
            "model": {"path": str(model), "size_bytes": model_bytes},
            "params": {
                "threads": args.threads,
                "rounds": args.rounds,
                "max_rounds": args.max_rounds,
                "reps": args.reps,
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "flash_attn": args.flash_attn,
                "statistic": args.statistic,
                "tolerance": args.tolerance,
                "max_foreign_load": args.max_foreign_load,
            },
            "configs": configs,
            "logs": str(log_dir),
            "results": [
                {
                    "threads": comp.threads,
                    "metric": comp.metric,
                    "llama_bench": comp.sides()[0].summary(),
                    "agent": comp.sides()[1].summary(),
                    "quiet_rounds": len(comp.llama_bench.rounds),
                    "noisy_rounds": {
                        "llama_bench": comp.noisy_llama_bench.rounds,
                        "agent": comp.noisy_agent.rounds,
                    },
                    "round_ratios": comp.round_ratios(args.statistic),
                    "ratio": comp.ratio(args.statistic),
                    "interval": median_interval(comp.round_ratios(args.statistic))[1:],
                    "result": comp.verdict(args.statistic, args.tolerance),
                }
                for comp in comparisons
            ],
            "all_pass": all_pass,
        }
        print(json.dumps(_rounded(document), indent=2))
    else:
        print(render_table(comparisons, args.statistic, args.tolerance))
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
