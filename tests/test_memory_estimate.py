"""The memory estimate that plan relies on, against the peak RSS the agent measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import needs_llama_cpp, run_cli

from edgeshrink.formats import gguf
from edgeshrink.plan import ShrinkOptions
from edgeshrink.profiles import get_profile
from edgeshrink.shrink import shrink_gguf


@needs_llama_cpp
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("ctx", [512, 4096])
def test_estimate_is_within_20_percent_of_the_measured_peak(
    small_f16: Path, tmp_path_factory, quant: str, ctx: int
) -> None:
    out = tmp_path_factory.getbasetemp() / f"small-{quant}.gguf"
    if not out.exists():
        shrink_gguf(small_f16, get_profile("x86-64-host"), ShrinkOptions(quant=quant), output=out)
    info = gguf.inspect_gguf(out)
    estimate = gguf.estimate_memory(info, sum(t.n_bytes for t in info.tensor_types), ctx)
    result = run_cli("bench", str(out), "--n-ctx", str(ctx), "--reps", "1", "--prompt-tokens", "256",
                     "--gen-tokens", "8", "--no-store", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)["result"]["memory"]["peak_rss_mb"]
    assert abs(estimate.total_mb - measured) / measured < 0.20, (estimate.to_dict(), measured)
