"""`bench`, `deploy` and `demo`: run models on a device and report what they cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import click

from edgeshrink.bench import BenchParams
from edgeshrink.cli.common import (
    ACCEPT_NEW_HOST_KEY,
    DB_OPTION,
    Context,
    FiniteFloat,
    agent_progress_printer,
    emit_json,
    pass_context,
    progress_printer,
    stack_options,
)
from edgeshrink.cli.models import (
    CTX,
    JSON,
    OUTPUT,
    PREFER,
    QUANT,
    fallback_summary,
    format_options,
    inspect_any,
    print_plan,
    shrink_options,
)
from edgeshrink.cli.targets import transfer_progress_printer
from edgeshrink.demo import demo_model_path
from edgeshrink.deploy import bench_model, deploy_model
from edgeshrink.errors import AgentError, ProfileError
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import get_profile
from edgeshrink.report.table import render_pairs
from edgeshrink.shrink import plan_model
from edgeshrink.targets import get_target
from edgeshrink.util import human_bytes, terminal_safe

FORMAT_KEYS = (
    "calibration", "calibration_method", "per_channel", "allow_random_calibration", "convert_type",
    "to_format",
)  # fmt: skip


def _dims(_ctx: Any, _param: Any, values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``--dim NAME=N`` values as (name, size) pairs."""
    pairs = []
    for value in values:
        name, _, size = value.rpartition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise click.BadParameter(f"{value!r} is not NAME=N with N >= 1 (e.g. sequence=128)")
        pairs.append((name, int(size)))
    return tuple(pairs)


def bench_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--prompt-tokens", type=click.IntRange(1, 1 << 16), default=512, show_default=True, help="Prompt-processing tokens (one batch)."),
        click.option("--gen-tokens", type=click.IntRange(1, 1 << 16), default=128, show_default=True, help="Tokens generated one by one."),
        click.option("--reps", type=click.IntRange(1, 1000), default=5, show_default=True, help="Repetitions (mean ± stddev)."),
        click.option("--warmup", type=click.IntRange(0, 100), default=1, show_default=True, help="Warm-up runs, not measured."),
        click.option("--threads", type=click.IntRange(1, 1024), default=None, help="Threads [default: the profile's, capped at the local cores]."),
        click.option("--flash-attn", type=click.Choice(["on", "off"]), default="on", show_default=True, help="llama.cpp flash attention."),
        click.option("--n-ctx", type=click.IntRange(16, 1 << 20), default=None, help="Context of the benchmark [default: prompt + gen]."),
        click.option("--runs", type=click.IntRange(1, 1 << 20), default=50, show_default=True, help="Non-LLM models: at least this many timed runs."),
        click.option("--min-seconds", type=FiniteFloat(min=0), default=1.0, show_default=True, help="Non-LLM models: keep running until this long has passed too."),
        click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Non-LLM models: an .npz of inputs pushed with the model [default: random from the declared shapes]."),
        click.option("--dim", "dims", multiple=True, metavar="NAME=N", callback=_dims, help="Non-LLM models, random inputs: the symbolic dimension NAME is N (e.g. --dim sequence=128) [default: 1]."),
        click.option("--no-mmap", is_flag=True, help="Read the model into memory instead of mmap'ing it."),
        click.option("--timeout", "timeout_s", type=FiniteFloat(min=1), default=900.0, show_default=True, help="Seconds before the agent is stopped."),
        click.option("--external-delegate", default=None, help="TFLite: delegate library path on the device, or 'none' for no delegate [default: the profile's, on SSH targets]."),
        click.option("--tflite-runtime", type=click.Choice(["auto", "litert", "tflite-runtime", "tensorflow"]), default="auto", show_default=True, help="TFLite: which runtime the agent uses (auto: ai-edge-litert, then tflite-runtime, then tensorflow.lite)."),
        DB_OPTION,
        ACCEPT_NEW_HOST_KEY,
    ]  # fmt: skip
    return stack_options(func, options)


def params_from(kw: dict[str, Any]):
    """BenchParams from the bench options: each option is named after its field
    (tests/test_bench_params_schema.py holds the CLI, the host and the agent to that)."""

    values = {f.name: kw[f.name] for f in fields(BenchParams) if f.name in kw}
    values["flash_attn"] = values["flash_attn"] == "on"
    return BenchParams(**values)


def push_printer(quiet: bool):

    return transfer_progress_printer(quiet)


def connect_target(name: str, profile_id: str | None, kw: dict[str, Any]):

    target = get_target(name, profile=profile_id)
    return replace(target, accept_new_host_key=bool(kw.get("accept_new_host_key")))


def _fmt_stat(stat, unit: str, label: str) -> str:
    if stat is None:
        return "-"
    return f"{stat.mean:,.1f} ± {stat.stddev:,.1f} {unit} ({label}, {len(stat.samples)} reps)"


