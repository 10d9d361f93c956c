"""The page that answers "when do I stop?": one sweep, read at a glance.

Every recipe tried (types, pruned blocks, healed or not) with its size, estimated and
measured memory, measured speed and quality; the Pareto plots with the budget line and
the pick; what each step bought, written from the measurements; and, with a price in
the profile, what running it costs. Self-contained HTML (plots are inline SVG) or
Markdown for a pull-request comment. It is drawn from the sweep's stored document
(``SweepResult.to_dict()`` plus the cost inputs), so `edgeshrink results sweep N`
opens the same page later.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

from edgeshrink.cost import Load, cost_of
from edgeshrink.report.plot import HEIGHT, WIDTH, empty_panel, scatter_panel
from edgeshrink.util import atomic_path, human_bytes

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 8px;border-bottom:1px solid #eaeef2}
th{text-align:left;background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.pick{background:#fff1f1;font-weight:600}.box{background:#f6f8fa;border:1px solid #d0d7de;padding:10px 14px}
.muted{color:#656d76;font-size:12px}li{margin:4px 0}
"""


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["quant"]: c for c in doc["candidates"]}


def speed_of(c: dict[str, Any]) -> float | None:
    return c.get("speed")


def llm(doc: dict[str, Any]) -> bool:
    return any("kld_mean" in c["quality"] for c in doc["candidates"])


def step_story(doc: dict[str, Any]) -> list[str]:
    """What each step bought, for the pick's type: quantization from the original, then
    removing blocks on top, then healing; sentences made from the measured figures."""
    cands = by_name(doc)
    pick = cands.get(doc.get("pick") or "")
    original = next((c for c in doc["candidates"] if c.get("original")), None)
    plain = [c for c in doc["candidates"] if not c.get("pruned") and not c.get("original")]
    if pick is None and not plain:
        return []
    typ = (pick or plain[0]).get("type") or (pick or plain[0])["quant"]
    base = cands.get(typ)
    lines = []
    unit = doc.get("speed_unit", "tok/s")

    def quality(c: dict[str, Any]) -> str:
        if "kld_mean" in c["quality"]:
            return f"KLD {c['loss']:.4f}"
        return f"{doc['loss']} {c['loss']:.4g}"

    if base is not None and original is not None:
        text = (f"{base['quant']}: {original['size_bytes'] / base['size_bytes']:.1f}× smaller "
                f"({_mib(original['size_bytes'])} → {_mib(base['size_bytes'])}) at {quality(base)}")  # fmt: skip
        if speed_of(base) and speed_of(original):
            text += f", {speed_of(base) / speed_of(original):.2f}× the original's {unit}"
        lines.append(text + ".")
    elif base is not None:
        lines.append(f"{base['quant']}: {_mib(base['size_bytes'])} at {quality(base)}.")
    for c in doc["candidates"]:
        if c.get("type") != typ or not c.get("pruned") or base is None:
            continue
        n = len(c["pruned"])
        against = base
        if c.get("healed"):
            against = next((u for u in doc["candidates"] if u.get("type") == typ and
                            u.get("pruned") == c["pruned"] and not u.get("healed")), base)  # fmt: skip
            what = f"healing the {n}-block removal"
        else:
            what = f"{n} block(s) removed on top of {typ}"
        change = c["loss"] - against["loss"]
        text = f"{what}: {quality(c)} ({change:+.4f} against {against['quant']})"
        if not c.get("healed"):
            text += f", {1 - c['size_bytes'] / base['size_bytes']:.0%} smaller"
            if speed_of(c) and speed_of(base):
                text += f", {speed_of(c) / speed_of(base) - 1:+.0%} {unit}"
        if c.get("beaten_by"):
            text += f"; {c['beaten_by']} beats it (no larger, no lossier)"
        lines.append(text + ".")
    return lines


