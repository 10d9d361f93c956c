#!/usr/bin/env python3
"""An emulated Raspberry Pi: a Debian bookworm arm64 userland under qemu-user, with its own sshd.

    scripts/arm64-device.sh build [--rootfs DIR] [--with-llama]   # once (root, Debian host)
    scripts/arm64-device.sh up --cpu cortex-a76 --mem 4G --port 2222
    scripts/arm64-device.sh status
    scripts/arm64-device.sh down

`build` installs mmdebstrap, qemu-user-static and binfmt-support, registers
qemu-aarch64 with binfmt_misc, builds the rootfs from the host's apt mirror,
trusts the host's CA certificates inside it and makes venvs there:

  /opt/edgeshrink-venv      onnxruntime, ai-edge-litert (numpy 2) [+ llama-cpp-python]
  /opt/edgeshrink-tflite    tflite-runtime with numpy<2 (--with-tflite-runtime)

`--with-llama` makes an aarch64 llama-cpp-python wheel once into
~/.cache/edgeshrink/arm64-wheels (outside the rootfs) and later builds reuse it: the
host's version, cross-compiled on the host when it has Debian's aarch64 cross compiler
(g++-aarch64-linux-gnu, installed when apt can; the same Debian release as the rootfs, so
the same glibc): about 4 minutes on 2 cores. Otherwise llama.cpp compiles under
emulation (~45 min on 2 cores).

`up` starts the rootfs's own sshd in private mount/uts/pid namespaces (so
`down` leaves no mounts behind) with a fresh /proc, an aarch64 /proc/cpuinfo
matching the chosen CPU bound over it (onnxruntime segfaults on import when it
shows the host's x86 CPU), QEMU_CPU set for every session, a hostname, a host
key and an authorized key generated for it, and a cgroup v1 memory limit when
the machine has one.  State (client key, known_hosts, target.toml, rig.json)
lives in --state-dir (default ~/.cache/edgeshrink/arm64-device).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeshrink"
DEFAULT_ROOTFS = Path(os.environ.get("EDGESHRINK_ARM64_ROOTFS", CACHE / "arm64-rootfs"))
DEFAULT_STATE = Path(os.environ.get("EDGESHRINK_ARM64_STATE", CACHE / "arm64-device"))
DEFAULT_WHEELS = Path(os.environ.get("EDGESHRINK_ARM64_WHEELS", CACHE / "arm64-wheels"))
VENV = "/opt/edgeshrink-venv"
TFLITE_VENV = "/opt/edgeshrink-tflite"
BUILT_MARK = ".edgeshrink-rootfs"  # written last by each build stage
PACKAGES = [
    "python3",
    "python3-venv",
    "python3-pip",
    "openssh-server",
    "libgomp1",
    "ca-certificates",
    "procps",
]
LLAMA_BUILD_PACKAGES = ["build-essential", "cmake", "git"]
HOST_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
}
BINFMT = Path("/proc/sys/fs/binfmt_misc")

# What each emulated CPU looks like in /proc/cpuinfo (as the Linux kernel prints it).
CPUS = {
    "cortex-a72": {
        "part": "0xd08",
        "variant": "0x0",
        "revision": "3",
        "features": "fp asimd evtstrm crc32 cpuid",
        "bogomips": "108.00",
        "cores": 4,
        "profile": "raspberry-pi-4-4gb",
        # The board with the memory limit (MiB up to which it applies), else "profile".
        "profiles_by_mem": [
            (2048, "raspberry-pi-4-2gb"),
            (4096, "raspberry-pi-4-4gb"),
            (8192, "raspberry-pi-4-8gb"),
        ],
    },
    "cortex-a76": {
        "part": "0xd0b",
        "variant": "0x4",
        "revision": "1",
        "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
        "asimdrdm lrcpc dcpop asimddp",
        "bogomips": "108.00",
        "cores": 4,
        "profile": "raspberry-pi-5-8gb",
        "profiles_by_mem": [
            (4096, "raspberry-pi-5-4gb"),
            (8192, "raspberry-pi-5-8gb"),
            (16384, "raspberry-pi-5-16gb"),
        ],
    },
}


# Own mount and pid namespaces (nothing mounted leaks out; killing the first process
# ends them all); `up` adds --uts for the device's own hostname.
PRIVATE_NAMESPACES = ("unshare", "--mount", "--pid", "--fork", "--propagation", "private")


class DeviceError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"arm64-device: {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, text=True, capture_output=True, check=False, **kw)
    if check and out.returncode != 0:
        raise DeviceError(
            f"{' '.join(argv[:6])}... failed ({out.returncode}): "
            f"{(out.stderr or out.stdout).strip()[-1500:]}"
        )
    return out


def _rig_module():
    """scripts/sshd_rig.py (its memory cgroup helpers), loaded once."""
    if "sshd_rig" in sys.modules:
        return sys.modules["sshd_rig"]
    spec = importlib.util.spec_from_file_location("sshd_rig", HERE / "sshd_rig.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sshd_rig"] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- host set-up


def problem() -> str | None:
    """None when this machine can run the emulated device at all, else why not."""
    if os.geteuid() != 0:
        return "the arm64 device needs root (chroot, namespaces, binfmt_misc)"
    if not shutil.which("unshare") or not shutil.which("chroot"):
        return "util-linux unshare / coreutils chroot missing"
    return None


def ensure_host_packages() -> None:
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items() if not shutil.which(tool)})
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise DeviceError(f"missing {', '.join(missing)} and no apt-get to install them")
    started = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = _run(["apt-get", "install", "-y", "-q", *missing], check=False, env=env)
    if out.returncode != 0:
        _run(["apt-get", "update", "-qq"], env=env)
        _run(["apt-get", "install", "-y", "-q", *missing], env=env)
    log(f"installed {' '.join(missing)} in {time.monotonic() - started:.0f} s")


def ensure_binfmt() -> None:
    if not (BINFMT / "register").exists():
        BINFMT.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        if not shutil.which("update-binfmts"):
            raise DeviceError("qemu-aarch64 is not registered and update-binfmts is missing")
        _run(["update-binfmts", "--enable", "qemu-aarch64"])
    text = entry.read_text()
    if not text.startswith("enabled"):
        raise DeviceError(f"qemu-aarch64 binfmt entry is not enabled: {text}")
    if "flags: " in text and "F" not in text.split("flags: ", 1)[1].split()[0]:
        raise DeviceError("qemu-aarch64 binfmt entry lacks the F flag (needs qemu-user-static)")


def host_mirrors() -> list[str]:
    """One-line apt sources for bookworm arm64, from the host's configured Debian mirrors."""
    uris: dict[str, str] = {}  # kind -> uri
    files = [Path("/etc/apt/sources.list")]
    files += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    files += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        found: list[tuple[str, str]] = []
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, v in (
                        line.split(":", 1)
                        for line in stanza.splitlines()
                        if ":" in line and not line.lstrip().startswith("#")
                    )
                )
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        found.append((uri, suite))
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2:
                        found.append((rest[0], rest[1]))
        for uri, suite in found:
            if suite.endswith("-security"):
                uris.setdefault("security", uri)
            elif suite.startswith(("bookworm", "stable")) and "debian" in uri:
                uris.setdefault("main", uri)
    main = uris.get("main", "http://deb.debian.org/debian")
    lines = [f"deb {main} bookworm main", f"deb {main} bookworm-updates main"]
    security = uris.get("security")
    if security:
        lines.append(f"deb {security} bookworm-security main")
    return lines


