"""Convert a Hugging Face checkpoint directory to one GGUF file, streaming.

The plan (which safetensors tensor becomes which GGUF tensor, in which type,
changed how) is made from the headers alone.  The GGUF header, metadata and
tensor table are written first.  Then the file gets its final size up front
(``posix_fallocate``: a full disk is one clear error before any data moves)
and the tensors go straight from the source mmap into a shared mmap of the
output, in row blocks, by a few threads at once: numpy's copies release the
GIL, so a kept BF16/F16 tensor costs one memory copy, and the copies of two
tensors overlap.  Each block's pages, source and output, leave this process's
resident set once written (the output's stay in the page cache), so the peak
memory is a few blocks, not the model.  Where the file system cannot
preallocate, blocks are written with ``pwrite`` instead (no mmap: a full disk
must be an error, not a SIGBUS).

The output is written under a temporary name beside the destination and renamed
into place only when complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.convert.architectures import (
    ArchSpec,
    Shape,
    find_spec,
    hf_class_of,
    shape_of,
    supported_summary,
)
from edgeshrink.convert.safetensors_reader import FLOAT_DTYPES, Checkpoint, TensorEntry
from edgeshrink.convert.tokenizer import Vocab, load_vocab, write_vocab
from edgeshrink.errors import ModelFileError, UnsupportedFormatError
from edgeshrink.formats.base import LlmShape, ModelInfo, TensorTypeCount
from edgeshrink.util import atomic_path

if TYPE_CHECKING:
    import numpy as np

OUTTYPES = ("auto", "f32", "f16", "bf16")
BLOCK_BYTES = 32 * 1024 * 1024  # rows converted at a time: bounds the working memory
MAX_WRITERS = 4  # tensors written at once (at most the usable cores)

# progress(bytes written so far, bytes to write in all, GGUF name of the tensor just written)
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ConvertResult:
    """What one conversion produced."""

    output: Path
    architecture: str  # llama.cpp's name, e.g. "llama"
    hf_architecture: str  # config.json's class name, e.g. "LlamaForCausalLM"
    outtype: str  # "f32", "f16" or "bf16" (what "auto" resolved to)
    n_tensors: int
    size_bytes: int
    seconds: float
    peak_rss_mb: float | None  # largest VmRSS sampled at tensor ends (Linux only)
    tokenizer: str  # tokenizer.ggml.model
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["output"] = str(self.output)
        doc["notes"] = list(self.notes)
        return doc


@dataclass(frozen=True)
class TensorJob:
    """One GGUF tensor: where its data comes from and how it changes on the way."""

    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (GGUF stores it reversed)
    out_type: str  # "F32", "F16" or "BF16"
    source: TensorEntry | None = None  # None: ``data`` holds a generated tensor
    data: Any = None
    permute_heads: int = 0  # >0: reorder rows within each of this many heads (llama RoPE)
    add: float = 0.0  # added to every value (gemma norms)
    scale: float = 1.0  # multiplies every value (gemma2 q_proj, see architectures)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.n_elements * (4 if self.out_type == "F32" else 2)

    @property
    def is_copy(self) -> bool:
        return (
            self.source is not None
            and self.source.dtype == self.out_type
            and not self.permute_heads
            and self.add == 0.0
            and self.scale == 1.0
        )


# --------------------------------------------------------------------------- reading


def is_hf_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True for a directory holding a ``config.json`` (a Hugging Face model directory)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file()


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        raise ModelFileError(
            f"{directory} is not a directory",
            hint="pass a Hugging Face model directory (config.json, *.safetensors, tokenizer files)",
        )
    if not path.is_file():
        raise ModelFileError(
            f"{directory} has no config.json, so it is not a Hugging Face checkpoint",
            hint="copy config.json that came with the model into the directory",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} is not valid JSON ({exc})", hint="copy config.json again"
        ) from exc
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} is not a JSON object", hint="copy config.json again")
    # Multimodal wrappers keep the language model's settings in text_config.
    if isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    return config


def _resolve(directory: Path, config: dict[str, Any]) -> tuple[ArchSpec, Shape]:
    spec = find_spec(config)
    if spec is None:
        hf_class = hf_class_of(config) or f"model_type {config.get('model_type')!r}"
        raise UnsupportedFormatError(
            f"{directory} is a {hf_class}, which edgeshrink cannot convert to GGUF yet",
            hint=f"supported: {supported_summary()}",
        )
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        method = quant.get("quant_method", "unknown")
        raise UnsupportedFormatError(
            f"{directory} is already quantized ({method}); edgeshrink converts unquantized weights",
            hint="use the original (BF16/F16/F32) checkpoint; edgeshrink quantizes it itself",
        )
    act = config.get("hidden_act") or config.get("hidden_activation")
    if act is not None and act not in spec.hidden_acts:
        raise UnsupportedFormatError(
            f"{directory} uses activation {act!r}; llama.cpp's {spec.gguf_arch.lower()} graph "
            f"computes {' or '.join(spec.hidden_acts)}",
            hint=f"supported: {supported_summary()}",
        )
    if spec.encoder and config.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedFormatError(
            f"{directory} uses {config.get('position_embedding_type')} position embeddings; "
            "llama.cpp's bert graph has absolute ones only",
            hint=f"supported: {supported_summary()}",
        )
    try:
        shape = shape_of(spec, config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(
            f"{directory / 'config.json'} lacks or garbles {exc} that a {spec.family} model needs",
            hint="copy config.json that came with the model",
        ) from exc
    return spec, shape


# --------------------------------------------------------------------------- planning


def _tensor_name_map(spec: ArchSpec, n_layer: int) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[spec.gguf_arch], n_layer)


def _hf_name(spec: ArchSpec, name: str) -> str:
    for prefix in spec.strip_prefixes:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    # Old BERT checkpoints call LayerNorm parameters gamma and beta.
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    return name


def _skipped(spec: ArchSpec, shape: Shape, name: str) -> bool:
    if name.endswith(spec.skip_suffixes) or name.startswith(spec.skip_prefixes):
        return True
    return name == "lm_head.weight" and shape.tied


def _expected_shape(kind: Any, suffix: str, spec: ArchSpec, shape: Shape, config: dict[str, Any]):
    """The numpy shape config.json implies for one tensor, or None where it does not say."""
    from gguf.constants import MODEL_TENSOR as T

    e, hd = shape.n_embd, shape.head_dim
    q, kv = shape.n_head * hd, shape.n_head_kv * hd
    ff = shape.n_ff
    rows = {
        T.TOKEN_EMBD: (shape.n_vocab, e),
        T.OUTPUT: (shape.n_vocab, e),
        T.ATTN_Q: (q, e),
        T.ATTN_K: (kv, e),
        T.ATTN_V: (kv, e),
        T.ATTN_QKV: (q + 2 * kv, e),
        T.ATTN_OUT: (e, q),
        T.FFN_GATE: (ff, e),
        T.FFN_UP: (2 * ff if spec.family == "phi3" else ff, e),
        T.FFN_DOWN: (e, ff),
        T.POS_EMBD: (shape.n_ctx, e),
        T.TOKEN_TYPES: (int(config.get("type_vocab_size", 2)), e),
    }
    if kind in rows:
        full = rows[kind]
        return full if suffix == ".weight" else full[:1]
    if kind.name.endswith("_NORM") or "NORM" in kind.name:
        return (e,)
    return None


def _out_type(kind: Any, n_dims: int, outtype: str) -> str:
    from gguf.constants import MODEL_TENSOR as T

    # As llama.cpp's converter: 1-D tensors and norms stay F32 (ggml's norm and add
    # kernels want F32), and so do position and token-type embeddings.
    if n_dims <= 1 or kind in (T.POS_EMBD, T.TOKEN_TYPES) or kind.name.endswith("NORM"):
        return "F32"
    return {"f32": "F32", "f16": "F16", "bf16": "BF16"}[outtype]


def _resolve_outtype(outtype: str, ckpt: Checkpoint) -> str:
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    if outtype != "auto":
        return outtype
    by_bytes: Counter[str] = Counter()
    for entry in ckpt:
        if len(entry.shape) >= 2:
            by_bytes[entry.dtype] += entry.nbytes
    dominant = by_bytes.most_common(1)[0][0] if by_bytes else "F32"
    # BF16 stays BF16 and F16 stays F16 (no rounding, no range change); F32 halves to F16.
    return {"BF16": "bf16", "F16": "f16"}.get(dominant, "f16")


def _plan(
    spec: ArchSpec,
    shape: Shape,
    config: dict[str, Any],
    ckpt: Checkpoint,
    outtype: str,
    notes: list[str],
) -> list[TensorJob]:
    from gguf.constants import MODEL_TENSOR as T

    name_map = _tensor_name_map(spec, shape.n_layer)
    q_scale = _gemma2_query_scale(spec, shape, config, notes)
    jobs: list[TensorJob] = []
    seen: dict[str, str] = {}
    for extra in _generated_tensors(spec, shape, config, notes):
        jobs.append(extra)
    for entry in ckpt:
        name = _hf_name(spec, entry.name)
        if _skipped(spec, shape, name):
            continue
        mapped = name_map.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise UnsupportedFormatError(
                f"tensor {entry.name!r} has no place in llama.cpp's {spec.gguf_arch.lower()} model",
                hint=f"this {hf_class_of(config)} variant is not supported; supported: "
                f"{supported_summary()}",
            )
        kind, gguf_name = mapped
        if gguf_name in seen:
            raise ModelFileError(
                f"tensors {seen[gguf_name]!r} and {entry.name!r} both map to {gguf_name}",
                hint="the checkpoint mixes two exports: remove the stale files",
            )
        seen[gguf_name] = entry.name
        if entry.dtype not in FLOAT_DTYPES:
            raise UnsupportedFormatError(
                f"tensor {entry.name!r} is stored as {entry.dtype}; edgeshrink converts float weights",
                hint="use the unquantized (BF16/F16/F32) checkpoint",
            )
        suffix = ".bias" if gguf_name.endswith(".bias") else ".weight"
        expected = _expected_shape(kind, suffix, spec, shape, config)
        if expected is not None and tuple(entry.shape) != tuple(expected):
            raise ModelFileError(
                f"tensor {entry.name!r} has shape {list(entry.shape)} but config.json implies "
                f"{list(expected)}",
                hint="config.json and the weights belong to different models: copy the matching ones",
            )
        permute = 0
        if spec.rope_permute and kind in (T.ATTN_Q, T.ATTN_K):
            permute = shape.n_head if kind == T.ATTN_Q else shape.n_head_kv
        add = 1.0 if spec.norm_plus_one and kind.name.endswith("NORM") else 0.0
        scale = q_scale if kind == T.ATTN_Q else 1.0
        jobs.append(
            TensorJob(
                name=gguf_name,
                shape=tuple(entry.shape),
                out_type=_out_type(kind, len(entry.shape), outtype),
                source=entry,
                permute_heads=permute,
                add=add,
                scale=scale,
            )
        )
    _check_complete(spec, shape, jobs, ckpt)
    return jobs


def _check_complete(spec: ArchSpec, shape: Shape, jobs: list[TensorJob], ckpt: Checkpoint) -> None:
    import gguf
    from gguf.constants import MODEL_TENSOR as T

    names = {job.name for job in jobs}
    embd = gguf.TENSOR_NAMES[T.TOKEN_EMBD] + ".weight"
    if embd not in names:
        raise ModelFileError(
            f"{ckpt.directory} has no token embedding among its {len(ckpt.entries)} tensors",
            hint="the checkpoint is incomplete: copy or download all *.safetensors files",
        )
    per_block: list[set[str]] = [set() for _ in range(shape.n_layer)]
    for name in names:
        parts = name.split(".")
        if parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < shape.n_layer:
            per_block[int(parts[1])].add(".".join(parts[2:]))
    wanted = set().union(*per_block) if per_block else set()
    for bid, present in enumerate(per_block):
        missing = sorted(wanted - present)
        if missing:
            raise ModelFileError(
                f"{ckpt.directory} lacks {', '.join(missing)} of layer {bid} "
                f"(config.json says {shape.n_layer} layers)",
                hint="the checkpoint is incomplete: copy or download all *.safetensors shards",
            )
    if not shape.tied and not spec.encoder and "output.weight" not in names:
        raise ModelFileError(
            f"{ckpt.directory} has no lm_head.weight and config.json does not tie it to the embedding",
            hint="the checkpoint is incomplete: copy or download all *.safetensors shards",
        )


def _rope_scaling(config: dict[str, Any]) -> dict[str, Any]:
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    return params if isinstance(params, dict) else {}


def _rope_theta(config: dict[str, Any]) -> float:
    theta = config.get("rope_theta") or _rope_scaling(config).get("rope_theta") or 10000.0
    return float(theta)


def _rope_type(config: dict[str, Any]) -> str | None:
    params = _rope_scaling(config)
    kind = params.get("rope_type") or params.get("type")
    return None if kind in (None, "default") else str(kind).lower()


def _generated_tensors(
    spec: ArchSpec, shape: Shape, config: dict[str, Any], notes: list[str]
) -> Iterator[TensorJob]:
    """Tensors llama.cpp wants that the checkpoint only describes in config.json."""
    import gguf
    import numpy as np
    from gguf.constants import MODEL_TENSOR as T

    kind = _rope_type(config)
    params = _rope_scaling(config)
    if kind == "llama3" and spec.family in ("llama", "mistral"):
        # Llama 3.1+ frequency scaling, stored as per-dimension divisors of the frequencies.
        dim = _rope_dims(spec, shape, config)
        base = _rope_theta(config)
        factor = float(params.get("factor", 8.0))
        low = float(params.get("low_freq_factor", 1.0))
        high = float(params.get("high_freq_factor", 4.0))
        old_ctx = float(params.get("original_max_position_embeddings", 8192))
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        wavelen = 2 * math.pi / freqs
        smooth = (old_ctx / wavelen - low) / (high - low)
        factors = np.where(
            wavelen < old_ctx / high,
            1.0,
            np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
        ).astype(np.float32)
        name = gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight"
        yield TensorJob(name=name, shape=factors.shape, out_type="F32", data=factors)
    if kind in ("longrope", "su") and spec.family == "phi3":
        long_f, short_f = params.get("long_factor"), params.get("short_factor")
        half = _rope_dims(spec, shape, config) // 2
        if not (isinstance(long_f, list) and isinstance(short_f, list)) or not (
            len(long_f) == len(short_f) == half
        ):
            raise ModelFileError(
                f"config.json rope_scaling needs long_factor and short_factor of {half} values each",
                hint="copy config.json that came with the model",
            )
        for tensor, values in ((T.ROPE_FACTORS_LONG, long_f), (T.ROPE_FACTORS_SHORT, short_f)):
            data = np.asarray(values, dtype=np.float32)
            yield TensorJob(
                name=gguf.TENSOR_NAMES[tensor] + ".weight",
                shape=data.shape,
                out_type="F32",
                data=data,
            )


def _gemma2_query_scale(
    spec: ArchSpec, shape: Shape, config: dict[str, Any], notes: list[str]
) -> float:
    if spec.family != "gemma2":
        return 1.0
    wanted = float(config.get("query_pre_attn_scalar") or shape.head_dim)
    # llama.cpp's gemma2 graph: 1/sqrt(n_embd/n_head) for the 46-layer 27B, else 1/sqrt(head_dim).
    used = shape.n_embd / shape.n_head if shape.n_layer == 46 else float(shape.head_dim)
    if abs(wanted - used) < 1e-6:
        return 1.0
    notes.append(
        f"query_pre_attn_scalar {wanted:g} differs from the {used:g} llama.cpp assumes: "
        "folded into q_proj"
    )
    return math.sqrt(used / wanted)


def _rope_dims(spec: ArchSpec, shape: Shape, config: dict[str, Any]) -> int:
    partial = config.get("partial_rotary_factor") or _rope_scaling(config).get(
        "partial_rotary_factor"
    )
    if spec.family == "phi3":
        return int(float(partial or 1.0) * shape.n_embd) // shape.n_head
    return int(shape.head_dim * float(partial or 1.0))


# --------------------------------------------------------------------------- metadata


def _model_name(config: dict[str, Any], directory: Path) -> str:
    name = config.get("_name_or_path")
    return Path(str(name)).name if name else directory.resolve().name


def _write_metadata(
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
    writer.add_name(_model_name(config, directory))
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
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(_rope_dims(spec, shape, config))
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
        orig = _rope_scaling(config).get("original_max_position_embeddings") or config.get(
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

    kind = _rope_type(config)
    params = _rope_scaling(config)
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


# --------------------------------------------------------------------------- writing


def _streaming_writer_class() -> type:
    import struct

    import gguf
    import numpy as np
    from gguf.constants import GGUFEndian, GGUFValueType

    class StreamingGGUFWriter(gguf.GGUFWriter):
        """A GGUFWriter that writes header, metadata and tensor table only (the data is
        written by :func:`_write_tensor_data`), and packs big arrays quickly."""

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            # gguf-py packs arrays one element at a time (~20 us each): a 150k-token
            # vocabulary would take seconds.  Homogeneous str/int/float lists are
            # packed here in one go, byte for byte as gguf-py would; anything else,
            # and big-endian files, go the usual way.
            if (
                vtype != GGUFValueType.ARRAY
                or sub_type is not None
                or self.endianess != GGUFEndian.LITTLE
                or not isinstance(val, list)
                or not val
            ):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            kind = type(val[0])
            if kind not in (str, int, float) or not all(type(v) is kind for v in val):
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            head = struct.pack("<I", vtype) if add_vtype else b""
            if kind is str:
                encoded = (v.encode("utf-8") for v in val)
                body = b"".join(struct.pack("<Q", len(b)) + b for b in encoded)
                ltype = GGUFValueType.STRING
            elif kind is int:
                ltype = GGUFValueType.INT32
                body = np.asarray(val, dtype="<i4").tobytes()
            else:
                ltype = GGUFValueType.FLOAT32
                body = np.asarray(val, dtype="<f4").tobytes()
            return head + struct.pack("<IQ", ltype, len(val)) + body

    return StreamingGGUFWriter


def _write_tensor_data(
    writer: Any,
    jobs: list[TensorJob],
    ckpt: Checkpoint,
    progress: ProgressFn | None,
    rss: _RssSampler,
) -> int:
    """Write every job's data after the tensor table ``writer`` has written; returns the
    number of weights that overflowed F16."""
    fout = writer.fout[0]
    fout.flush()
    align = writer.data_alignment
    data_start = writer.ggml_pad(fout.tell(), align)
    offsets, end = [], data_start
    for job in jobs:
        offsets.append(end)
        end += writer.ggml_pad(job.nbytes, align)
    # GGUFWriter's file is write-only; a shared writable mapping needs read access too.
    fd = os.open(fout.name, os.O_RDWR)
    try:
        return _write_jobs(fd, end, offsets, jobs, ckpt, progress, rss)
    finally:
        os.close(fd)


def _write_jobs(
    fd: int,
    end: int,
    offsets: list[int],
    jobs: list[TensorJob],
    ckpt: Checkpoint,
    progress: ProgressFn | None,
    rss: _RssSampler,
) -> int:
    import mmap
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    import numpy as np

    preallocated = _preallocate(fd, end)
    total = sum(job.nbytes for job in jobs)
    dst_map = None
    if preallocated and end:
        try:
            dst_map = mmap.mmap(fd, end)
        except (OSError, OverflowError):  # no address space for it (a 32-bit host): pwrite
            dst_map = None
    dst = np.frombuffer(dst_map, dtype=np.uint8) if dst_map is not None else None
    can_drop = dst_map is not None and hasattr(mmap, "MADV_DONTNEED")
    dst_view = memoryview(dst_map) if dst_map is not None and hasattr(os, "preadv") else None

    def drop(first: int, last: int) -> None:
        """Out of this process's resident set; the dirty pages stay in the page cache."""
        if can_drop:
            first = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE
            last = last // mmap.PAGESIZE * mmap.PAGESIZE
            if last > first:
                dst_map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def read_into_place(job: TensorJob, pos: int) -> None:
        """A tensor kept as it is: read() straight into its place in the output mapping
        (one copy, in the kernel, and the source is never mapped into this process)."""
        assert job.source is not None and dst_view is not None
        src_fd, offset = ckpt.file_of(job.source.name).fileno(), job.source.offset
        done = 0
        while done < job.nbytes:
            count = min(BLOCK_BYTES, job.nbytes - done)
            got = os.preadv(src_fd, [dst_view[pos + done : pos + done + count]], offset + done)
            if got <= 0:
                raise ModelFileError(
                    f"{ckpt.file_of(job.source.name).path.name}: tensor {job.source.name!r} "
                    f"ends {job.nbytes - done} bytes early",
                    hint="the safetensors file changed or is truncated: copy it again",
                )
            drop(pos + done, pos + done + got)
            done += got

    def write_job(index: int) -> int:
        job, pos, overflow = jobs[index], offsets[index], [0]
        if job.is_copy and dst_view is not None:
            read_into_place(job, pos)
            return 0
        for block in _job_blocks(job, ckpt, overflow):
            n = block.nbytes
            if dst is None:
                data = memoryview(np.ascontiguousarray(block)).cast("B")
                while data:
                    written = os.pwrite(fd, data, pos)
                    data, pos = data[written:], pos + written
                continue
            np.copyto(dst[pos : pos + n].view(block.dtype).reshape(block.shape), block)
            drop(pos, pos + n)
            pos += n
        if job.source is not None:
            ckpt.release(job.source.name)
        return overflow[0]

    # Biggest first: the last tensors to finish are small ones, so the writers end together.
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].nbytes)
    workers = max(1, min(MAX_WRITERS, _usable_cores(), len(jobs)))
    overflowed = done = 0
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gguf-write") as pool:
            pending = {pool.submit(write_job, i): i for i in order}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = pending.pop(future)
                        overflowed += future.result()  # re-raises a writer's error
                        rss.sample()
                        done += jobs[index].nbytes
                        if progress is not None:
                            progress(done, total, jobs[index].name)
            finally:
                for future in pending:
                    future.cancel()
    finally:
        dst = None  # the writers are done: the last view of the map goes
        if dst_view is not None:
            dst_view.release()
        if dst_map is not None:
            with contextlib.suppress(BufferError):  # a view kept alive by a traceback
                dst_map.close()
    return overflowed


