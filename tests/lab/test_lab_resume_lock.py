"""Cool-down, the device lock between two `lab run`s, and resuming a run whose host process died.

One real sshd device.  The rig has no thermal zone, so the inventory points the
device's ``thermal`` at a file the test writes (millidegrees, like sysfs): a
"hot" board holds a run in its cool-down for as long as the test needs.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lab_rig import cli_env, device_toml, short_jobs

SUITE = """
name = "lock-test"
[run]
retries = 1
retry_delay_s = 0.2
[cooldown]
max_temp_c = 60
max_wait_s = {max_wait}
poll_s = 0.3
"""


@pytest.fixture(scope="module")
def board(lab_env, rig_module, tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    rig = rig_module.start_rig(root / "solo")
    try:
        yield rig, root
    finally:
        rig_module.stop_rig(rig)


@pytest.fixture
def lab_files(board, nano_model, tmp_path):
    rig, _root = board
    sensor = tmp_path / "soc_temp"
    sensor.write_text("40000\n")
    inventory = tmp_path / "lab.toml"
    inventory.write_text(device_toml("solo", rig, thermal=str(sensor)))

    def suite(max_wait: float) -> Path:
        path = tmp_path / f"suite-{max_wait:g}.toml"
        path.write_text(SUITE.replace("{max_wait}", str(max_wait)) + short_jobs(nano_model))
        return path

    return inventory, suite, sensor, tmp_path / "results.db"


def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeshrink", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def wait_for(db: Path, sql: str, timeout_s: float = 60.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists():
            try:
                rows = sqlite3.connect(db).execute(sql).fetchall()
            except sqlite3.OperationalError:  # not migrated yet
                rows = []
            if rows:
                return rows
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {sql}")


def test_cool_down_waits_until_the_board_is_under_the_threshold(lab_env, lab_files):
    from edgeshrink.lab import load_inventory, load_suite, run_lab

    inventory, suite, sensor, db = lab_files
    sensor.write_text("72500\n")
    cooled = threading.Timer(1.5, lambda: sensor.write_text("45000\n"))

    def progress(event):
        if event.kind == "push" and event.job == "first":  # the cool-down is next
            cooled.start()

    outcome = run_lab(load_inventory(inventory), load_suite(suite(30)), db=db, progress=progress)
    cooled.join()
    assert outcome.ok
    first, second = sorted(outcome.jobs, key=lambda j: j.id)
    assert first.cooldown["status"] == "cool" and first.cooldown["start_c"] == 72.5
    assert first.cooldown["temp_c"] == 45.0 and first.cooldown["waited_s"] >= 1.0
    assert second.cooldown["status"] == "cool" and second.cooldown["waited_s"] < 1.0
    assert (
        first.temp_before_c == 45.0 and first.context["temp_c"] == 45.0
    )  # recorded with the result


def test_a_second_run_on_the_same_devices_refuses_or_waits(lab_env, lab_files, board):
    """Another suite on the same board: another run, which never shares the board.  (The
    same inventory and suite would join the first run instead: test_lab_runners.py.)"""
    inventory, suite, sensor, db = lab_files
    env = cli_env(lab_env, db)
    sensor.write_text("90000\n")  # hot: run A sits in its cool-downs (2.5 s limit each)
    first = start(env, "lab", "run", "-i", str(inventory), "-s", str(suite(2.5)))
    args = ["lab", "run", "-i", str(inventory), "-s", str(suite(3))]
    try:
        wait_for(db, "SELECT 1 FROM lab_jobs WHERE status = 'running'")
        refused = subprocess.run([sys.executable, "-m", "edgeshrink", *args], capture_output=True,
                                 text=True, env=env, timeout=60)  # fmt: skip
        assert refused.returncode == 1
        rig, _root = board
        assert f"error: solo (ssh:127.0.0.1:{rig.port}) is held by run 1 on " in refused.stderr
        assert f"pid {first.pid}" in refused.stderr and "--lock-wait" in refused.stderr
        waiting = start(env, *args, "--lock-wait", "60")
        out, err = first.communicate(timeout=90)
        assert first.returncode == 0, err
        sensor.write_text("40000\n")
        out2, err2 = waiting.communicate(timeout=90)
        assert waiting.returncode == 0, err2
        assert "waiting up to 60 s for another run: solo" in err2 and "held by run 1" in err2
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    db_rows = (
        sqlite3.connect(db)
        .execute(
            "SELECT run_id, started_at, finished_at, cooldown FROM lab_jobs ORDER BY started_at"
        )
        .fetchall()
    )
    runs = [r[0] for r in db_rows]
    assert sorted(set(runs)) == [1, 2] and runs == sorted(runs)  # no interleaving
    last_of_first = max(r[2] for r in db_rows if r[0] == 1)
    assert min(r[1] for r in db_rows if r[0] == 2) >= last_of_first
    timed_out = json.loads(db_rows[0][3])
    assert (
        timed_out["status"] == "timeout"
        and timed_out["temp_c"] == 90.0
        and timed_out["waited_s"] >= 2.5
    )


def test_resume_runs_only_what_the_dead_run_left_undone(lab_env, lab_files):
    inventory, suite, sensor, db = lab_files
    env = cli_env(lab_env, db)
    suite_file = suite(60)
    run = start(env, "lab", "run", "-i", str(inventory), "-s", str(suite_file))
    try:
        wait_for(db, "SELECT 1 FROM lab_jobs WHERE job = 'first' AND status = 'done'")
        sensor.write_text("90000\n")  # the second job waits in its cool-down...
        wait_for(db, "SELECT 1 FROM lab_jobs WHERE job = 'second' AND status = 'running'")
        run.send_signal(signal.SIGKILL)  # ...when the host process dies
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    con = sqlite3.connect(db)
    (run_id,) = con.execute("SELECT id FROM lab_runs").fetchone()
    first_result = con.execute("SELECT result_id FROM lab_jobs WHERE job = 'first'").fetchone()[0]
    status = subprocess.run([sys.executable, "-m", "edgeshrink", "lab", "status"], capture_output=True,
                            text=True, env=env, timeout=60)  # fmt: skip
    assert "running (stale)" in status.stdout

    changed = suite_file.read_text().replace("reps = 2", "reps = 3", 1)
    other = suite_file.with_name("changed.toml")
    other.write_text(changed)
    mismatch = subprocess.run(
        [sys.executable, "-m", "edgeshrink", "lab", "run", "--resume", str(run_id), "-s", str(other)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert (
        mismatch.returncode == 1
        and f"is not the one run {run_id} was started with" in mismatch.stderr
    )

    sensor.write_text("40000\n")
    resumed = subprocess.run(
        [sys.executable, "-m", "edgeshrink", "lab", "run", "--resume", str(run_id)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"run {run_id} finished (resumed)" in resumed.stdout and "1 job(s) to do" in resumed.stderr
    )
    rows = con.execute("SELECT job, status, result_id FROM lab_jobs ORDER BY id").fetchall()
    assert [(job, status) for job, status, _ in rows] == [("first", "done"), ("second", "done")]
    assert rows[0][2] == first_result  # not measured again
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2
    assert con.execute("SELECT status, resumes FROM lab_runs").fetchone() == ("finished", 1)
    assert con.execute("SELECT COUNT(*) FROM lab_locks").fetchone()[0] == 0
