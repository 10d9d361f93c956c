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

The parts: tensor_plan.py (which tensor goes where, changed how), gguf_metadata.py
(hyperparameters, RoPE, pooling), tokenizer.py (the vocabulary) and gguf_writer.py
(the file); this module reads the checkpoint and runs them in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.convert.architectures import (
    ArchSpec,
    Shape,
    find_spec,
    hf_class_of,
    shape_of,
    supported_summary,
)
from edgeshrink.convert.gguf_metadata import model_name, write_metadata
from edgeshrink.convert.gguf_writer import (
    BLOCK_BYTES,
    ProgressFn,
    RssSampler,
    disk_full_is_an_error,
    gguf_dtype_args,
    streaming_writer_class,
    write_tensor_data,
)
from edgeshrink.convert.safetensors_reader import Checkpoint
from edgeshrink.convert.tensor_plan import OUTTYPES, TensorJob, plan_tensors, resolve_outtype
from edgeshrink.convert.tokenizer import load_vocab, write_vocab
from edgeshrink.errors import ModelFileError, UnsupportedFormatError
from edgeshrink.formats.base import LlmShape, ModelInfo, TensorTypeCount
from edgeshrink.util import atomic_path

__all__ = [
    "BLOCK_BYTES",
    "MAX_WRITERS",
    "OUTTYPES",
    "ConvertResult",
    "ProgressFn",
    "TensorJob",
    "convert_hf_to_gguf",
    "gguf_tensor_shapes",
    "inspect_hf",
    "is_hf_checkpoint",
    "read_config",
]

MAX_WRITERS = 4  # tensors written at once (at most the usable cores)


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

    rss = RssSampler()

    src = Path(src_dir)
    config = read_config(src)
    spec, shape = _resolve(src, config)
    notes: list[str] = []
    with Checkpoint(src) as ckpt:
        resolved = resolve_outtype(outtype, ckpt)
        if Path(dst_path).is_dir():
            dst_path = Path(dst_path) / f"{model_name(config, src)}-{resolved}.gguf"
        jobs = plan_tensors(spec, shape, config, ckpt, resolved, notes)
        n_vocab = next(j.shape[0] for j in jobs if j.name == "token_embd.weight")
        vocab = load_vocab(src, n_vocab=n_vocab)
        notes.extend(vocab.notes)
        overflow = [0]
        needed = sum(job.nbytes for job in jobs)
        with atomic_path(dst_path) as tmp, disk_full_is_an_error(Path(dst_path), needed):
            # GGUFWriter opens its file "wb"; truncating the placeholder atomic_path made
            # would make ext4 write the whole file back to disk on close (auto_da_alloc),
            # so the writer creates the file afresh under the reserved name.
            tmp.unlink()
            writer = streaming_writer_class()(
                tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.gguf_arch]]
            )
            try:
                write_metadata(writer, spec, shape, config, src, resolved, vocab, notes)
                write_vocab(writer, vocab)
                for job in jobs:
                    dtype, ggml_type, _ = gguf_dtype_args(job.out_type)
                    writer.add_tensor_info(
                        job.name, job.shape, dtype, job.nbytes, raw_dtype=ggml_type
                    )
                writer.write_header_to_file(tmp)
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                overflow[0] = write_tensor_data(
                    writer, jobs, ckpt, progress, rss, max_writers=MAX_WRITERS
                )
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
        name=model_name(config, directory),
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
        jobs = plan_tensors(spec, shape, config, ckpt, resolve_outtype(outtype, ckpt), [])
    return [(job.name, tuple(reversed(job.shape)), job.out_type) for job in jobs]
