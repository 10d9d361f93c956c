"""The prune pass: remove whole transformer blocks, the ones a model needs least.

Blocks are removed by llama.cpp's own quantizer (its prune list renumbers the
blocks and fixes the layer count), so a pruned model is smaller and faster on
every runtime; sparsity inside matrices makes nothing faster on llama.cpp,
onnxruntime's CPU provider or TFLite's kernels, and is not offered.
"""

from __future__ import annotations

from edgeshrink.passes.base import Pass, Setting


def _layer_list(value: tuple[int, ...]) -> str | None:
    if not value:
        return "no layers to remove"
    if any(v < 0 for v in value):
        return f"layer indices start at 0, got {list(value)}"
    if len(set(value)) != len(value):
        return f"a layer is named twice in {list(value)}"
    return None


PRUNE = Pass(
    name="prune",
    summary="remove whole transformer blocks (0-based indices)",
    formats=("gguf", "hf"),
    produces="the same architecture with fewer blocks, renumbered",
    settings=(
        Setting(
            "layers",
            tuple,
            "the 0-based blocks to remove, e.g. layers=[7, 8]",
            check=_layer_list,
            normalize=lambda v: tuple(sorted(v)),
        ),  # fmt: skip
    ),
)
