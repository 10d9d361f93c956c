"""GgufBackend: what the rest of edgeshrink asks of the GGUF format."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeshrink.errors import BenchParamsError
from edgeshrink.formats.base import Backend, Built, ModelInfo
from edgeshrink.formats.gguf import build
from edgeshrink.formats.gguf.plan import context_warnings, plan_gguf
from edgeshrink.formats.gguf.quant_types import FORMAT, LLAMA_QUANTIZE_TYPES, quant_type
from edgeshrink.formats.gguf.reader import inspect_gguf, is_encoder, position_rows
from edgeshrink.formats.gguf.reference import make_llm_reference


class GgufBackend(Backend):
    format = FORMAT
    label = "llama.cpp"
    runtime = "llama.cpp (llama-cpp-python)"
    evaluation = "llm-text"
    quant_types = LLAMA_QUANTIZE_TYPES
    sweep_ladder = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")

    def inspect(self, path: str | os.PathLike[str]) -> ModelInfo:
        return inspect_gguf(path)

    def plan(self, info: ModelInfo, profile: Any, options: Any) -> Any:

        return plan_gguf(info, profile, options)

    tool = "llama.cpp"
    failure_hint = "run with EDGESHRINK_DEBUG=1 to see llama.cpp's log"

    def preflight(self, info: ModelInfo, plan: Any, options: Any) -> None:
        build.preflight(options)

    def check_recipe(self, info: ModelInfo, recipe: Any) -> None:
        build.check_recipe(info, recipe)

    def resolve_settings(self, src: Path, info: ModelInfo, recipe: Any, options: Any,
                         source_sha256: str, progress: Any) -> tuple[dict[str, Any], Any]:  # fmt: skip
        return build.resolve_settings(src, info, recipe, options, source_sha256, progress)

    def build(self, src: Path, work: Path, name: str, recipe: Any, **kw: Any) -> Built:
        kw.pop("profile")
        return build.build(src, work, name, recipe, **kw)

    def verify(self, built: Built, info: ModelInfo, options: Any, progress: Any) -> Built:
        return build.verify(built, info, options, progress)

    def reuse_details(
        self, info: ModelInfo, profile: Any, options: Any, quant: str
    ) -> tuple[str, ...] | None:
        """A mix is reused only when it was chosen the way this edgeshrink chooses one."""
        return (build.MIX_DETAIL,) if options.max_size or options.fit else None

    def make_reference(self, base: Any, **settings: Any) -> Path:
        wanted = ("text", "n_ctx", "max_chunks", "threads", "progress")
        return make_llm_reference(base, **{k: v for k, v in settings.items() if k in wanted})

    def embeds(self, info: ModelInfo) -> bool:
        return is_encoder(info)

    def normalize_quant(self, name: str) -> str:
        return quant_type(name).name

    def measures_tokens(self, info: ModelInfo) -> bool:
        return not is_encoder(info)

    def agent_args(self, params: Any, remote_inputs: str | None = None) -> list[str]:
        args = [
            "--prompt-tokens", str(params.prompt_tokens),
            "--gen-tokens", str(params.gen_tokens),
            "--reps", str(params.reps),
            "--flash-attn", "on" if params.flash_attn else "off",
        ]  # fmt: skip
        if params.n_ctx:
            args += ["--n-ctx", str(params.n_ctx)]
        if params.no_mmap:
            args.append("--no-mmap")
        # An embedding model (BERT) is timed per input, like ONNX and TFLite models.
        return args + ["--runs", str(params.runs), "--min-seconds", str(params.min_seconds)]

    def bench_params(
        self, info: ModelInfo, params: Any, profile: Any, *, on_this_machine: bool
    ) -> tuple[Any, str]:
        """Benchmark lengths the model's positions allow, and a note when they were shortened.

        An embedding model takes at most its trained length (a BERT's position table has
        exactly that many rows): longer inputs are shortened to it. A decoder with a learned
        position table (GPT-2 and kin) cannot run past its rows either (llama.cpp aborts): it
        is refused here, with numbers that fit.
        """
        if is_encoder(info):
            trained = info.llm.context_length if info.llm else 0
            if trained and params.prompt_tokens > trained:
                return replace(params, prompt_tokens=trained), " (the longest it takes)"
            return params, ""
        rows = position_rows(info)
        used = params.n_ctx or params.prompt_tokens + params.gen_tokens
        if rows and used > rows:
            raise BenchParamsError(
                f"{info.path.name} has a learned position table of {rows} rows: {used} tokens"
                f" (--prompt-tokens {params.prompt_tokens} + --gen-tokens {params.gen_tokens})"
                " would run past it, which aborts llama.cpp",
                hint=f"bench with at most {rows} tokens, e.g. --prompt-tokens {rows * 3 // 4}"
                f" --gen-tokens {rows - rows * 3 // 4}",
            )
        return params, ""

    def bench_plan(self, info: ModelInfo, params: Any, note: str) -> str:
        if is_encoder(info):
            return (
                f"embedding {params.prompt_tokens}-token inputs{note},"
                f" at least {params.runs} runs and {params.min_seconds:g} s"
            )
        return f"{params.reps} reps of pp{params.prompt_tokens} + tg{params.gen_tokens}"

    def bench_warnings(self, info: ModelInfo, params: Any) -> tuple[str, ...]:
        """A benchmark context beyond the one the model was trained at: the speed is real,
        but not one the model would be used at."""
        if is_encoder(info):
            return ()  # the agent embeds at most the trained length, and says so

        used = params.n_ctx or params.prompt_tokens + params.gen_tokens
        asked = (
            f"--n-ctx {params.n_ctx}"
            if params.n_ctx
            else f"--prompt-tokens {params.prompt_tokens} + --gen-tokens {params.gen_tokens}"
        )
        return context_warnings(
            info, used, asked=f"{asked} = {used} tokens",
            remedy="so this speed is not one it would be used at",
        )  # fmt: skip


BACKEND = GgufBackend()
