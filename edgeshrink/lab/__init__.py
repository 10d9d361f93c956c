"""The device lab: the same jobs on a fleet of devices every night, history, regressions.

    config.py   inventory (devices) and suite (jobs) TOML files, validated
    runner.py   `lab run`: builds once on the host, devices concurrently, one job at a
                time per device, cool-down, retries, resume, joining another host's run
    session.py  one device's jobs; host_work.py: the builds and quality checks on the host
    claims.py   several runners, one fleet: board locks, job claims, heartbeats, leases
    history.py  the lab tables of the results database (runs, jobs, snapshots, builds)
    regress.py  baselines and the regression rule (stats.py: Mann–Whitney U, medians)

The CLI (edgeshrink/cli/lab.py) and the reports (edgeshrink/report/html.py,
markdown.py, junit.py) sit on top of these.
"""

from __future__ import annotations

from edgeshrink.lab.config import (
    Inventory,
    LabConfigError,
    LabDevice,
    LabJob,
    LabLockError,
    RegressionPolicy,
    Suite,
    load_inventory,
    load_suite,
)
from edgeshrink.lab.regress import Comparison, Finding, compare
from edgeshrink.lab.runner import LabEvent, LabRunOutcome, plan_lab, run_lab

__all__ = [
    "Comparison",
    "Finding",
    "Inventory",
    "LabConfigError",
    "LabDevice",
    "LabEvent",
    "LabJob",
    "LabLockError",
    "LabRunOutcome",
    "RegressionPolicy",
    "Suite",
    "compare",
    "load_inventory",
    "load_suite",
    "plan_lab",
    "run_lab",
]
