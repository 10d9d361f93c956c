"""The distill pass: a smaller student (the model with blocks removed) trained to imitate
the original, on the CPU (torch and transformers: `pip install 'edgeshrink[distill]'`).

The teacher and the text enter the recipe as their sha256, so the same bytes, text and
settings give the same artifact (found, not retrained); the training itself is in
edgeshrink/distill/.
"""

from __future__ import annotations

from edgeshrink.passes.base import REQUIRED, Pass, Setting


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be more than 0, got {value}"


def _sha(value: str) -> str | None:
    ok = len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    return None if ok else "not a sha256"


DISTILL = Pass(
    name="distill",
    summary="train the pruned student to match the original's outputs (KL at a temperature)",
    formats=("gguf", "hf"),
    produces="the same student, healed: a float model, then quantized like any other",
    settings=(
        Setting("teacher", str, "the teacher's sha256", REQUIRED, check=_sha),
        Setting("text", str, "the training text's sha256", REQUIRED, check=_sha),
        Setting("steps", int, "training steps, e.g. steps=400", None, check=_positive),
        Setting("minutes", float, "training time in minutes", None, check=_positive),
        Setting(
            "train",
            str,
            "what trains: all, or near-cuts (the blocks beside each cut + the head)",
            "all",
            check=lambda v: None if v in ("all", "near-cuts") else "all or near-cuts",
        ),  # fmt: skip
        Setting("temperature", float, "the KL's temperature", 2.0, check=_positive),
        Setting(
            "alpha",
            float,
            "weight of the next-token loss",
            0.0,
            check=lambda v: None if v >= 0 else "0 or more",
        ),  # fmt: skip
        Setting("lr", float, "AdamW's learning rate", 3e-4, check=_positive),
        Setting("batch", int, "chunks per step", 4, check=_positive),
        Setting(
            "ctx", int, "tokens per chunk", 256, check=lambda v: None if v >= 16 else "16 or more"
        ),
        Setting("seed", int, "the seed (with steps: the same student every time)", 0),
        Setting("cuts", tuple, "the teacher's blocks the student lacks (for near-cuts)", None),
    ),
)
