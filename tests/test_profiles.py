"""Hardware profiles: the built-in files, strict validation, lookup and overrides.

Every test works on real TOML files (the shipped ones or files written to
tmp_path); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeshrink.errors import ProfileError
from edgeshrink.profiles import (
    BUILTIN_PROFILES_DIR,
    PROFILES_PATH_ENV,
    HardwareProfile,
    get_profile,
    list_profiles,
    load_profile_file,
    profile_dirs,
)

REQUIRED_IDS = {
    "raspberry-pi-zero-2w",
    "raspberry-pi-4-2gb",
    "raspberry-pi-4-4gb",
    "raspberry-pi-4-8gb",
    "raspberry-pi-5-4gb",
    "raspberry-pi-5-8gb",
    "raspberry-pi-5-16gb",
    "jetson-orin-nano-8gb",
    "rk3588-16gb",
    "imx8mp",
    "snapdragon-8-gen-3",
    "pixel-8",
    "intel-n100-16gb",
    "x86-64-host",
}

VALID_PROFILE = """\
id = "test-board"
name = "Test board"
arch = "aarch64"
os_notes = "a test OS"
ram_mb = 4096
memory_bandwidth_gbs = 17.0
soc = "Test SoC"
sources = ["https://example.com/test-board"]

[cpu]
model = "4x Cortex-A76 @ 2.4 GHz"
cores = 4
big_cores = 4
little_cores = 0
max_mhz = 2400
features = ["fp", "asimd", "asimddp"]

[memory]
reserved_mb = 1000
budget_fraction = 0.5

[runtime]
preferred_formats = ["gguf", "onnx"]
preferred_runtimes = ["llama.cpp", "onnxruntime"]
threads = 4

[quantization]
gguf = "Q4_0"
onnx = "int8-static"

[[accelerators]]
name = "Test GPU"
kind = "gpu"
usable_by = []

[thermal]
throttle_c = 80.0
"""


@pytest.fixture(autouse=True)
def isolated_profile_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own profile directories out of every test."""
    monkeypatch.delenv(PROFILES_PATH_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


def write_profile(directory: Path, text: str, stem: str = "test-board") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str) -> str:
    assert old in VALID_PROFILE, f"test setup: {old!r} not in the valid profile"
    return VALID_PROFILE.replace(old, new, 1)


# --------------------------------------------------------------------------- built-ins


def test_builtin_dir_is_the_repo_hardware_profiles_dir() -> None:
    repo_root = Path(__file__).resolve().parent.parent
    assert repo_root / "hardware-profiles" == BUILTIN_PROFILES_DIR


def test_every_builtin_profile_loads() -> None:
    files = sorted(BUILTIN_PROFILES_DIR.glob("*.toml"))
    assert len(files) >= 12
    for path in files:
        profile = load_profile_file(path)
        assert profile.id == path.stem
        assert profile.sources, f"{path.name} cites no sources"
        assert 0 < profile.budget_mb < profile.ram_mb
        assert profile.threads <= profile.cpu.cores
        for fmt in profile.preferred_formats:
            assert profile.default_quant_for(fmt)


def test_required_profile_ids_exist() -> None:
    ids = {profile.id for profile in list_profiles()}
    missing = REQUIRED_IDS - ids
    assert not missing, f"built-in profiles missing: {sorted(missing)}"


def test_builtin_facts_that_drive_planning() -> None:
    pi4 = get_profile("raspberry-pi-4-4gb")
    pi5 = get_profile("raspberry-pi-5-8gb")
    zero = get_profile("raspberry-pi-zero-2w")
    s8g3 = get_profile("snapdragon-8-gen-3")
    pixel = get_profile("pixel-8")
    n100 = get_profile("intel-n100-16gb")

    assert not pi4.has_feature("asimddp")  # Cortex-A72 has no dot product
    assert pi5.has_feature("asimddp") and not pi5.has_feature("i8mm")
    assert zero.cpu.features == ("fp", "asimd", "evtstrm", "crc32", "cpuid")
    assert s8g3.has_feature("i8mm") and not s8g3.has_feature("sve")
    assert pixel.has_feature("sve2") and pixel.has_feature("i8mm")
    assert n100.has_feature("avx2") and n100.arch == "x86_64"

    assert pi5.default_quant_for("gguf") == "Q4_0"
    assert pi4.default_quant_for("gguf") == "Q4_K_M"
    assert get_profile("imx8mp").external_delegate == "/usr/lib/libvx_delegate.so"


