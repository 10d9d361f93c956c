"""The sweep's page: costs from profile prices, the page stored and opened again, and
the HTML checked in a real browser (headless Chromium) for plotted points and rows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import needs_llama_cpp, run_cli

from edgeshrink.cost import cost_of, parse_load
from edgeshrink.errors import EdgeshrinkError, ProfileError
from edgeshrink.profiles import get_profile, load_profile_file


def test_loads_read_like_people_write_them() -> None:
    assert parse_load("20M-tokens/day").tokens_per_day == 20e6
    assert parse_load("500k tokens/hour").tokens_per_day == 12e6
    assert parse_load("1B-tokens/month").tokens_per_day == pytest.approx(1e9 * 12 / 365)
    assert parse_load("10 tokens/s").tokens_per_s == pytest.approx(10)
    with pytest.raises(EdgeshrinkError, match="not a number of tokens"):
        parse_load("lots")


def test_cost_is_the_formula_with_its_inputs() -> None:
    """cost per 1M tokens = price per hour / (tokens/s x 3600 x utilization) x 1e6."""
    cloud = get_profile("cloud-arm64-4vcpu").price
    line = cost_of("Q4_0", 50.0, cloud.hourly_usd, 0.5, parse_load("20M-tokens/day"))
    assert line.per_million_usd == pytest.approx(0.145 / (50 * 3600 * 0.5) * 1e6)
    # 20M tokens/day is 231.5 tokens/s: at 25 useful tokens/s an instance, 10 instances
    assert line.units == 10 and line.monthly_usd == pytest.approx(10 * 0.145 * 730)
    pi = get_profile("raspberry-pi-5-8gb").price
    assert pi.hourly_usd == pytest.approx(80 / (3 * 365 * 24) + 7 / 1000 * 0.15)


def test_a_price_is_validated(tmp_path: Path) -> None:
    text = (Path(get_profile("cloud-x86-4vcpu").path)).read_text(encoding="utf-8")
    both = tmp_path / "cloud-x86-4vcpu.toml"
    both.write_text(
        text.replace("per_hour_usd = 0.1785", "per_hour_usd = 0.1785\nunit_usd = 9\nwatts = 3")
    )
    with pytest.raises(ProfileError, match="not both"):
        load_profile_file(both)
    negative = tmp_path / "sub" / "cloud-x86-4vcpu.toml"
    negative.parent.mkdir()
    negative.write_text(text.replace("per_hour_usd = 0.1785", "per_hour_usd = -1.0"))
    with pytest.raises(ProfileError, match="price.per_hour_usd must be positive"):
        load_profile_file(negative)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@needs_llama_cpp
def test_the_page_opens_in_a_browser_and_again_from_the_store(
    stories: Path, tmp_path: Path
) -> None:
    page = tmp_path / "page.html"
    r = run_cli("sweep", str(stories), "-p", "cloud-arm64-4vcpu", "--ladder", "Q8_0,Q4_0", "--prune", "0,1",
                "--max-kld", "0.5", "--target", "local", "--reps", "1", "--prompt-tokens", "32",
                "--gen-tokens", "16", "--load", "5M-tokens/day", "--report", str(page), "--json",
                "--output-dir", str(tmp_path / "sw"), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    names = [c["quant"] for c in doc["candidates"]]
    assert names[0] == "F32" and doc["candidates"][0]["original"]  # the reference for savings
    assert doc["cost"]["hourly_usd"] == 0.145 and doc["cost"]["utilization"] == 0.5
    html = page.read_text(encoding="utf-8")
    assert "What each step bought" in html and "What it costs" in html
    assert html.count('class="point"') == 2 * len(names)  # every candidate on both plots
    assert 'class="budget"' in html
    again = tmp_path / "again.html"
    listed = run_cli("results", "sweeps", "--json", cwd=tmp_path)
    assert json.loads(listed.stdout)[0]["id"] == doc["sweep_id"]
    shown = run_cli("results", "sweep", str(doc["sweep_id"]), "--report", str(again), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert again.read_text(encoding="utf-8") == html
    md = tmp_path / "page.md"
    assert (
        run_cli(
            "results", "sweep", str(doc["sweep_id"]), "--report", str(md), cwd=tmp_path
        ).returncode
        == 0
    )
    assert md.read_text(encoding="utf-8").count("\n| ") == len(names) + 1
    assert "Q4_0-imatrix" in names and "| Q4_0 + imatrix |" in md.read_text(encoding="utf-8")
    browser = chromium()
    if browser is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium): the page was not rendered"
        )
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert len(re.findall(r'<circle class="point"', dom)) == 2 * len(names)
    table = dom.split('id="candidates"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr") == len(names) + 1  # the header and a row per candidate
    bad = run_cli("sweep", str(stories), "-p", "cloud-arm64-4vcpu", "--load", "lots", cwd=tmp_path)
    assert bad.returncode == 1 and "--load 'lots'" in bad.stderr
