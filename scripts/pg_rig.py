#!/usr/bin/env python3
"""A real, throwaway PostgreSQL server for tests and benchmarks (Debian's postgresql package).

initdb in a fresh directory, a server on a free 127.0.0.1 port and a unix socket in that
directory, a superuser ``lab`` with a random password (password-checked over TCP, trusted
over the socket), and ``stop`` that kills it and removes the directory.  As root the server
runs as the ``postgres`` user (PostgreSQL refuses to run as root), so the directory is made
under the system temp dir and handed to that user.

    python scripts/pg_rig.py up --workdir /tmp/pg       # prints the rig as JSON (with a URL)
    python scripts/pg_rig.py down --workdir /tmp/pg
    python scripts/pg_rig.py                            # up in a temp dir until Ctrl-C

From Python::

    rig = start_postgres()              # or: with postgres_rig() as rig:
    url = rig.create_database("t1")     # postgresql://lab:...@127.0.0.1:PORT/t1
    stop_postgres(rig)
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import secrets
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

STATE_FILE = "pg-rig.json"
SUPERUSER = "lab"


class PgRigError(RuntimeError):
    """The server cannot start here (no PostgreSQL binaries, no postgres user, ...)."""


@dataclass(frozen=True)
class PgRig:
    root: Path
    data: Path
    port: int
    user: str
    password: str
    bindir: str
    run_as: str | None  # the system user the server runs as (None: this user)
    pid: int

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A postgresql:// URL for ``database`` over TCP (the password is checked there)."""
        secret = self.password if password is None else password
        return f"postgresql://{self.user}:{secret}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through the server's own psql, over the trusted unix socket."""
        done = _run(
            [f"{self.bindir}/psql", "-X", "-q", "-A", "-t", "-h", str(self.data), "-p", str(self.port),
             "-U", self.user, "-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql],
            run_as=self.run_as,
        )  # fmt: skip
        return done.stdout

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def find_bindir() -> str | None:
    """Where initdb and pg_ctl are: $EDGESHRINK_PG_BINDIR, Debian's versioned directory, PATH."""
    given = os.environ.get("EDGESHRINK_PG_BINDIR")
    if given:
        return given if Path(given, "initdb").is_file() else None
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


def postgres_available() -> str | None:
    """None when a rig can start here, else why not (a skip reason)."""
    bindir = find_bindir()
    if bindir is None:
        return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed (Debian: apt-get install postgresql)"
    for tool in ("pg_ctl", "postgres", "psql"):
        if not Path(bindir, tool).is_file():
            return f"{bindir}/{tool} is missing"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], *, run_as: str | None, check: bool = True) -> subprocess.CompletedProcess:
    if run_as:
        argv = ["runuser", "-u", run_as, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise PgRigError(
            f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return done


def start_postgres(root: str | os.PathLike[str] | None = None, *, fsync: bool = False) -> PgRig:
    """initdb and start a server; ``fsync`` off (the default) suits tests, not benchmarks
    of durability (a killed process still loses nothing: only an OS crash would)."""
    problem = postgres_available()
    if problem:
        raise PgRigError(problem)
    bindir = find_bindir()
    assert bindir is not None
    run_as = "postgres" if os.geteuid() == 0 else None
    # As root the server user must reach the directory: pytest's per-user temp dir is 0700.
    root = Path(root) if root else Path(tempfile.mkdtemp(prefix="edgeshrink-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    password = secrets.token_hex(12)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (root, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    _run([f"{bindir}/initdb", "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
          "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
          "--no-instructions"], run_as=run_as)  # fmt: skip
    pwfile.unlink()
    port = free_port()
    options = (f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200"
               f" -c fsync={'on' if fsync else 'off'} -c full_page_writes={'on' if fsync else 'off'}")  # fmt: skip
    _run([f"{bindir}/pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "server.log"),
          "-w", "-t", "60", "start"], run_as=run_as)  # fmt: skip
    pid = int((data / "postmaster.pid").read_text().split()[0])
    rig = PgRig(root=root, data=data, port=port, user=SUPERUSER, password=password, bindir=bindir,
                run_as=run_as, pid=pid)  # fmt: skip
    (root / STATE_FILE).write_text(
        json.dumps({**asdict(rig), "root": str(root), "data": str(data)})
    )
    return rig


def load_rig(root: str | os.PathLike[str]) -> PgRig:
    doc = json.loads((Path(root) / STATE_FILE).read_text())
    return PgRig(**{**doc, "root": Path(doc["root"]), "data": Path(doc["data"])})


def stop_postgres(rig: PgRig) -> None:
    """Stop the server (immediate: nothing of a test's is worth a clean shutdown) and remove
    everything under the rig's directory."""
    done = _run([f"{rig.bindir}/pg_ctl", "-D", str(rig.data), "-m", "immediate", "-w", "stop"],
                run_as=rig.run_as, check=False)  # fmt: skip
    if done.returncode != 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rig.pid, signal.SIGKILL)
        time.sleep(0.2)
    shutil.rmtree(rig.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_rig(root: str | os.PathLike[str] | None = None, **kw) -> Iterator[PgRig]:
    rig = start_postgres(root, **kw)
    try:
        yield rig
    finally:
        stop_postgres(rig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("up", "down"), default=None)
    parser.add_argument("--workdir", default=None, help="the rig's directory (up/down)")
    parser.add_argument("--fsync", action="store_true", help="keep fsync on (benchmarks)")
    args = parser.parse_args(argv)
    try:
        if args.action == "down":
            if not args.workdir:
                parser.error("down needs --workdir")
            stop_postgres(load_rig(args.workdir))
            return 0
        rig = start_postgres(args.workdir, fsync=args.fsync)
    except PgRigError as exc:
        print(f"pg_rig: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**asdict(rig), "root": str(rig.root), "data": str(rig.data),
                      "url": rig.url()}, indent=2))  # fmt: skip
    if args.action == "up":
        return 0
    print("PostgreSQL is up; Ctrl-C stops it and removes its directory", file=sys.stderr)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop_postgres(rig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