# --------------------------------------------------------------------------- chroot helpers

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_DEFAULT_TIMEOUT": "180",
}


def profile_for(cpu: str, memory_mb: int | None) -> str:
    """The hardware profile of the Pi this device stands for: its CPU, and its RAM when limited."""
    if memory_mb:
        for limit, name in CPUS[cpu]["profiles_by_mem"]:
            if memory_mb <= limit:
                return name
    return CPUS[cpu]["profile"]


def write_cpuinfo(path: Path, cpu: str, cores: int | None = None) -> None:
    spec = CPUS[cpu]
    blocks = []
    for index in range(cores or spec["cores"]):
        blocks.append(
            "\n".join(
                [
                    f"processor\t: {index}",
                    f"BogoMIPS\t: {spec['bogomips']}",
                    f"Features\t: {spec['features']}",
                    "CPU implementer\t: 0x41",
                    "CPU architecture: 8",
                    f"CPU variant\t: {spec['variant']}",
                    f"CPU part\t: {spec['part']}",
                    f"CPU revision\t: {spec['revision']}",
                ]
            )
        )
    path.write_text("\n\n".join(blocks) + "\n\n")


def in_chroot(
    rootfs: Path,
    script: str,
    *,
    cpu: str = "cortex-a76",
    timeout: float | None = None,
    extra_binds: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    stream: bool = False,
) -> subprocess.CompletedProcess:
    """Run a shell script in the rootfs, in throw-away mount/pid namespaces (nothing leaks)."""
    cpuinfo = rootfs.parent / f".{rootfs.name}-cpuinfo"
    write_cpuinfo(cpuinfo, cpu)
    binds = "".join(
        f"mkdir -p {shq(str(rootfs) + inner)}; mount --bind {shq(outer)} {shq(str(rootfs) + inner)}; "
        for outer, inner in (extra_binds or {}).items()
    )
    setup = (
        "set -e; "
        f"R={shq(str(rootfs))}; "
        'mount -t proc proc "$R/proc"; '
        f'mount --bind {shq(str(cpuinfo))} "$R/proc/cpuinfo"; '
        'mount --rbind /dev "$R/dev"; '
        'mount -t tmpfs tmpfs "$R/run"; mkdir -p "$R/run/sshd"; '
        'cp -L /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true; '
        + binds
        + 'exec chroot "$R" /bin/sh -c "$0"'
    )
    environment = dict(CHROOT_ENV, QEMU_CPU=cpu, **(env or {}))
    argv = [*PRIVATE_NAMESPACES, "sh", "-c", setup, script]
    if stream:
        return subprocess.run(argv, env=environment, text=True, timeout=timeout, check=False)
    return subprocess.run(
        argv, env=environment, text=True, capture_output=True, timeout=timeout, check=False
    )


