"""Remove whole blocks from a Hugging Face checkpoint, before it is converted.

The blocks' tensors are dropped and the rest renumbered (``model.layers.7.`` becomes
``model.layers.5.`` when two earlier blocks go), ``num_hidden_layers`` is updated and
every per-layer list of the config is trimmed the same way. The tensors are copied
byte for byte, shard by shard, so the result is the same checkpoint minus those blocks:
what llama.cpp's converter, transformers or a distillation run then read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from edgeshrink.convert.safetensors_reader import INDEX_NAME, Checkpoint
from edgeshrink.convert.safetensors_writer import write_safetensors
from edgeshrink.errors import ModelFileError, RecipeError
from edgeshrink.util import atomic_dir

# model.layers.N. (llama family, Qwen2, Phi-3, Gemma), encoder.layer.N. (BERT)
BLOCK_NAME = re.compile(r"^(?P<head>(?:.*\.)?layers?)\.(?P<index>\d+)\.(?P<tail>.+)$")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# Architectures that alternate sliding-window and global attention by block index.
ALTERNATING = {"gemma2": 2}


def block_count(config: dict) -> int:
    for key in LAYER_COUNT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise ModelFileError(
        "config.json names no layer count (num_hidden_layers)",
        hint="give a Hugging Face checkpoint of a transformer",
    )


def kept_blocks(n_layer: int, layers: tuple[int, ...], model_type: str, name: str) -> list[int]:
    outside = [i for i in layers if not 0 <= i < n_layer]
    if outside:
        raise RecipeError(
            f"{name} has {n_layer} layers (0 to {n_layer - 1}); there is no layer "
            f"{', '.join(map(str, outside))}",
            hint=f"name layers from 0 to {n_layer - 1}",
        )
    kept = [i for i in range(n_layer) if i not in set(layers)]
    if not kept:
        raise RecipeError(
            f"removing {len(set(layers))} of {name}'s {n_layer} layers leaves none",
            hint=f"remove at most {n_layer - 1}",
        )
    period = ALTERNATING.get(model_type)
    if period and any(old % period != new % period for new, old in enumerate(kept)):
        raise RecipeError(
            f"{model_type} alternates local and global attention by layer index: removing "
            f"layers {', '.join(map(str, layers))} would change the kind of the layers after them",
            hint=f"remove runs of {period} consecutive layers (e.g. 6,7)",
        )
    return kept


def prune_checkpoint(
    src: str | os.PathLike[str], layers: tuple[int, ...], dst: str | os.PathLike[str]
) -> Path:
    """Write ``dst``: the checkpoint ``src`` without blocks ``layers`` (0-based)."""
    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    n_layer = block_count(config)
    kept = kept_blocks(n_layer, layers, str(config.get("model_type", "")), src.name)
    new_index = {old: new for new, old in enumerate(kept)}
    with atomic_dir(dst) as tmp, Checkpoint(src) as checkpoint:
        for path in src.iterdir():
            if path.is_dir():  # sentence-transformers' 1_Pooling/, 2_Normalize/ ...
                if not any(path.rglob("*.safetensors")):
                    shutil.copytree(path, tmp / path.name)
            elif path.suffix != ".safetensors" and path.name != INDEX_NAME:
                shutil.copy2(path, tmp / path.name)
        weight_map: dict[str, str] = {}
        for shard in checkpoint.files:
            plan = []
            for entry in shard.entries.values():
                match = BLOCK_NAME.match(entry.name)
                if match is None:
                    plan.append((entry.name, entry))
                    continue
                old = int(match["index"])
                if old >= n_layer:
                    raise ModelFileError(
                        f"{shard.path.name}: tensor {entry.name} belongs to block {old}, but "
                        f"config.json says {n_layer} layers",
                        hint="the checkpoint's weights and config.json disagree",
                    )
                if old in new_index:
                    plan.append((f"{match['head']}.{new_index[old]}.{match['tail']}", entry))
            write_safetensors(
                tmp / shard.path.name,
                [(name, entry.dtype, entry.shape) for name, entry in plan],
                (shard.array(entry.name) for _, entry in plan),
                shard.metadata or None,
            )
            weight_map.update({name: shard.path.name for name, _ in plan})
        if (src / INDEX_NAME).is_file():
            index = json.loads((src / INDEX_NAME).read_text(encoding="utf-8"))
            index["weight_map"] = weight_map
            index.setdefault("metadata", {})["total_size"] = sum(
                checkpoint.entries[n].nbytes for n in checkpoint.entries if _kept(n, new_index)
            )
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")
        (tmp / "config.json").write_text(
            json.dumps(pruned_config(config, n_layer, kept), indent=2), encoding="utf-8"
        )
    return dst


def _kept(name: str, new_index: dict[int, int]) -> bool:
    match = BLOCK_NAME.match(name)
    return match is None or int(match["index"]) in new_index


def pruned_config(config: dict, n_layer: int, kept: list[int]) -> dict:
    """``config`` for the kept blocks: the layer count, and every list with one entry
    per layer (``layer_types``, per-layer head counts) trimmed to the kept ones."""
    out = {}
    for key, value in config.items():
        if key in LAYER_COUNT_KEYS and value == n_layer:
            out[key] = len(kept)
        elif isinstance(value, list) and len(value) == n_layer and n_layer > 1:
            out[key] = [value[i] for i in kept]
        else:
            out[key] = value
    return out
