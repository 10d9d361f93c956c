#!/usr/bin/env python3
"""A real SSH "device" for tests and benchmarks: OpenSSH's sshd on a free port.

Everything lives under one directory: a freshly generated ed25519 host key, a
client key pair whose public half is the only authorized key, a known_hosts
file that pins the host key, and the device's own HOME and work dir, so the
device behaves like a separate machine even when sshd runs as the same user.

Optional, where the machine allows (root, iproute2, cgroup v1):

  --netns        run sshd inside its own network namespace, reached over a veth pair
  --memory-mb N  put sshd (and so every session and the agent) under a cgroup v1
                 memory limit, so a "1 GB device" really has 1 GB (over the limit
                 the kernel's OOM killer ends the process with SIGKILL)

    python scripts/sshd_rig.py up --workdir /tmp/rig [--port P] [--netns] [--memory-mb 1024]
    python scripts/sshd_rig.py down --workdir /tmp/rig

`up` prints the rig as JSON and writes WORKDIR/target.toml (an edgeshrink
target for the device).  From Python, ``with sshd_rig(path) as rig: rig.target()``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

SSHD = os.environ.get("EDGESHRINK_RIG_SSHD", "/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
STATE_FILE = "rig.json"
CGROUP_PREFIX = "edgeshrink-rig-"


class RigError(RuntimeError):
    """The rig cannot start here (missing sshd, no permission, ...)."""


@dataclass(frozen=True)
class Rig:
    root: Path
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_key_pub: Path
    home: Path
    work_dir: Path
    python: str  # as the device's PATH finds it: bin/python3 wraps the Python the rig was given
    sshd_pid: int
    log: Path
    netns: str | None = None
    host_veth: str | None = None
    cgroup: Path | None = None
    memory_limit_mb: int | None = None

    @property
    def destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    def target(self, name: str = "rig", **overrides):
        """An edgeshrink Target for this device (fields overridable)."""
        from edgeshrink.targets import Target

        fields = {
            "name": name,
            "kind": "ssh",
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "python": self.python,
            "work_dir": str(self.work_dir),
        }
        fields.update(overrides)
        return Target(**fields)

    def target_toml(self, name: str = "rig", profile: str | None = None) -> str:
        lines = [
            f"name = {json.dumps(name)}",
            'kind = "ssh"',
            f"host = {json.dumps(self.host)}",
            f"port = {self.port}",
            f"user = {json.dumps(self.user)}",
            f"key = {json.dumps(str(self.client_key))}",
            f"known_hosts = {json.dumps(str(self.known_hosts))}",
            f"python = {json.dumps(self.python)}",
            f"work_dir = {json.dumps(str(self.work_dir))}",
        ]
        if profile:
            lines.append(f"profile = {json.dumps(profile)}")
        return "\n".join(lines) + "\n"

    def host_public_key(self) -> str:
        return self.host_key_pub.read_text().split()[1]

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def alive(self) -> bool:
        try:
            os.kill(self.sshd_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def sshd_available() -> str | None:
    """None when the rig can run here, else why not."""
    if not Path(SSHD).is_file():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if not Path(SSH_KEYGEN).is_file():
        return "ssh-keygen is missing (apt-get install openssh-client)"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


def _keygen(path: Path, comment: str) -> None:
    out = _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    if out.returncode != 0:
        raise RigError(f"ssh-keygen failed: {out.stderr.strip()}")


# --------------------------------------------------------------------------- cgroup v1 memory


def _memory_cgroup_base() -> Path | None:
    """This process's own cgroup v1 memory directory, if there is a writable one."""
    try:
        own = next(
            line.split(":", 2)[2].strip()
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if "memory" in line.split(":", 2)[1].split(",")
        )
    except (OSError, StopIteration, IndexError):
        return None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, options = left.split(), right.split()
        if len(options) >= 3 and options[0] == "cgroup" and "memory" in options[2].split(","):
            root, mount = fields[3], fields[4]
            relative = os.path.relpath(own, root) if own.startswith(root) else own.lstrip("/")
            base = Path(mount) / relative
            if (base / "memory.limit_in_bytes").exists():
                return base
    return None


def memory_cgroup_problem() -> str | None:
    """None when a cgroup v1 memory limit can be set here, else why not."""
    base = _memory_cgroup_base()
    if base is None:
        return "no cgroup v1 memory controller for this process"
    if not os.access(base, os.W_OK):
        return f"{base} is not writable (needs root)"
    return None