def shq(text: str) -> str:
    import shlex

    return shlex.quote(text)


# --------------------------------------------------------------------------- build


def _mark(rootfs: Path) -> dict:
    try:
        return json.loads((rootfs / BUILT_MARK).read_text())
    except (OSError, ValueError):
        return {}


def _set_mark(rootfs: Path, **fields) -> None:
    mark = _mark(rootfs)
    mark.update(fields)
    (rootfs / BUILT_MARK).write_text(json.dumps(mark, indent=2) + "\n")


def trust_host_cas(rootfs: Path) -> None:
    """The host's extra CA certificates (proxies, egress) become the rootfs's too."""
    target = rootfs / "usr/local/share/ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for cert in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
        shutil.copyfile(cert, target / cert.name)
    out = in_chroot(rootfs, "update-ca-certificates >/dev/null 2>&1 || true", timeout=600)
    bundle = rootfs / "etc/ssl/certs/ca-certificates.crt"
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.exists() and (not bundle.exists() or out.returncode != 0):
        shutil.copyfile(host_bundle, bundle)
    pip_conf = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
    index = os.environ.get("PIP_INDEX_URL")
    if index:
        pip_conf.append(f"index-url = {index}")
    (rootfs / "etc/pip.conf").write_text("\n".join(pip_conf) + "\n")


def _chroot_step(rootfs: Path, what: str, timings: dict, key: str, script: str, **kw: Any) -> None:
    """Run ``script`` in the rootfs (pip under emulation: slow), timed as ``timings[key]``."""
    started = time.monotonic()
    out = in_chroot(rootfs, script, timeout=3600, **kw)
    if out.returncode != 0:
        raise DeviceError(f"{what} failed: {(out.stderr or out.stdout)[-1500:]}")
    timings[key] = round(time.monotonic() - started, 1)


CROSS_TOOLCHAIN = """\
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
"""


def host_release() -> str:
    for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return ""


