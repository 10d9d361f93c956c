"""`eval --target`: the device's quality figures beside the host's, and the drift between them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from edgeshrink.bench import BenchParams
from edgeshrink.cli.common import (
    Context,
    agent_progress_printer,
    emit_json,
    progress_printer,
)
from edgeshrink.cli.targets import transfer_progress_printer
from edgeshrink.device_eval import DeviceEval, evaluate_on_device
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats.gguf.quality import LlmBudget
from edgeshrink.profiles import get_profile
from edgeshrink.quality import EvalSettings
from edgeshrink.report.table import render_table
from edgeshrink.sweep import OutputQualityBudget
from edgeshrink.targets import get_target
from edgeshrink.util import human_bytes, terminal_safe


def device_budget(evaluation: str, bounds: dict[str, float | None]) -> Any:
    """The budget the device's figures are judged by (``failures(figures)``, ``describe()``)."""
    if evaluation == "llm-text":
        return LlmBudget(max_kld=bounds["max_kld"], max_ppl_increase=bounds["max_ppl_increase"],
                         min_same_top=bounds["min_agreement"])  # fmt: skip
    return OutputQualityBudget(max_accuracy_drop=bounds["max_accuracy_drop"],
                               min_agreement=bounds["min_agreement"],
                               min_cosine=bounds["min_cosine"])  # fmt: skip


def eval_on_target(
    obj: Context, base: Path, candidate: Path, target_name: str, settings: EvalSettings,
    bounds: dict[str, float | None], tolerance: float, threads: int | None, timeout_s: float,
    db: str | None, accept_new_host_key: bool, as_json: bool,
) -> None:  # fmt: skip
    target = replace(get_target(target_name), accept_new_host_key=accept_new_host_key)
    profile = get_profile(target.profile, obj.profiles_dirs) if target.profile else None
    result = evaluate_on_device(
        base, candidate, target, settings=settings, params=BenchParams(threads=threads),
        profile=profile, tolerance=tolerance, db=db, timeout_s=timeout_s,
        progress=progress_printer(as_json), push_progress=transfer_progress_printer(as_json),
        agent_stderr=agent_progress_printer(as_json),
    )  # fmt: skip
    budget = device_budget(result.evaluation, bounds)
    failures = budget.failures(result.quality)
    if as_json:
        emit_json({**result.to_dict(), "budget": budget.describe(), "failures": failures,
                   "warnings": list(result.outcome.all_warnings)})  # fmt: skip
    else:
        for warning in result.outcome.all_warnings:
            click.echo(f"warning: {terminal_safe(warning)}", err=True)
        print_device_eval(result)
        click.echo(f"budget (the device's figures): {budget.describe()}: "
                   + ("; ".join(failures) if failures else "met"))  # fmt: skip
    if failures:
        raise EdgeshrinkError(
            f"{candidate.name} loses too much quality on {target.name}: {'; '.join(failures)}",
            hint="choose a gentler quantization (edgeshrink sweep with the same target finds one)",
        )


def _est(figure: dict[str, float] | None, scale: float = 1.0, unit: str = "") -> str:
    if not figure:
        return "-"
    return f"{figure['value'] * scale:.4f} ± {figure['uncertainty'] * scale:.4f}{unit}"


def _change(row: Any) -> str:
    if row is None:
        return ""
    shown = f"{row.judged:+.2%}" if row.relative else f"{row.judged * 100:+.2f} pts"
    return shown + ("  DRIFT" if row.beyond else "")


def _metric(m: dict[str, Any]) -> str:
    """A metric's value; accuracy with the base's beside it."""
    if m.get("reference") is not None:
        return f"{m['reference']:.4g} -> {m['value']:.4g}"
    return f"{m['value']:.6g}"


def print_device_eval(result: DeviceEval) -> None:
    q, host = result.quality, result.host or {}
    where = f"{result.target} (on the device)"
    drift = {r.metric: r for r in result.drift.rows} if result.drift else {}
    source = "host (from the results database)" if result.host_cached else "host"
    if result.evaluation == "llm-text":
        click.echo(
            f"{Path(q['candidate']).name} against {Path(q['base']).name}: {q['n_scored']} tokens "
            f"scored in {q['n_chunks']} chunks of {q['n_ctx']}"
        )
        rows = [
            ("PPL base", _est(host.get("ppl_base")), _est(q["ppl_base"]), ""),
            ("PPL candidate", _est(host.get("ppl")), _est(q["ppl"]), _change(drift.get("ppl"))),
            ("PPL ratio", _est(host.get("ppl_ratio")), _est(q["ppl_ratio"]), ""),
            ("KLD mean", _est(host.get("kld_mean")), _est(q["kld_mean"]), _change(drift.get("kld_mean"))),
            ("KLD median / p99", f"{host['kld_median']:.5f} / {host['kld_p99']:.5f}" if host else "-",
             f"{q['kld_median']:.5f} / {q['kld_p99']:.5f}", ""),
            ("same top token", _est(host.get("same_top"), 100, " %"), _est(q["same_top"], 100, " %"),
             _change(drift.get("same_top"))),
            ("RMS Δp", _est(host.get("rms_dp"), 100, " %"), _est(q["rms_dp"], 100, " %"),
             _change(drift.get("rms_dp"))),
        ]  # fmt: skip
        note = (
            f"device KLD: top {q['top_k']} exact + {q['tail_samples']} samples of the rest per "
            f"position (sampling error ± {q['kld_sampling_error']:.5f}; top-{q['top_k']} + rest "
            f"alone: {q['kld_topk_rest']:.5f}, a lower bound)"
        )
    else:
        click.echo(
            f"{Path(q['candidate']).name} against {Path(q['base']).name}: {q['n_samples']} samples"
            f" from {q.get('inputs') or 'random inputs'}"
        )
        on_host = {(m["name"], m.get("output")): m for m in host.get("metrics", [])}
        rows = []
        for m in q["metrics"]:
            label = f"{m['name']} ({m['output']})" if m.get("output") else m["name"]
            h = on_host.get((m["name"], m.get("output")))
            key = f"{m['name']} of {m['output']}" if m.get("output") else m["name"]
            rows.append((label, "-" if h is None else _metric(h), _metric(m),
                         _change(drift.get(key))))  # fmt: skip
        note = ""
    head = ["", source.upper(), where.upper(), "DEVICE - HOST"]
    click.echo(render_table(head, rows, right=(1, 2, 3)))
    r = result.outcome.result
    reference = result.reference.stat().st_size
    click.echo(
        f"device: {r.runtime} {r.runtime_version}, {r.threads} threads, {r.device_cpu} "
        f"({r.device_arch}), peak RSS {r.peak_rss_mb or 0:.1f} MB, {q.get('seconds', 0):.1f} s; "
        f"reference {human_bytes(reference)}"
    )
    if note:
        click.echo(note)
    if result.outcome.result_id is not None:
        click.echo(f"stored: result #{result.outcome.result_id}, quality #{result.quality_id} in "
                   f"{result.outcome.db_path}")  # fmt: skip
    if result.drift is not None:
        flag = "DRIFT: " if result.drift.flagged else ""
        click.echo(f"drift of the device from the host: {flag}{result.drift.describe()}")
