#!/usr/bin/env python3
"""Benchmark the HF -> GGUF converter on a generated ~1 GB llama-style checkpoint.

Makes a BF16 (or F16) checkpoint of random weights, streamed to disk tensor by
tensor (two shards, with an index), then alternates a plain file copy of the
same bytes (shutil.copyfile) with a conversion (outtype "auto", so BF16 stays
BF16) run in a child process, and prints:

- wall time of each and the conversion/copy ratio in three modes:
  "cached": the source in the page cache, until the output is in the page cache;
  "synced": the same, until os.sync() has put the output on disk;
  "cold":   the source evicted from the page cache first (clean after a sync,
            then posix_fadvise DONTNEED, checked with fincore), until on disk.
  The target (ratio <= 1.2) assumes, as the issue says, an I/O-bound
  conversion: it is judged on "cold".  "cached" shows the fixed cost a Python
  converter pays that a copy does not (interpreter, numpy and gguf imports,
  metadata: about 0.2 s here), which a 1 GB copy from memory (~0.3 s) cannot hide;
- the conversion child's peak RSS (VmHWM: its whole life, interpreter and
  imports included) against the target 1.5 x largest tensor + 300 MB.

Every timed step starts with os.sync() (no dirty pages left over from the step
before to throttle it); copy and conversion read the same files and write into
the same directory, and the rounds interleave.  Exit status 1 if a target is
missed.

    python scripts/bench_convert.py [--size-mb 1024] [--rounds 3] [--dtype bf16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024

CHILD = r"""
import json, sys
from edgeshrink.convert import convert_hf_to_gguf
result = convert_hf_to_gguf(sys.argv[1], sys.argv[2], outtype="auto")
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"seconds": result.seconds, "vmhwm_mb": hwm / 1024,
                  "result_peak_rss_mb": result.peak_rss_mb, "outtype": result.outtype,
                  "size_bytes": result.size_bytes, "n_tensors": result.n_tensors}))
