"""Build llama.cpp's own command-line tools (llama-bench, llama-perplexity, ...).

The tools come from the llama.cpp copy inside the llama-cpp-python source
distribution of the version that is installed, so the tools and the Python
binding run the same llama.cpp code.  A built tool is kept in

    CACHE_DIR/bin/NAME         statically linked (default)
    CACHE_DIR/bin-shared/NAME  linked against shared libllama/libggml, so that
                               LD_LIBRARY_PATH can point it at the binding's own

(default CACHE_DIR: ~/.cache/edgeshrink/llama.cpp-VERSION) and later calls
return it without building.  Use from other scripts:

    from llama_tools import ensure_llama_tool
    bench = ensure_llama_tool("llama-bench")

or from the shell:

    python scripts/llama_tools.py llama-bench llama-perplexity
    python scripts/llama_tools.py --shared llama-bench
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

DIST_NAME = "llama_cpp_python"

# Only what the tools need: no server/UI, no tests or examples, no HTTPS
# downloads (LLAMA_CURL is deprecated in this llama.cpp and LLAMA_OPENSSL took
# its place).  GGML_NATIVE stays at its default (ON), like the binding's own
# build, so both use the same CPU kernels.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)


class LlamaToolBuildError(EdgeshrinkError, RuntimeError):
    """Fetching the llama-cpp-python source or building a llama.cpp tool failed."""

    default_hint = "read the build log named in the message"


def installed_version() -> str:
    """Version of the installed llama-cpp-python distribution."""
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError as exc:
        raise LlamaToolBuildError(
            f"{DIST_NAME} is not installed in {sys.prefix}",
            hint="pip install 'edgeshrink[gguf]', or pass the version explicitly",
        ) from exc


def default_cache_dir(version: str) -> Path:
    return Path.home() / ".cache" / "edgeshrink" / f"llama.cpp-{version}"


def wheel_library_dir() -> Path | None:
    """Directory of the installed binding's libllama.so / libggml*.so (without importing it)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "lib"
    return lib if any(lib.glob("libllama.so*")) else None


