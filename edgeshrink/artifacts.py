"""Artifacts: a shrunk model file plus the JSON manifest that sits beside it."""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from edgeshrink import __version__
from edgeshrink.errors import ModelFileError
from edgeshrink.util import sha256_file

MANIFEST_SCHEMA = "edgeshrink.artifact/2"
# /1 had no recipe: what made the file was its quant and a "recipe: ..." line in the notes.
READABLE_SCHEMAS = ("edgeshrink.artifact/1", MANIFEST_SCHEMA)
LEGACY_RECIPE_NOTE = "recipe: "
MANIFEST_SUFFIX = ".manifest.json"
_PRECISION_SUFFIX = re.compile(r"[-_.](f32|f16|bf16|fp16|fp32)$", re.IGNORECASE)


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: str
    quant: str
    sha256: str
    size_bytes: int
    source_path: str
    source_sha256: str
    profile_id: str | None
    tool_versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    fallbacks: tuple[tuple[str, str, str], ...] = ()
    tensor_types: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    # The passes that made the file, in order, each {"pass": name, its settings..., and
    # "detail": what the tool did, where the settings alone do not say}.
    recipe: tuple[dict[str, Any], ...] = ()

    @property
    def recipe_detail(self) -> str | None:
        """What the last pass's tool recorded it did (the reuse key of ONNX and TFLite)."""
        return self.recipe[-1].get("detail") if self.recipe else None

    @classmethod
    def of_file(
        cls,
        path: Path,
        *,
        written: Path | None = None,
        format: str,
        quant: str,
        source: Path,
        source_sha256: str,
        profile_id: str | None,
        tool_versions: dict[str, str],
        tensor_types: Iterable[Any] = (),
        fallbacks: tuple[tuple[str, str, str], ...] = (),
        notes: Iterable[str] = (),
        detail: str | None = None,
        passes: Iterable[dict[str, Any]] = (),
        recipe: Iterable[dict[str, Any]] | None = None,
    ) -> Artifact:
        """The artifact that will be ``path``, hashed and measured from ``written`` (the
        temporary file it is renamed from; default ``path``) and stamped now. Its recipe
        is ``recipe`` as the pipeline ran it, or ``passes`` and then the quantize step."""
        data = written or path
        return cls(
            path=path,
            format=format,
            quant=quant,
            sha256=sha256_file(data),
            size_bytes=data.stat().st_size,
            source_path=str(source.resolve()),
            source_sha256=source_sha256,
            profile_id=profile_id,
            tool_versions=tool_versions,
            created_at=now_iso(),
            fallbacks=fallbacks,
            tensor_types=tuple(
                {"type": t.type, "count": t.count, "n_bytes": t.n_bytes} for t in tensor_types
            ),
            notes=tuple(notes),
            recipe=tuple(recipe) if recipe is not None else (*passes, quantize_pass(quant, detail)),
        )

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.path)

    def to_manifest(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["schema"] = MANIFEST_SCHEMA
        doc["path"] = self.path.name
        doc["fallbacks"] = [{"tensor": t, "wanted": w, "used": u} for t, w, u in self.fallbacks]
        doc["tensor_types"] = list(self.tensor_types)
        doc["notes"] = list(self.notes)
        doc["recipe"] = [dict(p) for p in self.recipe]
        return doc


def quantize_pass(quant: str, detail: str | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"pass": "quantize", "type": quant}
    if detail:
        step["detail"] = detail
    return step


def default_output_path(src: Path, quant: str, suffix: str | None = None) -> Path:
    """``model-f16.gguf`` -> ``./model-q4_0.gguf``: in the current directory, like
    most tools that make a new file, so a read-only model folder is never written."""
    stem = _PRECISION_SUFFIX.sub("", src.name if src.is_dir() else src.stem)
    suffix = suffix or (".gguf" if src.is_dir() else src.suffix)
    return Path.cwd() / f"{stem}-{quant.lower()}{suffix}"


def manifest_path_for(artifact: str | os.PathLike[str]) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def tool_versions() -> dict[str, str]:

    versions = {"edgeshrink": __version__, "python": platform.python_version()}
    for dist in ("llama_cpp_python", "gguf", "onnxruntime", "onnx", "ai_edge_litert"):
        try:
            versions[dist.replace("_", "-")] = version(dist)
        except PackageNotFoundError:
            continue
    return versions


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def load_artifact(path: str | os.PathLike[str], *, verify: bool = True) -> Artifact:
    """Read an artifact's manifest; with ``verify``, check size and sha256 of the file."""
    path = Path(path)
    manifest = manifest_path_for(path)
    if not manifest.exists():
        raise ModelFileError(f"{path}: no manifest ({manifest.name}) beside it")
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{manifest}: unreadable manifest: {exc}") from exc
    if doc.get("schema") not in READABLE_SCHEMAS:
        raise ModelFileError(
            f"{manifest}: schema {doc.get('schema')!r}, expected {MANIFEST_SCHEMA}",
            hint="a newer edgeshrink wrote it: upgrade, or shrink again with this one",
        )
    notes = tuple(doc.get("notes", []))
    recipe = doc.get("recipe")
    if doc["schema"] == READABLE_SCHEMAS[0] or not isinstance(recipe, list):
        legacy = next((n for n in notes if n.startswith(LEGACY_RECIPE_NOTE)), None)
        detail = legacy[len(LEGACY_RECIPE_NOTE) :] if legacy else None
        recipe = [quantize_pass(doc["quant"], detail)]
    artifact = Artifact(
        path=path,
        format=doc["format"],
        quant=doc["quant"],
        sha256=doc["sha256"],
        size_bytes=int(doc["size_bytes"]),
        source_path=doc["source_path"],
        source_sha256=doc["source_sha256"],
        profile_id=doc.get("profile_id"),
        tool_versions=dict(doc.get("tool_versions", {})),
        created_at=doc.get("created_at", ""),
        fallbacks=tuple((f["tensor"], f["wanted"], f["used"]) for f in doc.get("fallbacks", [])),
        tensor_types=tuple(doc.get("tensor_types", [])),
        notes=notes,
        recipe=tuple(dict(p) for p in recipe if isinstance(p, dict)),
    )
    if verify:
        if not path.exists():
            raise ModelFileError(f"{path}: manifest exists but the artifact does not")
        size = path.stat().st_size
        if size != artifact.size_bytes:
            raise ModelFileError(
                f"{path}: size {size} does not match its manifest ({artifact.size_bytes})",
                hint="the file changed after shrinking; shrink again",
            )
        if sha256_file(path) != artifact.sha256:
            raise ModelFileError(
                f"{path}: sha256 does not match its manifest",
                hint="the file changed after shrinking; shrink again",
            )
    return artifact