def costs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Cost lines of the candidates that fit and have a speed (see edgeshrink.cost)."""
    cost = doc.get("cost") or {}
    hourly = cost.get("hourly_usd")
    if not hourly:
        return []
    load = (
        Load(cost["load_tokens_per_day"], cost.get("load") or "")
        if cost.get("load_tokens_per_day")
        else None
    )
    out = []
    for c in doc["candidates"]:
        if c["fits"] and speed_of(c) and c.get("ran_on_device", True) is not False:
            line = cost_of(c["quant"], speed_of(c), hourly, cost["utilization"], load).to_dict()
            line["meets_quality"] = c["meets_quality"]
            out.append(line)
    return out


def saving(doc: dict[str, Any]) -> str | None:
    lines = {line["candidate"]: line for line in costs(doc)}
    original = next((c for c in doc["candidates"] if c.get("original")), None)
    pick = doc.get("pick")
    if not original or pick not in lines or original["quant"] not in lines:
        return None
    a, b = lines[original["quant"]], lines[pick]
    text = (f"{pick} costs ${b['per_million_usd']:.4f} per 1M tokens against "
            f"${a['per_million_usd']:.4f} for the original {original['quant']} "
            f"({1 - b['per_million_usd'] / a['per_million_usd']:.0%} less)")  # fmt: skip
    if b.get("monthly_usd") is not None:
        text += (f"; the load needs {b['units']} unit(s) for ${b['monthly_usd']:,.2f} a month "
                 f"instead of {a['units']} for ${a['monthly_usd']:,.2f}")  # fmt: skip
    return text


def plots_svg(doc: dict[str, Any]) -> str:
    cands = doc["candidates"]
    budget = doc.get("budget") or {}
    line = budget.get("max_kld") if llm(doc) else None
    points = [{"name": c["quant"], "x": c["size_bytes"] / 2**20, "y": c["loss"], "fits": c["fits"]}
              for c in cands]  # fmt: skip
    if not cands:
        left = empty_panel(title="quality vs size", message="no candidate was made")
        right = empty_panel(title="quality vs speed", message="no candidate", offset_x=WIDTH)
    else:
        left = scatter_panel(points, x_label="size (MiB)", y_label=doc["loss"], title="quality vs size",
                             front=tuple(doc["pareto_size"]), pick=doc["pick"], hline=line)  # fmt: skip
        speeds = [{"name": c["quant"], "x": c["speed"], "y": c["loss"], "fits": c["fits"]}
                  for c in cands if c.get("speed")]  # fmt: skip
        right = (
            scatter_panel(
                speeds,
                x_label=doc.get("speed_unit", "speed"),
                y_label=doc["loss"],
                title="quality vs speed",
                front=tuple(doc["pareto_speed"]),
                pick=doc["pick"],
                offset_x=WIDTH,
                hline=line,
            )  # fmt: skip
            if speeds
            else empty_panel(title="quality vs speed", message="speed not measured", offset_x=WIDTH)
        )
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * WIDTH}" height="{HEIGHT}" '
            f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>'
            f"{left}{right}</svg>")  # fmt: skip


def rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    is_llm = llm(doc)
    headers = ["candidate", "recipe", "size", "est. peak MB", "measured peak MB"]
    headers += ["pp tok/s", "tg tok/s", "first token ms"] if is_llm else ["p50 ms", "inferences/s"]
    headers += ["KLD", "PPL", "same top"] if is_llm else [doc["loss"]]
    headers.append("verdict")
    out = []
    for c in doc["candidates"]:
        m = c.get("measured") or {}
        recipe = " ▸ ".join(_step(s) for s in c.get("recipe") or []) or (
            "the original" if c.get("original") else ""
        )
        row = [c["quant"], recipe, human_bytes(c["size_bytes"]), f"{c['estimate_mb']:.0f}",
               _n(m.get("peak_rss_mb"), ".0f")]  # fmt: skip
        if is_llm:
            row += [_n(m.get("pp_tok_s"), ",.1f"), _n(m.get("tg_tok_s") or c.get("tg_tok_s"), ",.1f"),
                    _n(m.get("ttft_ms"), ",.1f")]  # fmt: skip
            q = c["quality"]
            row += [f"{q['kld_mean']['value']:.4f}", f"{(q['ppl_ratio']['value'] - 1) * 100:+.2f}%",
                    f"{q['same_top']['value']:.1%}"]  # fmt: skip
        else:
            row += [
                _n(m.get("latency_p50_ms"), ".3f"),
                _n(c.get("speed"), ",.1f"),
                f"{c['loss']:.4g}",
            ]
        row.append(verdict(doc, c))
        out.append(row)
    return headers, out


def _step(step: dict[str, Any]) -> str:
    if step.get("pass") == "prune":
        return f"prune {','.join(map(str, step.get('layers', [])))}"
    if step.get("pass") == "distill":
        return "distill"
    if step.get("pass") == "quantize" and step.get("imatrix"):
        return f"{step.get('type', '?')} + imatrix"
    return str(step.get("type", step.get("pass", "?")))


def _n(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verdict(doc: dict[str, Any], c: dict[str, Any]) -> str:
    if not c["fits"]:
        return "does not fit"
    parts = []
    if c["quant"] == doc.get("pick"):
        parts.append("PICK")
    if c["quant"] in doc["pareto_size"] or c["quant"] in doc["pareto_speed"]:
        parts.append("front")
    if c.get("beaten_by"):
        parts.append(f"beaten by {c['beaten_by']}")
    parts.append("ok" if c["meets_quality"] else "too lossy")
    return ", ".join(parts)


def render_html(doc: dict[str, Any]) -> str:
    headers, table = rows(doc)
    title = f"{Path(doc['model']).name} on {doc['profile']}"
    story = "".join(f"<li>{escape(s)}</li>" for s in step_story(doc)) or "<li>one step only</li>"
    cost_html = ""
    lines = costs(doc)
    if lines:
        cost = doc["cost"]
        head = ["candidate", "within budget", "tok/s", "$/hour", "utilization", "$ per 1M tokens"]
        with_load = lines[0].get("monthly_usd") is not None
        if with_load:
            head += ["units for the load", "$ per month"]
        body = ""
        for line in lines:
            cells = [line["candidate"], "yes" if line["meets_quality"] else "no",
                     f"{line['tokens_per_s']:,.1f}", f"{line['hourly_usd']:.4f}",
                     f"{line['utilization']:.0%}", f"{line['per_million_usd']:.4f}"]  # fmt: skip
            if with_load:
                cells += [str(line["units"]), f"{line['monthly_usd']:,.2f}"]
            cls = ' class="pick"' if line["candidate"] == doc.get("pick") else ""
            body += (
                f"<tr{cls}>" + "".join(f'<td class="n">{escape(x)}</td>' for x in cells) + "</tr>"
            )
        save = saving(doc)
        cost_html = (
            f"<h2>What it costs</h2><p class='muted'>price: {escape(cost['price'])}; cost per 1M "
            f"tokens = $/hour ÷ (tok/s × 3600 × utilization) × 1e6"
            + (f"; load {escape(cost['load'])} ({cost['load_tokens_per_day']:,.0f} tokens/day), "
               f"730 hours a month" if cost.get("load") else "") + "</p>"
            + (f"<p class='box'>{escape(save)}</p>" if save else "")
            + "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + f"</tr>{body}</table>"
        )  # fmt: skip
    trs = ""
    for row in table:
        cls = ' class="pick"' if row[0] == doc.get("pick") else ""
        trs += f"<tr{cls}>" + "".join(
            f'<td{" class=n" if i >= 2 and i < len(row) - 1 else ""}>{escape(x)}</td>' for i, x in enumerate(row)
        ) + "</tr>"  # fmt: skip
    budget = doc.get("budget_text") or ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{escape(title)}: pick {escape(doc.get("pick") or "none")}</h1>
<p class="box">{escape(doc["reason"])}</p>
<p class="muted">quality on {escape(doc.get("quality_source") or "")}; speed {escape(doc["speed_source"])};
budget {escape(budget)}; {len(doc["candidates"])} candidates</p>
<h2>What each step bought</h2><ul>{story}</ul>
{cost_html}
<h2>Quality against size and speed</h2>
<div class="plots">{plots_svg(doc)}</div>
<p class="muted">red: the pick; blue, dashed: the Pareto front; light grey: does not fit; the
horizontal line is the quality budget.</p>
<h2>Every candidate</h2>
<table id="candidates"><tr>{"".join(f"<th>{escape(h)}</th>" for h in headers)}</tr>{trs}</table>
</body></html>
"""


def render_markdown(doc: dict[str, Any]) -> str:
    headers, table = rows(doc)
    out = [f"### {Path(doc['model']).name} on {doc['profile']}: pick **{doc.get('pick') or 'none'}**", "",
           doc["reason"], ""]  # fmt: skip
    story = step_story(doc)
    if story:
        out += ["**What each step bought**", "", *[f"- {s}" for s in story], ""]
    save = saving(doc)
    if save:
        out += [f"**Cost:** {save} ({doc['cost']['price']})", ""]
    out.append("| " + " | ".join(headers) + " |")
    out.append("|" + "---|" * len(headers))
    for row in table:
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
    return "\n".join(out) + "\n"


def write_page(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """HTML, or Markdown for a path ending in .md."""
    path = Path(path)
    text = render_markdown(doc) if path.suffix.lower() == ".md" else render_html(doc)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