def test_feature_lookup_accepts_common_aliases() -> None:
    pi5 = get_profile("raspberry-pi-5-8gb")
    assert pi5.has_feature("neon")
    assert pi5.has_feature("dotprod")
    assert pi5.has_feature("ASIMDDP")
    assert not pi5.has_feature("avx2")


# --------------------------------------------------------------------------- the profile type


def test_budget_arithmetic(tmp_path: Path) -> None:
    profile = load_profile_file(write_profile(tmp_path, VALID_PROFILE))
    assert profile.budget_mb == int((4096 - 1000) * 0.5) == 1548

    pi5 = get_profile("raspberry-pi-5-8gb")
    assert pi5.budget_mb == int((pi5.ram_mb - pi5.reserved_mb) * pi5.budget_fraction)

    zero = get_profile("raspberry-pi-zero-2w")
    assert zero.budget_mb == int((512 - zero.reserved_mb) * zero.budget_fraction)
    assert zero.budget_mb < 300


def test_loaded_fields(tmp_path: Path) -> None:
    path = write_profile(tmp_path, VALID_PROFILE)
    profile = load_profile_file(path)
    assert profile.path == path.resolve()
    assert profile.cpu.features == ("fp", "asimd", "asimddp")
    assert profile.preferred_formats == ("gguf", "onnx")
    assert profile.default_quant == (("gguf", "Q4_0"), ("onnx", "int8-static"))
    assert profile.accelerators[0].name == "Test GPU"
    assert profile.accelerators[0].usable_by == ()
    assert profile.throttle_c == 80.0
    assert profile.external_delegate is None


def test_profile_is_frozen_and_hashable(tmp_path: Path) -> None:
    profile = load_profile_file(write_profile(tmp_path, VALID_PROFILE))
    with pytest.raises(AttributeError):
        profile.ram_mb = 1  # type: ignore[misc]
    assert profile in {profile}


def test_to_dict_is_json_friendly(tmp_path: Path) -> None:
    path = write_profile(tmp_path, VALID_PROFILE)
    data = json.loads(json.dumps(load_profile_file(path).to_dict()))
    assert data["budget_mb"] == 1548
    assert data["path"] == str(path.resolve())
    assert data["default_quant"] == {"gguf": "Q4_0", "onnx": "int8-static"}
    assert data["cpu"]["features"] == ["fp", "asimd", "asimddp"]
    assert data["accelerators"][0]["kind"] == "gpu"


def test_default_quant_for_unknown_or_missing_format(tmp_path: Path) -> None:
    profile = load_profile_file(write_profile(tmp_path, VALID_PROFILE))
    with pytest.raises(ProfileError, match="unknown model format 'safetensors'"):
        profile.default_quant_for("safetensors")
    with pytest.raises(ProfileError, match="no default quantization for 'tflite'"):
        profile.default_quant_for("tflite")


# --------------------------------------------------------------------------- validation

