"""Shared fixtures: every test gets its own user dirs, and real models made by the project."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import SHARED_STORIES, llama_cpp_available, needs_llama_cpp, run_cli  # noqa: F401


@pytest.fixture(autouse=True)
def isolated_user_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """No test reads or writes the real user's config, cache, data or results database."""
    home = tmp_path_factory.mktemp("home")
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_DATA_HOME", "data"),
    ):
        (home / sub).mkdir()
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("EDGESHRINK_DB", str(home / "results.db"))
    monkeypatch.setenv("EDGESHRINK_LOCAL_WORKDIR", str(home / "local-device"))
    monkeypatch.delenv("EDGESHRINK_PROFILES_PATH", raising=False)
    monkeypatch.delenv("EDGESHRINK_TARGETS_PATH", raising=False)
    monkeypatch.delenv("EDGESHRINK_DEBUG", raising=False)
    return home


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_f16(model_dir: Path) -> Path:
    """A 5.8 MB llama GGUF (rows multiples of 256, GQA) made by the project's maker."""
    from edgeshrink.testmodels import make_llama_gguf

    return make_llama_gguf(model_dir / "tiny-f16.gguf", size="tiny", ftype="f16")


@pytest.fixture(scope="session")
def small_f16(model_dir: Path) -> Path:
    """A 25 MB llama GGUF: large enough that neighbouring types differ by megabytes."""
    from edgeshrink.testmodels import make_llama_gguf

    return make_llama_gguf(model_dir / "small-f16.gguf", size="small", ftype="f16")


@pytest.fixture(scope="session")
def nano_f32(model_dir: Path) -> Path:
    """A 1 MB llama GGUF whose 128-wide rows make K-quants fall back."""
    from edgeshrink.testmodels import make_llama_gguf

    return make_llama_gguf(model_dir / "nano-f32.gguf", size="nano", ftype="f32")


@pytest.fixture(scope="session")
def stories() -> Path:
    if not SHARED_STORIES.exists():
        pytest.skip(f"the shared trained model is not at {SHARED_STORIES}")
    return SHARED_STORIES
