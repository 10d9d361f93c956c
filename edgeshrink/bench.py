"""Run the on-device agent through a transport and turn its JSON into a BenchResult."""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeshrink.agent import AGENT_PATH, QUALITY_MODULE_PATH, SCHEMA
from edgeshrink.agent import device_quality as dq
from edgeshrink.errors import AgentError
from edgeshrink.formats import backend
from edgeshrink.transport.base import CommandResult, Transport
from edgeshrink.util import sha256_file

STATUSES = ("ok", "error", "timeout", "oom")
SIGKILL = 9


@dataclass(frozen=True)
class BenchParams:
    prompt_tokens: int = 512
    gen_tokens: int = 128
    reps: int = 5
    warmup: int = 1
    threads: int | None = None
    flash_attn: bool = True
    n_ctx: int | None = None
    no_mmap: bool = False
    seed: int = 1234
    # Models that are not LLMs: at least ``runs`` timed runs and at least
    # ``min_seconds`` of them (TFLite benchmark_model's rule), on ``inputs``
    # (an .npz on the host) or on random inputs of the declared shapes.
    runs: int = 50
    min_seconds: float = 1.0
    inputs: Path | None = None
    # TFLite: a delegate library on the device (e.g. NXP's VX delegate for the
    # i.MX 8M Plus NPU; the profile names it), and which runtime to use.
    external_delegate: str | None = None
    tflite_runtime: str = "auto"
    # Run twice more on fixed inputs after measuring: finite and repeatable outputs?
    check_output: bool = False
    # Random integer inputs stay below these bounds ((input name, rows of the table it
    # indexes), read from the model's graph on the host; the device may not have onnx).
    int_bounds: tuple[tuple[str, int], ...] = ()
    # Random inputs: sizes of named symbolic dimensions ((name, size), e.g. ("sequence", 128));
    # unnamed or unlisted ones are 1.
    dims: tuple[tuple[str, int], ...] = ()

    def key(self) -> str:
        """A stable digest of what was asked, to find an earlier identical measurement."""

        asked = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:16]

    def agent_args(self, model_format: str = "gguf", remote_inputs: str | None = None) -> list[str]:
        args = ["--format", model_format, "--warmup", str(self.warmup), "--seed", str(self.seed)]
        if self.check_output:
            args.append("--check-output")
        if self.threads:
            args += ["--threads", str(self.threads)]
        return args + backend(model_format).agent_args(self, remote_inputs)


@dataclass(frozen=True)
class Stat:
    mean: float
    stddev: float
    samples: tuple[float, ...]

    @classmethod
    def from_doc(cls, doc: Any) -> Stat | None:
        if not isinstance(doc, dict) or doc.get("mean") is None:
            return None
        return cls(
            float(doc["mean"]), float(doc.get("stddev") or 0.0), tuple(doc.get("samples", ()))
        )


@dataclass(frozen=True)
class Latency:
    mean: float
    stddev: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    samples: int

    @classmethod
    def from_doc(cls, doc: Any) -> Latency | None:
        if not isinstance(doc, dict) or doc.get("mean") is None:
            return None
        return cls(
            **{
                k: float(doc.get(k) or 0.0)
                for k in ("mean", "stddev", "min", "p50", "p90", "p99", "max")
            },
            samples=int(doc.get("count") or len(doc.get("samples") or ())),
        )