def _make_memory_cgroup(name: str, limit_mb: int) -> Path:
    base = _memory_cgroup_base()
    problem = memory_cgroup_problem()
    if base is None or problem:
        raise RigError(f"cannot limit memory: {problem}")
    group = base / name
    group.mkdir(exist_ok=True)
    limit = str(limit_mb << 20)
    (group / "memory.limit_in_bytes").write_text(limit)
    swap = group / "memory.memsw.limit_in_bytes"
    if swap.exists():
        # Without this the "device" would page to the host's swap instead of being OOM-killed.
        with contextlib.suppress(OSError):
            swap.write_text(limit)
    return group


def _remove_cgroup(group: Path) -> None:
    for _ in range(50):
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.05)


# --------------------------------------------------------------------------- network namespace


def netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 ('ip') is missing"
    return None


def _make_netns(tag: str) -> tuple[str, str, str]:
    """A namespace with a veth to the host; returns (netns, host veth, device address)."""
    problem = netns_problem()
    if problem:
        raise RigError(f"cannot make a network namespace: {problem}")
    taken = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    for index in range(1, 4096):
        a, b = 10 + (index >> 6), (index & 63) << 2
        subnet = f"10.{a}.{b}."
        if subnet + "1/" in taken or subnet + "2/" in taken:
            continue
        break
    else:
        raise RigError("no free 10.x.y.0/30 subnet for the rig's veth pair")
    netns, host_veth, dev_veth = f"esrig-{tag}", f"esh{tag}"[:15], f"esd{tag}"[:15]
    steps = [
        ["ip", "netns", "add", netns],
        ["ip", "link", "add", host_veth, "type", "veth", "peer", "name", dev_veth],
        ["ip", "link", "set", dev_veth, "netns", netns],
        ["ip", "addr", "add", f"{subnet}1/30", "dev", host_veth],
        ["ip", "link", "set", host_veth, "up"],
        ["ip", "-n", netns, "addr", "add", f"{subnet}2/30", "dev", dev_veth],
        ["ip", "-n", netns, "link", "set", dev_veth, "up"],
        ["ip", "-n", netns, "link", "set", "lo", "up"],
    ]
    for step in steps:
        out = _run(step)
        if out.returncode != 0:
            _remove_netns(netns, host_veth)
            raise RigError(f"{' '.join(step)} failed: {out.stderr.strip()}")
    return netns, host_veth, f"{subnet}2"


def _remove_netns(netns: str, host_veth: str | None) -> None:
    # Sessions still in the namespace would wait forever on connections whose
    # other end is about to vanish with the veth pair.
    for pid in _run(["ip", "netns", "pids", netns]).stdout.split():
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    if host_veth:
        _run(["ip", "link", "del", host_veth])
    _run(["ip", "netns", "del", netns])


# --------------------------------------------------------------------------- up / down


def _sshd_config(root: Path, host: str, port: int, home: Path) -> str:
    return "\n".join(
        [
            f"Port {port}",
            f"ListenAddress {host}",
            f"HostKey {root / 'ssh_host_ed25519_key'}",
            f"PidFile {root / 'sshd.pid'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",
            "MaxSessions 32",
            "MaxStartups 32:30:64",
            "Subsystem sftp internal-sftp",
            # The device's own HOME: ~ on the device is not the host's ~; its
            # python3 is the one the rig was given (bin/python3 first on PATH).
            f"SetEnv HOME={home} PATH={home.parent / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "LogLevel ERROR",
            "",
        ]
    )


