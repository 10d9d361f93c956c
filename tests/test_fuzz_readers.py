"""Readers of untrusted model files never hang, never eat memory, never trace back.

A seeded mutator turns real files of every format (GGUF, a Hugging Face checkpoint's
config.json and safetensors, ONNX, TFLite) into damaged ones: truncations, flipped
bytes, and huge or negative numbers written over length and count fields. A child
process under a memory limit (RLIMIT_AS) inspects each, as `edgeshrink inspect` does:
every input must end in a clean EdgeshrinkError or a result. The whole run is bounded.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import SHARED_STORIES

from edgeshrink.errors import ModelFileError
from edgeshrink.formats import detect_and_inspect

CASES_PER_FILE = 200
MEMORY_LIMIT_BYTES = 3 << 30  # the readers' imports need ~1 GB of address space
CHILD_TIMEOUT_S = 240

# Inspect every model path named on stdin (one per line) under a memory limit; print one
# JSON line per case: "clean" (an EdgeshrinkError), "ok", or what else happened.
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
    from edgeshrink.errors import EdgeshrinkError
    from edgeshrink.formats import detect_and_inspect
    for line in sys.stdin:
        path = line.strip()
        try:
            detect_and_inspect(path)
            verdict = "ok"
        except EdgeshrinkError:
            verdict = "clean"
        except BaseException as exc:
            verdict = f"{type(exc).__name__}: {str(exc)[:200]}"
        print(json.dumps({"path": path, "verdict": verdict}), flush=True)
    """
)

HUGE = (2**61, 2**60, 2**63 - 1, 2**64 - 1, 2**32 - 1, 2**31)


def mutations(original: bytes, rng: random.Random, header: int) -> list[bytes]:
    """Damaged copies of ``original``; most damage lands in its first ``header`` bytes,
    where the counts and lengths live."""
    out: list[bytes] = []
    header = max(16, min(header, len(original)))
    for _ in range(CASES_PER_FILE):
        data = bytearray(original)
        kind = rng.randrange(4)
        if kind == 0:  # truncated anywhere
            data = data[: rng.randrange(len(data))]
        elif kind == 1:  # a few flipped bytes in the header
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(header)] ^= 1 << rng.randrange(8)
        elif kind == 2:  # a huge 64-bit number over a (likely) length or count field
            at = rng.randrange(0, header - 8)
            data[at : at + 8] = struct.pack("<Q", rng.choice(HUGE))
        else:  # a negative 32-bit number (dims, counts in signed fields)
            at = rng.randrange(0, header - 4)
            data[at : at + 4] = struct.pack("<i", -rng.randrange(1, 2**31))
        out.append(bytes(data))
    return out


def run_child(paths: list[Path]) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(MEMORY_LIMIT_BYTES)],
        input="".join(f"{p}\n" for p in paths),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    verdicts = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(verdicts) == len(paths), (
        f"the reader child died after {len(verdicts)} of {len(paths)} files "
        f"(exit {done.returncode}): {done.stderr[-2000:]}"
    )
    return verdicts