def cross_build_llama(wheels: Path) -> Path | None:
    """The host's llama-cpp-python version built for aarch64 with Debian's cross compiler,
    retagged linux_aarch64; None when this host cannot (then the emulated build runs).

    The libraries are plain armv8-a (GGML_NATIVE=OFF), like the emulated build: they run on
    a Pi 4 and a Pi 5. Only on a bookworm host: the cross toolchain links against its own
    release's glibc, which must be the rootfs's."""
    try:
        from importlib.metadata import version

        wanted = version("llama_cpp_python")
    except Exception:  # noqa: BLE001 (no binding on the host: nothing to match)
        return None
    if host_release() != "bookworm" or not shutil.which("cmake"):
        return None
    if not shutil.which("aarch64-linux-gnu-g++") and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "install", "-y", "-q", "g++-aarch64-linux-gnu"], check=False, env=env)
    if not shutil.which("aarch64-linux-gnu-g++"):
        return None
    log(f"cross-compiling llama-cpp-python {wanted} for aarch64 on the host (~4 min on 2 cores)")
    work = wheels / ".cross"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    toolchain = work / "aarch64.cmake"
    toolchain.write_text(CROSS_TOOLCHAIN, encoding="utf-8")
    cmake_args = (f"-DCMAKE_TOOLCHAIN_FILE={toolchain} -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF "
                  "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF")  # fmt: skip
    env = dict(os.environ, CMAKE_ARGS=cmake_args,
               CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))  # fmt: skip
    # --no-cache-dir: pip's wheel cache would hand back a wheel built for this host.
    out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary",
                "llama-cpp-python", "-w", str(work), f"llama-cpp-python=={wanted}"],
               check=False, env=env)  # fmt: skip
    built = sorted(work.glob("llama_cpp_python-*.whl"))
    if out.returncode != 0 or not built or not aarch64_libraries(built[0]):
        log(f"the cross build failed; building under emulation instead: {out.stderr[-800:]}")
        return None
    final = retag_wheel(built[0], "linux_aarch64", wheels)
    shutil.rmtree(work, ignore_errors=True)
    return final


