"""The package's layering, read from the source with ast (like the agent's import test):
formats are asked, not named; backends sit below the commands; private names stay home."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location(
    "structure_counts", ROOT / "scripts/structure_counts.py"
)
structure = importlib.util.module_from_spec(spec)
assert spec.loader is not None
spec.loader.exec_module(structure)

# The format names still written outside the backends, each for a reason of its own.
KNOWN_BRANCHES = {
    "edgeshrink/cli/models.py",  # `shrink --to tflite`: a converter's target, not a backend
    "edgeshrink/doctor/install.py",  # the device's build hint for llama-cpp-python
}


def test_no_format_branches_outside_the_backends() -> None:
    found = structure.count()["branches"]
    files = {item.split(":")[0] for item in found}
    assert files <= KNOWN_BRANCHES, f"ask the backend instead: {sorted(found)}"
    # Each known one is a single comparison, not a chain.
    assert len(found) == len(files), found


def test_the_counter_sees_a_format_branch(tmp_path: Path) -> None:
    tree = ast.parse('if info.format == "onnx":\n    pass\nif fmt in ("gguf", "hf"):\n    pass\n')
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert [
        any(structure._is_format_name(s) for s in [c.left, *c.comparators]) for c in compares
    ] == [True, True]


def _edgeshrink_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("edgeshrink")}


def test_backends_never_import_the_commands_or_the_layers_above_them() -> None:
    above = ("edgeshrink.cli", "edgeshrink.deploy", "edgeshrink.sweep", "edgeshrink.lab",
             "edgeshrink.check", "edgeshrink.report", "edgeshrink.store")  # fmt: skip
    for path in sorted((ROOT / "edgeshrink/formats").rglob("*.py")):
        wrong = [m for m in _edgeshrink_imports(path) if m.startswith(above)]
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


def test_every_registered_format_has_a_backend_with_its_vocabulary() -> None:
    code = (
        "import sys\n"
        "from edgeshrink.formats import REGISTRY, backend\n"
        "for name in REGISTRY:\n"
        "    b = backend(name)\n"
        "    assert b.format == name and b.quant_types and b.label and b.runtime, name\n"
        "    assert b.evaluation in ('llm-text', 'outputs'), name\n"
        "heavy = [m for m in ('numpy', 'gguf', 'onnx', 'onnxruntime', 'llama_cpp') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout  # listing what edgeshrink supports imports nothing heavy


def test_formats_import_no_private_name_of_another_module() -> None:
    found = [p for p in structure.count()["private"] if p.startswith("edgeshrink/formats/")]
    assert not found, found


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, as a child process or a script's first import would:
    an import cycle that the usual order hides (distill.targets ▸ formats.gguf ▸ its
    build ▸ distill.run ▸ distill.targets) fails here, not on a user's machine."""
    code = (
        "import importlib, pkgutil, sys, edgeshrink\n"
        "names = [m.name for m in pkgutil.walk_packages(edgeshrink.__path__, 'edgeshrink.')"
        "         if not m.name.endswith(('__main__', '.device_facts'))]\n"  # scripts, run not imported
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('edgeshrink.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc}')\n"
        "print(len(names), 'modules')\n"
        "print('\\n'.join(failed))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, *failed = out.stdout.strip().splitlines()
    assert int(count.split()[0]) > 100, out.stdout
    assert not failed, "\n".join(failed)
