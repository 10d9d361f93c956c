"""Several runners, one fleet: two `lab run` processes on one PostgreSQL results database
share a night's run of six real sshd devices.

The two runners stand for two lab hosts (``--lab-host host-a`` / ``host-b``): to each
other they are on another machine, so a dead one is noticed only through its lease
(``--lease``, short here), never through its pid.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from lab_rig import cli_env, device_toml, short_jobs

from edgeshrink.store import ResultStore

DEVICES = 6
LEASE_S = 6.0
SUITE = 'name = "runners"\n[run]\nretries = 1\nretry_delay_s = 0.2\n[cooldown]\nmax_wait_s = 1\n'


@pytest.fixture(scope="module")
def boards(lab_env, rig_module, tmp_path_factory):
    root = tmp_path_factory.mktemp("boards")
    rigs = {}
    try:
        for i in range(1, DEVICES + 1):
            rigs[f"dev{i}"] = rig_module.start_rig(root / f"dev{i}")
        yield rigs
    finally:
        for rig in rigs.values():
            rig_module.stop_rig(rig)


@pytest.fixture
def night(boards, nano_model, postgres_server, lab_env, tmp_path):
    """Files for one night and a new PostgreSQL database; ``reach`` gives each device's
    reachable_from (None: every host)."""
    db = postgres_server.create_database(f"runners_{uuid.uuid4().hex[:8]}")
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE + short_jobs(nano_model))

    def inventory(reach: dict[str, list[str]]) -> Path:
        path = tmp_path / "lab.toml"
        text = ""
        for name, rig in boards.items():
            text += device_toml(name, rig)
            if name in reach:
                text = text.rstrip("\n") + f"\nreachable_from = {reach[name]!r}\n\n".replace(
                    "'", '"'
                )
        path.write_text(text)
        return path

    return db, suite, inventory, tmp_path


def runner(env, inventory: Path, suite: Path, host: str, work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeshrink", "lab", "run", "-i", str(inventory), "-s", str(suite),
         "--lab-host", host, "--lease", str(LEASE_S), "--artifacts-dir", str(work / f"art-{host}")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def wait_for(db: str, sql: str, timeout_s: float = 120.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with ResultStore(db) as store:
            rows = store.query(sql)
        if rows and rows[0][0]:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {sql}")


def check_every_job_ran_once_and_never_overlapped(db: str) -> list:
    with ResultStore(db) as store:
        jobs = store.query(
            "SELECT j.device, j.job, j.status, j.result_status, j.started_at, j.finished_at,"
            " j.runner, j.result_id, r.target FROM lab_jobs j LEFT JOIN results r"
            " ON r.id = j.result_id ORDER BY j.device, j.started_at"
        )
        results = store.query("SELECT COUNT(*) FROM results")[0][0]
        runs = store.query("SELECT id, status FROM lab_runs")
    assert [r["status"] for r in runs] == ["finished"]  # one run, shared, and finished
    assert len(jobs) == DEVICES * 2
    assert {(j["device"], j["job"]) for j in jobs} == {
        (f"dev{i}", job) for i in range(1, DEVICES + 1) for job in ("first", "second")
    }
    assert all(j["status"] == "done" and j["result_status"] == "ok" for j in jobs), jobs
    assert all(j["target"] == j["device"] for j in jobs)  # its own result, on that device
    assert results == len(jobs) == len({j["result_id"] for j in jobs})  # measured once each
    for device in {j["device"] for j in jobs}:
        spans = [(j["started_at"], j["finished_at"]) for j in jobs if j["device"] == device]
        for (_s1, end), (begin, _e2) in zip(spans, spans[1:], strict=False):
            assert end <= begin, f"two benchmarks overlapped on {device}: {spans}"
    return jobs


def test_two_runners_share_a_night_and_each_board_goes_to_a_host_that_reaches_it(night, lab_env):
    db, suite, inventory, work = night
    env = cli_env(lab_env, db)
    # dev1 and dev2 hang off host A, dev3 and dev4 off host B; either reaches dev5 and dev6.
    reach = {"dev1": ["host-a"], "dev2": ["host-a"], "dev3": ["host-b"], "dev4": ["host-b"]}
    inv = inventory(reach)
    a = runner(env, inv, suite, "host-a", work)
    b = runner(env, inv, suite, "host-b", work)
    out_a, err_a = a.communicate(timeout=600)
    out_b, err_b = b.communicate(timeout=600)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    jobs = check_every_job_ran_once_and_never_overlapped(db)
    by_host = {(j["device"], j["runner"].split(":")[0]) for j in jobs}
    for device, host in (
        ("dev1", "host-a"),
        ("dev2", "host-a"),
        ("dev3", "host-b"),
        ("dev4", "host-b"),
    ):
        assert (device, host) in by_host and len({h for d, h in by_host if d == device}) == 1
    assert "(joined)" in out_a + out_b  # one of them started the run, the other joined it
    with ResultStore(db) as store:
        hosts = {
            r["host"]: r["status"] for r in store.query("SELECT host, status FROM lab_runners")
        }
    assert hosts == {"host-a": "left", "host-b": "left"}
    status = subprocess.run([sys.executable, "-m", "edgeshrink", "lab", "status", "1"],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "host-a" in status.stdout and "host-b" in status.stdout
    assert "lab:***@" not in status.stdout and "lab:" not in status.stdout.replace("lab-", "")


def test_a_runner_killed_mid_night_leaves_the_other_to_finish_after_its_lease(night, lab_env):
    db, suite, inventory, work = night
    env = cli_env(lab_env, db)
    inv = inventory({})  # both hosts reach every device
    a = runner(env, inv, suite, "host-a", work)
    b = None
    try:
        # A takes every board; B joins and waits as a standby for them.
        wait_for(db, "SELECT COUNT(*) FROM lab_locks WHERE owner LIKE 'host-a:%'")
        b = runner(env, inv, suite, "host-b", work)
        wait_for(db, "SELECT COUNT(*) FROM lab_runners WHERE host = 'host-b'")
        # Mid-night: some jobs done, some claimed by A and running.
        wait_for(db, "SELECT COUNT(*) >= 3 FROM lab_jobs WHERE status = 'done'")
        wait_for(
            db, "SELECT COUNT(*) FROM lab_jobs WHERE status = 'running' AND runner LIKE 'host-a:%'"
        )
        a.send_signal(signal.SIGKILL)
        killed_at = time.time()
        a.wait(timeout=30)
        with ResultStore(db) as store:
            held = {r["device"] for r in store.query(
                "SELECT device FROM lab_jobs WHERE status = 'running' AND runner LIKE 'host-a:%'")}  # fmt: skip
            done_by_a = store.query("SELECT COUNT(*) FROM lab_jobs WHERE status = 'done'")[0][0]
        assert held and done_by_a < DEVICES * 2
        out_b, err_b = b.communicate(timeout=600)
        assert b.returncode == 0, err_b
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
    jobs = check_every_job_ran_once_and_never_overlapped(db)
    taken_over = [j for j in jobs if j["device"] in held and j["runner"].startswith("host-b:")]
    assert taken_over, jobs
    # B started A's claimed jobs only once A's lease had passed (its last heartbeat came
    # at most a quarter of a lease before the kill).
    first_start = min(datetime.fromisoformat(j["started_at"]).timestamp() for j in taken_over)
    assert first_start >= killed_at + 0.7 * LEASE_S, (first_start - killed_at, LEASE_S)
    with ResultStore(db) as store:
        runners = {
            r["host"]: r["status"] for r in store.query("SELECT host, status FROM lab_runners")
        }
    assert runners == {"host-a": "running", "host-b": "left"}  # A never left: it died
    assert "run 1 finished (joined)" in out_b


def test_a_device_only_another_host_reaches_waits_for_that_host(night, lab_env):
    db, suite, inventory, work = night
    env = cli_env(lab_env, db)
    inv = inventory({"dev1": ["host-b"]})
    a = runner(env, inv, suite, "host-a", work)
    out_a, err_a = a.communicate(timeout=600)
    assert a.returncode == 0, err_a  # it did all it may do, and nothing failed
    assert "left to other lab hosts: dev1" in err_a
    assert (
        "run 1 running in" in out_a
        and "2 job(s) left to other runners or lab hosts (dev1)" in out_a
    )
    with ResultStore(db) as store:
        assert store.query("SELECT status FROM lab_runs")[0][0] == "running"
    # Host B comes later the same night: it joins the run and does what only it reaches.
    b = runner(env, inv, suite, "host-b", work)
    out_b, err_b = b.communicate(timeout=600)
    assert b.returncode == 0, err_b
    assert "run 1 finished (joined)" in out_b
    jobs = check_every_job_ran_once_and_never_overlapped(db)
    assert {j["runner"].split(":")[0] for j in jobs if j["device"] == "dev1"} == {"host-b"}
    assert {j["runner"].split(":")[0] for j in jobs if j["device"] != "dev1"} == {"host-a"}


def test_a_runner_that_cannot_connect_leaves_the_devices_to_one_that_can(
    night, lab_env, tmp_path_factory
):
    """Host A's SSH reaches no board here (its ~/.ssh/config sends every connection to a
    proxy that fails after 3 s): it learns that, and hands each board to host B."""
    db, suite, inventory, work = night
    inv = inventory({})
    home_a = tmp_path_factory.mktemp("home-a")
    for sub in ("config", "cache", "data", ".ssh"):
        (home_a / sub).mkdir()
    (home_a / ".ssh" / "config").write_text(
        "Host 127.0.0.1\n  ProxyCommand sh -c 'sleep 3; exit 1'\n"
    )
    a = runner(cli_env(home_a, db), inv, suite, "host-a", work)
    b = None
    try:
        wait_for(db, f"SELECT COUNT(*) = {DEVICES} FROM lab_locks WHERE owner LIKE 'host-a:%'")
        b = runner(cli_env(lab_env, db), inv, suite, "host-b", work)
        out_b, err_b = b.communicate(timeout=600)
        out_a, err_a = a.communicate(timeout=600)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    assert err_a.count("host-a cannot reach it") == DEVICES and "left to the other runner" in err_a
    jobs = check_every_job_ran_once_and_never_overlapped(db)
    assert {j["runner"].split(":")[0] for j in jobs} == {"host-b"}
    with ResultStore(db) as store:
        unreachable = store.query("SELECT device, host FROM lab_unreachable ORDER BY device")
    assert [(r["device"], r["host"]) for r in unreachable] == [
        (f"dev{i}", "host-a") for i in range(1, DEVICES + 1)
    ]
