"""Six nights of a lab of four real sshd devices, then compare, report and status as a user runs them.

Each device is a "board" of fixed capacity: a cgroup CPU quota of 45% of one
core around its sshd (1.6 cores for the four, on this 2-core machine), so the
devices do not slow each other down any more than boards in a rack do.
``dev-a`` is cut to 5% of a core for its benchmark on night 6 (the injected
slowdown); ``dev-mem`` has a cgroup memory limit; ``dev-slow`` gets 25%
every night (slow, but steadily so); ``dev-gone`` has two jobs and on night 6
its sshd and everything under it are killed after its first.  Nights 1-5
change nothing: their noise must not be flagged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab_rig import CPU_CGROUP_PREFIX, CpuGroup, cli_env, cpu_cgroup_root, device_toml, kill_device

NIGHTS = 6
SLOW_NIGHT = 6
BOARD_SHARE = 0.45  # of one core, per device
SUITE = """
name = "lab-test"

[run]
retries = 2
retry_delay_s = 0.3
timeout_s = 120

[cooldown]
max_wait_s = 5

[regression]
baseline = "last-5-nights"
# The "devices" are processes on one shared 2-core VM, with other test runs
# beside them: with nothing changed, a night measured up to 1.9x slower than
# its baseline here, which boards in a rack do not do.  So here a change must
# be 2.5x worse to count (the default, 0.10, is for real boards); the slowdown
# injected on night 6 (5% of a core) measured 6.7x to 11.8x.
threshold = 1.5
min_baseline_runs = 3

[[job]]
name = "gen"
model = "{model}"
quant = "Q8_0"
[job.bench]
prompt_tokens = 256
gen_tokens = 64
reps = 8
threads = 1
[job.quality]
max_kld = 0.05
eval_ctx = 64
eval_chunks = 2

