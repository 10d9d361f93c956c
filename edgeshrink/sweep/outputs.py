"""The sweep of a model judged by its outputs (ONNX, TFLite): each step of the
format's ladder made with its own tools and judged against the original's outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeshrink.bench import BenchParams
from edgeshrink.errors import DoesNotFitError, SweepError
from edgeshrink.formats import backend, detect_format
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import HardwareProfile
from edgeshrink.quality import EvalSettings, quality_columns, quality_key
from edgeshrink.shrink import shrink_model
from edgeshrink.store import ResultStore
from edgeshrink.sweep.choose import check_optimize, finish
from edgeshrink.sweep.device import DeviceQuality, measure_on_target
from edgeshrink.sweep.types import (
    ACCURACY_DROP_LABEL,
    COSINE_LOSS_LABEL,
    OutputQualityBudget,
    Progress,
    SweepCandidate,
    SweepResult,
)
from edgeshrink.targets import Target


def onnx_ladder_step(name: str) -> str:
    """The ONNX ladder step a user's name means (quantization type names work too)."""
    return backend("onnx").sweep_step(name)


def _onnx_loss(quality: dict[str, Any]) -> float:
    metrics = quality["metrics"]
    accuracy = next((m for m in metrics if m["name"] == "accuracy"), None)
    if accuracy is not None and accuracy.get("reference") is not None:
        return (accuracy["reference"] - accuracy["value"]) * 100
    return 1.0 - min(m["value"] for m in metrics if m["name"] == "cosine_mean")