def _preallocate(fd: int, size: int) -> bool:
    """Give the output its final size; True when its blocks are reserved (mmap is safe).
    A full disk fails here (ENOSPC), before any tensor data is written."""
    try:
        os.posix_fallocate(fd, 0, size)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    os.ftruncate(fd, size)
    return False


@contextlib.contextmanager
def _disk_full_is_an_error(path: Path, needed: int) -> Iterator[None]:
    """ENOSPC anywhere in the writing (header, preallocation, pwrite) as one clear error."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(path.absolute().parent).free
        raise ModelFileError(
            f"not enough disk space for {path.name}: it needs {needed / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free in {path.absolute().parent}",
            hint="free some space or write the GGUF to another disk (-o PATH)",
        ) from exc


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _to_out_type(
    block: np.ndarray, src_dtype: str, out_type: str, overflow: list[int]
) -> np.ndarray:
    import gguf
    import numpy as np
    from gguf.constants import GGMLQuantizationType

    if src_dtype == out_type:
        return np.ascontiguousarray(block)
    values = _as_f32(block, src_dtype)
    if out_type == "F32":
        return values
    if out_type == "F16":
        with np.errstate(over="ignore"):
            half = values.astype(np.float16)
        overflow[0] += int(np.count_nonzero(np.isinf(half)) - np.count_nonzero(np.isinf(values)))
        return half
    return gguf.quants.quantize(values, GGMLQuantizationType.BF16).view(np.uint16)


def _as_f32(block: np.ndarray, src_dtype: str) -> np.ndarray:
    import numpy as np

    if src_dtype == "BF16":
        return (block.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.ascontiguousarray(block, dtype=np.float32)


def _job_blocks(job: TensorJob, ckpt: Checkpoint, overflow: list[int]) -> Iterator[np.ndarray]:
    """The job's output in row order, as blocks (possibly strided views of the source)."""
    import numpy as np

    if job.data is not None:
        yield _to_out_type(np.asarray(job.data, dtype=np.float32), "F32", job.out_type, overflow)
        return
    assert job.source is not None
    src = ckpt.array(job.source.name)
    src_dtype = job.source.dtype
    if src.ndim == 0:
        src = src.reshape(1)
    rows = src.shape[0]
    row_f32_bytes = 4 * max(1, math.prod(src.shape[1:]))
    step = max(1, BLOCK_BYTES // row_f32_bytes)
    if job.permute_heads:
        head_rows = rows // job.permute_heads
        step = max(head_rows, step // head_rows * head_rows)
    row_bytes = src.nbytes // max(rows, 1)
    for start in range(0, rows, step):
        if start:
            # The previous block is written: give its source pages back, so a huge
            # embedding never sits in this process whole.
            ckpt.release(job.source.name, (start - step) * row_bytes, start * row_bytes)
        block = src[start : start + step]
        if job.permute_heads:
            # transformers' rotate-half layout -> llama.cpp's pairwise layout, per head:
            # within each head, row j*2+i comes from row i*(head_dim/2)+j.
            # A strided view: the writer copies it into place, no temporary.
            n = block.shape[0] // head_rows
            block = block.reshape(n, 2, head_rows // 2, *block.shape[1:]).swapaxes(1, 2)
        if job.add != 0.0 or job.scale != 1.0:
            values = _as_f32(block, src_dtype) * np.float32(job.scale) + np.float32(job.add)
            yield _to_out_type(values, "F32", job.out_type, overflow)
        else:
            yield _to_out_type(block, src_dtype, job.out_type, overflow)


class _RssSampler:
    """The largest VmRSS seen at the sample points (each tensor's end, before its pages go).

    Sampling rather than VmHWM: the process's high-water mark may predate the
    conversion, and resetting it would disturb whoever else measures this process.
    """

    def __init__(self) -> None:
        self.peak_kb = 0
        self.available = os.path.exists("/proc/self/status")
        self.sample()

    def sample(self) -> None:
        if not self.available:
            return
        try:
            with open("/proc/self/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                        return
        except OSError:
            self.available = False

    @property
    def peak_mb(self) -> float | None:
        return self.peak_kb / 1024 if self.available else None


def _gguf_dtype_args(out_type: str) -> tuple[Any, Any, int]:
    import numpy as np
    from gguf.constants import GGMLQuantizationType

    return {
        "F32": (np.dtype(np.float32), GGMLQuantizationType.F32, 4),
        "F16": (np.dtype(np.float16), GGMLQuantizationType.F16, 2),
        "BF16": (np.dtype(np.uint16), GGMLQuantizationType.BF16, 2),
    }[out_type]


def convert_hf_to_gguf(
    src_dir: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    *,
    outtype: str = "f16",
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Convert the Hugging Face checkpoint in ``src_dir`` to the GGUF file ``dst_path``.

    ``outtype`` is "f32", "f16", "bf16" or "auto" (BF16 stays BF16, F16 stays
    F16, F32 becomes F16); norms and other 1-D tensors are F32 in every case,
    as llama.cpp wants them.  An existing directory as ``dst_path`` gets
    ``<model name>-<outtype>.gguf`` inside it.  ``progress(done_bytes, total_bytes, tensor)`` is
    called after each tensor.  Raises UnsupportedFormatError for an
    architecture, tokenizer or setting llama.cpp cannot reproduce, and
    ModelFileError for a missing, truncated or inconsistent file.
    """
    started = time.perf_counter()
    import gguf

    rss = _RssSampler()

    src = Path(src_dir)
    config = read_config(src)
    spec, shape = _resolve(src, config)
    notes: list[str] = []
    with Checkpoint(src) as ckpt:
        resolved = _resolve_outtype(outtype, ckpt)
        if Path(dst_path).is_dir():
            dst_path = Path(dst_path) / f"{_model_name(config, src)}-{resolved}.gguf"
        jobs = _plan(spec, shape, config, ckpt, resolved, notes)
        n_vocab = next(j.shape[0] for j in jobs if j.name == "token_embd.weight")
        vocab = load_vocab(src, n_vocab=n_vocab)
        notes.extend(vocab.notes)
        overflow = [0]
        needed = sum(job.nbytes for job in jobs)
        with atomic_path(dst_path) as tmp, _disk_full_is_an_error(Path(dst_path), needed):
            # GGUFWriter opens its file "wb"; truncating the placeholder atomic_path made
            # would make ext4 write the whole file back to disk on close (auto_da_alloc),
            # so the writer creates the file afresh under the reserved name.
            tmp.unlink()
            writer = _streaming_writer_class()(
                tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]]
            )
            try:
                _write_metadata(writer, spec, shape, config, src, resolved, vocab, notes)
                write_vocab(writer, vocab)
                for job in jobs:
                    dtype, ggml_type, _ = _gguf_dtype_args(job.out_type)
                    writer.add_tensor_info(
                        job.name, job.shape, dtype, job.nbytes, raw_dtype=ggml_type
                    )
                writer.write_header_to_file(tmp)
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                overflow[0] = _write_tensor_data(writer, jobs, ckpt, progress, rss)
                writer.flush()
            finally:
                writer.close()
            size = tmp.stat().st_size
    if overflow[0]:
        notes.append(
            f"{overflow[0]} weight(s) exceed the F16 range and became infinite: use outtype bf16"
        )
    return ConvertResult(
        output=Path(dst_path),
        architecture=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]],
        hf_architecture=hf_class_of(config) or "",
        outtype=resolved,
        n_tensors=len(jobs),
        size_bytes=size,
        seconds=time.perf_counter() - started,
        peak_rss_mb=rss.peak_mb,
        tokenizer=vocab.model,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- inspecting


def inspect_hf(path: str | os.PathLike[str]) -> ModelInfo:
    """Describe a Hugging Face checkpoint directory from its config and safetensors headers."""
    import gguf

    directory = Path(path)
    config = read_config(directory)
    spec, shape = _resolve(directory, config)
    with Checkpoint(directory) as ckpt:
        counts: Counter[str] = Counter()
        params: Counter[str] = Counter()
        nbytes: Counter[str] = Counter()
        weight_bytes: Counter[str] = Counter()
        for entry in ckpt:
            counts[entry.dtype] += 1
            params[entry.dtype] += entry.n_elements
            nbytes[entry.dtype] += entry.nbytes
            if len(entry.shape) >= 2:
                weight_bytes[entry.dtype] += entry.nbytes
        size = ckpt.size_bytes
        n_shards = len(ckpt.files)
    tokenizer = None
    with contextlib.suppress(ModelFileError, UnsupportedFormatError):
        tokenizer = load_vocab(directory).model
    file_type = weight_bytes.most_common(1)[0][0] if weight_bytes else "unknown"
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]]
    metadata: list[tuple[str, Any]] = [
        ("hf.architecture", hf_class_of(config) or ""),
        ("hf.model_type", str(config.get("model_type", ""))),
        ("hf.shards", n_shards),
        ("hf.tie_word_embeddings", shape.tied),
    ]
    if config.get("torch_dtype"):
        metadata.append(("hf.torch_dtype", str(config["torch_dtype"])))
    return ModelInfo(
        path=directory,
        format="hf",
        size_bytes=size,
        architecture=arch,
        name=_model_name(config, directory),
        n_params=sum(params.values()),
        file_type=file_type,
        is_quantized=False,
        tensor_types=tuple(
            TensorTypeCount(type=t, count=counts[t], n_params=params[t], n_bytes=nbytes[t])
            for t in sorted(counts, key=lambda t: -nbytes[t])
        ),
        llm=LlmShape(
            context_length=shape.n_ctx,
            n_vocab=shape.n_vocab,
            n_layer=shape.n_layer,
            n_embd=shape.n_embd,
            n_head=shape.n_head,
            n_head_kv=shape.n_head_kv,
            n_ff=shape.n_ff,
            tokenizer=tokenizer,
        ),
        metadata=tuple(metadata),
    )


def gguf_tensor_shapes(
    path: str | os.PathLike[str], outtype: str = "auto"
) -> list[tuple[str, tuple[int, ...], str]]:
    """The GGUF tensors a conversion would write, as ``gguf.tensor_shapes`` reports them
    (name, shape with ne[0] first, type), read from headers only: plan needs no conversion."""
    directory = Path(path)
    config = read_config(directory)
    spec, shape = _resolve(directory, config)
    with Checkpoint(directory) as ckpt:
        jobs = _plan(spec, shape, config, ckpt, _resolve_outtype(outtype, ckpt), [])
    return [(job.name, tuple(reversed(job.shape)), job.out_type) for job in jobs]
