"""The production checklist: is this artifact ready for this device?

Each item passes, fails or is skipped (with the reason), and any failure makes
the command exit 1.  Everything that can be measured on the device is measured
there: the bytes (sha256 computed by the device's own Python), loading, speed,
memory, thermal state, whether the outputs are finite and repeatable, and the
quality against the original: a reference made here from ``--base`` is pushed with
the artifact and the agent scores the artifact against it with the device's own
runtime, in the same run (edgeshrink.device_eval).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeshrink.artifacts import load_artifact
from edgeshrink.bench import BenchParams
from edgeshrink.deploy import bench_model
from edgeshrink.device_eval import device_figures, store_device_quality
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.formats import backend, detect_format
from edgeshrink.profiles import HardwareProfile
from edgeshrink.quality import EvalSettings
from edgeshrink.store import ResultStore
from edgeshrink.sweep import OutputQualityBudget, QualityBudget
from edgeshrink.targets import Target
from edgeshrink.transport import open_transport
from edgeshrink.transport.base import helper_argv
from edgeshrink.util import atomic_path

Progress = Callable[[str], None]


def _json_line(text: str) -> dict[str, Any]:
    """The last JSON object line of a device helper's output ({} when there is none)."""
    for line in reversed(text.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}


@dataclass(frozen=True)
class CheckItem:
    name: str
    status: str  # pass | fail | skip
    detail: str


@dataclass(frozen=True)
class SpeedLimits:
    min_tg_tok_s: float | None = None
    max_ttft_ms: float | None = None
    max_latency_p90_ms: float | None = None


