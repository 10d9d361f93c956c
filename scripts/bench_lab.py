#!/usr/bin/env python3
"""How much the lab's orchestration costs: 32 rig devices, one short job each.

    python scripts/bench_lab.py [--devices 32] [--reps 1] [--gen-tokens 4] [--postgres]

Starts N real sshd devices (scripts/sshd_rig.py, on 127.0.0.1, no limits),
runs one warm-up night (builds the artifact, pushes it and the agent to every
device), then a measured night, as `edgeshrink lab run` would.  It prints:

    overhead = total wall time of the run / the longest single device's time

"A device's time" is measured inside the run, per device: from the moment its
thread starts until its last job is stored (connect, snapshot, push check,
cool-down, benchmark, store).  1.00 would mean the run costs nothing beyond
its slowest device: building, planning, locking, thread start-up and the
final bookkeeping add the rest.  Target: <= 1.15.

All N devices share this machine's cores, so each device's time is itself
stretched by the others (N agents at once on a few cores).  That is contention
on the test host, not orchestration overhead, and it does not exist in a real
lab where every device is its own board; the script prints it separately: the
longest device time in the lab / the same device's time when it runs alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _rig_module():
    return _load("sshd_rig")


def _device(name: str, rig) -> str:
    return "\n".join([
        "[[device]]", f"name = {json.dumps(name)}", f"host = {json.dumps(rig.host)}", f"port = {rig.port}",
        f"user = {json.dumps(rig.user)}", f"key = {json.dumps(str(rig.client_key))}",
        f"known_hosts = {json.dumps(str(rig.known_hosts))}", f"python = {json.dumps(rig.python)}",
        f"work_dir = {json.dumps(str(rig.work_dir))}", "",
    ]) + "\n"  # fmt: skip


SUITE = """
name = "bench-lab"
[run]
retries = 1
retry_delay_s = 1
[cooldown]
max_wait_s = 0
[[job]]
name = "short"
model = "{model}"
quant = "Q8_0"
[job.bench]
prompt_tokens = 16
gen_tokens = {gen}
reps = {reps}
warmup = 0
threads = 1
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=32, help="how many rig devices")
    parser.add_argument("--reps", type=int, default=1, help="benchmark repetitions per job")
    parser.add_argument("--gen-tokens", type=int, default=4, help="generated tokens per repetition")
    parser.add_argument("--postgres", action="store_true",
                        help="store in a throwaway PostgreSQL server (scripts/pg_rig.py), not SQLite")  # fmt: skip
    args = parser.parse_args(argv)

    rig_module = _rig_module()
    problem = rig_module.sshd_available()
    if problem:
        print(f"bench_lab: {problem}", file=sys.stderr)
        return 1
    from edgeshrink.lab import load_inventory, load_suite, run_lab
    from edgeshrink.testmodels import make_llama_gguf

    root = Path(tempfile.mkdtemp(prefix="edgeshrink-bench-lab-"))
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    rigs = []
    server = None
    try:
        started = time.perf_counter()
        for i in range(args.devices):
            rigs.append(rig_module.start_rig(root / f"dev{i:02d}"))
        print(f"started {len(rigs)} sshd devices in {time.perf_counter() - started:.1f} s")
        model = make_llama_gguf(root / "nano-f32.gguf", size="nano", ftype="f32")
        suite = root / "suite.toml"
        suite.write_text(SUITE.format(model=model, gen=args.gen_tokens, reps=args.reps))
        inventory = root / "lab.toml"
        inventory.write_text("".join(_device(f"dev{i:02d}", r) for i, r in enumerate(rigs)))
        alone = root / "alone.toml"
        alone.write_text(_device("dev00", rigs[0]))
        db: str | Path = root / "results.db"
        if args.postgres:
            pg_rig = _load("pg_rig")
            server = pg_rig.start_postgres(fsync=True)
            db = server.create_database("bench_lab")
            print(f"results in PostgreSQL: {server.url('bench_lab', password='***')}")

        warm = run_lab(load_inventory(inventory), load_suite(suite), db=db)
        print(f"warm-up night (build, first pushes): {warm.seconds:.2f} s, "
              f"{sum(j.ok for j in warm.jobs)}/{len(warm.jobs)} ok")  # fmt: skip
        night = run_lab(load_inventory(inventory), load_suite(suite), db=db)
        single = run_lab(load_inventory(alone), load_suite(suite), db=db)
        ok = sum(j.ok for j in night.jobs)
        device_s = [d.seconds for d in night.devices]
        job_s = [j.seconds for j in night.jobs if j.seconds is not None]
        longest = max(device_s)
        ratio = night.seconds / longest
        alone_s = single.devices[0].seconds
        print(f"measured night: {ok}/{len(night.jobs)} jobs ok, {len(night.devices)} devices")
        print(
            f"  total wall time of the run          {night.seconds:7.2f} s  (build/reuse {night.build_seconds:.2f} s)"
        )
        print(f"  longest device (inside the run)     {longest:7.2f} s")
        print(f"  device times: median {statistics.median(device_s):.2f} s, min {min(device_s):.2f} s; "
              f"job (push+cool-down+bench) median {statistics.median(job_s):.2f} s")  # fmt: skip
        print(
            f"  sum of device times / wall          {sum(device_s) / night.seconds:7.1f}  (devices busy at once)"
        )
        print(f"overhead = wall / longest device      {ratio:7.3f}  (target <= 1.15)")
        print(f"contention on this host               {longest / alone_s:7.1f}x  "
              f"(longest device here {longest:.2f} s / the same device alone {alone_s:.2f} s, "
              f"{os.cpu_count()} cores for {len(rigs)} devices; absent in a real lab)")  # fmt: skip
    finally:
        for rig in rigs:
            rig_module.stop_rig(rig)
        if server is not None:
            pg_rig.stop_postgres(server)
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
