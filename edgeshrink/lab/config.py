"""The lab's two files: the inventory (which devices) and the suite (which jobs).

Both are TOML, read and validated completely before anything connects: a
problem is one :class:`LabConfigError` whose message names the file and the
field (``lab/suite.toml: job[2].bench.reps must be an integer, got string
'5'``), like hardware profiles.  ``targets/lab.toml`` and ``lab/suite.toml``
in the repository are annotated examples.

Inventory::

    [defaults]                 # optional: every device inherits these fields
    user = "lab"
    [[device]]
    name = "pi5-desk"          # required, unique
    host = "192.168.1.20"      # target fields, as in a target file
    profile = "raspberry-pi-5-8gb"
    tags = ["pi5"]
    [[device]]
    name = "car-bench-3"
    target = "car-bench-3"     # or a saved target / target file, fields above override it
    thermal = ["/sys/class/hwmon/hwmon0/temp1_input"]   # where the SoC temperature is

Suite::

    name = "nightly"
    [run]        retries, retry_delay_s, timeout_s
    [cooldown]   max_temp_c, max_wait_s, poll_s, rest_s
    [regression] baseline, threshold, memory_threshold, quality_threshold, alpha, noise_factor,
                 min_baseline_runs
    [[job]]      name, model | artifact, quant, context, prefer, profile, tags, timeout_s
    [job.bench]  the bench parameters (prompt_tokens, gen_tokens, reps, threads, ...)
    [job.quality] max_kld, max_ppl_increase, min_same_top, eval_ctx, eval_chunks, text
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from edgeshrink.bench import BenchParams
from edgeshrink.errors import EdgeshrinkError, LabConfigError, LabLockError, QuantizationError
from edgeshrink.formats import detect_and_inspect, detect_format
from edgeshrink.lab.inventory import load_inventory
from edgeshrink.lab.spec import (
    DEFAULT_THERMAL,
    CooldownPolicy,
    Inventory,
    LabDevice,
    LabJob,
    QualityCheck,
    RegressionPolicy,
    RetryPolicy,
    Suite,
    board_host,
)
from edgeshrink.lab.toml_fields import NAME_RE, TAG_RE, FieldReader, read_toml
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import display_path, get_profile
from edgeshrink.shrink import plan_model
from edgeshrink.sweep import QualityBudget

__all__ = [
    "BASELINE_RE",
    "DEFAULT_THERMAL",
    "CooldownPolicy",
    "Inventory",
    "LabConfigError",
    "LabDevice",
    "LabJob",
    "LabLockError",
    "QualityCheck",
    "RegressionPolicy",
    "RetryPolicy",
    "Suite",
    "board_host",
    "load_inventory",
    "load_suite",
    "match_jobs",
    "parse_baseline",
    "read_regression_policy",
]

BASELINE_RE = re.compile(r"^(?:last-(?P<n>\d+)-(?:nights|runs)|run:(?P<ids>\d+(?:,\d+)*))$")


_SUITE_KEYS = ("name", "run", "cooldown", "regression", "job")
_RUN_KEYS = ("retries", "retry_delay_s", "timeout_s")
_COOLDOWN_KEYS = ("max_temp_c", "max_wait_s", "poll_s", "rest_s")
_REGRESSION_KEYS = ("baseline", "threshold", "memory_threshold", "quality_threshold", "alpha",
                    "noise_factor", "min_baseline_runs")  # fmt: skip
_JOB_KEYS = ("name", "model", "artifact", "quant", "context", "prefer", "profile", "tags", "bench",
             "quality", "timeout_s")  # fmt: skip
_BENCH_INT = {"prompt_tokens": 1, "gen_tokens": 1, "reps": 1, "warmup": 0, "threads": 1,
              "n_ctx": 16, "seed": 0, "runs": 1}  # fmt: skip
_BENCH_KEYS = (*_BENCH_INT, "flash_attn", "no_mmap", "min_seconds")
_QUALITY_KEYS = ("max_kld", "max_ppl_increase", "min_same_top", "eval_ctx", "eval_chunks", "text")


def parse_baseline(spec: str) -> tuple[int | None, tuple[int, ...]]:
    """``last-N-nights`` / ``last-N-runs`` -> (N, ()); ``run:ID[,ID...]`` -> (None, ids)."""
    match = BASELINE_RE.match(spec.strip())
    if match is None or (match.group("n") is not None and int(match.group("n")) < 1):
        raise LabConfigError(
            f"baseline {spec!r} is not one of last-N-nights, last-N-runs, run:ID[,ID...]",
            hint="e.g. last-7-nights: the median of the 7 lab runs of this suite before the one compared",
        )
    if match.group("n") is not None:
        return int(match.group("n")), ()
    return None, tuple(int(i) for i in match.group("ids").split(","))


def load_suite(path: str | os.PathLike[str], *, text: str | None = None) -> Suite:
    """Read and validate a suite; ``text`` (a stored copy) replaces reading the file."""
    path = Path(path)
    text, doc = read_toml(path, text, "suite")
    r = FieldReader(path)
    r.keys(doc, _SUITE_KEYS, "")
    name = r.string(doc, "name", "", path.stem)
    if not NAME_RE.match(name):
        r.fail(f"name {name!r}: use letters, digits, '.', '_' and '-'")
    run = r.table(doc, "run")
    r.keys(run, _RUN_KEYS, "run.")
    retry = RetryPolicy(
        retries=r.integer(run, "retries", "run.", RetryPolicy.retries, minimum=0),
        delay_s=r.number(run, "retry_delay_s", "run.", RetryPolicy.delay_s),
    )
    job_timeout = r.number(run, "timeout_s", "run.", 900.0, minimum=1.0)
    cool = r.table(doc, "cooldown")
    r.keys(cool, _COOLDOWN_KEYS, "cooldown.")
    cooldown = CooldownPolicy(
        max_temp_c=r.number(
            cool, "max_temp_c", "cooldown.", CooldownPolicy.max_temp_c, minimum=-50
        ),
        max_wait_s=r.number(cool, "max_wait_s", "cooldown.", CooldownPolicy.max_wait_s),
        poll_s=r.number(cool, "poll_s", "cooldown.", CooldownPolicy.poll_s, minimum=0.1),
        rest_s=r.number(cool, "rest_s", "cooldown.", CooldownPolicy.rest_s),
    )
    regression = _read_regression(r, doc)
    jobs: list[LabJob] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(r.entries(doc, "job", "job"), start=1):
        job = _read_job(r, entry, index, path.parent, job_timeout)
        if job.name in names:
            r.fail(f"job[{index}].name '{job.name}' is also job[{names[job.name]}]'s name")
        names[job.name] = index
        jobs.append(job)
    return Suite(path=path, text=text, name=name, jobs=tuple(jobs), cooldown=cooldown,
                 retry=retry, regression=regression)  # fmt: skip


def _read_regression(r: FieldReader, doc: dict[str, Any]) -> RegressionPolicy:
    reg = r.table(doc, "regression")
    r.keys(reg, _REGRESSION_KEYS, "regression.")
    baseline = r.string(reg, "baseline", "regression.", RegressionPolicy.baseline)
    try:
        parse_baseline(baseline)
    except LabConfigError as exc:
        r.fail(f"regression.baseline: {exc.message}", hint=exc.hint)
    return RegressionPolicy(
        baseline=baseline,
        threshold=r.number(reg, "threshold", "regression.", RegressionPolicy.threshold, maximum=10),
        memory_threshold=r.number(reg, "memory_threshold", "regression.", RegressionPolicy.memory_threshold, maximum=10),
        quality_threshold=r.number(reg, "quality_threshold", "regression.", RegressionPolicy.quality_threshold, maximum=10),
        alpha=r.number(reg, "alpha", "regression.", RegressionPolicy.alpha, minimum=1e-9, maximum=0.5),
        noise_factor=r.number(reg, "noise_factor", "regression.", RegressionPolicy.noise_factor),
        min_baseline_runs=r.integer(reg, "min_baseline_runs", "regression.", RegressionPolicy.min_baseline_runs, minimum=1),
    )  # fmt: skip


def read_regression_policy(path: str | os.PathLike[str], text: str) -> RegressionPolicy:
    """Only the [regression] table of a suite: what `lab compare` needs of a stored suite.

    The jobs are not read, so a suite whose model files have moved still gives its policy.
    """
    path = Path(path)
    _text, doc = read_toml(path, text, "suite")
    return _read_regression(FieldReader(path), doc)


def _read_job(
    r: FieldReader, entry: dict[str, Any], index: int, base: Path, timeout: float
) -> LabJob:
    prefix = f"job[{index}]."
    name = r.entry_name(entry, "job", index, _JOB_KEYS)
    prefix = f"job[{index}] ({name})."
    model = r.string(entry, "model", prefix)
    artifact = r.string(entry, "artifact", prefix)
    if (model is None) == (artifact is None):
        r.fail(
            f"{prefix[:-1]} needs exactly one of model (shrunk on the host) and artifact (used as is)",
            hint='model = "model-f16.gguf" with quant = "Q4_K_M", or artifact = "model-q4_k_m.gguf"',
        )
    source_key = "model" if model is not None else "artifact"
    source = r.resolve(model or artifact, base)
    if not source.exists():
        r.fail(
            f"{prefix}{source_key}: {source} does not exist",
            hint="paths are relative to the suite file",
        )
    try:
        detect_format(source)  # a directory without config.json, a text file, ...
    except EdgeshrinkError as exc:
        r.fail(f"{prefix}{source_key}: {exc.message}", hint=exc.hint)
    quant = r.string(entry, "quant", prefix)
    if artifact is not None and quant is not None:
        r.fail(f"{prefix}quant applies to a model that is shrunk, not to a prebuilt artifact")
    prefer = r.string(entry, "prefer", prefix, "quality")
    if prefer not in ("quality", "speed"):
        r.fail(f'{prefix}prefer must be "quality" or "speed", got {prefer!r}')
    bench_doc = r.table(entry, "bench", prefix)
    r.keys(bench_doc, _BENCH_KEYS, f"{prefix}bench.")
    bp = f"{prefix}bench."
    bench_args: dict[str, Any] = {}
    for key, minimum in _BENCH_INT.items():
        value = r.integer(bench_doc, key, bp, minimum=minimum)
        if value is not None:
            bench_args[key] = value
    for key in ("flash_attn", "no_mmap"):
        value = r.boolean(bench_doc, key, bp)
        if value is not None:
            bench_args[key] = value
    min_seconds = r.number(bench_doc, "min_seconds", bp)
    if min_seconds is not None:
        bench_args["min_seconds"] = min_seconds
    quality = None
    if "quality" in entry:
        quality = _read_quality(r, r.table(entry, "quality", prefix), f"{prefix}quality.", base)
        if model is None:
            r.fail(
                f"{prefix}quality needs model = ... (the original the artifact is compared with)"
            )
        if source.suffix.lower() != ".gguf":
            r.fail(
                f"{prefix}quality: quality checks in a lab suite are for GGUF models in this version"
            )
    return LabJob(
        name=name,
        index=index,
        model=source if model is not None else None,
        artifact=source if artifact is not None else None,
        quant=quant,
        context=r.integer(entry, "context", prefix, minimum=16),
        prefer=prefer,
        profile=r.string(entry, "profile", prefix),
        tags=r.strings(entry, "tags", prefix, pattern=TAG_RE) or (),
        bench=BenchParams(**bench_args),
        quality=quality,
        timeout_s=r.number(entry, "timeout_s", prefix, timeout, minimum=1.0),
    )


def _read_quality(r: FieldReader, doc: dict[str, Any], prefix: str, base: Path) -> QualityCheck:
    r.keys(doc, _QUALITY_KEYS, prefix)
    budget = QualityBudget(
        max_kld=r.number(doc, "max_kld", prefix),
        max_ppl_increase=r.number(doc, "max_ppl_increase", prefix),
        min_same_top=r.number(doc, "min_same_top", prefix, maximum=1.0),
    )
    text = r.string(doc, "text", prefix)
    text_path = r.resolve(text, base) if text else None
    if text_path is not None and not text_path.is_file():
        r.fail(f"{prefix}text: {text_path} does not exist")
    return QualityCheck(
        budget=budget,
        eval_ctx=r.integer(doc, "eval_ctx", prefix, 512, minimum=16),
        eval_chunks=r.integer(doc, "eval_chunks", prefix, minimum=1),
        text=text_path,
    )


def match_jobs(inventory: Inventory, suite: Suite) -> dict[str, tuple[LabJob, ...]]:
    """Which jobs each device runs, in suite order; a job no device runs is an error."""
    plan = {d.name: tuple(j for j in suite.jobs if j.runs_on(d)) for d in inventory.devices}
    known = sorted({t for d in inventory.devices for t in d.tags})
    for job in suite.jobs:
        if not any(job in jobs for jobs in plan.values()):
            raise LabConfigError(
                f"{display_path(suite.path)}: job[{job.index}] ({job.name}).tags "
                f"{list(job.tags)} match no device of {display_path(inventory.path)}",
                hint=f"tags in the inventory: {', '.join(known) or '(none)'}",
            )
        if job.quant is not None and job.model is not None:
            devices = [d for d in inventory.devices if job in plan[d.name]]
            profile_id = job.profile or next((d.profile for d in devices if d.profile), None)
            if profile_id is not None:
                _check_quant(suite, job, profile_id)
    return plan


def _check_quant(suite: Suite, job: LabJob, profile_id: str) -> None:
    """Ask the model's backend whether it knows ``job.quant`` (a dry run must refuse
    ``Q9_9`` as the build would); fitting the budget is the build's question."""
    options = ShrinkOptions(quant=job.quant, context=job.context, prefer=job.prefer,
                            check_fit=False)  # fmt: skip
    try:
        plan_model(detect_and_inspect(job.model), get_profile(profile_id), options)
    except QuantizationError as exc:
        raise LabConfigError(
            f"{display_path(suite.path)}: job[{job.index}] ({job.name}).quant: {exc.message}",
            hint=exc.hint,
        ) from exc