@functools.cache
def no_extra_buffer_args(tool: str) -> tuple[str, ...]:
    """Arguments that keep llama.cpp tool ``tool``'s weights out of the extra buffer types
    (AMX, repacking) when edgeshrink keeps its own out of them: a binding built with AMX
    on a CPU that has it (llama.cpp issue 20824 crashes there; edgeshrink_agent.avoid_amx).
    Both sides then run the same kernels.  Empty when edgeshrink uses them too."""
    import llama_cpp

    from edgeshrink.agent.edgeshrink_agent import avoid_amx

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    if not avoid_amx(llama_cpp.llama_model_default_params(), info):
        return ()
    return ("--repack", "0") if tool == "llama-bench" else ("--no-repack",)


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """Serialise builds into one cache directory between processes."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_logged(cmd: list[str], log_path: Path, what: str) -> None:
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise LlamaToolBuildError(
            f"{what} failed (exit {result.returncode}); last lines of {log_path}:\n"
            + "\n".join(tail)
        )


def _find_sdist_tree(root: Path) -> Path | None:
    """The extracted source tree under root (the one holding vendor/llama.cpp)."""
    if (root / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return root
    for child in sorted(root.glob("llama_cpp_python-*")) + sorted(root.glob("llama-cpp-python-*")):
        if (child / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
            return child
    return None


def ensure_sdist(version: str, cache_dir: Path, log_path: Path) -> Path:
    """Download and extract the llama-cpp-python source distribution once; return its tree."""
    src_root = cache_dir / "src"
    tree = _find_sdist_tree(src_root) if src_root.is_dir() else None
    if tree is not None:
        return tree
    download_dir = cache_dir / "download"
    download_dir.mkdir(parents=True, exist_ok=True)
    archives = sorted(download_dir.glob("*.tar.gz"))
    if not archives:
        _run_logged(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(download_dir),
            ],
            log_path,
            f"pip download llama-cpp-python=={version}",
        )
        archives = sorted(download_dir.glob("*.tar.gz"))
    if not archives:
        raise LlamaToolBuildError(f"pip download left no .tar.gz in {download_dir}")
    archive = archives[-1]
    # Extract beside the final name and rename, so an interrupted extraction
    # never looks like a complete source tree.
    staging = Path(tempfile.mkdtemp(prefix=".src-", dir=cache_dir))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        if _find_sdist_tree(staging) is None:
            raise LlamaToolBuildError(f"{archive} holds no vendor/llama.cpp/CMakeLists.txt")
        os.replace(staging, src_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tree = _find_sdist_tree(src_root)
    assert tree is not None
    return tree


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_built(tool: Path) -> bool:
    return tool.is_file() and os.access(tool, os.X_OK)  # follows the shared layout's symlink


def ensure_llama_tool(
    name: str,
    version: str | None = None,
    cache_dir: Path | None = None,
    *,
    shared: bool = False,
    sdist_dir: Path | None = None,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Return the path of llama.cpp tool ``name`` (a cmake target such as
    ``llama-bench``), building it first if the cache does not hold it.

    By default the tool is linked statically (CACHE_DIR/bin/NAME, a standalone
    file).  ``shared=True`` builds it against shared libllama/libggml instead
    (CACHE_DIR/bin-shared/NAME, a link into CACHE_DIR/build-shared): run that
    with LD_LIBRARY_PATH=wheel_library_dir() and it uses exactly the library
    code the Python binding uses.  ``sdist_dir`` reuses an already-extracted
    llama-cpp-python source tree instead of downloading one.  ``progress``
    receives one line before a download or build starts (nothing on a cache hit).
    """
    version = version or installed_version()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(version)
    suffix = "-shared" if shared else ""
    tool = cache_dir / f"bin{suffix}" / name
    if _is_built(tool):
        return tool
    with _locked(cache_dir):
        if _is_built(tool):  # built while we waited
            return tool
        log_path = cache_dir / "build.log"
        if sdist_dir is not None:
            tree = _find_sdist_tree(Path(sdist_dir))
            if tree is None:
                raise LlamaToolBuildError(
                    f"{sdist_dir} holds no vendor/llama.cpp/CMakeLists.txt",
                    hint="point --sdist-dir at an extracted llama_cpp_python-VERSION directory",
                )
        else:
            if progress and not (cache_dir / "src").is_dir():
                progress(f"fetching llama-cpp-python=={version} source into {cache_dir}")
            tree = ensure_sdist(version, cache_dir, log_path)
        build_dir = cache_dir / f"build{suffix}"
        jobs = jobs or os.cpu_count() or 1
        if progress:
            progress(
                f"building {name} ({'shared' if shared else 'static'}) from"
                f" {tree / 'vendor' / 'llama.cpp'} (log: {log_path})"
            )
        started = time.perf_counter()
        if not (build_dir / "CMakeCache.txt").is_file():
            cmd = ["cmake", "-S", str(tree / "vendor" / "llama.cpp"), "-B", str(build_dir)]
            if shutil.which("ninja"):
                cmd += ["-G", "Ninja"]
            cmd += [*CMAKE_OPTIONS, f"-DBUILD_SHARED_LIBS={'ON' if shared else 'OFF'}"]
            try:
                _run_logged(cmd, log_path, "cmake configure")
            except LlamaToolBuildError:
                # A half-written cache would make the next call skip configuring.
                (build_dir / "CMakeCache.txt").unlink(missing_ok=True)
                raise
        _run_logged(
            ["cmake", "--build", str(build_dir), "--target", name, "-j", str(jobs)],
            log_path,
            f"cmake --build --target {name}",
        )
        built = build_dir / "bin" / name
        if not built.is_file():
            raise LlamaToolBuildError(f"the build succeeded but {built} does not exist")
        # The final name appears only now, by rename, so an interrupted build or
        # copy never leaves something that looks built.
        tool.parent.mkdir(parents=True, exist_ok=True)
        partial = tool.with_name(f".{name}.partial-{os.getpid()}")
        partial.unlink(missing_ok=True)
        if shared:
            # It finds its own shared libraries through the build tree: link, don't copy.
            partial.symlink_to(built)
        else:
            shutil.copy2(built, partial)
            if _sha256(partial) != _sha256(built):
                partial.unlink(missing_ok=True)
                raise LlamaToolBuildError(f"copying {built} to {tool} gave a different file")
        os.replace(partial, tool)
        with open(log_path, "a") as log:
            log.write(f"\n# built {name} in {time.perf_counter() - started:.0f} s\n")
    return tool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tools", nargs="+", help="cmake targets, e.g. llama-bench llama-perplexity")
    parser.add_argument("--version", help="llama-cpp-python version (default: the installed one)")
    parser.add_argument("--cache-dir", type=Path, help="default: ~/.cache/edgeshrink/llama.cpp-VER")
    parser.add_argument("--sdist-dir", type=Path, help="an extracted llama-cpp-python source tree")
    parser.add_argument(
        "--shared", action="store_true", help="link against shared libllama/libggml"
    )
    parser.add_argument("-j", "--jobs", type=int, help="parallel build jobs (default: all cores)")
    args = parser.parse_args(argv)
    try:
        for name in args.tools:
            started = time.perf_counter()
            path = ensure_llama_tool(
                name,
                args.version,
                args.cache_dir,
                shared=args.shared,
                sdist_dir=args.sdist_dir,
                jobs=args.jobs,
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
            print(f"{path}\t{time.perf_counter() - started:.0f} s")
    except EdgeshrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
