"""Hugging Face checkpoint directories: planned from their headers, converted to GGUF,
then shrunk by the GGUF backend.

The converted GGUF (F16/BF16/F32, llama.cpp's input) is kept beside the final
artifact with its own manifest, so a second shrink of the same checkpoint
reuses it and `eval`/`sweep` have a base to compare against.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import default_output_path
from edgeshrink.convert import convert_hf_to_gguf
from edgeshrink.convert import inspect_hf as inspect
from edgeshrink.convert.architectures import find_spec
from edgeshrink.convert.hf_to_gguf import gguf_tensor_shapes
from edgeshrink.convert.prune_hf import kept_blocks, prune_checkpoint
from edgeshrink.distill.encoder import distill_encoder
from edgeshrink.distill.train import TrainSettings, status_line
from edgeshrink.errors import RecipeError
from edgeshrink.formats import backend
from edgeshrink.formats.base import Backend, Built, ModelInfo
from edgeshrink.formats.gguf.plan import plan_llm
from edgeshrink.passes import step
from edgeshrink.passes.base import removed_layers
from edgeshrink.plan import ShrinkOptions, ShrinkPlan
from edgeshrink.profiles import HardwareProfile

Progress = Callable[[str], None]
FLOAT_TYPES = ("F32", "F16", "BF16")  # what the converter writes itself
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                    "special_tokens_map.json", "generation_config.json", "modules.json", "vocab.txt")  # fmt: skip


def inspect_hf(path: str | os.PathLike[str]) -> ModelInfo:

    return inspect(path)


def plan_hf(
    info: ModelInfo, profile: HardwareProfile, options: ShrinkOptions | None = None
) -> ShrinkPlan:

    options = options or ShrinkOptions()
    shapes = gguf_tensor_shapes(info.path, options.convert_type)
    return plan_llm(info, profile, options, shapes)


def checkpoint_sha256(directory: Path) -> str:
    """One sha256 over the checkpoint's weights and the files that shape its conversion."""
    digest = hashlib.sha256()
    files = sorted(directory.glob("*.safetensors")) + [
        directory / name for name in CHECKPOINT_FILES if (directory / name).exists()
    ]
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(4 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def converted_type(info: ModelInfo, plan: ShrinkPlan, options: ShrinkOptions) -> str:
    """The float type the converter writes: the type asked for when it is one, else
    ``--convert-type`` (auto keeps BF16 and writes F16 otherwise)."""
    if plan.quant.upper() in FLOAT_TYPES:
        return plan.quant.lower()
    if options.convert_type == "auto":
        return "bf16" if info.file_type == "BF16" else "f16"
    return options.convert_type


def conversion_path(
    src: Path, info: ModelInfo, plan: ShrinkPlan, options: ShrinkOptions, output: Path | None
) -> Path:
    """Where the converted GGUF goes: the artifact itself for a float type, otherwise
    ``<checkpoint>-<type>.gguf`` beside the artifact, where later shrinks find it."""
    final = output or default_output_path(src, plan.quant)
    if plan.quant.upper() in FLOAT_TYPES:
        return final
    return final.parent / f"{src.name}-{converted_type(info, plan, options)}.gguf"


def convert_build(src: Path, work: Path, name: str, recipe: Any, progress: Any,
                  text: str | None = None) -> Built:  # fmt: skip
    """Convert ``src`` (without the blocks a prune step removes, trained when a distill
    step says so) to ``work/name``."""
    outtype = recipe[-1].get("type").lower()
    layers = removed_layers(recipe)
    checkpoint = src
    notes: list[str] = []
    done = [s.to_dict() for s in recipe]
    if layers:
        progress(f"removing layers {', '.join(map(str, layers))} of {src.name}")
        checkpoint = prune_checkpoint(src, layers, work / f"{src.name}-pruned")
    distill = next((s for s in recipe if s.name == "distill"), None)
    if distill is not None:
        if text is None or hashlib.sha256(text.encode()).hexdigest() != distill.get("text"):
            raise RecipeError(
                "distill needs the text its recipe names", hint="give the training text with --text"
            )
        settings = TrainSettings(
            steps=distill.get("steps"), minutes=distill.get("minutes"), lr=distill.get("lr"),
            batch=distill.get("batch"), seed=distill.get("seed"),
        )  # fmt: skip
        progress(f"training the student of {src.name} to embed like it (MSE of pooled embeddings)")
        facts = distill_encoder(src, checkpoint, text, settings,
                                on_step=lambda s: progress(status_line(s)))  # fmt: skip
        done[[s.name for s in recipe].index("distill")]["detail"] = json.dumps(
            facts.to_dict(), sort_keys=True
        )
    progress(f"converting {src.name} to GGUF ({outtype})")
    result = convert_hf_to_gguf(checkpoint, work / name, outtype=outtype)
    return Built(path=work / name, recipe=tuple(done), notes=(*notes, *result.notes), format="gguf")


class HfBackend(Backend):
    """A front end: checkpoints are converted to GGUF and then are the GGUF backend's."""

    format = "hf"
    label = "llama.cpp"
    runtime = "llama.cpp, after conversion to GGUF"
    evaluation = "llm-text"

    @property
    def quant_types(self) -> tuple[str, ...]:  # type: ignore[override]
        return backend("gguf").quant_types

    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        return inspect_hf(path)

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:
        return plan_hf(info, profile, options)

    tool = "the GGUF converter"
    front_end_for = "gguf"

    def source_sha256(self, src: Path, info: ModelInfo) -> str:
        return checkpoint_sha256(src)

    def check_recipe(self, info: ModelInfo, recipe: Any) -> None:
        layers = removed_layers(recipe)
        if layers and info.llm is not None:
            kept_blocks(info.llm.n_layer, layers, info.architecture, info.path.name)

    def intermediate(
        self, src: Path, info: ModelInfo, plan: Any, options: Any, output: Path | None
    ) -> tuple[Path, Any]:
        """The converted GGUF, made from the checkpoint without the blocks a prune step
        removes (pruned before conversion: llama.cpp then sees a model of that size)."""
        ctype = converted_type(info, plan, options)
        # A distillation needs the unpruned teacher as a GGUF too: then the whole model is
        # converted and the GGUF backend prunes, trains and quantizes.
        # An embedding model is distilled here, on its checkpoint (transformers), before
        # conversion: then the prune and the distillation are this front end's.
        distills = any(s.name == "distill" for s in options.passes)
        if distills and self.embeds(info):
            prunes = tuple(s for s in options.passes if s.name in ("prune", "distill"))
        else:
            prunes = () if distills else tuple(s for s in options.passes if s.name == "prune")
        recipe = (*prunes, step("quantize", type=ctype.upper()))
        path = conversion_path(src, info, plan, options, output)
        layers = removed_layers(prunes)
        if layers and plan.quant.upper() not in FLOAT_TYPES:
            path = path.with_name(f"{src.name}-without-{'-'.join(map(str, layers))}-{ctype}.gguf")
        return path, recipe

    def verify(self, built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
        # A pruned conversion is loaded and run like any pruned GGUF.
        return backend("gguf").verify(built, info, options, progress)

    def build(self, src: Path, work: Path, name: str, recipe: Any, **kw: Any) -> Built:
        return convert_build(src, work, name, recipe, kw["progress"], kw["options"].text)

    def embeds(self, info: ModelInfo) -> bool:
        meta = dict(info.metadata)
        spec = find_spec({"architectures": [meta.get("hf.architecture")],
                          "model_type": meta.get("hf.model_type")})  # fmt: skip
        return bool(spec and spec.encoder)

    def normalize_quant(self, name: str) -> str:
        return backend("gguf").normalize_quant(name)


BACKEND = HfBackend()