def write_cases(tmp: Path, name: str, original: bytes, header: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i, data in enumerate(mutations(original, rng, header)):
        path = tmp / f"{i:03d}-{name}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_hostile_gguf_counts_are_refused_before_any_allocation(tmp_path: Path) -> None:
    """The 72-byte file whose array header claims 2^61 strings, and a string of 2^60 bytes."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    key = struct.pack("<Q", 8) + b"tok.list"
    huge_array = head + key + struct.pack("<IIQ", 9, 8, 2**61) + b"\0" * 16
    huge_string = head + key + struct.pack("<IQ", 8, 2**60) + b"abc"
    for name, data in (("array.gguf", huge_array), ("string.gguf", huge_string)):
        path = tmp_path / name
        path.write_bytes(data)
        assert run_child([path]) == [{"path": str(path), "verdict": "clean"}]
        with pytest.raises(ModelFileError, match="cannot fit|needs"):
            detect_and_inspect(path)


def gguf_files(tmp: Path) -> list[tuple[str, bytes, int]]:
    from edgeshrink.testmodels import make_llama_gguf

    made = make_llama_gguf(tmp / "nano.gguf", size="nano", ftype="f32")
    files = [("nano.gguf", made.read_bytes(), 64 * 1024)]
    if SHARED_STORIES.exists():
        files.append(("stories.gguf", SHARED_STORIES.read_bytes(), 16 * 1024))
    return files


def test_fuzzed_gguf_files_end_cleanly(tmp_path: Path) -> None:
    paths = []
    for seed, (name, data, header) in enumerate(gguf_files(tmp_path)):
        paths += write_cases(tmp_path, name, data, header, seed)
    bad = [v for v in run_child(paths) if v["verdict"] not in ("clean", "ok")]
    assert bad == [], "\n".join(v["verdict"] for v in bad)


def test_fuzzed_onnx_files_end_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from edgeshrink.testmodels.onnx_models import make_digits_onnx

    model, _ = make_digits_onnx(tmp_path / "digits.onnx")
    paths = write_cases(tmp_path, "digits.onnx", model.read_bytes(), 4096, seed=7)
    bad = [v for v in run_child(paths) if v["verdict"] not in ("clean", "ok")]
    assert bad == [], "\n".join(v["verdict"] for v in bad)


def test_fuzzed_tflite_files_end_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("flatbuffers")
    from edgeshrink.testmodels.tflite_models import make_mlp_tflite

    model = make_mlp_tflite(tmp_path / "mlp.tflite", hidden=(32,))
    paths = write_cases(tmp_path, "mlp.tflite", model.read_bytes(), 4096, seed=11)
    bad = [v for v in run_child(paths) if v["verdict"] not in ("clean", "ok")]
    assert bad == [], "\n".join(v["verdict"] for v in bad)


def test_fuzzed_hf_checkpoints_end_cleanly(tmp_path: Path) -> None:
    from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

    made = tmp_path / "base"
    make_hf_checkpoint(made, "llama")
    weights = next(made.glob("*.safetensors"))
    config = (made / "config.json").read_bytes()
    rng = random.Random(13)
    paths = []
    for i, data in enumerate(mutations(weights.read_bytes(), rng, 2048)):
        case = tmp_path / f"st-{i:03d}"
        case.mkdir()
        for f in made.iterdir():
            (case / f.name).write_bytes(data if f == weights else f.read_bytes())
        paths.append(case)
    numbers = [b"0", b"-3", b"1e400", b"NaN", b"2305843009213693952", b'"x"', b"null", b"[]"]
    doc = json.loads(config)
    keys = [k for k, v in doc.items() if isinstance(v, int) and not isinstance(v, bool)]
    for i in range(CASES_PER_FILE):
        case = tmp_path / f"cfg-{i:03d}"
        case.mkdir()
        for f in made.iterdir():
            (case / f.name).write_bytes(f.read_bytes())
        key = rng.choice(keys)
        text = config.decode()
        text = text.replace(f'"{key}": {doc[key]}', f'"{key}": {rng.choice(numbers).decode()}', 1)
        (case / "config.json").write_text(text)
        paths.append(case)
    bad = [v for v in run_child(paths) if v["verdict"] not in ("clean", "ok")]
    assert bad == [], "\n".join(v["verdict"] for v in bad)


def test_a_symlink_loop_is_named_as_one(tmp_path: Path) -> None:
    loop = tmp_path / "model.gguf"
    loop.symlink_to(loop)
    with pytest.raises(ModelFileError, match="loop of symbolic links"):
        detect_and_inspect(loop)


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("num_attention_heads", 0, "'num_attention_heads' = 0"),
        ("num_hidden_layers", -3, "'num_hidden_layers' = -3"),
        ("hidden_size", 64.5, "'hidden_size' = 64.5"),
        ("num_key_value_heads", 3, "not a multiple of 'num_key_value_heads' = 3"),
        ("vocab_size", True, "'vocab_size' = True"),
    ],
)
def test_config_counts_are_checked(tmp_path: Path, key: str, value: object, said: str) -> None:
    from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

    make_hf_checkpoint(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError) as err:
        detect_and_inspect(tmp_path)
    assert said in err.value.message and "config.json" in err.value.message


def test_a_negative_safetensors_shape_is_refused(tmp_path: Path) -> None:
    from edgeshrink.testmodels.hf_checkpoints import make_hf_checkpoint

    make_hf_checkpoint(tmp_path, "llama")
    weights = next(tmp_path.glob("*.safetensors"))
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [-1, *header[name]["shape"][1:]]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    weights.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    with pytest.raises(ModelFileError, match=r"impossible shape \[-1"):
        detect_and_inspect(tmp_path)