MALFORMED = [
    pytest.param(
        'name = "Test board"',
        'nmae = "Test board"',
        ["unknown key 'nmae'", "did you mean 'name'"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        "cores = 4",
        "corse = 4",
        ["unknown key 'cpu.corse'", "did you mean 'cpu.cores'"],
        id="unknown-nested-key",
    ),
    pytest.param(
        "usable_by = []",
        "usable = []",
        ["unknown key 'accelerators[0].usable'", "did you mean 'accelerators[0].usable_by'"],
        id="unknown-key-in-array-of-tables",
    ),
    pytest.param(
        'sources = ["https://example.com/test-board"]\n',
        "",
        ["missing required key 'sources'"],
        id="missing-top-level-key",
    ),
    pytest.param(
        "max_mhz = 2400\n",
        "",
        ["missing required key 'cpu.max_mhz'"],
        id="missing-nested-key",
    ),
    pytest.param(
        "[memory]\nreserved_mb = 1000\nbudget_fraction = 0.5\n",
        "",
        ["missing required table [memory]"],
        id="missing-table",
    ),
    pytest.param(
        "cores = 4",
        'cores = "4"',
        ["cpu.cores must be an integer, got string '4'"],
        id="string-for-integer",
    ),
    pytest.param(
        "ram_mb = 4096",
        "ram_mb = true",
        ["ram_mb must be an integer, got boolean true"],
        id="bool-is-not-an-int",
    ),
    pytest.param(
        "memory_bandwidth_gbs = 17.0",
        'memory_bandwidth_gbs = "17 GB/s"',
        ["memory_bandwidth_gbs must be a number, got string '17 GB/s'"],
        id="string-for-float",
    ),
    pytest.param(
        "ram_mb = 4096",
        "ram_mb = -4096",
        ["ram_mb must be at least 1, got -4096"],
        id="negative-ram",
    ),
    pytest.param(
        "budget_fraction = 0.5",
        "budget_fraction = 1.5",
        ["memory.budget_fraction must be in (0, 1], got 1.5"],
        id="budget-fraction-above-one",
    ),
    pytest.param(
        "budget_fraction = 0.5",
        "budget_fraction = 0",
        ["memory.budget_fraction must be in (0, 1], got 0.0"],
        id="budget-fraction-zero",
    ),
    pytest.param(
        "reserved_mb = 1000",
        "reserved_mb = 5000",
        ["memory.reserved_mb (5000) must be less than ram_mb (4096)"],
        id="reserved-exceeds-ram",
    ),
    pytest.param(
        'id = "test-board"',
        'id = "other-board"',
        ["id 'other-board' must equal the file name 'test-board'"],
        id="id-differs-from-file-stem",
    ),
    pytest.param(
        'preferred_formats = ["gguf", "onnx"]',
        'preferred_formats = ["ggml", "onnx"]',
        ["runtime.preferred_formats[0] has unknown value 'ggml'", "did you mean 'gguf'"],
        id="unknown-format-name",
    ),
    pytest.param(
        'onnx = "int8-static"',
        'onnx = "int8-static"\nsafetensors = "fp16"',
        ["unknown key 'quantization.safetensors'"],
        id="unknown-format-in-quantization",
    ),
    pytest.param(
        'gguf = "Q4_0"',
        'gguf = "Q4_O"',
        ["quantization.gguf has unknown value 'Q4_O'", "did you mean 'Q4_0'"],
        id="unknown-gguf-type",
    ),
    pytest.param(
        'onnx = "int8-static"\n',
        "",
        ["missing required key 'quantization.onnx'"],
        id="no-default-for-a-preferred-format",
    ),
    pytest.param(
        'features = ["fp", "asimd", "asimddp"]',
        'features = ["fp", "ASIMD", "asimddp"]',
        ["cpu.features[1] must be lower case as in /proc/cpuinfo, got 'ASIMD'"],
        id="feature-not-lower-case",
    ),
    pytest.param(
        'features = ["fp", "asimd", "asimddp"]',
        'features = ["fp", 42]',
        ["cpu.features[1] must be a string, got integer 42"],
        id="feature-not-a-string",
    ),
    pytest.param(
        'features = ["fp", "asimd", "asimddp"]',
        'features = "fp asimd asimddp"',
        ["cpu.features must be an array of strings, got string 'fp asimd asimddp'"],
        id="features-not-an-array",
    ),
    pytest.param(
        "little_cores = 0",
        "little_cores = 4",
        ["cpu.big_cores + cpu.little_cores must equal cpu.cores (4 + 4 != 4)"],
        id="core-counts-disagree",
    ),
    pytest.param(
        "threads = 4",
        "threads = 8",
        ["runtime.threads (8) must not exceed cpu.cores (4)"],
        id="more-threads-than-cores",
    ),
    pytest.param(
        'arch = "aarch64"',
        'arch = "arm64"',
        ["arch has unknown value 'arm64'"],
        id="unknown-arch",
    ),
    pytest.param(
        'kind = "gpu"',
        'kind = "fpga"',
        ["accelerators[0].kind has unknown value 'fpga'"],
        id="unknown-accelerator-kind",
    ),
    pytest.param(
        "throttle_c = 80.0",
        'throttle_c = "80C"',
        ["thermal.throttle_c must be a number, got string '80C'"],
        id="thermal-wrong-type",
    ),
]


@pytest.mark.parametrize(("old", "new", "fragments"), MALFORMED)
def test_malformed_profile_names_file_and_field(
    tmp_path: Path, old: str, new: str, fragments: list[str]
) -> None:
    path = write_profile(tmp_path, edited(old, new))
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert caught.value.hint


def test_top_level_key_after_a_table_is_explained(tmp_path: Path) -> None:
    text = edited('sources = ["https://example.com/test-board"]\n', "")
    text += 'sources = ["https://example.com/test-board"]\n'  # lands inside [thermal]
    path = write_profile(tmp_path, text)
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    assert "unknown key 'thermal.sources': 'sources' is a top-level key" in str(caught.value)
    assert "above the first [table] header" in caught.value.hint


def test_scalar_where_a_table_belongs(tmp_path: Path) -> None:
    text = "memory = 4096\n" + edited("[memory]\nreserved_mb = 1000\nbudget_fraction = 0.5\n", "")
    path = write_profile(tmp_path, text)
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    assert str(caught.value) == f"{path}: memory must be a table ([memory]), got integer 4096"


def test_toml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    path = write_profile(tmp_path, edited("max_mhz = 2400", "max_mhz = 2400 MHz"))
    line = edited("max_mhz = 2400", "max_mhz = 2400 MHz").splitlines().index("max_mhz = 2400 MHz")
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML:")
    assert f"line {line + 1}" in message


def test_unreadable_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read hardware profile"):
        load_profile_file(tmp_path / "absent.toml")


def test_non_utf8_file_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "test-board.toml"
    path.write_bytes(VALID_PROFILE.replace("Test board", "Test b\xf6ard").encode("latin-1"))
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile_file(path)


def test_error_path_is_relative_inside_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_profile(tmp_path / "profiles", edited("cores = 4", 'cores = "4"'))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProfileError) as caught:
        load_profile_file(Path("profiles/test-board.toml"))
    expected = os.path.join("profiles", "test-board.toml")
    assert str(caught.value) == f"{expected}: cpu.cores must be an integer, got string '4'"


