"""The GGUF quantization types: the names llama-quantize accepts, each type's effective
bits per weight and quality rank (GgufQuantType), and the ladder plan walks down.

The table is built from gguf-py's LlamaFileType on first use (quant_types_table), so
importing this module stays light."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

from edgeshrink.errors import QuantizationError

FORMAT = "gguf"

# The type names `llama-quantize` accepts (tools/quantize/quantize.cpp), minus COPY.
LLAMA_QUANTIZE_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_1",
    "Q5_0",
    "Q4_K",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_1",
    "Q4_0",
    "IQ4_NL",
    "IQ4_XS",
    "Q3_K",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "IQ3_M",
    "IQ3_S",
    "IQ3_XS",
    "IQ3_XXS",
    "Q2_K",
    "Q2_K_S",
    "IQ2_M",
    "IQ2_S",
    "IQ2_XS",
    "IQ2_XXS",
    "IQ1_M",
    "IQ1_S",
    "TQ2_0",
    "TQ1_0",
    "MXFP4_MOE",
)

# Approximate effective bits per weight of each llama.cpp file type (after llama.cpp's own
# quantize tool and checked against its output on our test models: mixes upgrade some
# tensors, so K-quant "M" types cost more than their base type).  Ordered from
# highest to lowest quality: this order is the ladder `plan` walks down.
_QUANT_TABLE: tuple[tuple[str, str | None, float, bool, str], ...] = (
    # name, base tensor type, effective bpw, needs importance matrix, note
    ("F32", "F32", 32.0, False, "no quantization"),
    ("F16", "F16", 16.0, False, "half precision, lossless for most models"),
    ("BF16", "BF16", 16.0, False, "bfloat16, lossless for bf16-trained models"),
    ("Q8_0", "Q8_0", 8.5, False, "near-lossless; fast on every CPU"),
    ("Q6_K", "Q6_K", 6.56, False, "very small loss"),
    ("Q5_K_M", "Q5_K", 5.69, False, "small loss"),
    ("Q5_K_S", "Q5_K", 5.54, False, "small loss"),
    ("Q5_1", "Q5_1", 6.0, False, "legacy 5-bit"),
    ("Q5_0", "Q5_0", 5.5, False, "legacy 5-bit"),
    ("Q4_K_M", "Q4_K", 4.89, False, "balanced; the usual default"),
    ("Q4_K_S", "Q4_K", 4.58, False, "slightly smaller than Q4_K_M"),
    ("Q4_1", "Q4_1", 5.0, False, "legacy 4-bit"),
    ("IQ4_NL", "IQ4_NL", 4.5, False, "non-linear 4-bit, 32-blocks"),
    ("Q4_0", "Q4_0", 4.5, False, "4-bit; repacked at load on ARM dotprod/i8mm and x86 AVX2"),
    ("IQ4_XS", "IQ4_XS", 4.25, False, "4.25-bit i-quant"),
    ("Q3_K_L", "Q3_K", 4.27, False, "3-bit, large mix"),
    ("Q3_K_M", "Q3_K", 3.91, False, "3-bit, noticeable loss"),
    ("IQ3_M", "IQ3_S", 3.66, False, "3-bit i-quant mix"),
    ("IQ3_S", "IQ3_S", 3.44, False, "3-bit i-quant"),
    ("Q3_K_S", "Q3_K", 3.5, False, "3-bit, large loss"),
    ("IQ3_XS", "IQ3_S", 3.3, True, "3-bit, needs an importance matrix"),
    ("IQ3_XXS", "IQ3_XXS", 3.06, True, "3-bit, needs an importance matrix"),
    ("Q2_K", "Q2_K", 3.0, False, "2-bit mix, large loss"),
    ("Q2_K_S", "Q2_K", 2.97, True, "2-bit, needs an importance matrix"),
    ("IQ2_M", "IQ2_S", 2.7, True, "2-bit, needs an importance matrix"),
    ("IQ2_S", "IQ2_S", 2.5, True, "2-bit, needs an importance matrix"),
    ("IQ2_XS", "IQ2_XS", 2.31, True, "2-bit, needs an importance matrix"),
    ("IQ2_XXS", "IQ2_XXS", 2.06, True, "2-bit, needs an importance matrix"),
    ("IQ1_M", "IQ1_M", 1.75, True, "1-bit, needs an importance matrix"),
    ("IQ1_S", "IQ1_S", 1.56, True, "1-bit, needs an importance matrix"),
    ("TQ2_0", "TQ2_0", 2.06, False, "ternary, only for ternary-trained models"),
    ("TQ1_0", "TQ1_0", 1.69, False, "ternary, only for ternary-trained models"),
)

# Types plan may pick on its own, best quality first.  Legacy, ternary and
# imatrix-only types are reachable with --quant but never chosen for the user.
PLAN_LADDER: tuple[str, ...] = (
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q4_K_M",
    "Q4_0",
    "IQ4_XS",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
)
UNQUANTIZED = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class GgufQuantType:
    name: str
    ftype: int
    base_type: str
    bpw: float
    needs_imatrix: bool
    note: str
    quality_rank: int


def _build_quant_types() -> dict[str, GgufQuantType]:
    from gguf.constants import LlamaFileType

    types: dict[str, GgufQuantType] = {}
    for rank, (name, base, bpw, imatrix, note) in enumerate(_QUANT_TABLE):
        member = "ALL_F32" if name == "F32" else f"MOSTLY_{name}"
        if member not in LlamaFileType.__members__:
            continue
        types[name] = GgufQuantType(
            name=name,
            ftype=int(LlamaFileType[member]),
            base_type=base or name,
            bpw=bpw,
            needs_imatrix=imatrix,
            note=note,
            quality_rank=rank,
        )
    return types


@functools.cache
def quant_types_table() -> dict[str, GgufQuantType]:
    """Every type this gguf-py knows, by name (built on first use: gguf-py is heavy)."""
    return _build_quant_types()


def quant_type(name: str) -> GgufQuantType:
    """Look a llama.cpp type up by name, case-insensitively (``q4_k_m`` works)."""
    key = name.strip().upper()
    table = quant_types_table()
    if key in table:
        return table[key]

    close = difflib.get_close_matches(key, list(table), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise QuantizationError(
        f"unknown GGUF quantization type '{name}'",
        hint=hint + "run `edgeshrink quant-types` to list the llama.cpp types",
    )


def supported_by_llama_cpp(name: str) -> bool | None:
    """Whether the installed llama-cpp-python knows this file type (None: not installed)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    attr = "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
    return hasattr(llama_cpp, attr)