"""


def llama_shape(size_mb: int) -> dict[str, int]:
    """A Llama-2-like shape whose 16-bit weights come to about ``size_mb``."""
    n_embd, n_head, n_head_kv, n_ff, n_vocab = 2048, 32, 8, 5632, 32000
    head_dim = n_embd // n_head
    per_layer = 2 * (2 * n_embd * n_embd + 2 * n_embd * n_head_kv * head_dim + 3 * n_embd * n_ff)
    embeddings = 2 * 2 * n_vocab * n_embd  # token_embd + lm_head
    n_layer = max(1, round((size_mb * MIB - embeddings) / per_layer))
    return {
        "n_embd": n_embd,
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "n_ff": n_ff,
        "n_vocab": n_vocab,
        "n_layer": n_layer,
    }


def make_checkpoint(directory: Path, shape: dict[str, int], dtype: str) -> tuple[int, int]:
    """Write config, tokenizer and random 16-bit weights; return (total bytes, largest tensor)."""
    import numpy as np

    from edgeshrink.testmodels.hf_checkpoints import make_tokenizer, write_safetensors

    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer("spm-legacy", directory, 400)
    e, hd = shape["n_embd"], shape["n_embd"] // shape["n_head"]
    kv, ff, v = shape["n_head_kv"] * hd, shape["n_ff"], shape["n_vocab"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": e,
        "intermediate_size": ff,
        "num_hidden_layers": shape["n_layer"],
        "num_attention_heads": shape["n_head"],
        "num_key_value_heads": shape["n_head_kv"],
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "vocab_size": v,
        "tie_word_embeddings": False,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16"}[dtype],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    plan = [("model.embed_tokens.weight", (v, e))]
    for i in range(shape["n_layer"]):
        p = f"model.layers.{i}."
        plan += [
            (p + "input_layernorm.weight", (e,)),
            (p + "self_attn.q_proj.weight", (e, e)),
            (p + "self_attn.k_proj.weight", (kv, e)),
            (p + "self_attn.v_proj.weight", (kv, e)),
            (p + "self_attn.o_proj.weight", (e, e)),
            (p + "post_attention_layernorm.weight", (e,)),
            (p + "mlp.gate_proj.weight", (ff, e)),
            (p + "mlp.up_proj.weight", (ff, e)),
            (p + "mlp.down_proj.weight", (e, ff)),
        ]
    plan += [("model.norm.weight", (e,)), ("lm_head.weight", (v, e))]
    rng = np.random.default_rng(0)
    st_dtype = {"bf16": "BF16", "f16": "F16"}[dtype]
    # Small random values as raw 16-bit patterns: exponent near 2^-7, random sign and mantissa.
    base = 0x3C00 if dtype == "bf16" else 0x2000

    def data(shape_: tuple[int, ...]) -> np.ndarray:
        bits = rng.integers(0, 0x0100, size=shape_, dtype=np.uint16) + np.uint16(base)
        bits |= rng.integers(0, 2, size=shape_, dtype=np.uint16) << np.uint16(15)
        return bits if dtype == "bf16" else bits.view(np.float16)

    half = len(plan) // 2
    weight_map = {}
    for index, part in enumerate((plan[:half], plan[half:])):
        fname = f"model-{index + 1:05d}-of-00002.safetensors"
        specs = [(name, st_dtype, s) for name, s in part]
        write_safetensors(directory / fname, specs, (data(s) for _, s in part), {"format": "pt"})
        weight_map.update({name: fname for name, _ in part})
    sizes = [2 * int(np.prod(s)) for _, s in plan]
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map})
    )
    return sum(sizes), max(sizes)


def evict(directory: Path) -> bool | None:
    """Drop the directory's files from the page cache (they are clean after os.sync(), and
    POSIX_FADV_DONTNEED then evicts them): the next read comes from the disk.  True when
    fincore confirms it, None when fincore is missing."""
    paths = sorted(p for p in directory.iterdir() if p.is_file())
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    resident = [int(x) for x in out.stdout.split() if x.isdigit()]
    return out.returncode == 0 and sum(resident) < 64 * MIB


def timed(step, src: Path, cold: bool) -> tuple[float, float, object, bool | None]:
    """(seconds until the step returned, seconds until os.sync() returned, its result,
    whether ``src`` was confirmed evicted first: None when not cold or unknown)."""
    os.sync()  # no dirty pages left over from the step before to throttle this one
    evicted = evict(src) if cold else None
    started = time.perf_counter()
    result = step()
    cached = time.perf_counter() - started
    os.sync()
    return cached, time.perf_counter() - started, result, evicted


def copy_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.safetensors")):
        shutil.copyfile(path, dst / path.name)


def convert_in_child(src: Path, dst: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(dst)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"conversion failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# What each figure measures: (source in the page cache?, until synced to disk?).
MODES = {
    "cached": "source in the page cache, until the output is in the page cache",
    "synced": "source in the page cache, until the output is on disk",
    "cold": "source evicted from the page cache, until the output is on disk (I/O bound)",
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("bf16", "f16"), default="bf16")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.workdir))
    ckpt, copy_dir, out = work / "ckpt", work / "copy", work / "out.gguf"
    try:
        shape = llama_shape(args.size_mb)
        started = time.perf_counter()
        total, largest = make_checkpoint(ckpt, shape, args.dtype)
        made = time.perf_counter() - started
        times: dict[str, dict[str, list[float]]] = {m: {"copy": [], "convert": []} for m in MODES}
        peaks: list[float] = []
        inside: list[float] = []
        child: dict = {}
        evicted: bool | None = None
        for _ in range(args.rounds):
            for cold in (False, True):
                shutil.rmtree(copy_dir, ignore_errors=True)
                c_cached, c_synced, _, c_evicted = timed(
                    lambda: copy_files(ckpt, copy_dir), ckpt, cold
                )
                shutil.rmtree(copy_dir, ignore_errors=True)
                out.unlink(missing_ok=True)
                v_cached, v_synced, child, v_evicted = timed(
                    lambda: convert_in_child(ckpt, out), ckpt, cold
                )
                out.unlink(missing_ok=True)
                if cold:
                    times["cold"]["copy"].append(c_synced)
                    times["cold"]["convert"].append(v_synced)
                    for confirmed in (c_evicted, v_evicted):
                        if confirmed is not None:
                            evicted = confirmed and evicted is not False
                else:
                    times["cached"]["copy"].append(c_cached)
                    times["cached"]["convert"].append(v_cached)
                    times["synced"]["copy"].append(c_synced)
                    times["synced"]["convert"].append(v_synced)
                    peaks.append(child["vmhwm_mb"])
                    inside.append(child["seconds"])
        rss_target = 1.5 * largest / MIB + 300
        ratios = {
            m: statistics.median(t["convert"]) / statistics.median(t["copy"])
            for m, t in times.items()
        }
        report = {
            "checkpoint_mb": round(total / MIB, 1),
            "largest_tensor_mb": round(largest / MIB, 1),
            "n_layer": shape["n_layer"],
            "dtype": args.dtype,
            "generate_s": round(made, 2),
            "modes": MODES,
            "seconds": {
                m: {k: [round(x, 3) for x in v] for k, v in t.items()} for m, t in times.items()
            },
            "convert_inside_s": [round(x, 3) for x in inside],
            "time_ratio": {m: round(r, 2) for m, r in ratios.items()},
            "time_target": 1.2,
            "source_evicted": evicted,
            "peak_rss_mb": round(max(peaks), 1),
            "peak_rss_during_conversion_mb": child["result_peak_rss_mb"],
            "rss_target_mb": round(rss_target, 1),
            "rss_ratio": round(max(peaks) / rss_target, 2),
            "outtype": child["outtype"],
            "gguf_mb": round(child["size_bytes"] / MIB, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # The target's premise is an I/O-bound conversion: judged on "cold"; the others are shown.
    ok = report["time_ratio"]["cold"] <= 1.2 and report["peak_rss_mb"] <= rss_target
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:

        def seconds(values: list[float]) -> str:
            return ", ".join(f"{x:.2f}" for x in values)

        print(
            f"checkpoint {report['checkpoint_mb']} MiB {args.dtype}, {shape['n_layer']} layers, "
            f"largest tensor {report['largest_tensor_mb']} MiB (generated in {made:.1f} s)"
        )
        for mode, what in MODES.items():
            t = report["seconds"][mode]
            print(
                f"{mode:7s} copy {seconds(t['copy'])} s | convert {seconds(t['convert'])} s | "
                f"ratio {report['time_ratio'][mode]:.2f}   ({what})"
            )
        print(
            f"inside convert_hf_to_gguf (imports of numpy/gguf included, interpreter start "
            f"not): {seconds(report['convert_inside_s'])} s; source eviction confirmed: "
            f"{ {True: 'yes', False: 'NO', None: 'unknown (no fincore)'}[evicted] }"
        )
        print(f"time target: cold ratio <= 1.2 -> {report['time_ratio']['cold']:.2f}")
        print(
            f"peak RSS: {report['peak_rss_mb']:.0f} MiB for the whole child "
            f"({report['peak_rss_during_conversion_mb']:.0f} MiB during the conversion itself); "
            f"target {rss_target:.0f} MiB = 1.5 x {largest / MIB:.0f} + 300 "
            f"-> ratio {report['rss_ratio']:.2f}"
        )
        print("OK" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