# --------------------------------------------------------------------------- lookup


def test_profile_dirs_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "extra"
    env_a, env_b = tmp_path / "env-a", tmp_path / "env-b"
    user = tmp_path / "xdg-config" / "edgeshrink" / "hardware-profiles"
    for directory in (extra, env_a, env_b):
        directory.mkdir()
    monkeypatch.setenv(PROFILES_PATH_ENV, os.pathsep.join([str(env_a), "", str(env_b)]))

    without_user = profile_dirs([extra])
    assert without_user == [extra, env_a, env_b, BUILTIN_PROFILES_DIR]

    if sys.platform.startswith("linux"):  # platformdirs reads XDG_CONFIG_HOME on Linux
        user.mkdir(parents=True)
        assert profile_dirs([extra]) == [extra, env_a, env_b, user, BUILTIN_PROFILES_DIR]


def test_user_dir_overrides_builtin(tmp_path: Path) -> None:
    builtin = get_profile("raspberry-pi-5-8gb")
    text = builtin.path.read_text(encoding="utf-8").replace(
        "reserved_mb = 800", "reserved_mb = 2000"
    )
    user_dir = tmp_path / "mine"
    write_profile(user_dir, text, stem="raspberry-pi-5-8gb")

    mine = get_profile("raspberry-pi-5-8gb", extra=[user_dir])
    assert mine.reserved_mb == 2000
    assert mine.path.parent == user_dir.resolve()

    listed = {p.id: p for p in list_profiles(extra=[user_dir])}
    assert listed["raspberry-pi-5-8gb"].reserved_mb == 2000
    assert listed["raspberry-pi-5-4gb"].path.parent == BUILTIN_PROFILES_DIR.resolve()
    ids = [p.id for p in list_profiles(extra=[user_dir])]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))


