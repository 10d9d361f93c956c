"""Small helpers shared by every stage: hashing, atomic writes, human sizes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.resources
import json
import os
import re
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeshrink.errors import OutputPathError

HASH_CHUNK = 4 * 1024 * 1024

# ESC-introduced sequences (CSI "ESC [ ... final", OSC "ESC ] ... BEL/ST", two-byte escapes)
# and the 8-bit CSI, then any C0/C1 control character that is left.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_KEEP_NEWLINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with escape sequences and control characters removed, tabs as spaces:
    what a device (or any file) says can clear the screen or recolour the terminal."""
    value = _ESCAPE_SEQUENCE.sub("", str(text)).replace("\t", " ")
    if keep_newlines:
        return _CONTROL_KEEP_NEWLINES.sub("", value)
    return _CONTROL.sub("", value.replace("\n", " "))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _creating_beside(final: Path) -> Iterator[None]:
    """An OSError while making a file or directory beside ``final`` is the user's output
    path (``-o /proc/x.gguf``, a read-only dir), not a bug: say so in one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # the CLI says what to do about a full disk

        raise OutputPathError(
            f"{final}: cannot create a file in {final.parent}: {exc.strerror or exc}",
            hint="choose another output path (-o PATH) in a directory you can write",
        ) from exc


def make_work_dir(final: str | os.PathLike[str]) -> Path:
    """A new, unique work directory beside ``final`` (same file system, so its result
    can be renamed into place); an unusable output path is an OutputPathError."""
    final = Path(final)
    with _creating_beside(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".work", dir=final.parent))


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a unique temporary path beside ``final``; rename it into place on success.

    Nothing half-written ever carries the final name: on any exception the
    temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    with _creating_beside(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{final.name}.", suffix=".partial", dir=final.parent
        )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file() and not tmp.is_symlink():
            # mkstemp makes 0600 files; a result file is as readable as any other the user makes.
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new directory beside ``final``; on success it takes ``final``'s name (an old
    ``final`` is moved aside first and removed after), on failure it is removed."""
    final = Path(final)
    tmp = make_work_dir(final)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], document: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return Path(path)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Send what native libraries write to fd 1 to stderr instead, so a command's
    JSON on stdout stays the only thing there (TensorFlow's converter prints)."""

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cache_dir(name: str) -> Path:
    """edgeshrink's cache folder ``name`` (logprobs, references): under EDGESHRINK_CACHE
    when it is set, else in the user's cache dir."""
    env = os.environ.get("EDGESHRINK_CACHE")
    if env:
        return Path(env).expanduser() / name
    import platformdirs

    return platformdirs.user_cache_path("edgeshrink") / name


def shipped_text(name: str) -> str:
    """A text edgeshrink ships in edgeshrink/data (calib-en.txt, eval-en.txt)."""
    return (importlib.resources.files("edgeshrink") / "data" / name).read_text(encoding="utf-8")


def peak_rss_mb() -> float:
    """This process's peak RSS: the kernel's VmHWM, which starts again at exec.  getrusage's
    ru_maxrss keeps the parent's peak across fork + exec (a distill started from a 2.4 GB
    pytest reported 2.4 GB), so it is only the fallback where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