[[job]]
name = "second"
model = "{model}"
quant = "Q8_0"
tags = ["two-jobs"]
[job.bench]
prompt_tokens = 256
gen_tokens = 64
reps = 5
threads = 1
"""


@dataclass
class Fleet:
    root: Path
    db: Path
    home: Path
    inventory: Path
    suite: Path
    outcomes: list
    events: list
    cpu_groups: bool
    memory_limit_mb: int | None


@pytest.fixture(scope="module")
def fleet(lab_env, rig_module, nano_model, tmp_path_factory):
    from edgeshrink.lab import load_inventory, load_suite, run_lab

    root = tmp_path_factory.mktemp("fleet")
    cpu_root = cpu_cgroup_root()
    memory_mb = None if rig_module.memory_cgroup_problem() else 384
    rigs, groups = {}, {}
    try:
        rigs["dev-a"] = rig_module.start_rig(root / "dev-a")
        rigs["dev-mem"] = rig_module.start_rig(root / "dev-mem", memory_limit_mb=memory_mb)
        rigs["dev-slow"] = rig_module.start_rig(root / "dev-slow")
        rigs["dev-gone"] = rig_module.start_rig(root / "dev-gone")
        if cpu_root is not None:
            for name, rig in rigs.items():
                groups[name] = CpuGroup(cpu_root, f"{CPU_CGROUP_PREFIX}{os.getpid()}-{name}")
                groups[name].add(rig.sshd_pid)
                groups[name].limit(BOARD_SHARE, period_us=2500)
            groups["dev-slow"].limit(0.25, period_us=4000)
        inventory = root / "lab.toml"
        inventory.write_text(
            "".join(
                device_toml(name, rig, tags=("two-jobs",) if name == "dev-gone" else ("rack-1",))
                for name, rig in rigs.items()
            )
        )
        suite = root / "suite.toml"
        suite.write_text(SUITE.replace("{model}", str(nano_model)))
        db = lab_env / "results.db"
        outcomes, events = [], []
        for night in range(1, NIGHTS + 1):

            def progress(event, night=night):
                events.append((night, event))
                if night != SLOW_NIGHT:
                    return
                if event.kind == "job-done" and (event.device, event.job) == ("dev-gone", "gen"):
                    kill_device(rigs["dev-gone"])
                if event.kind == "bench" and event.device == "dev-a" and "dev-a" in groups:
                    groups["dev-a"].limit(0.05, period_us=20000)

            outcomes.append(
                run_lab(
                    load_inventory(inventory),
                    load_suite(suite),
                    db=db,
                    progress=progress,
                    artifacts_dir=root / "artifacts",
                )  # fmt: skip
            )
        yield Fleet(root, db, lab_env, inventory, suite, outcomes, events, bool(groups), memory_mb)
    finally:
        for rig in rigs.values():
            rig_module.stop_rig(rig)
        for group in groups.values():
            group.remove()


def edgeshrink(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeshrink", *args], capture_output=True, text=True,
        env=cli_env(fleet.home, fleet.db), cwd=fleet.root, timeout=300,
    )  # fmt: skip


def jobs_of(fleet: Fleet, night: int) -> dict[tuple[str, str], object]:
    return {(j.device, j.job): j for j in fleet.outcomes[night - 1].jobs}


def test_unchanged_nights_finish_with_every_figure_stored_and_traceable(fleet):
    for night in range(1, SLOW_NIGHT):
        outcome = fleet.outcomes[night - 1]
        assert outcome.status == "finished" and outcome.ok, [
            (j.device, j.job, j.status, j.error) for j in outcome.jobs
        ]
        assert sorted(jobs_of(fleet, night)) == [
            ("dev-a", "gen"), ("dev-gone", "gen"), ("dev-gone", "second"), ("dev-mem", "gen"),
            ("dev-slow", "gen"),
        ]  # fmt: skip
    db = sqlite3.connect(fleet.db)
    db.row_factory = sqlite3.Row
    # Every lab job points at its result, its device snapshot and its build.
    rows = db.execute(
        "SELECT j.*, r.status AS r_status, r.target, r.artifact_sha256 AS r_sha, r.document,"
        " s.os, s.python AS s_python, s.runtimes, s.memory_limit_mb, b.artifact_sha256 AS b_sha,"
        " b.reused, b.kld_mean FROM lab_jobs j JOIN results r ON r.id = j.result_id"
        " JOIN lab_snapshots s ON s.id = j.snapshot_id"
        " JOIN lab_builds b ON b.run_id = j.run_id AND b.job = j.job AND b.build_key = j.build_key"
        " WHERE j.run_id = ?",
        (fleet.outcomes[0].run_id,),
    ).fetchall()
    assert len(rows) == 5
    for row in rows:
        assert row["r_status"] == "ok" and row["target"] == row["device"]
        assert row["r_sha"] == row["b_sha"] and row["os"] and row["s_python"]
        assert "llama_cpp" in json.loads(row["runtimes"])
        doc = json.loads(row["document"])
        # The rig has no thermal zone: said so, in the result and in the cool-down record.
        assert any(u["what"] == "device.temps_c" for u in doc["unmeasured"])
        assert json.loads(row["cooldown"])["status"] == "not readable"
        assert "temp_c" in json.loads(row["context"]) and "cpu_mhz" in json.loads(row["context"])
        assert len(json.loads(row["samples"])["tg_tok_s"]) == (8 if row["job"] == "gen" else 5)
        if row["job"] == "gen":
            assert row["kld_mean"] is not None  # the quality check ran on the host
            # ... and on the device, in the job's own run, recorded as a metric of the job
            assert doc["quality"]["kld_mean"]["value"] == pytest.approx(row["kld_mean"], rel=0.05)
            assert (
                json.loads(row["metrics"])["device_kld_mean"] == doc["quality"]["kld_mean"]["value"]
            )
        if row["device"] == "dev-mem" and fleet.memory_limit_mb:
            assert row["memory_limit_mb"] == pytest.approx(fleet.memory_limit_mb)
    # Built once, on the first night; every later night reuses the same bytes.
    builds = db.execute(
        "SELECT run_id, reused, artifact_sha256 FROM lab_builds WHERE job = 'gen'"
    ).fetchall()
    assert len({b["artifact_sha256"] for b in builds}) == 1
    assert [b["reused"] for b in builds if b["run_id"] != fleet.outcomes[0].run_id] == [1] * (
        NIGHTS - 1
    )


def test_devices_run_concurrently_and_jobs_on_one_device_one_at_a_time(fleet):
    db = sqlite3.connect(fleet.db)
    for outcome in fleet.outcomes:
        spans = db.execute(
            "SELECT device, started_at, finished_at FROM lab_jobs WHERE run_id = ? AND started_at IS NOT NULL"
            " ORDER BY started_at", (outcome.run_id,),
        ).fetchall()  # fmt: skip
        by_device: dict[str, list] = {}
        for device, start, end in spans:
            by_device.setdefault(device, []).append((start, end))
        for device, runs in by_device.items():
            for (_s1, e1), (s2, _e2) in zip(runs, runs[1:], strict=False):
                assert e1 <= s2, f"two jobs overlapped on {device}"
    # Concurrency: the whole night takes far less than its devices' times added up.
    night = fleet.outcomes[0]
    assert night.seconds < 0.8 * sum(d.seconds for d in night.devices)


def test_a_device_that_goes_away_is_retried_then_failed_while_the_others_finish(fleet):
    night = fleet.outcomes[SLOW_NIGHT - 1]
    jobs = jobs_of(fleet, SLOW_NIGHT)
    assert night.status == "finished" and not night.ok
    assert jobs[("dev-gone", "gen")].ok  # measured before it went away
    gone = jobs[("dev-gone", "second")]
    assert gone.status == "failed" and gone.error.startswith("device failed after 3 attempt(s)")
    for device in ("dev-a", "dev-mem", "dev-slow"):
        assert jobs[(device, "gen")].ok, jobs[(device, "gen")].error
    retries = [e for n, e in fleet.events if n == SLOW_NIGHT and e.kind == "retry"]
    assert [e.device for e in retries] == ["dev-gone", "dev-gone"]
    outcome = {d.name: d for d in night.devices}
    assert outcome["dev-gone"].status == "failed" and outcome["dev-a"].status == "ok"


def test_the_noise_of_unchanged_nights_is_not_flagged(fleet):
    from edgeshrink.lab import compare

    judged = 0
    for night in range(2, SLOW_NIGHT):
        comp = compare(fleet.db, run_id=fleet.outcomes[night - 1].run_id)
        assert comp.regressions == [], [f.message for f in comp.regressions]
        judged += sum(1 for f in comp.findings if f.verdict in ("unchanged", "not significant"))
    assert judged > 0  # nights 4 and 5 have enough baseline nights to be judged


def test_the_injected_slowdown_and_the_new_failure_are_flagged(fleet, tmp_path):
    if not fleet.cpu_groups:
        pytest.skip("no writable cgroup v1 cpu controller here to slow a device down")
    junit = tmp_path / "lab.xml"
    out = edgeshrink(fleet, "lab", "compare", "--baseline", "last-5-nights", "--junit", str(junit))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"run {fleet.outcomes[-1].run_id} of suite lab-test" in out.stdout
    lines = out.stdout.splitlines()
    flagged = {
        tuple(line.split()[1:4]) for line in lines if line.startswith(("regressed", "new-failure"))
    }
    assert ("dev-a", "gen", "tg_tok_s") in flagged or ("dev-a", "gen", "pp_tok_s") in flagged, (
        out.stdout
    )
    assert ("dev-gone", "second", "status") in flagged
    assert not any(dev in ("dev-slow", "dev-mem") for dev, _job, _m in flagged), out.stdout
    assert "nothing recorded changed" in out.stdout  # the software is the same: look at the board
    suites = ET.parse(junit).getroot()
    failed = {
        (c.get("classname"), c.get("name"))
        for c in suites.iter("testcase")
        if c.find("failure") is not None
    }
    assert ("lab.dev-gone.second", "status") in failed
    assert any(cls == "lab.dev-a.gen" for cls, _name in failed)
    assert int(suites.get("failures")) == len(failed)


def test_compare_json_and_status(fleet):
    out = edgeshrink(fleet, "lab", "compare", "--run", str(fleet.outcomes[4].run_id), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["regressed"] == 0 and len(doc["baseline_runs"]) == 4
    status = edgeshrink(fleet, "lab", "status")
    assert status.returncode == 0 and status.stdout.count("lab-test") == NIGHTS
    one = edgeshrink(fleet, "lab", "status", str(fleet.outcomes[-1].run_id))
    assert one.returncode == 0
    assert "dev-gone  failed" in one.stdout and "device failed after 3 attempt(s)" in one.stdout


def test_markdown_report(fleet):
    out = edgeshrink(fleet, "lab", "report", "--since", "1d", "--format", "markdown")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"# Device lab: lab-test — run #{fleet.outcomes[-1].run_id}")
    assert "## Failed" in out.stdout and "dev-gone" in out.stdout
    if fleet.cpu_groups:
        assert "## Regressed" in out.stdout and "| dev-a | gen |" in out.stdout
    assert (
        "## Trends" in out.stdout and "✗" in out.stdout
    )  # dev-gone's failed night in its sparkline
    # The newest value of a job whose newest run failed is that failure, not the last good
    # figure; and the table has more than generation speed.
    ended_failed = [line for line in out.stdout.splitlines() if re.search(r"✗` (⚠ )?\|", line)]
    assert ended_failed, out.stdout
    assert all("| ✗ failed |" in line for line in ended_failed), ended_failed
    assert "| dev-a | gen | prompt processing |" in out.stdout


# --------------------------------------------------------------------------- HTML in Chromium


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def run_chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         *args, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def png_pixels(path: Path) -> tuple[int, int, int, bytearray]:
    """Width, height, bytes per pixel and the unfiltered pixel bytes of an 8-bit PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, bytearray(), 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            depth, color, interlace = body[8], body[9], body[12]
            assert depth == 8 and color in (2, 6) and interlace == 0
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        ftype, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return width, height, bpp, out


