"""What regression detection reports: the metrics it judges, findings and a run's comparison."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeshrink.lab.history import LabRun
from edgeshrink.lab.spec import RegressionPolicy

# metric -> (unit, which way is better, label)
SAMPLED_METRICS = {
    "tg_tok_s": ("tok/s", "higher", "generation"),
    "pp_tok_s": ("tok/s", "higher", "prompt processing"),
    "ttft_ms": ("ms", "lower", "time to first token"),
}
RUN_METRICS = {
    "peak_rss_mb": ("MB", "lower", "peak RSS"),
    "latency_p50_ms": ("ms", "lower", "latency p50"),
}
QUALITY_METRICS = {
    "kld_mean": ("", "lower", "mean KL divergence"),
    "ppl_ratio": ("×", "lower", "PPL ratio"),
    "same_top": ("", "higher", "same top token"),
}
# Quality measured on the device in each job's run (deterministic for the same bytes and
# runtime, so judged like QUALITY_METRICS, against the job's own baseline on that device).
DEVICE_QUALITY_METRICS = {
    "device_kld_mean": ("", "lower", "mean KL divergence on the device"),
    "device_ppl_ratio": ("×", "lower", "PPL ratio on the device"),
    "device_same_top": ("", "higher", "same top token on the device"),
}
ALL_METRICS = {**SAMPLED_METRICS, **RUN_METRICS, **QUALITY_METRICS, **DEVICE_QUALITY_METRICS}
REGRESSION_VERDICTS = ("regressed", "new-failure")
CONTEXT_FIELDS = (
    ("artifact_sha256", "model hash"),
    ("source_sha256", "source model hash"),
    ("quant", "quantization"),
    ("quantizer", "quantizer (llama-cpp-python on the host)"),
    ("runtime", "runtime"),
    ("runtime_version", "runtime version"),
    ("agent_version", "agent version"),
    ("os", "OS"),
    ("kernel", "kernel"),
    ("python", "Python"),
    ("cpu", "CPU"),
    ("board", "board"),
    ("threads", "threads"),
    ("flash_attn", "flash attention"),
    ("throttled", "throttling"),
    ("memory_limit_mb", "memory limit (MB)"),
)
CLOCK_TOLERANCE = 0.05
TEMP_TOLERANCE_C = 5.0


@dataclass(frozen=True)
class Change:
    what: str
    baseline: Any
    current: Any

    def describe(self) -> str:
        return f"{self.what}: {_short(self.baseline)} → {_short(self.current)}"

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "baseline": self.baseline, "current": self.current}


def _short(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Finding:
    device: str  # "host" for quality, measured on the host
    job: str
    metric: str  # a metric name, or "status" for failures / no baseline
    verdict: str  # regressed | improved | unchanged | not significant | new-failure | failing | fixed | no-baseline | short baseline
    message: str
    baseline: float | None = None
    current: float | None = None
    change: float | None = None  # current / baseline - 1
    factor: float | None = None  # how many times worse (2.0: twice as slow; 0.5: twice as fast)
    limit: float | None = None  # the relative change that counts, for this metric here
    p_value: float | None = None
    n_baseline_runs: int = 0
    n_baseline_samples: int = 0
    n_current_samples: int = 0
    changed: tuple[Change, ...] = ()
    run_id: int | None = None
    result_id: int | None = None

    @property
    def regression(self) -> bool:
        return self.verdict in REGRESSION_VERDICTS

    @property
    def unit(self) -> str:
        return ALL_METRICS.get(self.metric, ("", "", ""))[0]

    @property
    def label(self) -> str:
        return ALL_METRICS.get(self.metric, ("", "", self.metric))[2]

    def to_dict(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "changed"}
        doc["changed"] = [c.to_dict() for c in self.changed]
        doc["regression"] = self.regression
        doc["unit"] = self.unit
        return doc


@dataclass(frozen=True)
class Comparison:
    run: LabRun
    baseline_spec: str
    baseline_runs: tuple[int, ...]
    policy: RegressionPolicy
    findings: tuple[Finding, ...]

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.regression]

    @property
    def metric_regressions(self) -> list[Finding]:
        """Regressions of a measured figure (speed, memory, quality), new failures aside."""
        return [f for f in self.findings if f.verdict == "regressed"]

    @property
    def new_failures(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "new-failure"]

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict in ("new-failure", "failing")]

    @property
    def improvements(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict in ("improved", "fixed")]

    def count(self, verdict: str) -> int:
        return sum(1 for f in self.findings if f.verdict == verdict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.to_dict(),
            "baseline": self.baseline_spec,
            "baseline_runs": list(self.baseline_runs),
            "policy": self.policy.to_dict(),
            "regressions": len(self.regressions),  # what makes `lab compare` exit 1
            "regressed": len(self.metric_regressions),
            "failed": len(self.failures),
            "new_failures": len(self.new_failures),
            "improved": len(self.improvements),
            "findings": [f.to_dict() for f in self.findings],
        }
