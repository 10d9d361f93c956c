"""edgeshrink's device-side helper: the push receiver and the command launcher.

Standard library only, Python 3.9+.  The SSH transport sends this file's text
to the device's Python (``python3 -c``); the local transport runs the file.

receive FINAL SIZE SHA256 DURABLE
    One writer per destination: the lock ``.NAME.lock`` beside FINAL is taken
    before any other file is opened.  Under the lock it decides, and says on
    stdout as one JSON line: ``present`` (FINAL already holds those bytes: its
    sha256 was checked, through a cache keyed by size, mtime, ctime and inode),
    ``no_space``, or ``send`` with the offset to resume from.  Then it reads the
    bytes from stdin into ``.NAME.partial``, hashing as it writes, and only when
    size and sha256 match renames the file into place.  The last JSON line is the
    verdict.

sha256 PATH
    The file's sha256 as the device reads it: ``{"status": "ok", "sha256": ...}``.

temps PATTERN...
    The sysfs temperature files matching the glob patterns, in degrees C, as one
    JSON object (for the lab's cool-down).

launch LOCK WAIT_S -- ARGV...
    Runs ARGV in its own process group and holds LOCK (a per-device lock file
    holding the group's id and the command) while any process of it runs: a
    second launch waits up to WAIT_S, then says who holds it.  Its stdin is the host's lifeline: a line
    ``TERM`` or ``KILL`` signals the group, EOF (the host or the SSH session is
    gone) terminates it.  It exits only when the whole group is gone and then
    writes one marker line on stderr with the exit status, the signal and
    whether the kernel's OOM killer acted meanwhile.
"""

import contextlib
import glob
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

MIB = 1 << 20
EXIT_MARKER = "@@edgeshrink-exit="
PID_MARKER = "@@edgeshrink-pid="
BUSY_EXIT = 75
LOCK_WAIT_S = 3600.0
WAITING_EVERY_S = 5.0
GRACE_S = 5.0


def out(doc):
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def free_bytes(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or "/")
        return st.f_bavail * st.f_frsize, path
    except (OSError, AttributeError):
        return None, path


def hash_file(path, limit=None):
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            b = f.read(MIB if left is None else min(MIB, left))
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)
    return h


def _stamp(st):
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def cache_path(final):
    folder, name = os.path.split(final)
    return os.path.join(folder, "." + name + ".sha256")


def write_hash_cache(final, digest):
    try:
        stamp = _stamp(os.stat(final))
        tmp = cache_path(final) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"stamp": stamp, "sha256": digest}, f)
        os.replace(tmp, cache_path(final))
    except OSError:
        pass  # a cache that cannot be written only costs a re-hash