def sweep_outputs(
    model: str | os.PathLike[str],
    profile: HardwareProfile,
    *,
    budget: OutputQualityBudget,
    ladder: tuple[str, ...] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    calibration_method: str = "minmax",
    allow_random_calibration: bool = False,
    eval_inputs: str | os.PathLike[str] | None = None,
    labels: str | None = None,
    samples: int = 64,
    seed: int = 0,
    target: Target | None = None,
    params: BenchParams | None = None,
    optimize: str = "speed",
    output_dir: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    remeasure: bool = False,
    plot: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    """The ladder of a model judged by its outputs (ONNX, TFLite): each step shrunk with
    the format's own tools, judged against ``model``.

    Quality runs on this machine, on ``eval_inputs`` (an .npz keyed by input
    name, or a directory of .npy/.npz) or, without them, on ``samples`` random
    inputs (agreement only); ``labels`` names the label array in ``eval_inputs``.
    Speed is measured only on a ``target``: there is no ONNX speed estimate, and
    without one the pick falls back to the smallest candidate.
    """
    check_optimize(optimize)
    say = progress or (lambda _m: None)
    model = Path(model)
    fmt = backend(detect_format(model))
    steps = tuple(fmt.sweep_step(s) for s in (ladder or fmt.sweep_ladder))
    if labels is not None and eval_inputs is None:
        raise SweepError(
            "--labels needs --eval: random inputs have no labels",
            hint="pass --eval data.npz holding the inputs and the labels",
        )
    if budget.max_accuracy_drop is not None and labels is None:
        raise SweepError(
            "an accuracy budget (--max-accuracy-drop) needs labels to measure accuracy",
            hint="pass --eval data.npz --labels KEY, or budget with --min-agreement / --min-cosine",
        )
    info = fmt.inspect(model)
    fmt.check_sweep_base(info)
    out_dir = Path(output_dir) if output_dir else Path.cwd() / f"{model.stem}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_path = Path(eval_inputs) if eval_inputs is not None else None
    evaluation = EvalSettings(inputs=eval_path, labels=labels, samples=samples, seed=seed)
    quality_method, settings = quality_key(fmt, evaluation)
    if eval_path is None:
        quality_source = f"{samples} random inputs (agreement only)"
    else:
        labelled = f", labels '{labels}'" if labels else ""
        quality_source = f"{eval_path.name}{labelled}"

    candidates: list[SweepCandidate] = []
    skipped: list[tuple[str, str]] = []
    with ResultStore(db) as store:
        for step in steps:
            step_options = fmt.step_options(step)
            quant = step_options["quant"]
            estimate = fmt.estimate(info, quant, profile)
            fits = estimate.total_mb <= profile.budget_mb
            needs_data = fmt.needs_calibration(quant) and calibration is None
            if needs_data and not allow_random_calibration:
                skipped.append((step, "static int8 needs calibration data (--calibration "
                                      "cal.npz, or --allow-random-calibration)"))  # fmt: skip
                continue
            options = ShrinkOptions(
                **step_options,
                calibration=Path(calibration) if calibration is not None else None,
                calibration_method=calibration_method,
                allow_random_calibration=allow_random_calibration,
                check_fit=False,
            )
            say(f"{step}: shrinking")
            try:
                shrunk = shrink_model(
                    model, profile, options, info=info,
                    output=out_dir / f"{model.stem}-{step}{model.suffix}",
                )  # fmt: skip
            except DoesNotFitError:
                # The backend refuses to make a type that does not fit the profile.
                skipped.append((step, f"does not fit {profile.id}: needs ~{estimate.total_mb:.0f} "
                                      f"MB, the budget is {profile.budget_mb} MB"))  # fmt: skip
                continue
            art = shrunk.artifact
            quality = store.find_quality(quality_method, art.source_sha256, art.sha256, settings)
            reused = quality is not None and not remeasure
            if not reused:
                say(f"{step}: measuring quality against {model.name}")
                report = fmt.evaluate(
                    model, art.path, inputs=eval_path, labels=labels, samples=samples, seed=seed
                )
                quality = report.to_dict()
                store.add_quality(
                    {
                        "method": quality_method, "base_sha256": art.source_sha256,
                        "candidate_sha256": art.sha256, "settings": settings,
                        "candidate_name": art.path.name, "quant": step,
                        **quality_columns(quality),
                    },
                    quality,
                )  # fmt: skip
            assert quality is not None
            if budget.min_agreement is not None and not any(
                m["name"] == "top1_agreement" for m in quality["metrics"]
            ):
                raise SweepError(
                    f"--min-agreement needs a classifier output ([N, C], C > 1); {model.name} "
                    f"has {', '.join(o['name'] + ' ' + str(o['shape']) for o in quality['outputs'])}",
                    hint="budget with --min-cosine instead",
                )
            candidates.append(
                SweepCandidate(
                    quant=step,
                    path=art.path,
                    sha256=art.sha256,
                    size_bytes=art.size_bytes,
                    estimate_mb=round(estimate.total_mb, 1),
                    fits=fits,
                    est_tg_tok_s=None,
                    quality=quality,
                    quality_reused=reused,
                    quality_failures=tuple(budget.failures(quality)),
                    loss=_onnx_loss(quality),
                    format=fmt.format,
                    evaluation=fmt.evaluation,
                    warnings=tuple(n for n in art.notes if n.startswith("WARNING")),
                )
            )
    speed_source = "not measured"
    picked_by, preface = optimize, ""
    if target is not None:
        on_device = DeviceQuality(
            model, evaluation,
            budget.failures, _onnx_loss,
        )  # fmt: skip
        candidates = measure_on_target(
            candidates, profile, target, params or BenchParams(), db, remeasure, say, on_device
        )
        speed_source = f"measured on {target.name}"
        quality_source += f", measured on {target.name} (this machine's for what does not fit)"
    elif optimize == "speed":
        # This machine is not the device: int8 kernels that are fast on one CPU can be
        # several times slower than fp32 on another, so a host timing would mislead.
        picked_by = "size"
        preface = (
            f"no speed without --target (there is no {fmt.label} speed estimate, and this machine's "
            "timings say little about the device's int8 kernels), so by size instead: "
        )
    no_candidate = None
    if not candidates and not all(why.startswith("does not fit") for _, why in skipped):
        no_candidate = "no candidate was made: " + "; ".join(f"{q}: {why}" for q, why in skipped)
    return finish(
        model, profile, target, budget, optimize, speed_source, candidates, plot,
        picked_by=picked_by, preface=preface, reason=no_candidate, format=fmt.format,
        loss_label=ACCURACY_DROP_LABEL if labels else COSINE_LOSS_LABEL,
        speed_label="inferences/s", skipped=tuple(skipped), quality_source=quality_source,
    )  # fmt: skip


sweep_onnx = sweep_outputs  # the name the ONNX sweep was first known by