def print_bench(outcome) -> None:
    r = outcome.result
    for warning in outcome.all_warnings:  # the agent's too: text mode must not hide them
        click.echo(f"warning: {terminal_safe(warning)}", err=True)
    device = r.document.get("device") or {}
    where = f"{outcome.target.name}: {device.get('board') or r.device_cpu or '?'}, {r.device_cores or '?'} cores, {r.device_arch or '?'}"
    params = r.document.get("params") or {}
    pairs: list[tuple[str, object]] = [
        ("model", f"{outcome.model_path} ({human_bytes(outcome.model_path.stat().st_size)})"),
        ("device", where),
        ("pushed", "already there (same sha256)" if outcome.push.skipped else f"{human_bytes(outcome.push.bytes_sent)} in {outcome.push.seconds:.2f} s" + (" (OpenSSH)" if outcome.push.via == "openssh" else "")),
        ("status", r.status),
    ]  # fmt: skip
    if r.ok:
        temps = (device.get("temps_c") or {}).get("after") or {}
        flash = f", flash-attn {params.get('flash_attn')}" if r.pp_tok_s else ""
        pairs += [
            ("runtime", f"{r.runtime} {r.runtime_version}, {r.threads} threads{flash}"),
            ("load", f"{r.load_s:.3f} s" if r.load_s is not None else "-"),
            ("memory", f"peak RSS {r.peak_rss_mb:.1f} MB (anon {r.rss_anon_mb or 0:.1f}, file/mmap {r.rss_file_mb or 0:.1f})" if r.peak_rss_mb else "-"),
        ]  # fmt: skip
        if r.pp_tok_s or r.tg_tok_s:
            pairs += [
                ("prompt", _fmt_stat(r.pp_tok_s, "tok/s", f"pp{params.get('prompt_tokens')}")),
                ("generation", _fmt_stat(r.tg_tok_s, "tok/s", f"tg{params.get('gen_tokens')}")),
                ("first token", _fmt_stat(r.ttft_ms, "ms", "time to first token")),
            ]  # fmt: skip
        if r.latency_ms:
            lat = r.latency_ms
            embedding = r.embedding
            per = f" per {embedding.get('tokens_per_input')}-token input" if embedding else ""
            if not r.throughput_per_s:
                throughput = "-"
            elif embedding:
                tokens = r.throughput_per_s * (embedding.get("tokens_per_input") or 0)
                throughput = f"{r.throughput_per_s:,.1f} embeddings/s ({tokens:,.0f} tok/s)"
            else:
                throughput = f"{r.throughput_per_s:,.1f} inferences/s"
            pairs += [
                ("latency", f"{lat.mean:.3f} ± {lat.stddev:.3f} ms{per} over {lat.samples} runs "
                            f"(p50 {lat.p50:.3f}, p90 {lat.p90:.3f}, p99 {lat.p99:.3f}, max {lat.max:.3f})"),
                ("throughput", throughput),
            ]  # fmt: skip
            if embedding:
                pairs.append(
                    (
                        "embedding",
                        f"{embedding.get('n_embd')} dims, {embedding.get('pooling')} pooling",
                    )
                )
        pairs.append(
            ("temperature", ", ".join(f"{k} {v:.0f}°C" for k, v in temps.items()) or "not readable")
        )
    else:
        pairs.append(("error", r.error_message))
    if outcome.result_id is not None:
        pairs.append(("stored", f"result #{outcome.result_id} in {outcome.db_path}"))
    click.echo(render_pairs(pairs))
    unmeasured = r.document.get("unmeasured") or []
    if unmeasured:
        click.echo(
            "not measured: " + "; ".join(f"{u.get('what')} ({u.get('why')})" for u in unmeasured)
        )


def bench_json(outcome) -> dict[str, Any]:
    return {
        "target": outcome.target.name,
        "model": str(outcome.model_path),
        "push": {"remote": outcome.push.remote, "skipped": outcome.push.skipped,
                 "bytes_sent": outcome.push.bytes_sent, "seconds": outcome.push.seconds,
                 "via": outcome.push.via},
        "result_id": outcome.result_id,
        "db": str(outcome.db_path) if outcome.db_path else None,
        "warnings": list(outcome.all_warnings),
        "result": outcome.result.document,
    }  # fmt: skip


