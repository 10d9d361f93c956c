"""Test models made by edgeshrink itself: no network, no hub, no downloaded weights."""

from edgeshrink.testmodels.llama_gguf import (
    FTYPES,
    SIZES,
    LlamaPreset,
    SpmVocab,
    build_spm_vocab,
    make_llama_gguf,
)

__all__ = ["FTYPES", "SIZES", "LlamaPreset", "SpmVocab", "build_spm_vocab", "make_llama_gguf"]
