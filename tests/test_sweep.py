"""The sweep: real quantizations of a trained model, real quality figures, real runs on `local`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from support import needs_llama_cpp, run_cli

from edgeshrink.bench import BenchParams
from edgeshrink.profiles import get_profile
from edgeshrink.sweep import QualityBudget, pareto_front, sweep_gguf
from edgeshrink.targets import local_target

pytestmark = needs_llama_cpp
LADDER = ("Q8_0", "Q4_K_M", "Q4_0")


def test_pareto_front_keeps_only_the_undominated() -> None:
    points = [("a", 1, 10), ("b", 2, 5), ("c", 3, 6), ("d", 0.5, 20), ("e", 2, 5)]
    assert set(pareto_front(points)) == {"a", "b", "d", "e"}


def test_sweep_picks_the_fastest_good_enough_candidate_and_plots(
    stories: Path, tmp_path: Path
) -> None:
    result = sweep_gguf(
        stories, get_profile("raspberry-pi-5-8gb"), budget=QualityBudget(max_kld=0.05), ladder=LADDER,
        eval_ctx=256, output_dir=tmp_path / "out", plot=tmp_path / "sweep.svg",
    )  # fmt: skip
    by = {c.quant: c for c in result.candidates}
    assert by["Q8_0"].kld < by["Q4_K_M"].kld < by["Q4_0"].kld
    assert not by["Q4_0"].meets_quality and by["Q4_K_M"].meets_quality
    # no target: the speed is the memory-bandwidth estimate, so the smaller good type wins
    assert result.speed_source.startswith("estimated")
    assert result.pick == "Q4_K_M"
    assert "Q4_0" in result.reason and "lose too much quality" in result.reason
    svg = (tmp_path / "sweep.svg").read_text()
    assert svg.count('class="point"') == 2 * len(LADDER) and "Q4_K_M" in svg
    assert "mean KL divergence" in svg and "generation tok/s" in svg
    assert all(c.loss == c.kld for c in result.candidates)

    by_size = sweep_gguf(
        stories, get_profile("raspberry-pi-5-8gb"), budget=QualityBudget(max_kld=0.001), ladder=LADDER,
        eval_ctx=256, output_dir=tmp_path / "out", optimize="size",
    )  # fmt: skip
    assert by_size.pick == "Q8_0"  # the only one within a very tight budget
    assert all(
        c.quality_reused for c in by_size.candidates
    )  # same bytes, same text: from the store


def test_candidates_that_do_not_fit_are_shown_but_never_picked(
    small_f16: Path, tmp_path: Path
) -> None:
    import math

    pi = get_profile("raspberry-pi-zero-2w")
    first = sweep_gguf(
        small_f16, pi, budget=QualityBudget(), ladder=LADDER, eval_ctx=256, output_dir=tmp_path
    )
    sizes = {c.quant: c.estimate_mb for c in first.candidates}
    budget_mb = math.ceil(sizes["Q4_0"]) + 1  # Q4_0 fits, Q8_0 (megabytes more) does not
    assert budget_mb < sizes["Q8_0"]
    tight = replace(pi, ram_mb=pi.reserved_mb + int(budget_mb / pi.budget_fraction) + 1)
    result = sweep_gguf(
        small_f16, tight, budget=QualityBudget(), ladder=LADDER, eval_ctx=256, output_dir=tmp_path
    )
    fits = {c.quant: c.fits for c in result.candidates}
    assert fits["Q4_0"] and not fits["Q8_0"]
    assert result.pick != "Q8_0"


def test_no_good_enough_candidate_is_a_clear_answer(stories: Path, tmp_path: Path) -> None:
    result = sweep_gguf(
        stories, get_profile("raspberry-pi-5-8gb"), budget=QualityBudget(max_kld=1e-9), ladder=("Q4_0",),
        eval_ctx=256, output_dir=tmp_path,
    )  # fmt: skip
    assert result.pick is None
    assert "meets the quality budget" in result.reason and "KLD" in result.reason


def test_sweep_on_a_target_measures_once_and_reuses(stories: Path, tmp_path: Path) -> None:
    params = BenchParams(prompt_tokens=64, gen_tokens=16, reps=1)
    kwargs = dict(budget=QualityBudget(max_kld=0.05), ladder=("Q8_0", "Q4_K_M"), eval_ctx=256,
                  output_dir=tmp_path, target=local_target("raspberry-pi-5-8gb"), params=params)  # fmt: skip
    first = sweep_gguf(stories, get_profile("raspberry-pi-5-8gb"), **kwargs)
    assert first.speed_source == "measured on local"
    assert all(
        c.measured and c.measured["tg_tok_s"] > 0 and not c.measured_reused
        for c in first.candidates
    )
    again = sweep_gguf(stories, get_profile("raspberry-pi-5-8gb"), **kwargs)
    assert all(c.measured_reused for c in again.candidates)
    assert [c.measured["tg_tok_s"] for c in again.candidates] == [
        c.measured["tg_tok_s"] for c in first.candidates
    ]


def test_sweep_cli_json_and_exit_code(stories: Path, tmp_path: Path) -> None:
    ok = run_cli("sweep", str(stories), "--profile", "raspberry-pi-5-8gb", "--ladder", "Q8_0,Q4_0",
                 "--max-kld", "0.05", "--eval-ctx", "256", "--json", cwd=tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["pick"] == "Q8_0" and Path(doc["plot"]).exists()
    # The keys scripts read before ONNX joined the sweep stay where they were.
    assert {"model", "profile", "target", "budget", "optimize", "speed_source", "candidates",
            "pareto_size", "pareto_speed", "pick", "reason", "plot"} <= set(doc)  # fmt: skip
    assert {"quant", "path", "sha256", "size_bytes", "estimate_mb", "fits", "est_tg_tok_s",
            "quality", "quality_reused", "quality_failures", "measured", "measured_reused",
            "meets_quality", "tg_tok_s"} <= set(doc["candidates"][0])  # fmt: skip
    assert doc["budget"] == {"max_kld": 0.05, "max_ppl_increase": None, "min_same_top": None}
    none = run_cli("sweep", str(stories), "--profile", "raspberry-pi-5-8gb", "--ladder", "Q4_0",
                   "--max-kld", "0.0001", "--eval-ctx", "256", cwd=tmp_path)  # fmt: skip
    assert none.returncode == 1
    assert "error: no candidate is good enough" in none.stderr


def _candidate(quant: str, size_mib: float, kld: float, tg: float, stddev: float):
    from edgeshrink.sweep import SweepCandidate

    return SweepCandidate(
        quant=quant, path=Path(f"{quant}.gguf"), sha256=quant, size_bytes=int(size_mib * 2**20),
        estimate_mb=size_mib * 1.2, fits=True, est_tg_tok_s=None, quality_reused=False,
        quality={"kld_mean": {"value": kld}, "same_top": {"value": 0.9}},
        quality_failures=(), loss=kld,
        measured={"status": "ok", "tg_tok_s": tg, "tg_tok_s_stddev": stddev},
    )  # fmt: skip


def test_speeds_within_the_noise_are_tied_and_the_smaller_wins() -> None:
    """Before: 71.0 ± 4 tok/s beat 69.5 ± 4 tok/s as if 1.5 tok/s meant something; now
    they are tied, the smaller one is picked and the reason says so."""
    from edgeshrink.sweep.choose import choose as _choose

    big = _candidate("Q5_K_M", 9.0, 0.010, 71.0, 4.0)
    small = _candidate("Q4_K_M", 7.5, 0.018, 69.5, 4.0)
    slow = _candidate("Q8_0", 13.0, 0.002, 50.0, 1.0)
    pick, why = _choose([big, small, slow], QualityBudget(max_kld=0.05), "speed", "measured on dev")
    assert pick == "Q4_K_M"
    assert "tied for the fastest with Q5_K_M 71.0" in why and "±6%" in why
    assert "smallest of them" in why

    # Far apart (more than either's noise): the fastest wins, as before.
    fast = _candidate("Q5_K_M", 9.0, 0.010, 90.0, 2.0)
    pick, why = _choose(
        [fast, small, slow], QualityBudget(max_kld=0.05), "speed", "measured on dev"
    )
    assert pick == "Q5_K_M" and "tied" not in why and why.count("the fastest") == 1

    # Quiet measurements still tie within the 5 % two runs drift apart.
    a = _candidate("Q4_0", 7.0, 0.03, 100.0, 0.1)
    b = _candidate("Q4_K_M", 7.5, 0.018, 103.0, 0.1)
    pick, why = _choose([a, b], QualityBudget(max_kld=0.05), "speed", "measured on dev")
    assert pick == "Q4_0" and "±5%" in why


def test_the_plot_legend_explains_the_colours_its_points_have(tmp_path: Path) -> None:
    """Before: the legend explained a light grey no point had ("does not fit") and not the
    grey that the points off the front had."""
    from edgeshrink.report.plot import write_sweep_svg
    from edgeshrink.sweep.choose import finish as _finish

    pick = _candidate("Q4_K_M", 7.5, 0.018, 70.0, 1.0)
    dominated = _candidate("Q5_0", 9.0, 0.030, 60.0, 1.0)  # bigger, worse and slower
    front = _candidate("Q8_0", 13.0, 0.002, 50.0, 1.0)
    result = _finish(
        Path("m.gguf"), get_profile("raspberry-pi-5-8gb"), None, QualityBudget(max_kld=0.05),
        "speed", "measured on dev", [pick, dominated, front], None, format="gguf",
        loss_label="mean KL divergence", speed_label="generation tok/s",
    )  # fmt: skip
    assert result.pick == "Q4_K_M" and "Q5_0" not in result.pareto_size
    svg = write_sweep_svg(result, tmp_path / "sweep.svg").read_text()
    assert "grey: fits, but off the Pareto front of that plot" in svg
    assert "does not fit" not in svg
    nofit = replace(dominated, fits=False)
    svg = write_sweep_svg(
        replace(result, candidates=(pick, nofit, front)), tmp_path / "b.svg"
    ).read_text()
    assert "light grey: does not fit the memory budget" in svg
