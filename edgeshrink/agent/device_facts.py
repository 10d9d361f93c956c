"""What a device's Python tells about itself and its work dir, for `doctor` and the lab.

Run by the device's Python as ``python -c <this file's text> WORK_DIR``; prints one JSON
document. Python 2.7-compatible syntax and standard library only, so that even a Python
too old for the agent still reports its version (and doctor can say so).
"""

import json
import os
import sys


def cgroup_limit():
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except (IOError, OSError):
        return None, "no /proc/self/cgroup"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            path = "/sys/fs/cgroup" + parts[2].rstrip("/") + "/memory.max"
        elif "memory" in parts[1].split(","):
            path = "/sys/fs/cgroup/memory" + parts[2].rstrip("/") + "/memory.limit_in_bytes"
        else:
            continue
        try:
            raw = open(path).read().strip()
        except (IOError, OSError):
            continue
        if raw == "max" or int(raw) >= (1 << 60):
            return None, None
        return int(raw), None
    return None, None


def free(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or "/")
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except (OSError, AttributeError):
        return None, None


work = os.path.expanduser(sys.argv[1])
writable, why = False, None
try:
    if not os.path.isdir(work):
        os.makedirs(work)
    probe = os.path.join(work, ".edgeshrink-write-test")
    open(probe, "w").close()
    os.unlink(probe)
    writable = True
except (IOError, OSError) as exc:
    why = str(exc)
try:
    import ensurepip  # noqa: F401  (present or not is the point)
    import venv  # noqa: F401

    venv_ok, venv_why = True, None
except ImportError as exc:
    venv_ok, venv_why = False, str(exc)
limit, limit_why = cgroup_limit()
free_b, total_b = free(work)
print(
    json.dumps(
        {
            "python": list(sys.version_info[:3]),
            "executable": sys.executable,
            "prefix": sys.prefix,
            "in_venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
            "work_dir": work,
            "writable": writable,
            "writable_why": why,
            "free_bytes": free_b,
            "total_bytes": total_b,
            "cgroup_memory_limit": limit,
            "cgroup_why": limit_why,
            "venv_ok": venv_ok,
            "venv_why": venv_why,
            "termux": "com.termux" in os.environ.get("PREFIX", ""),
            "uid": os.getuid() if hasattr(os, "getuid") else None,
        }
    )
)