@dataclass(frozen=True)
class CheckReport:
    artifact: Path
    target: str
    profile_id: str
    items: tuple[CheckItem, ...]
    result_id: int | None

    @property
    def passed(self) -> bool:
        return all(item.status != "fail" for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": str(self.artifact),
            "target": self.target,
            "profile": self.profile_id,
            "passed": self.passed,
            "result_id": self.result_id,
            "items": [asdict(i) for i in self.items],
        }

    def to_junit(self) -> str:
        failures = sum(i.status == "fail" for i in self.items)
        skipped = sum(i.status == "skip" for i in self.items)
        suite = ET.Element(
            "testsuite", name=f"edgeshrink.check.{self.target}", tests=str(len(self.items)),
            failures=str(failures), skipped=str(skipped),
        )  # fmt: skip
        for item in self.items:
            case = ET.SubElement(
                suite, "testcase", classname=f"check.{self.artifact.name}", name=item.name
            )
            if item.status == "fail":
                ET.SubElement(case, "failure", message=item.detail).text = item.detail
            elif item.status == "skip":
                ET.SubElement(case, "skipped", message=item.detail)
            else:
                ET.SubElement(case, "system-out").text = item.detail
        return ET.tostring(suite, encoding="unicode")

    def write_junit(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(
                '<?xml version="1.0" encoding="utf-8"?>\n' + self.to_junit() + "\n",
                encoding="utf-8",
            )
        return path


def quality_settings(quality: dict[str, Any]) -> EvalSettings:
    """What check's quality options ask the evaluation to run on."""
    return EvalSettings(
        text=quality.get("text"), n_ctx=quality.get("eval_ctx", 512),
        inputs=quality.get("inputs"), labels=quality.get("labels"),
    )  # fmt: skip


def _quality_item(
    evaluation: str, base: Path | None, quality: dict[str, Any], figures: dict[str, Any] | None,
    where: str,
) -> CheckItem:  # fmt: skip
    """The quality item, judged on the figures the device measured."""
    if base is None:
        return CheckItem("quality", "skip", "no --base given to compare against")
    if figures is None:
        return CheckItem("quality", "fail", f"the device measured no quality ({where})")
    if evaluation == "llm-text":
        budget: Any = QualityBudget(
            max_kld=quality.get("max_kld"), max_ppl_increase=quality.get("max_ppl_increase"),
            min_same_top=quality.get("min_agreement"),
        )  # fmt: skip
        shown = (f"KLD {figures['kld_mean']['value']:.4f}, PPL {figures['ppl_ratio']['value'] - 1:+.2%}, "
                 f"same top token {figures['same_top']['value']:.1%}")  # fmt: skip
    else:
        budget = OutputQualityBudget(max_accuracy_drop=quality.get("max_accuracy_drop"),
                                     min_agreement=quality.get("min_agreement"),
                                     min_cosine=quality.get("min_cosine"))  # fmt: skip
        shown = ", ".join(f"{m['name']} {m['value']:.4g}" for m in figures["metrics"][:4])
    failures = budget.failures(figures)
    shown += f" (measured on {where})"
    if budget.describe() == "no quality budget":
        return CheckItem("quality", "pass", shown + "; no budget given")
    return CheckItem("quality", "fail" if failures else "pass",
                     shown + (f"; {'; '.join(failures)}" if failures else f"; within {budget.describe()}"))  # fmt: skip


def check_artifact(
    artifact: str | os.PathLike[str],
    target: Target,
    profile: HardwareProfile,
    *,
    params: BenchParams | None = None,
    base: str | os.PathLike[str] | None = None,
    quality: dict[str, Any] | None = None,
    limits: SpeedLimits | None = None,
    headroom: float = 0.1,
    db: str | os.PathLike[str] | None = None,
    timeout_s: float = 900.0,
    progress: Progress | None = None,
) -> CheckReport:

    say = progress or (lambda _m: None)
    artifact = Path(artifact)
    limits = limits or SpeedLimits()
    items: list[CheckItem] = []

    try:
        manifest = load_artifact(artifact, verify=True)
        items.append(
            CheckItem(
                "manifest",
                "pass",
                f"{manifest.quant}, sha256 {manifest.sha256[:16]}… matches the file",
            )
        )
    except EdgeshrinkError as exc:
        manifest = None
        items.append(
            CheckItem(
                "manifest", "fail", f"{exc.message} (make artifacts with `edgeshrink shrink`)"
            )
        )

    fmt = backend(detect_format(artifact))
    settings = quality_settings(quality or {})
    reference = None
    if base is not None:
        say(f"making the quality reference from {Path(base).name}")
        reference = fmt.make_reference(Path(base), **settings.reference_settings(), progress=say)
    say(f"running {artifact.name} on {target.name} (with an output check)")
    params = replace(params or BenchParams(), check_output=True)
    outcome = bench_model(
        artifact, target, params, profile=profile, db=db, timeout_s=timeout_s, progress=say,
        reference=reference,
    )  # fmt: skip
    r = outcome.result
    doc = r.document
    where = f"{target.name}, {r.runtime} {r.runtime_version}"
    figures = None
    if reference is not None and r.quality is not None and base is not None:
        figures = device_figures(fmt, Path(base), artifact, r.quality)
        with ResultStore(db) as store:
            store_device_quality(store, fmt, Path(base), artifact, settings, target, reference,
                                 figures, outcome.result_id)  # fmt: skip
    quality_item = _quality_item(
        fmt.evaluation, Path(base) if base else None, quality or {}, figures, where
    )

    with open_transport(target) as transport:
        run = transport.run(
            helper_argv(target.python, ["sha256", outcome.push.remote]), timeout_s=600
        )
    said = _json_line(run.stdout) if run.returncode == 0 else {}
    device_sha = said.get("sha256") if said.get("status") == "ok" else None
    expected = manifest.sha256 if manifest else outcome.push.sha256
    if device_sha == expected:
        items.append(
            CheckItem(
                "bytes on device", "pass", f"sha256 on {target.name} matches ({expected[:16]}…)"
            )
        )
    else:
        items.append(CheckItem("bytes on device", "fail",
                               f"sha256 on {target.name} is {device_sha or 'unreadable'}, expected {expected}"))  # fmt: skip

    if not r.ok:
        items.append(CheckItem("loads", "fail", f"status {r.status}: {r.error_message}"))
        for name in ("output sane", "memory", "speed", "thermal"):
            items.append(CheckItem(name, "skip", "the model did not run"))
        if base is not None:
            quality_item = CheckItem("quality", "fail", f"the run on {target.name} ended with "
                                     f"status {r.status}: {r.error_message}")  # fmt: skip
        items.append(quality_item)
        return CheckReport(artifact, target.name, profile.id, tuple(items), outcome.result_id)
    items.append(
        CheckItem("loads", "pass", f"{r.runtime} {r.runtime_version}, load {r.load_s or 0:.3f} s")
    )

    check = doc.get("output_check") or {}
    if not check:
        items.append(
            CheckItem(
                "output sane", "skip", "the agent on the device did not report an output check"
            )
        )
    else:
        good = check.get("finite") and check.get("deterministic")
        detail = f"finite: {check.get('finite')}, same on a second run with a fixed seed: {check.get('deterministic')}"
        items.append(CheckItem("output sane", "pass" if good else "fail", detail))

    budget_mb = profile.budget_mb * (1 - headroom)
    if r.peak_rss_mb is None:
        items.append(CheckItem("memory", "skip", "peak RSS not measured on this device"))
    else:
        ok = r.peak_rss_mb <= budget_mb
        items.append(CheckItem("memory", "pass" if ok else "fail",
                               f"peak RSS {r.peak_rss_mb:.1f} MB vs {budget_mb:.0f} MB "
                               f"({profile.budget_mb} MB budget less {headroom:.0%} headroom)"))  # fmt: skip

    items.append(_speed_item(r, limits))
    items.append(_thermal_item(doc, profile))
    items.append(quality_item)
    return CheckReport(artifact, target.name, profile.id, tuple(items), outcome.result_id)


def _speed_item(r: Any, limits: SpeedLimits) -> CheckItem:
    problems, figures = [], []
    if r.tg_tok_s:
        figures.append(f"tg {r.tg_tok_s.mean:.1f} tok/s")
        if limits.min_tg_tok_s is not None and r.tg_tok_s.mean < limits.min_tg_tok_s:
            problems.append(f"tg {r.tg_tok_s.mean:.1f} < {limits.min_tg_tok_s:g} tok/s")
    if r.ttft_ms:
        figures.append(f"first token {r.ttft_ms.mean:.1f} ms")
        if limits.max_ttft_ms is not None and r.ttft_ms.mean > limits.max_ttft_ms:
            problems.append(f"first token {r.ttft_ms.mean:.1f} > {limits.max_ttft_ms:g} ms")
    if r.latency_ms:
        figures.append(f"p90 latency {r.latency_ms.p90:.3f} ms")
        if limits.max_latency_p90_ms is not None and r.latency_ms.p90 > limits.max_latency_p90_ms:
            problems.append(f"p90 {r.latency_ms.p90:.3f} > {limits.max_latency_p90_ms:g} ms")
    if limits == SpeedLimits():
        return CheckItem("speed", "pass", ", ".join(figures) + "; no speed target given")
    if problems:
        return CheckItem("speed", "fail", "; ".join(problems))
    return CheckItem("speed", "pass", ", ".join(figures) + " within the targets")


def _thermal_item(doc: dict[str, Any], profile: HardwareProfile) -> CheckItem:
    device = doc.get("device") or {}
    throttled = device.get("throttled") or {}
    after = throttled.get("after") if isinstance(throttled, dict) else None
    temps = ((device.get("temps_c") or {}).get("after")) or {}
    hottest = max(temps.values()) if temps else None
    problems = []
    if after not in (None, "0x0", "0"):
        problems.append(f"vcgencmd get_throttled = {after}")
    if hottest is not None and profile.throttle_c is not None and hottest >= profile.throttle_c:
        problems.append(
            f"{hottest:.0f}°C at or above the {profile.throttle_c:.0f}°C throttle point"
        )
    if problems:
        return CheckItem("thermal", "fail", "; ".join(problems))
    if after is None and hottest is None:
        return CheckItem(
            "thermal", "skip", "no thermal zone or throttle flags readable on this device"
        )
    shown = f"{hottest:.0f}°C" if hottest is not None else "no temperature"
    return CheckItem("thermal", "pass", f"no throttling ({shown}, flags {after or 'n/a'})")
