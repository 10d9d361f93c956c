"""The demo's model: made on first use in the user's cache, never downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.testmodels.llama_gguf import SIZES, make_llama_gguf


def demo_model_path(size: str = "small", progress: Callable[[str], None] | None = None) -> Path:
    """The demo model, made (and said so through ``progress``) only when it is not there."""
    import platformdirs

    if size not in SIZES:
        raise EdgeshrinkError(
            f"unknown demo size '{size}'", hint=f"choose one of: {', '.join(SIZES)}"
        )
    folder = platformdirs.user_cache_path("edgeshrink") / "demo"
    path = folder / f"edgeshrink-demo-llama-{size}-f16.gguf"
    if not path.exists():
        if progress:
            progress(f"making a {size} llama-architecture model (F16, random weights, fixed seed)")
        make_llama_gguf(path, size=size, ftype="f16", seed=0)
    elif progress:
        progress(f"reusing the {size} demo model made earlier ({path.name})")
    return path