def start_rig(
    root: str | os.PathLike[str],
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    netns: bool = False,
    memory_limit_mb: int | None = None,
    python: str | None = None,
    ready_timeout_s: float = 10.0,
) -> Rig:
    problem = sshd_available()
    if problem:
        raise RigError(problem)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # The work dir is where a target's default ~/edgeshrink would be.
    home = root / "device" / "home"
    work = home / "edgeshrink"
    home.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    host_key, client_key = root / "ssh_host_ed25519_key", root / "client_ed25519"
    if not host_key.exists():
        _keygen(host_key, "edgeshrink-rig-host")
    if not client_key.exists():
        _keygen(client_key, "edgeshrink-rig-client")
    shutil.copyfile(root / "client_ed25519.pub", root / "authorized_keys")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    python = python or sys.executable
    bin_dir = root / "device" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    # A wrapper, not a symlink: a venv's Python finds its pyvenv.cfg only from its own path.
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} "$@"\n')
    wrapper.chmod(0o755)

    ns = veth = None
    if netns:
        tag = f"{os.getpid() % 100000}{int(time.time() * 1000) % 1000}"
        ns, veth, host = _make_netns(tag)
    port = port or (22022 if netns else free_port(host))
    group = None
    if memory_limit_mb:
        group = _make_memory_cgroup(f"{CGROUP_PREFIX}{port}-{os.getpid()}", memory_limit_mb)
    config = root / "sshd_config"
    config.write_text(_sshd_config(root, host, port, home))
    log = root / "sshd.log"
    argv = [SSHD, "-D", "-e", "-f", str(config)]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]

    def enter_cgroup() -> None:
        # Before exec: sshd and every session it forks start inside the limit.
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    with open(log, "ab") as log_handle:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=log_handle,
            preexec_fn=enter_cgroup if group is not None else None,
            start_new_session=True,
        )
    known = root / "known_hosts"
    pinned = f"[{host}]:{port}" if port != 22 else host
    key_type, key_b64 = (root / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    known.write_text(f"{pinned} {key_type} {key_b64}\n")
    rig = Rig(
        root=root,
        host=host,
        port=port,
        user=getpass.getuser(),
        client_key=client_key,
        known_hosts=known,
        host_key_pub=root / "ssh_host_ed25519_key.pub",
        home=home,
        work_dir=work,
        python="python3",
        sshd_pid=proc.pid,
        log=log,
        netns=ns,
        host_veth=veth,
        cgroup=group,
        memory_limit_mb=memory_limit_mb,
    )
    (root / STATE_FILE).write_text(json.dumps(rig.to_dict(), indent=2) + "\n")
    (root / "target.toml").write_text(rig.target_toml())
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if proc.poll() is not None:
            stop_rig(rig)
            raise RigError(f"sshd exited with {proc.returncode}: {log.read_text().strip()[-800:]}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_rig(rig)
            raise RigError(f"sshd did not answer on {host}:{port} within {ready_timeout_s:.0f} s")
        time.sleep(0.05)
    return rig


def load_rig(root: str | os.PathLike[str]) -> Rig:
    doc = json.loads((Path(root) / STATE_FILE).read_text())
    for key in ("root", "client_key", "known_hosts", "host_key_pub", "home", "work_dir", "log"):
        doc[key] = Path(doc[key])
    if doc.get("cgroup"):
        doc["cgroup"] = Path(doc["cgroup"])
    return Rig(**doc)


def stop_rig(rig: Rig) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rig.sshd_pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(rig.sshd_pid, 0)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(rig.sshd_pid, os.WNOHANG)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rig.sshd_pid, signal.SIGKILL)
    if rig.cgroup is not None:
        _remove_cgroup(rig.cgroup)
    if rig.netns:
        _remove_netns(rig.netns, rig.host_veth)
    with contextlib.suppress(FileNotFoundError):
        (rig.root / STATE_FILE).unlink()


@contextlib.contextmanager
def sshd_rig(root: str | os.PathLike[str] | None = None, **kw) -> Iterator[Rig]:
    """A running rig for the duration of the block (in a temp dir unless ``root``)."""
    made = root is None
    root = Path(tempfile.mkdtemp(prefix="edgeshrink-rig-")) if made else Path(root)
    rig = start_rig(root, **kw)
    try:
        yield rig
    finally:
        stop_rig(rig)
        if made:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a device sshd and print it as JSON")
    up.add_argument(
        "--workdir", required=True, type=Path, help="directory for keys, HOME, work dir"
    )
    up.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    up.add_argument("--host", default="127.0.0.1", help="listen address (without --netns)")
    up.add_argument("--netns", action="store_true", help="run sshd in its own network namespace")
    up.add_argument("--memory-mb", type=int, default=None, help="cgroup v1 memory limit")
    up.add_argument("--python", default=None, help="the device's Python (default: this one)")
    down = commands.add_parser("down", help="stop the rig started in --workdir")
    down.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            rig = start_rig(
                args.workdir,
                port=args.port,
                host=args.host,
                netns=args.netns,
                memory_limit_mb=args.memory_mb,
                python=args.python,
            )
            print(json.dumps(rig.to_dict(), indent=2))
            print(
                f"ssh -p {rig.port} -i {rig.client_key} -o UserKnownHostsFile={rig.known_hosts} "
                f"{rig.user}@{rig.host}\nedgeshrink doctor {rig.root / 'target.toml'}",
                file=sys.stderr,
            )
        else:
            stop_rig(load_rig(args.workdir))
    except (RigError, OSError) as exc:
        print(f"sshd_rig: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
