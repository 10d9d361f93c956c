"""Count what the "one pipeline" issue measures, over the edgeshrink package (host side):

- format-name branches outside the backends: comparisons (==, !=, in, not in) with a
  registered format's name ("gguf", "onnx", "tflite", "hf") outside edgeshrink/formats/;
- imports inside functions that are not heavy-library deferrals (a heavy library, or an
  edgeshrink module that imports one at its top);
- private names (a leading underscore) imported from another edgeshrink module;
- the largest modules other than the agent.

    python scripts/structure_counts.py            # the counts
    python scripts/structure_counts.py --list     # and where each one is

The device side (edgeshrink/agent/) is left out: it runs each format's runtime, so it
dispatches on the format by design, and it may import only the standard library at top.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "edgeshrink"
FORMAT_NAMES = {"gguf", "onnx", "tflite", "hf"}
HEAVY = {
    "numpy", "gguf", "onnx", "onnxruntime", "onnxconverter_common", "paramiko", "llama_cpp",
    "tokenizers", "sentencepiece", "safetensors", "torch", "transformers", "tensorflow",
    "flatbuffers", "ai_edge_quantizer", "ai_edge_litert", "tflite_runtime", "litert_torch",
    "sklearn", "psycopg", "google", "psutil", "platformdirs",
}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        if "agent" in rel.parts:
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imported(node: ast.AST, module: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".")[: -node.level]
        return [".".join([*base, node.module or ""]).strip(".")]
    return [node.module or ""]


def _top_level_heavy(tree: ast.Module, module: str) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            name.split(".")[0] in HEAVY for name in _imported(node, module)
        ):
            return True
    return False


def _is_format_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in FORMAT_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_format_name(e) for e in node.elts)
    return False


def count() -> dict[str, list[str]]:
    mods = modules()
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in mods.items()}
    heavy_modules = {name for name, tree in trees.items() if _top_level_heavy(tree, name)}
    out: dict[str, list[str]] = {"branches": [], "imports": [], "private": [], "sizes": []}
    for name, tree in trees.items():
        where = str(mods[name].relative_to(ROOT.parent))
        in_backend = name.startswith("edgeshrink.formats.")
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and not in_backend:
                sides = [node.left, *node.comparators]
                if any(_is_format_name(s) for s in sides):
                    out["branches"].append(f"{where}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and not node.level:
                source = node.module or ""
                if source.startswith("edgeshrink") and source != name:
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            out["private"].append(f"{where}:{node.lineno} {source}.{alias.name}")
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                for target in _imported(node, name):
                    top = target.split(".")[0]
                    if top in HEAVY or target in heavy_modules:
                        continue
                    if top == "edgeshrink" and any(
                        m in heavy_modules for m in (target, *_submodules(node, target))
                    ):
                        continue
                    out["imports"].append(f"{where}:{node.lineno} {target}")
        lines = len(mods[name].read_text(encoding="utf-8").splitlines())
        out["sizes"].append(f"{lines} {where}")
    out["sizes"].sort(key=lambda s: -int(s.split()[0]))
    return out


def _submodules(node: ast.AST, target: str) -> list[str]:
    """``from edgeshrink.formats import gguf`` imports the module edgeshrink.formats.gguf."""
    if isinstance(node, ast.ImportFrom):
        return [f"{target}.{a.name}" for a in node.names]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="where each counted item is")
    args = parser.parse_args(argv)
    found = count()
    labels = {
        "branches": "format-name branches outside edgeshrink/formats/",
        "imports": "imports inside functions that are not heavy-library deferrals",
        "private": "private names imported across modules",
    }
    for key, label in labels.items():
        print(f"{len(found[key]):4d}  {label}")
        if args.list:
            for item in found[key]:
                print(f"        {item}")
    print("largest modules (the agent left out):")
    for item in found["sizes"][:5]:
        print(f"        {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
