"""`profiles` and `quant-types`: what edgeshrink knows about."""

from __future__ import annotations

import click

from edgeshrink.cli.common import JSON_OPTION, Context, emit_json, pass_context, warn_problems
from edgeshrink.formats import gguf
from edgeshrink.profiles import get_profile, scan_profiles
from edgeshrink.report.table import render_pairs, render_table
from edgeshrink.util import terminal_safe


@click.group()
def profiles() -> None:
    """Hardware profiles: the devices edgeshrink plans for."""


@profiles.command("list")
@JSON_OPTION
@pass_context
def profiles_list(obj: Context, as_json: bool) -> None:
    """List the known hardware profiles (built-in and your own)."""

    scan = scan_profiles(obj.profiles_dirs)
    warn_problems(scan.problems)
    found = scan.profiles
    if as_json:
        emit_json([p.to_dict() for p in found])
        return
    rows = [
        (p.id, p.name, p.arch, f"{p.cpu.cores}", f"{p.ram_mb}", f"{p.budget_mb}",
         dict(p.default_quant).get("gguf", "-"), ",".join(p.preferred_runtimes))
        for p in found
    ]  # fmt: skip
    click.echo(render_table(
        ["ID", "NAME", "ARCH", "CORES", "RAM MB", "BUDGET MB", "GGUF", "RUNTIMES"],
        rows, right=(3, 4, 5),
    ))  # fmt: skip


@profiles.command("show")
@click.argument("profile_id")
@JSON_OPTION
@pass_context
def profiles_show(obj: Context, profile_id: str, as_json: bool) -> None:
    """Show one hardware profile, with where its numbers come from."""

    p = get_profile(profile_id, obj.profiles_dirs)
    if as_json:
        emit_json(p.to_dict())
        return
    pairs: list[tuple[str, object]] = [
        ("id", p.id),
        ("name", p.name),
        ("soc", p.soc),
        ("arch", p.arch),
        (
            "cpu",
            f"{p.cpu.model} ({p.cpu.cores} cores: {p.cpu.big_cores} big, {p.cpu.little_cores} little)",
        ),
        ("features", " ".join(p.cpu.features)),
        ("ram", f"{p.ram_mb} MB, {p.memory_bandwidth_gbs} GB/s"),
        (
            "budget",
            f"{p.budget_mb} MB = ({p.ram_mb} - {p.reserved_mb} reserved) x {p.budget_fraction}",
        ),
        ("threads", p.threads),
        ("formats", ", ".join(p.preferred_formats)),
        ("runtimes", ", ".join(p.preferred_runtimes)),
        ("default quant", ", ".join(f"{f}={p.default_quant_for(f)}" for f in p.preferred_formats)),
        ("accelerators", "; ".join(f"{a.name} ({a.kind})" for a in p.accelerators) or "none"),
        ("os", p.os_notes),
        ("file", p.path),
    ]
    click.echo(render_pairs(pairs))
    click.echo("sources:")
    for source in p.sources:
        click.echo(f"  - {terminal_safe(source)}")


@click.command("quant-types")
@JSON_OPTION
def quant_types(as_json: bool) -> None:
    """List llama.cpp's GGUF quantization types, best quality first."""

    rows = []
    for q in gguf.QUANT_TYPES.values():
        supported = gguf.supported_by_llama_cpp(q.name)
        rows.append({
            "name": q.name, "bits_per_weight": q.bpw, "base_type": q.base_type,
            "needs_imatrix": q.needs_imatrix, "in_plan_ladder": q.name in gguf.PLAN_LADDER,
            "supported": supported, "note": q.note,
        })  # fmt: skip
    if as_json:
        emit_json(rows)
        return
    yes_no = {True: "yes", False: "no", None: "?"}
    click.echo(render_table(
        ["TYPE", "BPW", "LLAMA.CPP", "PLAN", "NOTE"],
        [(r["name"], f"{r['bits_per_weight']:.2f}", yes_no[r["supported"]],
          "yes" if r["in_plan_ladder"] else "", r["note"]) for r in rows],
        right=(1,),
    ))  # fmt: skip


COMMANDS = (profiles, quant_types)