def test_env_path_adds_and_overrides_profiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_dir = tmp_path / "env-profiles"
    write_profile(env_dir, VALID_PROFILE)
    monkeypatch.setenv(PROFILES_PATH_ENV, str(env_dir))

    assert get_profile("test-board").path.parent == env_dir.resolve()
    assert "test-board" in {p.id for p in list_profiles()}

    # An explicit directory beats the environment.
    extra_dir = tmp_path / "extra-profiles"
    write_profile(extra_dir, edited("budget_fraction = 0.5", "budget_fraction = 0.25"))
    assert get_profile("test-board", extra=[extra_dir]).budget_fraction == 0.25


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_CONFIG_HOME is Linux-only")
def test_user_config_dir_is_searched(tmp_path: Path) -> None:
    user_dir = tmp_path / "xdg-config" / "edgeshrink" / "hardware-profiles"
    write_profile(user_dir, VALID_PROFILE)
    assert get_profile("test-board").path.parent == user_dir.resolve()


def test_malformed_file_in_a_profile_dir_is_not_skipped(tmp_path: Path) -> None:
    user_dir = tmp_path / "mine"
    write_profile(user_dir, edited("threads = 4", "threads = 0"))
    with pytest.raises(
        ProfileError, match=r"test-board\.toml: runtime\.threads must be at least 1"
    ):
        list_profiles(extra=[user_dir])


def test_missing_extra_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        list_profiles(extra=[tmp_path / "nowhere"])


def test_get_profile_by_path(tmp_path: Path) -> None:
    path = write_profile(tmp_path, VALID_PROFILE)
    assert get_profile(path).id == "test-board"
    assert get_profile(str(path)).id == "test-board"
    with pytest.raises(ProfileError, match="file not found"):
        get_profile(tmp_path / "absent.toml")


def test_unknown_id_suggests_the_closest() -> None:
    with pytest.raises(ProfileError) as caught:
        get_profile("raspberry-pi-5-8g")
    assert str(caught.value) == "unknown hardware profile 'raspberry-pi-5-8g'"
    assert caught.value.hint == (
        "did you mean 'raspberry-pi-5-8gb'? `edgeshrink profiles list` shows all"
    )


def test_unknown_id_without_a_close_match() -> None:
    with pytest.raises(ProfileError) as caught:
        get_profile("cray-1")
    assert str(caught.value) == "unknown hardware profile 'cray-1'"
    assert "did you mean" not in caught.value.hint
    assert "`edgeshrink profiles list`" in caught.value.hint


def test_profile_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        get_profile("no-such-device")


def test_loading_profiles_keeps_imports_light() -> None:
    # A fresh interpreter: this test process may already have numpy from elsewhere.
    code = (
        "import sys, edgeshrink.profiles as p; p.list_profiles(); "
        "print(sorted(m for m in ('numpy', 'gguf', 'onnx', 'llama_cpp') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    assert isinstance(get_profile("x86-64-host"), HardwareProfile)
