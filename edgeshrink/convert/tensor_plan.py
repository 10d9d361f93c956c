"""Which safetensors tensor becomes which GGUF tensor, in which type, changed how: the plan of a
conversion, made from config.json and the safetensors headers alone."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgeshrink.convert.architectures import ArchSpec, Shape, hf_class_of, supported_summary
from edgeshrink.convert.gguf_metadata import rope_dims, rope_scaling, rope_theta, rope_type
from edgeshrink.convert.safetensors_reader import FLOAT_DTYPES, Checkpoint, TensorEntry
from edgeshrink.errors import ModelFileError, UnsupportedFormatError

OUTTYPES = ("auto", "f32", "f16", "bf16")


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


def resolve_outtype(outtype: str, ckpt: Checkpoint) -> str:
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


def plan_tensors(
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


def _generated_tensors(
    spec: ArchSpec, shape: Shape, config: dict[str, Any], notes: list[str]
) -> Iterator[TensorJob]:
    """Tensors llama.cpp wants that the checkpoint only describes in config.json."""
    import gguf
    import numpy as np
    from gguf.constants import MODEL_TENSOR as T

    kind = rope_type(config)
    params = rope_scaling(config)
    if kind == "llama3" and spec.family in ("llama", "mistral"):
        # Llama 3.1+ frequency scaling, stored as per-dimension divisors of the frequencies.
        dim = rope_dims(spec, shape, config)
        base = rope_theta(config)
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
        half = rope_dims(spec, shape, config) // 2
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
