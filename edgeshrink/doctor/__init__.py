"""What a device really is and has, checked step by step; and runtime installs on it.

checks.py   ``diagnose``: every step a benchmark takes, as ok / warn / error / skip
install.py  ``install_runtime``: a venv in the device's work dir, a runtime pip-installed there
"""

from __future__ import annotations

from edgeshrink.doctor.checks import (
    ALL_CHECKS,
    FACTS_SCRIPT,
    KEY_FEATURES,
    MIN_PYTHON,
    RAM_TOLERANCE,
    RUNTIME_MODULES,
    RUNTIME_PACKAGES,
    STATUSES,
    Check,
    DoctorReport,
    compare_profile,
    diagnose,
)
from edgeshrink.doctor.install import (
    KEEP_BASE_PACKAGES,
    InstallPlan,
    InstallResult,
    install_runtime,
    plan_install,
)

__all__ = [
    "ALL_CHECKS",
    "FACTS_SCRIPT",
    "KEEP_BASE_PACKAGES",
    "KEY_FEATURES",
    "MIN_PYTHON",
    "RAM_TOLERANCE",
    "RUNTIME_MODULES",
    "RUNTIME_PACKAGES",
    "STATUSES",
    "Check",
    "DoctorReport",
    "InstallPlan",
    "InstallResult",
    "compare_profile",
    "diagnose",
    "install_runtime",
    "plan_install",
]
