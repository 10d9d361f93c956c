"""Shared fixtures: every test gets its own user dirs, and real models made by the project."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (  # noqa: F401
    SHARED_STORIES,
    llama_cpp_available,
    load_script,
    needs_llama_cpp,
    run_cli,
)


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


@pytest.fixture(autouse=True, scope="session")
def llama_without_amx_crash() -> Iterator[None]:
    """Tests that open models with llama_cpp.Llama directly get the guard edgeshrink's own
    llama.cpp users have (agent, evaluator): on a CPU whose AMX kernels crash llama.cpp
    (issue 20824), weights stay out of the extra buffer types."""
    if not llama_cpp_available():
        yield
        return
    import llama_cpp.llama_cpp as lc

    from edgeshrink.agent.edgeshrink_agent import avoid_amx

    original = lc.llama_model_default_params
    system_info = lc.llama_print_system_info().decode("utf-8", "replace")

    def guarded_params():  # type: ignore[no-untyped-def]
        params = original()
        avoid_amx(params, system_info)
        return params

    lc.llama_model_default_params = guarded_params
    yield
    lc.llama_model_default_params = original


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL server for the session (scripts/pg_rig.py: initdb in a temporary
    directory, 127.0.0.1 and a unix socket), stopped and removed at the end."""
    pg_rig = load_script("pg_rig")
    reason = pg_rig.postgres_available()
    if reason:
        pytest.skip(f"no PostgreSQL server here: {reason}")
    rig = pg_rig.start_postgres()
    try:
        yield rig
    finally:
        pg_rig.stop_postgres(rig)


@pytest.fixture
def postgres_url(postgres_server: Any) -> Iterator[str]:
    """A new, empty database of its own on the session's server (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new results database on each engine: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "results.db")
    return request.getfixturevalue("postgres_url")