@dataclass(frozen=True)
class BenchResult:
    """The agent's document (``document``) plus the figures everyone reads, typed."""

    status: str
    error_message: str | None
    error_hint: str | None
    load_s: float | None
    peak_rss_mb: float | None
    rss_anon_mb: float | None
    rss_file_mb: float | None
    pp_tok_s: Stat | None
    tg_tok_s: Stat | None
    ttft_ms: Stat | None
    latency_ms: Latency | None
    throughput_per_s: float | None
    device_cpu: str | None
    device_arch: str | None
    device_cores: int | None
    runtime: str | None
    runtime_version: str | None
    threads: int | None
    document: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def embedding(self) -> dict[str, Any] | None:
        """An embedding model's run: tokens_per_input, n_embd, pooling (else None)."""
        value = self.document.get("embedding")
        return value if isinstance(value, dict) else None

    @property
    def quality(self) -> dict[str, Any] | None:
        """The model's quality measured on the device against a reference (else None): the
        figures of the host's own report (device_quality.py declares them)."""
        value = self.document.get("quality")
        return value if isinstance(value, dict) else None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> BenchResult:
        if doc.get("schema") != SCHEMA:
            raise AgentError(f"agent printed schema {doc.get('schema')!r}, expected {SCHEMA!r}")
        status = doc.get("status")
        if status not in STATUSES:
            raise AgentError(f"agent printed status {status!r}, expected one of {STATUSES}")
        error = doc.get("error") or {}
        memory = doc.get("memory") or {}
        llm = doc.get("llm") or {}
        device = doc.get("device") or {}
        runtime = doc.get("runtime") or {}
        params = doc.get("params") or {}
        return cls(
            status=status,
            error_message=error.get("message"),
            error_hint=error.get("hint"),
            load_s=doc.get("load_s"),
            peak_rss_mb=memory.get("peak_rss_mb"),
            rss_anon_mb=memory.get("rss_anon_mb"),
            rss_file_mb=memory.get("rss_file_mb"),
            pp_tok_s=Stat.from_doc(llm.get("pp_tok_s")),
            tg_tok_s=Stat.from_doc(llm.get("tg_tok_s")),
            ttft_ms=Stat.from_doc(llm.get("ttft_ms")),
            latency_ms=Latency.from_doc(doc.get("latency_ms")),
            throughput_per_s=doc.get("throughput_per_s"),
            device_cpu=device.get("cpu"),
            device_arch=device.get("arch"),
            device_cores=device.get("cores"),
            runtime=runtime.get("name"),
            runtime_version=runtime.get("version"),
            threads=(params.get("resolved") or {}).get("threads") or params.get("threads"),
            document=doc,
        )

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("document")
        return doc

    def store_columns(self) -> dict[str, Any]:
        """The measured columns of a ``results`` row (the caller adds what was run where)."""
        return {
            "status": self.status,
            "error": self.error_message,
            "load_s": self.load_s,
            "peak_rss_mb": self.peak_rss_mb,
            "rss_anon_mb": self.rss_anon_mb,
            "rss_file_mb": self.rss_file_mb,
            "pp_tok_s": self.pp_tok_s.mean if self.pp_tok_s else None,
            "pp_tok_s_stddev": self.pp_tok_s.stddev if self.pp_tok_s else None,
            "tg_tok_s": self.tg_tok_s.mean if self.tg_tok_s else None,
            "tg_tok_s_stddev": self.tg_tok_s.stddev if self.tg_tok_s else None,
            "ttft_ms": self.ttft_ms.mean if self.ttft_ms else None,
            "latency_ms": self.latency_ms.mean if self.latency_ms else None,
            "latency_p90_ms": self.latency_ms.p90 if self.latency_ms else None,
            "throughput_per_s": self.throughput_per_s,
            "threads": self.threads,
            "device_cpu": self.device_cpu,
            "device_arch": self.device_arch,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_OPTIONAL = object()  # a field that may be absent or null


def document_problems(doc: Any) -> list[str]:
    """What is wrong with an agent document, checked against the schema the agent writes
    (edgeshrink.bench/1): types, finite numbers, known statuses. Empty when it is sound.

    The host reads what a device printed: nothing in it is trusted until checked here.
    """
    problems: list[str] = []

    def section(path: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            problems.append(f"{path} is {type(value).__name__}, not an object")
            return {}
        return value

    def number(path: str, value: Any, *, integer: bool = False) -> None:
        if value is None:
            return
        if not _is_number(value) or (integer and not isinstance(value, int)):
            kind = "a whole number" if integer else "a finite number"
            problems.append(f"{path} is {value!r:.40}, not {kind}")

    def text(path: str, value: Any) -> None:
        if value is not None and not isinstance(value, str):
            problems.append(f"{path} is {type(value).__name__}, not text")

    if not isinstance(doc, dict):
        return [f"the document is {type(doc).__name__}, not an object"]
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r:.40}, expected {SCHEMA!r}")
    if doc.get("status") not in STATUSES:
        problems.append(f"status is {doc.get('status')!r:.40}, expected one of {STATUSES}")
    error = section("error", doc.get("error"))
    for key in ("type", "message", "hint"):
        text(f"error.{key}", error.get(key))
    number("load_s", doc.get("load_s"))
    number("duration_s", doc.get("duration_s"))
    number("throughput_per_s", doc.get("throughput_per_s"))
    memory = section("memory", doc.get("memory"))
    for key in ("peak_rss_mb", "rss_anon_mb", "rss_file_mb", "rss_after_load_mb"):
        number(f"memory.{key}", memory.get(key))
    llm = section("llm", doc.get("llm"))
    for key in ("pp_tok_s", "tg_tok_s", "ttft_ms"):
        stat = section(f"llm.{key}", llm.get(key))
        number(f"llm.{key}.mean", stat.get("mean"))
        number(f"llm.{key}.stddev", stat.get("stddev"))
        samples = stat.get("samples")
        if samples is not None and not (
            isinstance(samples, list) and all(_is_number(v) for v in samples)
        ):
            problems.append(f"llm.{key}.samples is not a list of finite numbers")
    latency = section("latency_ms", doc.get("latency_ms"))
    for key in ("mean", "stddev", "min", "p50", "p90", "p99", "max"):
        number(f"latency_ms.{key}", latency.get(key))
    number("latency_ms.count", latency.get("count"), integer=True)
    embedding = section("embedding", doc.get("embedding"))
    for key in ("tokens_per_input", "n_embd"):
        number(f"embedding.{key}", embedding.get(key), integer=True)
    text("embedding.pooling", embedding.get("pooling"))
    _quality_problems(section("quality", doc.get("quality")), section, number, text, problems)
    device = section("device", doc.get("device"))
    for key in ("cpu", "arch", "board", "os"):
        text(f"device.{key}", device.get(key))
    number("device.cores", device.get("cores"), integer=True)
    runtime = section("runtime", doc.get("runtime"))
    for key in ("name", "version"):
        text(f"runtime.{key}", runtime.get(key))
    params = section("params", doc.get("params"))
    number("params.threads", params.get("threads"), integer=True)
    number("params.resolved.threads", section("params.resolved", params.get("resolved")).get("threads"), integer=True)  # fmt: skip
    for key in ("warnings", "unmeasured"):
        items = doc.get(key)
        if items is not None and not isinstance(items, list):
            problems.append(f"{key} is {type(items).__name__}, not a list")
    return problems


def _quality_problems(quality: dict[str, Any], section: Any, number: Any, text: Any,
                      problems: list[str]) -> None:  # fmt: skip
    """The quality section against the fields device_quality.py declares for it."""

    def check(path: str, fields: dict[str, str], doc: dict[str, Any]) -> None:
        for key, kind in fields.items():
            value = doc.get(key)
            if kind == "estimate":
                estimate = section(f"{path}.{key}", value)
                number(f"{path}.{key}.value", estimate.get("value"))
                number(f"{path}.{key}.uncertainty", estimate.get("uncertainty"))
            elif kind == "text":
                text(f"{path}.{key}", value)
            else:
                number(f"{path}.{key}", value, integer=kind == "integer")

    if not quality:
        return
    llm = quality.get("kind") == "llm-text"
    check("quality", dq.LLM_QUALITY_FIELDS if llm else dq.OUTPUTS_QUALITY_FIELDS, quality)
    check(
        "quality.reference",
        dq.REFERENCE_FIELDS,
        section("quality.reference", quality.get("reference")),
    )
    for key, fields in (("metrics", dq.METRIC_FIELDS), ("outputs", dq.OUTPUT_FIELDS)):
        items = quality.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            problems.append(f"quality.{key} is {type(items).__name__}, not a list")
            continue
        for i, item in enumerate(items[:1000]):
            check(f"quality.{key}[{i}]", fields, section(f"quality.{key}[{i}]", item))


def parse_agent_json(text: str) -> Any:
    """The agent's stdout as JSON, strictly: NaN and infinity are not JSON, and a document
    nested past any sane depth is refused instead of exhausting the stack."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except RecursionError as exc:
        raise ValueError("the document is nested too deeply") from exc


def _synthetic(status: str, message: str, hint: str, params: dict[str, Any]) -> dict[str, Any]:
    """A result document for a run that ended before the agent could write one."""
    return {
        "schema": SCHEMA,
        "status": status,
        "error": {"type": status, "message": message, "hint": hint},
        "params": params,
    }


def interpret_agent_output(run: CommandResult, params: dict[str, Any]) -> BenchResult:
    """Turn what the agent process left behind into a BenchResult, whatever happened."""
    text = run.stdout.strip()
    doc: dict[str, Any] | None = None
    if text and not run.stdout_truncated:
        try:
            parsed = parse_agent_json(text)
        except ValueError as exc:  # JSONDecodeError is a ValueError too
            parsed = None
            if text.startswith("{"):
                return BenchResult.from_document(_synthetic(
                    "error",
                    f"the agent printed a document that is not valid JSON: {exc}",
                    "check that the device runs this edgeshrink's agent; EDGESHRINK_DEBUG=1",
                    params,
                ))  # fmt: skip
        doc = parsed if isinstance(parsed, dict) else None
    if doc is not None:
        problems = document_problems(doc)
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            return BenchResult.from_document(_synthetic(
                "error",
                "the agent's document does not match its schema: "
                + "; ".join(problems[:3]) + more,
                "check that the device runs this edgeshrink's agent; EDGESHRINK_DEBUG=1",
                params,
            ))  # fmt: skip
        if run.timed_out and doc.get("status") == "ok":
            doc["status"] = "timeout"
        return BenchResult.from_document(doc)
    tail = " | ".join(run.stderr.strip().splitlines()[-3:])
    if run.timed_out:
        return BenchResult.from_document(_synthetic(
            "timeout",
            f"the agent did not finish within {run.seconds:.0f} s and was stopped",
            "raise --timeout, or lower --reps / --prompt-tokens",
            params,
        ))  # fmt: skip
    if run.signal == SIGKILL or run.returncode == 128 + SIGKILL:
        if run.oom_kill is False:
            return BenchResult.from_document(_synthetic(
                "error",
                "the agent was killed by SIGKILL, not by the kernel's out-of-memory killer"
                " (its oom_kill counter did not rise)",
                "something or someone on the device killed it; run again",
                params,
            ))  # fmt: skip
        who = "by" if run.oom_kill else "most likely by"
        return BenchResult.from_document(_synthetic(
            "oom",
            f"the agent was killed by SIGKILL, {who} the kernel's out-of-memory killer",
            "use a smaller quantization or a shorter context (edgeshrink plan shows the estimate)",
            params,
        ))  # fmt: skip
    if run.stdout_truncated:
        reason = "printed more output than the agent ever should"
    elif not text:
        reason = f"printed nothing on stdout (exit code {run.returncode})"
    else:
        reason = f"printed something that is not one JSON document (exit code {run.returncode})"
    return BenchResult.from_document(_synthetic(
        "error",
        f"the agent {reason}" + (f": {tail}" if tail else ""),
        "check the device's Python (3.9+) and run with EDGESHRINK_DEBUG=1",
        params,
    ))  # fmt: skip


def install_agent(transport: Transport, *, quality: bool = False) -> str:
    """Copy the agent to the device (only when it changed); return its path there. With
    ``quality``, device_quality.py goes beside it first (the agent loads it from there)."""
    files = [QUALITY_MODULE_PATH, AGENT_PATH] if quality else [AGENT_PATH]
    pushed = [transport.push_file(Path(f), f"agent/{f.name}", sha256_file(f)) for f in files]
    return pushed[-1].remote


def run_agent_bench(
    transport: Transport,
    remote_model: str,
    params: BenchParams,
    *,
    model_format: str = "gguf",
    remote_inputs: str | None = None,
    remote_reference: str | None = None,
    speed: bool = True,
    timeout_s: float = 900.0,
) -> tuple[BenchResult, CommandResult]:
    """Run the agent on a pushed model: ``bench`` (speed, and quality against
    ``remote_reference`` when given), or with ``speed=False`` ``eval`` (quality only)."""
    if not speed and remote_reference is None:
        raise ValueError("a run without speed measures quality: it needs a reference")
    agent = install_agent(transport, quality=remote_reference is not None)
    quality = ["--reference", remote_reference] if remote_reference is not None else []
    argv = [
        transport.target.python, agent, "bench" if speed else "eval", "--model", remote_model,
        *params.agent_args(model_format, remote_inputs), *quality,
    ]  # fmt: skip
    run = transport.run(argv, timeout_s=timeout_s)
    asked = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(params).items()}
    return interpret_agent_output(run, asked), run


def describe_command(run: CommandResult) -> str:
    return " ".join(shlex.quote(a) for a in run.argv)
