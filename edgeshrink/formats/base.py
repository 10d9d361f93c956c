"""Types every format backend shares."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeshrink.errors import UnsupportedFormatError
from edgeshrink.util import sha256_file


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


@dataclass(frozen=True)
class Built:
    """What a backend's build made in the pipeline's work dir, before its final name."""

    path: Path
    recipe: tuple[dict[str, Any], ...]  # the steps as done, with what each tool recorded
    notes: tuple[str, ...] = ()
    data_files: tuple[Path, ...] = ()  # files the model needs beside it (ONNX external data)
    tensor_types: tuple[Any, ...] = ()
    fallbacks: tuple[tuple[str, str, str], ...] = ()
    tool_versions: tuple[tuple[str, str], ...] = ()
    format: str | None = None  # when it is not the backend's own (a front end's output)
    quant: str | None = None  # the type made, when the tool made another than asked for


class Backend:
    """What one format knows, asked by everything outside its module: the commands, the
    sweep, deploy and bench never branch on a format's name (see formats/__init__.py).

    The defaults describe a model measured per inference (ONNX, TFLite); the GGUF
    backend overrides what differs for an LLM.
    """

    format: str = ""
    label: str = ""  # how messages name the format's types: "llama.cpp", "ONNX", "TFLite"
    runtime: str = ""  # what runs it on the device, for messages
    # How quality is measured: "llm-text" (KL divergence over a text) or "outputs"
    # (agreement with the original's outputs on inputs, accuracy with labels).
    evaluation: str = "outputs"
    quant_types: tuple[str, ...] = ()  # the vocabulary `--quant` and profiles accept
    sweep_ladder: tuple[str, ...] = ()  # the default steps of `sweep`, largest first

    # -- models ----------------------------------------------------------------------
    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        raise NotImplementedError

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:
        raise NotImplementedError

    # -- making artifacts (edgeshrink.pipeline runs the recipe; these are the format's parts)
    tool: str = ""  # whose quantizer runs, for the one line a failure becomes
    failure_hint: str = "try another --quant; EDGESHRINK_DEBUG=1 shows the traceback"
    front_end_for: str | None = None  # a front end hands its output to this backend

    def preflight(self, info: ModelInfo, plan: Any, options: Any) -> None:
        """Refuse what would fail late (calibration data that does not match), before hashing."""

    def check_recipe(self, info: ModelInfo, recipe: Any) -> None:
        """Refuse settings the model cannot take (layers it does not have), before hashing."""

    def resolve_settings(
        self, src: Path, info: ModelInfo, recipe: Any, options: Any, source_sha256: str,
        progress: Any,
    ) -> tuple[dict[str, Any], Any]:  # fmt: skip
        """Settings the recipe's last step gains from what its options leave open (an
        importance matrix, found or made now: the reuse key names it), and the options
        that carry them to the build."""
        return {}, options

    def source_sha256(self, src: Path, info: ModelInfo) -> str:
        """The hash of every byte the artifact is made from (the reuse key, with the recipe)."""

        return sha256_file(src)

    def reuse_details(
        self, info: ModelInfo, profile: Any, options: Any, quant: str
    ) -> tuple[str, ...] | None:
        """What the tool may have recorded for a reusable artifact (None: anything)."""
        return None

    def check_source(self, src: Path, info: ModelInfo, options: Any, progress: Any) -> None:
        """Fail early when the host's runtime cannot run the source at all."""

    def intermediate(
        self, src: Path, info: ModelInfo, plan: Any, options: Any, output: Path | None
    ) -> tuple[Path, Any] | None:
        """A front end's first file (path, recipe) that ``front_end_for`` then shrinks."""
        return None

    def build(
        self, src: Path, work: Path, name: str, recipe: Any, *, info: ModelInfo, profile: Any,
        options: Any, progress: Any,
    ) -> Built:  # fmt: skip
        """Carry out ``recipe`` on ``src``, writing ``work/name`` (and its data files)."""
        raise NotImplementedError

    def verify(self, built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
        """Check the made file in the host's runtime; return it with what was found."""
        return built

    def normalize_quant(self, name: str) -> str:
        """The canonical name of a type the user wrote (QuantizationError if unknown)."""
        raise NotImplementedError

    def estimate(self, info: ModelInfo, quant: str, profile: Any) -> MemoryEstimate:
        raise NotImplementedError

    def inspect_details(self, info: ModelInfo) -> list[tuple[str, Any]]:
        """Format-specific lines of `edgeshrink inspect`, after the common ones."""
        return []

    # -- sweep -----------------------------------------------------------------------
    def sweep_step(self, name: str) -> str:
        """The ladder step a user's name means (a type name works too)."""
        return self.normalize_quant(name)

    def step_options(self, step: str) -> dict[str, Any]:
        """The ShrinkOptions fields that make ``step`` (default: the type of that name)."""
        return {"quant": step}

    def needs_calibration(self, quant: str) -> bool:
        """True for a type made from calibration data (static int8)."""
        return False

    def check_sweep_base(self, info: ModelInfo) -> None:
        """Refuse a model that is already shrunk: a sweep starts from the original."""

    def evaluate(self, base: Any, candidate: Any, **kw: Any) -> Any:
        """The quality of ``candidate`` against ``base`` (a QualityReport)."""
        raise UnsupportedFormatError(
            f"no quality evaluator for {self.format} models in this version",
            hint="GGUF quality is `edgeshrink eval` over a text (KL divergence, perplexity)",
        )

    def make_reference(self, base: Any, **settings: Any) -> Path:
        """The file a device scores a candidate against (device_quality.py's format): made
        from ``base`` on this machine, cached. ``settings`` are the evaluation's own (text,
        n_ctx, max_chunks for a text; inputs, labels, samples, seed for outputs)."""
        raise UnsupportedFormatError(
            f"no quality on the device for {self.format} models in this version",
            hint="evaluate on this machine: edgeshrink eval without --target",
        )

    # -- on the device -----------------------------------------------------------------
    def device_files(self, info: ModelInfo, model: Path) -> list[Path]:
        """Files the model needs beside it on the device (ONNX external data)."""
        return []

    def embeds(self, info: ModelInfo) -> bool:
        """True for an embedding model (judged by embedding cosine, not by KL divergence)."""
        return False

    def measures_tokens(self, info: ModelInfo) -> bool:
        """True when the agent measures generated tokens/s, False for latency per input."""
        return False

    def agent_args(self, params: Any, remote_inputs: str | None = None) -> list[str]:
        """The agent's arguments for this format, after the common ones."""
        args = ["--runs", str(params.runs), "--min-seconds", str(params.min_seconds)]
        if remote_inputs:
            args += ["--inputs", remote_inputs]
        for name, bound in params.int_bounds:
            args += ["--int-bound", f"{name}={bound}"]
        for name, size in params.dims:
            args += ["--dim", f"{name}={size}"]
        return args

    def bench_params(
        self, info: ModelInfo, params: Any, profile: Any, *, on_this_machine: bool
    ) -> tuple[Any, str]:
        """``params`` fitted to the model (and the note saying how), before a bench."""
        bounds = dict(info.metadata).get("int_bounds")
        if bounds and params.inputs is None:
            # Valid random integers need the graph, which the device may not be able to read.
            params = replace(params, int_bounds=tuple(sorted(bounds.items())))
        return params, ""

    def bench_plan(self, info: ModelInfo, params: Any, note: str) -> str:
        """What the benchmark will do, for the progress line."""
        return f"at least {params.runs} runs and {params.min_seconds:g} s"

    def bench_warnings(self, info: ModelInfo, params: Any) -> tuple[str, ...]:
        return ()
