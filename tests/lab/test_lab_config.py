"""Inventory and suite files: the examples load, and every mistake is one line naming file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import REPO, run_cli

from edgeshrink.lab import LabConfigError, load_inventory, load_suite, plan_lab
from edgeshrink.lab.config import match_jobs, parse_baseline

DEVICE = '[[device]]\nname = "a"\nhost = "10.0.0.1"\n'


@pytest.fixture
def example_suite(tmp_path: Path) -> Path:
    """lab/suite.toml beside the model it names (made by the project's maker)."""
    from edgeshrink.testmodels import make_llama_gguf

    (tmp_path / "lab" / "models").mkdir(parents=True)
    shutil.copyfile(REPO / "lab" / "suite.toml", tmp_path / "lab" / "suite.toml")
    make_llama_gguf(
        tmp_path / "lab" / "models" / "tiny-llama-tiny-f16.gguf", size="tiny", ftype="f16"
    )
    return tmp_path / "lab" / "suite.toml"


def test_the_example_inventory_and_suite_load_and_plan(example_suite: Path) -> None:
    inventory = load_inventory(REPO / "targets" / "lab.toml")
    suite = load_suite(example_suite)
    names = [d.name for d in inventory.devices]
    assert names == ["pi5-a", "pi5-b", "rock5b", "car-bench-3"]  # the phone is enabled = false
    car = inventory.device("car-bench-3")
    assert car.target.port == 2222 and car.target.user == "bench" and car.target.profile == "imx8mp"
    assert car.tags == ("nightly", "car-bench-3", "imx8mp", "arm64")  # [defaults] tags first
    assert car.thermal == ("/sys/class/hwmon/hwmon*/temp1_input",)
    assert inventory.device("pi5-a").target.work_dir == "~/edgeshrink-lab"
    assert suite.name == "nightly" and suite.cooldown.max_temp_c == 55.0
    assert suite.regression.baseline == "last-7-nights" and suite.retry.retries == 2
    jobs = match_jobs(inventory, suite)
    assert [j.name for j in jobs["pi5-a"]] == ["tiny-q8", "tiny-q4-speed"]
    assert [j.name for j in jobs["rock5b"]] == ["tiny-q8", "tiny-planned"]
    plan = plan_lab(inventory, suite)
    keys = {(b.job.name, b.quant) for b in plan.builds}
    assert ("tiny-q8", "Q8_0") in keys and ("tiny-q4-speed", "Q4_0") in keys
    assert ("tiny-planned", "Q4_0") in keys  # planned for the rk3588 profile, preferring speed
    q8 = next(b for b in plan.builds if b.job.name == "tiny-q8")
    assert q8.devices == ("pi5-a", "pi5-b", "rock5b", "car-bench-3")  # built once, for all four


INVENTORY_ERRORS = [
    (DEVICE + "port = \"22\"\n", "device[1] (a).port must be an integer, got string '22'"),
    (DEVICE + "hots = \"x\"\n", "unknown key 'device[1] (a).hots' (did you mean 'device[1] (a).host'?)"),
    (DEVICE + DEVICE, "device[2].name 'a' is also device[1]'s name"),
    (DEVICE + DEVICE.replace('"a"', '"b"'),
     "device[2] (b) is the same board as device[1] (a): both reach ssh:10.0.0.1:22"),
    ('[[device]]\nname = "a"\n', "device[1] (a) says neither where it is (host) nor which target it is (target)"),
    (DEVICE + 'profile = "raspberry-pi-6"\n', "device[1] (a).profile: unknown hardware profile 'raspberry-pi-6'"),
    ('[device]\nname = "a"\n', "[device] must be written [[device]] (one per device)"),
    (DEVICE + "tags = [\"ok\", 3]\n", "device[1] (a).tags[1] must be a non-empty string, got integer 3"),
    ('[defaults]\nport = "22"\n' + DEVICE, "defaults.port must be an integer, got string '22'"),
    (DEVICE + 'target = "nowhere"\n', "device[1] (a).target: unknown target 'nowhere'"),
    ("[[device]]\nname = \"a\"\nhost = \n", "invalid TOML"),
    (DEVICE + 'reachable_from = "lab-a"\n', "device[1] (a).reachable_from must be an array of strings, got string"),
    ('[defaults]\nreachable_from = [""]\n' + DEVICE, "defaults.reachable_from[0] must be a non-empty string"),
]  # fmt: skip


def test_reachable_from_names_the_lab_hosts_a_board_hangs_off(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(
        '[defaults]\nreachable_from = ["lab-a"]\n' + DEVICE
        + DEVICE.replace('"a"', '"b"').replace("10.0.0.1", "10.0.0.2") + 'reachable_from = ["lab-b", "lab-c"]\n'
        + DEVICE.replace('"a"', '"c"').replace("10.0.0.1", "10.0.0.3") + "reachable_from = []\n"
    )  # fmt: skip
    inventory = load_inventory(path)
    a, b, c = (inventory.device(n) for n in "abc")
    assert a.reachable_by("lab-a") and not a.reachable_by("lab-b")
    assert b.reachable_by("lab-c") and not b.reachable_by(
        "lab-a"
    )  # its own list replaces [defaults]
    assert c.reachable_by("anywhere")  # empty: any host
    assert a.to_dict()["reachable_from"] == ["lab-a"] and "reachable_from" not in c.to_dict()


@pytest.mark.parametrize(
    ("text", "message"), INVENTORY_ERRORS, ids=[m[:40] for _, m in INVENTORY_ERRORS]
)
def test_inventory_mistakes_are_one_line_naming_file_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(LabConfigError) as info:
        load_inventory(path)
    assert info.value.message.startswith(f"{path}: ") and message in info.value.message
    assert "\n" not in info.value.message


def suite_text(job: str = "", extra: str = "") -> str:
    return f'{extra}\n[[job]]\nname = "j"\nmodel = "m.gguf"\n{job}'


SUITE_ERRORS = [
    (suite_text("[job.bench]\nreps = \"5\"\n"), "job[1] (j).bench.reps must be an integer, got string '5'"),
    (suite_text("[job.bench]\nrepz = 5\n"), "unknown key 'job[1] (j).bench.repz' (did you mean 'job[1] (j).bench.reps'?)"),
    (suite_text('artifact = "m.gguf"\n'), "job[1] (j) needs exactly one of model (shrunk on the host) and artifact"),
    (suite_text().replace("m.gguf", "none.gguf"), "job[1] (j).model: "),
    (suite_text(extra='[regression]\nbaseline = "last-week"\n'), "regression.baseline: baseline 'last-week' is not one of"),
    (suite_text(extra="[cooldown]\nmax_wait_s = -1\n"), "cooldown.max_wait_s must be at least 0, got -1"),
    (suite_text(extra="[run]\nretries = 1.5\n"), "run.retries must be an integer, got float 1.5"),
    (suite_text('[job.quality]\nmax_kld = "small"\n'), "job[1] (j).quality.max_kld must be a number, got string 'small'"),
    (suite_text('prefer = "fast"\n'), "job[1] (j).prefer must be \"quality\" or \"speed\", got 'fast'"),
    ('name = "x"\n', "no [[job]] entries"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), SUITE_ERRORS, ids=[m[:40] for _, m in SUITE_ERRORS])
def test_suite_mistakes_are_one_line_naming_file_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = tmp_path / "suite.toml"
    path.write_text(text)
    with pytest.raises(LabConfigError) as info:
        load_suite(path)
    assert info.value.message.startswith(f"{path}: ") and message in info.value.message


def test_a_job_whose_tags_match_no_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    inventory = tmp_path / "lab.toml"
    inventory.write_text(DEVICE + 'tags = ["pi5"]\n')
    suite = tmp_path / "suite.toml"
    suite.write_text(suite_text('tags = ["pi6"]\n'))
    with pytest.raises(
        LabConfigError, match=r"job\[1\] \(j\).tags \['pi6'\] match no device"
    ) as info:
        match_jobs(load_inventory(inventory), load_suite(suite))
    assert info.value.hint == "tags in the inventory: pi5"


def test_baseline_specs() -> None:
    assert parse_baseline("last-7-nights") == (7, ())
    assert parse_baseline("last-3-runs") == (3, ())
    assert parse_baseline("run:4,9") == (None, (4, 9))
    for bad in ("last-0-nights", "yesterday", "run:"):
        with pytest.raises(LabConfigError):
            parse_baseline(bad)


def test_cli_errors_are_one_line_and_a_hint(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    inventory = tmp_path / "lab.toml"
    inventory.write_text(DEVICE)
    suite = tmp_path / "suite.toml"
    suite.write_text(suite_text('[job.bench]\nreps = "5"\n'))
    out = run_cli(
        "lab",
        "run",
        "-i",
        str(inventory),
        "-s",
        str(suite),
        env={"EDGESHRINK_DB": str(tmp_path / "r.db")},
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[0] == f"error: {suite}: job[1] (j).bench.reps must be an integer, got string '5'"
    assert lines[1].startswith("hint: ") and len(lines) == 2
    usage = run_cli("lab", "run")
    assert usage.returncode == 2 and "give --inventory and --suite" in usage.stderr
    empty = run_cli("lab", "compare", env={"EDGESHRINK_DB": str(tmp_path / "empty.db")})
    assert empty.returncode == 1 and empty.stderr.startswith("error: no lab runs in ")
    page = tmp_path / "r.html"
    report = run_cli(
        "lab", "report", "-o", str(page), env={"EDGESHRINK_DB": str(tmp_path / "empty.db")}
    )
    assert report.returncode == 0 and "no runs in the window" in report.stdout and page.exists()