def verified_sha256(final):
    """FINAL's sha256 (None when it does not exist), from the cache when FINAL is unchanged."""
    try:
        st = os.stat(final)
    except OSError:
        return None
    try:
        with open(cache_path(final)) as f:
            doc = json.load(f)
        if doc.get("stamp") == _stamp(st) and isinstance(doc.get("sha256"), str):
            return doc["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = hash_file(final).hexdigest()
    write_hash_cache(final, digest)
    return digest


def flock_waiting(fd, wait_s, on_wait=None):
    """Take an exclusive flock on fd within wait_s; on_wait() every few seconds meanwhile."""
    try:
        import fcntl
    except ImportError:
        return True
    deadline = time.monotonic() + wait_s
    next_note = time.monotonic() + WAITING_EVERY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            now = time.monotonic()
            if now > deadline:
                return False
            if on_wait is not None and now > next_note:
                next_note = now + WAITING_EVERY_S
                on_wait()
            time.sleep(0.05)


class Hasher:
    """sha256 in a thread of its own: hashlib releases the GIL, so on a board with two or
    more cores the hash runs beside the reads and writes instead of after each of them.

    The blocks are a ring of preallocated buffers (a fresh 1 MiB object per read would
    cost page faults and zeroing on every MiB): ``buffer()`` hands out a free one, and the
    hashing thread gives it back once it has hashed it.
    """

    def __init__(self, h, count=8):
        self.h = h
        self.free = queue.Queue()
        for _ in range(count):
            self.free.put(bytearray(MIB))
        self.blocks = queue.Queue()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            item = self.blocks.get()
            if item is None:
                return
            buf, n = item
            self.h.update(memoryview(buf)[:n])
            self.free.put(buf)

    def buffer(self):
        return self.free.get()

    def update(self, buf, n):
        self.blocks.put((buf, n))

    def finish(self):
        self.blocks.put(None)
        self.thread.join()
        return self.h


class Syncer:
    """Writes dirty pages out in the background, so the final fsync is short."""

    def __init__(self, fd):
        self.fd = fd
        self.thread = None

    def kick(self):
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()

    def run(self):
        with contextlib.suppress(OSError):
            getattr(os, "fdatasync", os.fsync)(self.fd)

    def join(self):
        if self.thread is not None:
            self.thread.join()


def _os_error(status, exc, path, **more):
    doc = {"status": status, "errno": exc.errno, "error": exc.strerror or str(exc), "path": path}
    doc.update(more)
    return doc


def receive(final, size, expected, durable):
    size = int(size)
    folder, name = os.path.split(final)
    partial = os.path.join(folder, "." + name + ".partial")
    try:
        os.makedirs(folder, exist_ok=True)
        lock_fd = os.open(os.path.join(folder, "." + name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        out(_os_error("not_writable", exc, folder))
        return 9
    if not flock_waiting(lock_fd, LOCK_WAIT_S, lambda: out({"status": "waiting"})):
        out({"status": "busy"})
        return 3
    # Under the lock from here on: nobody else opens the partial or renames into FINAL.
    try:
        if verified_sha256(final) == expected and os.stat(final).st_size == size:
            out({"status": "present", "sha256": expected, "size": size})
            return 0
    except OSError:
        pass
    try:
        have = os.stat(partial).st_size
    except OSError:
        have = 0
    offset = have if 0 < have <= size else 0
    free, free_path = free_bytes(folder)
    if free is not None and free < size - offset:
        out({"status": "no_space", "free_bytes": free, "free_path": free_path,
             "need": size - offset})  # fmt: skip
        return 7
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, offset)
    except OSError as exc:
        out(_os_error("not_writable", exc, partial))
        return 9
    out({"status": "send", "offset": offset})
    h = hash_file(partial, offset) if offset else hashlib.sha256()
    os.lseek(fd, offset, 0)
    try:
        # A 1 MiB pipe from sshd (Linux F_SETPIPE_SZ) means far fewer wake-ups of both.
        import fcntl

        fcntl.fcntl(0, 1031, MIB)
    except Exception:
        pass
    syncer = Syncer(fd) if durable == "1" else None
    got = offset
    since_sync = 0
    hasher = Hasher(h)
    try:
        while got < size:
            buf = hasher.buffer()
            view = memoryview(buf)
            n = os.readv(0, [view if size - got >= MIB else view[: size - got]])
            if not n:
                hasher.free.put(buf)
                break
            hasher.update(buf, n)
            view = view[:n]
            while len(view):
                view = view[os.write(fd, view) :]
            got += n
            since_sync += n
            if syncer is not None and since_sync >= 64 * MIB:
                since_sync = 0
                syncer.kick()
        h = hasher.finish()
        if syncer is not None:
            syncer.join()
            os.fsync(fd)
    except OSError as exc:
        hasher.finish()
        if syncer is not None:
            syncer.join()
        out(_os_error("write_failed", exc, partial, have=os.fstat(fd).st_size,
                      free_bytes=free_bytes(folder)[0]))  # fmt: skip
        return 7
    if got < size:
        out({"status": "incomplete", "have": got})
        return 5
    if os.read(0, 1):
        out({"status": "too_long", "have": got})
        return 8
    digest = h.hexdigest()
    real = os.fstat(fd).st_size
    os.close(fd)
    if digest != expected or real != size:
        os.unlink(partial)
        out({"status": "mismatch", "sha256": digest, "size": real})
        return 6
    os.rename(partial, final)
    write_hash_cache(final, digest)
    if durable == "1":
        try:
            dfd = os.open(folder, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
        except OSError:
            pass
    out({"status": "ok", "sha256": digest, "size": real})
    return 0


# --------------------------------------------------------------------------- launch


def _read_counter(path, key):
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
    except (OSError, ValueError):
        pass
    return None


def _cgroup_counter_files():
    """The OOM-kill counters of this process's cgroups (v2 memory.events, v1 memory.oom_control)."""
    files = []
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return files
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1].split(","), parts[2].lstrip("/")
        if parts[1] == "":
            files.append(os.path.join("/sys/fs/cgroup", path, "memory.events"))
        elif "memory" in controllers:
            files.append(os.path.join("/sys/fs/cgroup/memory", path, "memory.oom_control"))
    return files


def oom_kill_counters():
    """Every readable OOM-kill counter: the kernel's and this process's cgroups'."""
    found = {}
    for path in ["/proc/vmstat", *_cgroup_counter_files()]:
        value = _read_counter(path, "oom_kill")
        if value is not None:
            found[path] = value
    return found


def oom_killed_since(before):
    """True when a counter rose, False when they were readable and did not, None when none were."""
    if not before:
        return None
    after = oom_kill_counters()
    return any(after.get(path, count) > count for path, count in before.items())


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def signal_group(pgid, sig):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _watch_stdin(pgid, stopping):
    """The host's lifeline: TERM/KILL lines signal the group; EOF ends it."""
    # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts interpreter exit.
    pending = b""
    while True:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for command in (line.strip() for line in lines):
            if command in (b"TERM", b"KILL"):
                stopping.set()
                signal_group(pgid, getattr(signal, "SIG" + command.decode()))
    stopping.set()
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)


def launch(lock, wait_s, *rest):
    argv = list(rest[1:] if rest and rest[0] == "--" else rest)
    try:
        lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        sys.stderr.write(EXIT_MARKER + json.dumps(_os_error("lock_failed", exc, lock)) + "\n")
        return BUSY_EXIT
    if not flock_waiting(lock_fd, float(wait_s)):
        with os.fdopen(os.dup(lock_fd)) as f:
            holder = f.read().strip()
        doc = {"status": "busy", "lock": lock, "holder": holder}
        sys.stderr.write(EXIT_MARKER + json.dumps(doc) + "\n")
        return BUSY_EXIT
    before = oom_kill_counters()
    try:
        # The command inherits the locked descriptor: even a launcher killed on its own
        # leaves the device locked until the last process of the command is gone.
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock_fd,)
        )
    except OSError as exc:
        sys.stderr.write(f"{argv[0]}: {exc.strerror or exc}\n")
        doc = {"status": "exec_failed", "returncode": 127, "signal": None, "oom_kill": None}
        sys.stderr.write(EXIT_MARKER + json.dumps(doc) + "\n")
        return 127
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{child.pid} {' '.join(argv)[:200]}\n".encode(), 0)
    sys.stderr.write(f"{PID_MARKER}{child.pid}\n")
    sys.stderr.flush()
    stopping = threading.Event()
    threading.Thread(target=_watch_stdin, args=(child.pid, stopping), daemon=True).start()
    status = child.wait()
    # Whatever the command left behind in its group goes with it: the board is free after this.
    if group_alive(child.pid):
        signal_group(child.pid, signal.SIGKILL)
    while group_alive(child.pid):
        time.sleep(0.02)
    doc = {
        "status": "exited",
        "returncode": status if status >= 0 else None,
        "signal": -status if status < 0 else None,
        "oom_kill": oom_killed_since(before),
        "stopped": stopping.is_set(),
    }
    sys.stderr.write(EXIT_MARKER + json.dumps(doc) + "\n")
    sys.stderr.flush()
    os.ftruncate(lock_fd, 0)
    return status if status >= 0 else 128 - status


# --------------------------------------------------------------------------- small reads


def sha256(path):
    """The file's sha256 as it is on the device's disk (hex on stdout)."""
    try:
        out({"status": "ok", "sha256": hash_file(path).hexdigest()})
    except OSError as exc:
        out(_os_error("unreadable", exc, path))
        return 1
    return 0


def temps(*patterns):
    """Each sysfs temperature file matching the patterns, in degrees C (one JSON line)."""
    found = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path) as f:
                    found[path] = int(f.read().strip()) / 1000.0
            except (OSError, ValueError):
                pass
    out(found)
    return 0


COMMANDS = {"receive": receive, "launch": launch, "sha256": sha256, "temps": temps}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]))