def test_html_report_renders_in_headless_chromium(fleet, tmp_path):
    if chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    page = tmp_path / "report.html"
    out = edgeshrink(fleet, "lab", "report", "--since", "1d", "-o", str(page))
    assert out.returncode == 0, out.stderr
    assert f"wrote {page}" in out.stdout
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "<script" not in html

    dom = run_chromium(page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    assert (
        'id="summary"' in rendered and rendered.count("<svg") >= 4 * 4
    )  # 4 devices x 4 metrics at least
    assert (
        'data-device="dev-gone"' in rendered and 'class="failed"' in rendered
    )  # its failed night: a red x
    if fleet.cpu_groups:
        box = rendered[rendered.index('id="regressed"') : rendered.index('id="failed"')]
        assert "dev-a / gen" in box
        assert 'class="trend regressed"' in rendered and 'class="point regressed"' in rendered

    shot = tmp_path / "top.png"
    done = run_chromium(page, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1000,420",
                        "--hide-scrollbars")  # fmt: skip
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    width, height, bpp, pixels = png_pixels(shot)
    assert (width, height) == (1000, 420)
    red = sum(
        1 for i in range(0, len(pixels), bpp)
        if pixels[i] > 170 and pixels[i + 1] < 80 and pixels[i + 2] < 90
    )  # fmt: skip
    # The regressed box (red border, red count) is at the top of the page.
    assert red > 300 if fleet.cpu_groups else red >= 0


def test_status_shows_the_median_that_compare_judges(fleet):
    """Before: `lab status` showed the mean of the repetitions and `lab compare` the median,
    both unlabelled, so the same job read two different speeds."""
    run_id = fleet.outcomes[4].run_id
    doc = json.loads(
        edgeshrink(fleet, "lab", "compare", "--run", str(run_id), "--all", "--json").stdout
    )
    now = {
        (f["device"], f["job"]): f["current"]
        for f in doc["findings"]
        if f["metric"] == "tg_tok_s" and f["current"] is not None
    }
    assert now, doc["findings"]
    status = edgeshrink(fleet, "lab", "status", str(run_id))
    assert status.returncode == 0, status.stderr
    assert "tok/s: median of the job's repetitions" in status.stdout
    lines = status.stdout.splitlines()
    header = next(line for line in lines if line.startswith("DEVICE") and "TG TOK/S" in line)
    column = header.index("TG TOK/S")
    checked = 0
    for (device, job), current in now.items():
        row = next(line for line in lines if line.split()[:2] == [device, job])
        shown = float(row[column - 4 : column + len("TG TOK/S")].split()[-1].replace(",", ""))
        assert shown == pytest.approx(current, abs=0.06), (row, current)
        checked += 1
    assert checked
    compare = edgeshrink(fleet, "lab", "compare", "--run", str(run_id), "--all")
    assert "NOW is the median of this run's repetitions" in compare.stdout


def test_compare_and_report_on_postgresql_match_sqlite_for_the_same_history(fleet, postgres_url):
    """The six nights copied into PostgreSQL with `store copy` (verified): every night's
    comparison, and the report, are the same on both engines."""
    from edgeshrink.lab import compare
    from edgeshrink.lab.reporting import build_report

    copied = edgeshrink(fleet, "store", "copy", str(fleet.db), postgres_url, "--json")
    assert copied.returncode == 0, copied.stderr
    doc = json.loads(copied.stdout)
    assert doc["verified"] and doc["copied"] > 0 and ":***@" in doc["destination"]
    for outcome in fleet.outcomes:
        on_sqlite = compare(fleet.db, run_id=outcome.run_id).to_dict()
        assert compare(postgres_url, run_id=outcome.run_id).to_dict() == on_sqlite
    lite = edgeshrink(fleet, "lab", "compare", "--json")
    pg = edgeshrink(fleet, "lab", "compare", "--json", "--db", postgres_url)
    assert (pg.returncode, pg.stdout) == (lite.returncode, lite.stdout)
    assert lite.stdout.count('"verdict"') > 10
    reports = [build_report(db, since="1d").to_dict() for db in (fleet.db, postgres_url)]
    for report in reports:
        report.pop("generated_at"), report.pop("db")
    assert reports[0] == reports[1]
