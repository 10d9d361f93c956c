"""The GGUF metadata of a conversion: the model's hyperparameters, RoPE and its scaling, and
sentence-transformers pooling, read from config.json and written as llama.cpp's keys."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgeshrink.convert.architectures import ArchSpec, Shape, hf_class_of
from edgeshrink.convert.tokenizer import Vocab
from edgeshrink.errors import ModelFileError, UnsupportedFormatError


def rope_scaling(config: dict[str, Any]) -> dict[str, Any]:
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    return params if isinstance(params, dict) else {}


def rope_theta(config: dict[str, Any]) -> float:
    theta = config.get("rope_theta") or rope_scaling(config).get("rope_theta") or 10000.0
    return float(theta)


def rope_type(config: dict[str, Any]) -> str | None:
    params = rope_scaling(config)
    kind = params.get("rope_type") or params.get("type")
    return None if kind in (None, "default") else str(kind).lower()


def rope_dims(spec: ArchSpec, shape: Shape, config: dict[str, Any]) -> int:
    partial = config.get("partial_rotary_factor") or rope_scaling(config).get(
        "partial_rotary_factor"
    )
    if spec.family == "phi3":
        return int(float(partial or 1.0) * shape.n_embd) // shape.n_head
    return int(shape.head_dim * float(partial or 1.0))


def model_name(config: dict[str, Any], directory: Path) -> str:
    name = config.get("_name_or_path")
    return Path(str(name)).name if name else directory.resolve().name


def write_metadata(
    writer: Any,
    spec: ArchSpec,
    shape: Shape,
    config: dict[str, Any],
    directory: Path,
    outtype: str,
    vocab: Vocab,
    notes: list[str],
) -> None:
    import gguf
    from gguf.constants import LlamaFileType

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model_name(config, directory))
    writer.add_description(
        f"converted from a Hugging Face {hf_class_of(config)} checkpoint by edgeshrink"
    )
    writer.add_file_type(
        {
            "f32": LlamaFileType.ALL_F32,
            "f16": LlamaFileType.MOSTLY_F16,
            "bf16": LlamaFileType.MOSTLY_BF16,
        }[outtype]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_context_length(shape.n_ctx)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_vocab_size(vocab.size)
    if spec.encoder:
        _write_encoder_metadata(writer, config, directory, notes)
        return

    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_rope_dimension_count(rope_dims(spec, shape, config))
    if shape.head_dim_explicit or spec.family in ("gemma", "gemma2"):
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    _write_rope_scaling(writer, spec, shape, config, notes)

    if spec.family == "gemma2":
        for key, add in (
            ("attn_logit_softcapping", writer.add_attn_logit_softcapping),
            ("final_logit_softcapping", writer.add_final_logit_softcapping),
        ):
            if config.get(key) is not None:
                add(float(config[key]))
            else:
                notes.append(f"config.json has no {key}: llama.cpp applies its gemma2 default")
        if config.get("sliding_window"):
            writer.add_sliding_window(int(config["sliding_window"]))
    if spec.family == "phi3":
        orig = rope_scaling(config).get("original_max_position_embeddings") or config.get(
            "original_max_position_embeddings", shape.n_ctx
        )
        writer.add_rope_scaling_orig_ctx_len(int(orig))
        writer.add_sliding_window(int(config.get("sliding_window") or 0))
    if (
        spec.family in ("mistral", "qwen2")
        and config.get("sliding_window")
        and (spec.family == "mistral" or config.get("use_sliding_window"))
    ):
        notes.append(
            f"sliding_window {config['sliding_window']} is not used by llama.cpp's "
            f"{spec.gguf_arch.lower()} graph: prompts longer than it attend to everything"
        )


def _write_rope_scaling(
    writer: Any, spec: ArchSpec, shape: Shape, config: dict[str, Any], notes: list[str]
) -> None:
    import gguf

    kind = rope_type(config)
    params = rope_scaling(config)
    if kind is None:
        return
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        writer.add_rope_scaling_orig_ctx_len(
            int(params.get("original_max_position_embeddings") or shape.n_ctx)
        )
    elif kind == "llama3" and spec.family in ("llama", "mistral"):
        pass  # the rope_freqs tensor carries it
    elif kind in ("longrope", "su") and spec.family == "phi3":
        orig = float(
            params.get("original_max_position_embeddings")
            or config.get("original_max_position_embeddings", shape.n_ctx)
        )
        ratio = shape.n_ctx / orig
        attn = math.sqrt(1 + math.log(ratio) / math.log(orig)) if ratio > 1.0 else 1.0
        writer.add_rope_scaling_attn_factors(attn)
    elif kind == "dynamic":
        notes.append("llama.cpp has no dynamic NTK RoPE scaling: converted without it")
    else:
        raise UnsupportedFormatError(
            f"config.json asks for {kind!r} RoPE scaling, which edgeshrink does not convert for "
            f"{spec.family}",
            hint="supported RoPE scaling: linear, yarn, llama3 (llama), longrope (phi3)",
        )


def _write_encoder_metadata(
    writer: Any, config: dict[str, Any], directory: Path, notes: list[str]
) -> None:
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
    writer.add_causal_attention(False)
    writer.add_token_type_count(int(config.get("type_vocab_size", 2)))
    pooling = _sentence_transformers_pooling(directory)
    if pooling is None:
        notes.append("no sentence-transformers pooling (modules.json): llama.cpp's default applies")
    else:
        writer.add_pooling_type(pooling)


def sentence_pooling(directory: Path) -> str | None:
    """How the checkpoint pools a sentence embedding: "mean", "cls", "last" or None."""
    import gguf

    kind = _sentence_transformers_pooling(directory)
    names = {
        gguf.PoolingType.MEAN: "mean",
        gguf.PoolingType.CLS: "cls",
        gguf.PoolingType.LAST: "last",
    }
    return names.get(kind) if kind is not None else None


def _sentence_transformers_pooling(directory: Path) -> Any:
    import gguf

    modules_path = directory / "modules.json"
    if not modules_path.is_file():
        return None
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        pooling_dir = next(m["path"] for m in modules if str(m.get("type", "")).endswith("Pooling"))
        pooling = json.loads((directory / pooling_dir / "config.json").read_text(encoding="utf-8"))
    except StopIteration:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(
            f"{directory} has an unreadable sentence-transformers pooling config ({exc})",
            hint="copy modules.json and the pooling folder (1_Pooling) again",
        ) from exc
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pooling.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    mode = pooling.get("pooling_mode")
    if mode in ("mean", "cls", "lasttoken"):
        return {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS}.get(
            mode, gguf.PoolingType.LAST
        )
    raise UnsupportedFormatError(
        f"{directory} pools embeddings in a way llama.cpp does not ({pooling})",
        hint="llama.cpp pools by mean, CLS token or last token",
    )