def _finish(outcome) -> None:
    """A benchmark that did not end ok is a failure of the command, after it was shown and stored."""
    r = outcome.result
    if not r.ok:
        raise AgentError(
            f"benchmark on {outcome.target.name} ended with status {r.status}: {r.error_message}",
            hint=r.error_hint or AgentError.default_hint,
        )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    "target_name",
    default="local",
    show_default=True,
    help="Target name (see `edgeshrink targets list`).",
)
@click.option(
    "--profile",
    "-p",
    "profile_id",
    default=None,
    help="Hardware profile ID, for thread count and the record.",
)
@bench_options
@click.option("--no-store", is_flag=True, help="Do not write the result to the database.")
@JSON
@pass_context
def bench(
    obj: Context,
    model: Path,
    target_name: str,
    profile_id: str | None,
    no_store: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Benchmark MODEL on a target with the on-device agent."""

    target = connect_target(target_name, profile_id, kw)
    profile = get_profile(target.profile, obj.profiles_dirs) if target.profile else None
    outcome = bench_model(
        model, target, params_from(kw), profile=profile, db=kw["db"], store_result=not no_store,
        timeout_s=kw["timeout_s"], progress=progress_printer(as_json), push_progress=push_printer(as_json),
        agent_stderr=agent_progress_printer(as_json),
    )  # fmt: skip
    if as_json:
        emit_json(bench_json(outcome))
    else:
        print_bench(outcome)
    _finish(outcome)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--profile",
    "-p",
    "profile_id",
    default=None,
    help="Hardware profile ID [default: the target's].",
)
@click.option(
    "--target", "-t", "target_name", default="local", show_default=True, help="Target name."
)
@QUANT
@OUTPUT
@CTX
@PREFER
@bench_options
@format_options
@click.option("--dry-run", is_flag=True, help="Show the plan; quantize, push and run nothing.")
@JSON
@pass_context
def deploy(
    obj: Context,
    model: Path,
    profile_id: str | None,
    target_name: str,
    quant: str | None,
    output: Path | None,
    context: int | None,
    prefer: str,
    dry_run: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Plan, shrink, push and benchmark MODEL on a target, and store the result."""

    target = connect_target(target_name, profile_id, kw)
    if not target.profile:
        raise ProfileError(
            f"target '{target.name}' has no hardware profile and none was given",
            hint="pass --profile ID (see `edgeshrink profiles list`)",
        )
    profile = get_profile(target.profile, obj.profiles_dirs)
    options = shrink_options(
        quant=quant, context=context, prefer=prefer, **{k: kw.pop(k) for k in FORMAT_KEYS}
    )
    if dry_run:
        chosen = plan_model(inspect_any(model), profile, options)
        if as_json:
            emit_json({"dry_run": True, "target": target.to_dict(), "plan": chosen.to_dict()})
        else:
            print_plan(chosen)
            click.echo(f"would push to {target.name} ({target.describe()}) and benchmark there")
        return
    outcome = deploy_model(
        model, profile, target, params_from(kw), options, output=output, db=kw["db"],
        timeout_s=kw["timeout_s"], progress=progress_printer(as_json), push_progress=push_printer(as_json),
        agent_stderr=agent_progress_printer(as_json),
    )  # fmt: skip
    if as_json:
        emit_json(
            {
                "plan": outcome.shrink.plan.to_dict(),
                "artifact": str(outcome.shrink.artifact.path),
                "reused_artifact": outcome.shrink.reused,
                **bench_json(outcome.bench),
            }
        )
    else:
        art = outcome.shrink.artifact
        click.echo(f"plan: {outcome.shrink.plan.reason}")
        click.echo(
            f"artifact: {art.path} ({art.quant}, {human_bytes(art.size_bytes)}"
            f"{', reused' if outcome.shrink.reused else ''})"
        )
        if art.fallbacks:
            click.echo(fallback_summary(art.fallbacks))
        print_bench(outcome.bench)
    _finish(outcome.bench)


@click.command()
@click.option(
    "--size",
    default="small",
    show_default=True,
    help="Size of the generated demo model (see scripts/make_test_models.py).",
)
@click.option(
    "--profile",
    "-p",
    "profile_id",
    default="raspberry-pi-5-8gb",
    show_default=True,
    help="Hardware profile to plan for.",
)
@click.option(
    "--target", "-t", "target_name", default="local", show_default=True, help="Target to run on."
)
@bench_options
@JSON
@pass_context
def demo(
    obj: Context, size: str, profile_id: str, target_name: str, as_json: bool, **kw: Any
) -> None:
    """Make a small llama model, deploy it for a device, and show what it costs.

    Needs nothing but the install: no download, no model of your own.
    """

    say = progress_printer(as_json)
    profile = get_profile(profile_id, obj.profiles_dirs)
    target = connect_target(target_name, profile.id, kw)
    model = demo_model_path(size, progress=say)
    output = model.with_name(model.name.replace("-f16.gguf", f"-for-{profile.id}.gguf"))
    outcome = deploy_model(
        model,
        profile,
        target,
        params_from(kw),
        ShrinkOptions(),
        db=kw["db"],
        output=output,
        timeout_s=kw["timeout_s"],
        progress=say,
        agent_stderr=agent_progress_printer(as_json),
    )
    if as_json:
        emit_json(
            {
                "model": str(model),
                "plan": outcome.shrink.plan.to_dict(),
                **bench_json(outcome.bench),
            }
        )
    else:
        click.echo(f"demo model: {model}")
        print_plan(outcome.shrink.plan)
        click.echo("")
        print_bench(outcome.bench)
        click.echo(
            "\nnext: edgeshrink deploy YOUR-MODEL-f16.gguf --profile ID --target local "
            "(edgeshrink profiles list shows the devices)"
        )
    _finish(outcome.bench)


COMMANDS = (bench, deploy, demo)
