"""Types every format backend shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LlmShape:
    """The hyper-parameters of a decoder LLM that decide its memory and speed."""

    context_length: int
    n_vocab: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    tokenizer: str | None

    @property
    def head_dim(self) -> int:
        return self.n_embd // max(self.n_head, 1)

    @property
    def n_embd_kv(self) -> int:
        """Width of one layer's K (and of its V) cache row: GQA shrinks it."""
        return self.head_dim * self.n_head_kv


@dataclass(frozen=True)
class TensorTypeCount:
    type: str
    count: int
    n_params: int
    n_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    format: str
    size_bytes: int
    architecture: str
    name: str | None
    n_params: int
    file_type: str
    is_quantized: bool
    tensor_types: tuple[TensorTypeCount, ...]
    llm: LlmShape | None = None
    metadata: tuple[tuple[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["path"] = str(self.path)
        doc["metadata"] = dict(self.metadata)
        return doc


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak resident memory of running a model on the device's CPU."""

    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int
    context: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes

    @property
    def total_mb(self) -> float:
        return self.total_bytes / (1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["total_bytes"] = self.total_bytes
        doc["total_mb"] = round(self.total_mb, 1)
        return doc