def aarch64_libraries(wheel: Path) -> bool:
    """Every shared library in ``wheel`` is an aarch64 ELF (e_machine 183)."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        libs = [n for n in z.namelist() if re.search(r"\.so(\.\d+)*$", n)]
        return bool(libs) and all(
            z.read(n)[:20][18:20] == (183).to_bytes(2, "little") for n in libs
        )


def retag_wheel(wheel: Path, platform_tag: str, dest: Path) -> Path:
    """``wheel`` with its platform tag replaced (the file name, WHEEL's Tag lines and
    WHEEL's line in RECORD), written atomically into ``dest``."""
    import base64
    import hashlib
    import zipfile

    name, ver, py, abi, _plat = wheel.stem.split("-")
    final = dest / f"{name}-{ver}-{py}-{abi}-{platform_tag}.whl"
    tmp = final.with_suffix(".whl.tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        infos = src.infolist()
        wheel_meta = next(i.filename for i in infos if i.filename.endswith(".dist-info/WHEEL"))
        text = src.read(wheel_meta).decode()
        text = re.sub(r"^Tag: (.*)-[^-\n]+$", lambda m: f"Tag: {m.group(1)}-{platform_tag}", text,
                      flags=re.M)  # fmt: skip
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        for info in infos:
            data = src.read(info.filename)
            if info.filename == wheel_meta:
                data = text.encode()
            elif info.filename.endswith(".dist-info/RECORD"):
                lines = [
                    f"{wheel_meta},sha256={digest.decode()},{len(text.encode())}"
                    if line.startswith(wheel_meta + ",") else line
                    for line in data.decode().splitlines()
                ]  # fmt: skip
                data = ("\n".join(lines) + "\n").encode()
            out.writestr(info, data)
    tmp.replace(final)
    return final


def build(
    rootfs: Path, *, with_llama: bool, with_tflite_runtime: bool, wheels: Path, force: bool = False
) -> dict:
    timings: dict[str, float] = {}
    if problem():
        raise DeviceError(problem())
    t = time.monotonic()
    ensure_host_packages()
    ensure_binfmt()
    timings["host_setup_s"] = round(time.monotonic() - t, 1)
    if force and rootfs.exists():
        shutil.rmtree(rootfs)
    if not _mark(rootfs).get("debootstrap"):
        tmp = rootfs.with_name(rootfs.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        sources = host_mirrors()
        log(f"mmdebstrap bookworm arm64 from {sources[0].split()[1]} into {tmp}")
        t = time.monotonic()
        _run(
            [
                "mmdebstrap",
                "--architectures=arm64",
                "--variant=apt",
                "--include=" + ",".join(PACKAGES),
                "bookworm",
                str(tmp),
                *sources,
            ]
        )
        timings["mmdebstrap_s"] = round(time.monotonic() - t, 1)
        shutil.rmtree(rootfs, ignore_errors=True)
        tmp.rename(rootfs)
        _set_mark(rootfs, debootstrap=True, packages=PACKAGES, sources=sources)
        log(f"rootfs ready in {timings['mmdebstrap_s']:.0f} s")
    if not _mark(rootfs).get("cas"):
        t = time.monotonic()
        trust_host_cas(rootfs)
        timings["cas_s"] = round(time.monotonic() - t, 1)
        _set_mark(rootfs, cas=True)
    if not _mark(rootfs).get("venv"):
        log(f"venv {VENV}: onnxruntime, ai-edge-litert (pip under emulation)")
        _chroot_step(
            rootfs, "venv install", timings, "venv_pip_s",
            f"set -e; python3 -m venv {VENV}; {VENV}/bin/pip install -q --upgrade pip; "
            f"{VENV}/bin/pip install -q --only-binary=:all: onnxruntime ai-edge-litert numpy",
        )  # fmt: skip
        _set_mark(rootfs, venv=VENV)
    if with_tflite_runtime and not _mark(rootfs).get("tflite_venv"):
        log(f"venv {TFLITE_VENV}: tflite-runtime, numpy<2")
        _chroot_step(
            rootfs, "tflite-runtime venv", timings, "tflite_venv_s",
            f"set -e; python3 -m venv {TFLITE_VENV}; "
            f"{TFLITE_VENV}/bin/pip install -q --only-binary=:all: tflite-runtime 'numpy<2'",
        )  # fmt: skip
        _set_mark(rootfs, tflite_venv=TFLITE_VENV)
    if with_llama and not _mark(rootfs).get("llama"):
        wheels.mkdir(parents=True, exist_ok=True)
        have = sorted(wheels.glob("llama_cpp_python-*-linux_aarch64.whl"))
        t = time.monotonic()
        if not have and (cross := cross_build_llama(wheels)) is not None:
            have = [cross]
            timings["llama_wheel_cross_build_s"] = round(time.monotonic() - t, 1)
        if not have:
            log("building llama-cpp-python for aarch64 under emulation (~45 min on 2 cores)")
            script = (
                "set -e; apt-get update -qq; "
                f"apt-get install -y -qq {' '.join(LLAMA_BUILD_PACKAGES)} >/dev/null; "
                # Not -march=native: under qemu that is whatever the emulator claims;
                # plain armv8-a runs on both the Pi 4 and the Pi 5.
                "CMAKE_ARGS='-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF' "
                "MAKEFLAGS=-j2 CMAKE_BUILD_PARALLEL_LEVEL=2 "
                f"{VENV}/bin/pip wheel --no-deps -w /wheels llama-cpp-python"
            )
            out = in_chroot(
                rootfs, script, extra_binds={str(wheels): "/wheels"}, timeout=7200, stream=True
            )
            if out.returncode != 0:
                raise DeviceError("llama-cpp-python wheel build failed (output above)")
            timings["llama_wheel_build_s"] = round(time.monotonic() - t, 1)
        _chroot_step(
            rootfs, "llama-cpp-python install", timings, "llama_install_s",
            f"set -e; {VENV}/bin/pip install -q --find-links /wheels llama-cpp-python",
            extra_binds={str(wheels): "/wheels"},
        )  # fmt: skip
        timings["llama_total_s"] = round(time.monotonic() - t, 1)
        _set_mark(rootfs, llama=True)
    check = in_chroot(
        rootfs,
        f'{VENV}/bin/python -c "import platform, onnxruntime, ai_edge_litert; '
        f'print(platform.machine(), onnxruntime.__version__)"',
        timeout=600,
    )
    timings["import_check"] = (check.stdout or check.stderr).strip()[-300:]
    return {"rootfs": str(rootfs), "mark": _mark(rootfs), "timings": timings}


# --------------------------------------------------------------------------- up / down / status


def parse_mem(text: str | None) -> int | None:
    if not text:
        return None
    m = re.fullmatch(r"(\d+)\s*([kKmMgG]?)i?[bB]?", text.strip())
    if not m:
        raise DeviceError(f"bad --mem {text!r} (e.g. 4G, 512M)")
    value, unit = int(m.group(1)), m.group(2).upper()
    if unit == "G":
        return value * 1024
    if unit == "M":
        return value
    return max(1, (value * (1024 if unit == "K" else 1)) >> 20)


SSHD_CONFIG = """\
Port {port}
ListenAddress {host}
HostKey /etc/ssh/edgeshrink_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile /root/.ssh/authorized_keys /etc/ssh/edgeshrink_authorized_keys_{port}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowTcpForwarding yes
MaxSessions 32
MaxStartups 32:30:64
Subsystem sftp internal-sftp
# QEMU_CPU reaches every session (sshd builds their environment from scratch), and
# python3 is the venv with the runtimes (/usr/bin/python3 is the bare system one).
SetEnv QEMU_CPU={cpu} LANG=C.UTF-8 PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin
LogLevel ERROR
"""


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _ns_init(pid: int) -> int | None:
    """The forked child of `unshare --fork` (pid 1 of the device's pid namespace)."""
    with contextlib.suppress(OSError, ValueError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0]) if children else None
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _banner(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def load_state(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / "rig.json").read_text())
    except (OSError, ValueError):
        return None


def up(
    rootfs: Path,
    state_dir: Path,
    *,
    cpu: str,
    mem: str | None,
    port: int,
    host: str = "127.0.0.1",
    hostname: str = "pi-emu",
    cores: int | None = None,
    ready_timeout_s: float = 120.0,
) -> dict:
    if problem():
        raise DeviceError(problem())
    if cpu not in CPUS:
        raise DeviceError(f"unknown --cpu {cpu!r} (one of {', '.join(CPUS)})")
    mark = _mark(rootfs)
    if not mark.get("debootstrap"):
        raise DeviceError(f"no built rootfs at {rootfs} (run scripts/arm64-device.sh build)")
    old = load_state(state_dir)
    if old and _alive(old["pid"]):
        raise DeviceError(f"already up (pid {old['pid']}, port {old['port']}): run down first")
    ensure_binfmt()
    if _banner(host, port, 0.5):
        raise DeviceError(f"{host}:{port} is already taken")
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    client = state_dir / "client_ed25519"
    _keygen(client, "edgeshrink-arm64-client")
    host_key = rootfs / "etc/ssh/edgeshrink_host_ed25519_key"
    _keygen(host_key, f"root@{hostname}")  # host's ssh-keygen: no need to emulate it
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The rig's own client key, plus the invoking user's keys (as after ssh-copy-id on a
    # real Pi), so `edgeshrink doctor root@127.0.0.1:PORT` works without --key.
    keys = [(state_dir / "client_ed25519.pub").read_text().strip()]
    for pub in sorted((Path.home() / ".ssh").glob("id_*.pub")):
        with contextlib.suppress(OSError):
            keys.append(pub.read_text().strip())
    # Per port: several devices can run from one rootfs, each with its own client key.
    (rootfs / f"etc/ssh/edgeshrink_authorized_keys_{port}").write_text("\n".join(keys) + "\n")
    (rootfs / f"etc/ssh/edgeshrink_sshd_config_{port}").write_text(
        SSHD_CONFIG.format(port=port, host=host, cpu=cpu, venv=VENV)
    )
    (rootfs / "etc/hostname").write_text(hostname + "\n")
    cpuinfo = state_dir / "cpuinfo"
    write_cpuinfo(cpuinfo, cpu, cores or os.cpu_count())  # as many as qemu really runs
    log_path = state_dir / "sshd.log"

    setup = (
        "set -e; "
        f"R={shq(str(rootfs))}; "
        f"hostname {shq(hostname)}; "
        'mount -t proc proc "$R/proc"; '
        f'mount --bind {shq(str(cpuinfo))} "$R/proc/cpuinfo"; '
        'mount --rbind /dev "$R/dev"; '
        # rbind: the cgroup mounts under /sys/fs/cgroup let the agent see the memory limit.
        'mount --rbind /sys "$R/sys"; '
        'mount -t tmpfs tmpfs "$R/run"; mkdir -p "$R/run/sshd"; '
        'mount -t tmpfs tmpfs "$R/tmp"; '
        'cp -L /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true; '
        f'exec chroot "$R" /usr/sbin/sshd -D -e -f /etc/ssh/edgeshrink_sshd_config_{port}'
    )
    env = dict(CHROOT_ENV, QEMU_CPU=cpu)
    memory_mb = parse_mem(mem)
    group = None
    memory_note = None
    if memory_mb:
        rig = _rig_module()
        why = rig.memory_cgroup_problem()
        if why:
            memory_note = f"no memory limit: {why}"
            log(memory_note)
        else:
            group = rig._make_memory_cgroup(f"edgeshrink-arm64-{port}", memory_mb)

    def enter_cgroup() -> None:
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    with open(log_path, "ab") as handle:
        proc = subprocess.Popen(
            [*PRIVATE_NAMESPACES, "--uts", "sh", "-c", setup],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            preexec_fn=enter_cgroup,
            start_new_session=True,
        )
    known = state_dir / "known_hosts"
    key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
    pinned = f"[{host}]:{port}" if port != 22 else host
    known.write_text(f"{pinned} {key_type} {key_b64}\n")
    fingerprint = _run(["ssh-keygen", "-lf", str(host_key.with_suffix(".pub"))]).stdout.split()[1]
    profile = profile_for(cpu, memory_mb if group else None)
    state = {
        "pid": proc.pid,
        "rootfs": str(rootfs),
        "host": host,
        "port": port,
        "user": "root",
        "cpu": cpu,
        "hostname": hostname,
        "memory_limit_mb": memory_mb if group else None,
        "memory_note": memory_note,
        "cgroup": str(group) if group else None,
        "client_key": str(client),
        "known_hosts": str(known),
        "host_key_fingerprint": fingerprint,
        "python": f"{VENV}/bin/python",
        "tflite_runtime_python": f"{TFLITE_VENV}/bin/python" if mark.get("tflite_venv") else None,
        "work_dir": "/root/edgeshrink",
        "profile": profile,
        "log": str(log_path),
    }
    (state_dir / "rig.json").write_text(json.dumps(state, indent=2) + "\n")
    (state_dir / "target.toml").write_text(
        "\n".join(
            [
                'name = "pi-emu"',
                'kind = "ssh"',
                f"host = {json.dumps(host)}",
                f"port = {port}",
                'user = "root"',
                f"key = {json.dumps(str(client))}",
                f"known_hosts = {json.dumps(str(known))}",
                f"python = {json.dumps(state['python'])}",
                'work_dir = "/root/edgeshrink"',
                f"profile = {json.dumps(profile)}",
            ]
        )
        + "\n"
    )
    deadline = time.monotonic() + ready_timeout_s
    while not _banner(host, port, 1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-1500:]
            down(state_dir)
            raise DeviceError(f"sshd did not come up on {host}:{port}: {tail}")
        time.sleep(0.2)
    state["up_s"] = round(time.monotonic() - started, 1)
    (state_dir / "rig.json").write_text(json.dumps(state, indent=2) + "\n")
    return state


def down(state_dir: Path) -> str:
    state = load_state(state_dir)
    if not state:
        return "not up"
    pid = state["pid"]
    init = _ns_init(pid)
    # The namespace's init ignores SIGTERM (no handler in pid 1); SIGKILL ends it and,
    # with it, every process in the pid namespace and the private mounts.
    for victim in (init, pid):
        if victim:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
    for _ in range(200):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if not _alive(pid) and not (init and _alive(init)):
            break
        time.sleep(0.05)
    if state.get("cgroup"):
        _rig_module()._remove_cgroup(Path(state["cgroup"]))
    rootfs = state["rootfs"]
    leftover = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(rootfs + "/")
    ]
    (state_dir / "rig.json").unlink(missing_ok=True)
    return "stopped" + (f"; mounts left: {leftover}" if leftover else "; no mounts left")


def status(state_dir: Path, rootfs: Path) -> dict:
    state = load_state(state_dir) or {}
    doc = {"rootfs": str(rootfs), "built": _mark(rootfs), "up": False}
    if state:
        doc.update(state)
        doc["up"] = _alive(state["pid"]) and _banner(state["host"], state["port"])
    return doc


def register_target(state: dict, state_dir: Path, name: str) -> str | None:
    """Write the device as edgeshrink target ``name`` (replacing an older one), host key
    pinned, so that `edgeshrink doctor NAME` and `deploy --target NAME` just work.
    None when edgeshrink is not importable from this Python."""
    try:
        from dataclasses import replace

        from edgeshrink.errors import EdgeshrinkError
        from edgeshrink.targets import add_target, load_target_file
    except ImportError:
        return None
    try:
        target = replace(load_target_file(state_dir / "target.toml"), name=name)
        add_target(target, force=True)
    except EdgeshrinkError as exc:
        raise DeviceError(f"cannot register target {name!r}: {exc}") from exc
    return name


def how_to_reach(state: dict) -> str:
    registered = state.get("target")
    return "\n".join(
        [
            f"emulated {state['cpu']} ({state['hostname']}) on {state['host']}:{state['port']}, "
            f"up in {state.get('up_s', '?')} s"
            + (
                f", memory limit {state['memory_limit_mb']} MiB"
                if state.get("memory_limit_mb")
                else ""
            ),
            f"host key: ssh-ed25519 {state['host_key_fingerprint']}",
            f"ssh -p {state['port']} -i {state['client_key']} -o UserKnownHostsFile={state['known_hosts']} "
            f"root@{state['host']}",
            *(
                [
                    f"registered as edgeshrink target {registered!r} (profile {state['profile']}): "
                    f"edgeshrink doctor {registered}; edgeshrink deploy MODEL --target {registered}"
                ]
                if registered
                else [
                    f"edgeshrink targets add pi-emu --host {state['host']} --port {state['port']} "
                    f"--user root --key {state['client_key']} --python {state['python']} "
                    f"--profile {state['profile']} --accept-new-host-key",
                    f"edgeshrink doctor {Path(state['client_key']).parent / 'target.toml'}",
                ]
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", type=Path, default=DEFAULT_ROOTFS)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build the arm64 rootfs and its venvs (once)")
    b.add_argument("--with-llama", action="store_true", help="llama-cpp-python (~45 min once)")
    b.add_argument("--with-tflite-runtime", action="store_true", help="a tflite-runtime venv")
    b.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS)
    b.add_argument("--force", action="store_true", help="rebuild from scratch")
    u = commands.add_parser("up", help="start the device's sshd")
    u.add_argument("--cpu", default="cortex-a76", choices=sorted(CPUS))
    u.add_argument("--mem", default=None, help="memory limit, e.g. 4G (cgroup v1)")
    u.add_argument("--port", type=int, default=2222)
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--hostname", default="pi-emu")
    u.add_argument("--cores", type=int, default=None, help="CPUs listed in /proc/cpuinfo")
    u.add_argument(
        "--name",
        default="pi-emu",
        help="register the device as this edgeshrink target (default pi-emu; '' for none)",
    )
    u.add_argument("--json", action="store_true")
    commands.add_parser("down", help="stop it (SIGKILL the namespace)")
    s = commands.add_parser("status", help="built? up?")
    s.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            result = build(
                args.rootfs,
                with_llama=args.with_llama,
                with_tflite_runtime=args.with_tflite_runtime,
                wheels=args.wheels,
                force=args.force,
            )
            print(json.dumps(result, indent=2))
        elif args.command == "up":
            state = up(
                args.rootfs,
                args.state_dir,
                cpu=args.cpu,
                mem=args.mem,
                port=args.port,
                host=args.host,
                hostname=args.hostname,
                cores=args.cores,
            )
            if args.name:
                state["target"] = register_target(state, args.state_dir, args.name)
                (args.state_dir / "rig.json").write_text(json.dumps(state, indent=2) + "\n")
            print(json.dumps(state, indent=2) if args.json else how_to_reach(state))
        elif args.command == "down":
            print(down(args.state_dir))
        else:
            doc = status(args.state_dir, args.rootfs)
            if args.json:
                print(json.dumps(doc, indent=2))
            else:
                print(
                    ("up: " + how_to_reach(doc))
                    if doc["up"]
                    else f"down; rootfs {'built' if doc['built'] else 'not built'} at {doc['rootfs']}"
                )
            return 0 if doc["up"] else 3
    except (DeviceError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"arm64-device: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
