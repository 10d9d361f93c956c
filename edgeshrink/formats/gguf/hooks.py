"""Reading llama.cpp's graph while it runs: the context's eval callback.

llama.cpp calls ``cb_eval(tensor, ask, user_data)`` for every node of the compute
graph: first with ``ask`` true (return true to see this node's data), then, once
the node is computed, with ``ask`` false and the data in place. Nodes carry
names set by the model's graph builder, the same for every architecture:
``embd`` (or ``inp_scaled``; ``inp_norm`` for BERT, whose embeddings are normalised
first) is the input of block 0, ``l_out-<i>`` the output of
block ``i``. Returning false from the second call aborts the graph, so every path
returns true.

The ``ggml_tensor`` layout below is ggml.h's (checked against
``ggml_tensor_overhead()`` before use: a llama.cpp whose struct differs is refused
rather than misread).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from edgeshrink.errors import RuntimeMissingError

GGML_MAX_DIMS, GGML_MAX_OP_PARAMS, GGML_MAX_SRC, GGML_MAX_NAME = 4, 64, 10, 64
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
GGML_OBJECT_SIZE = 32  # ggml_tensor_overhead() = sizeof(ggml_object) + sizeof(ggml_tensor)
BLOCK_INPUT_NAMES = (b"embd", b"inp_embd", b"inp_scaled", b"inp_norm", b"inp_norm-0")  # last wins


class GgmlTensor(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


_GGML: Any = None


def ggml_base() -> Any:
    """llama-cpp-python's libggml-base, with the few functions read here declared."""
    global _GGML
    if _GGML is not None:
        return _GGML
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeMissingError(
            "llama-cpp-python is not installed on the host; it runs the model",
            hint="pip install 'edgeshrink[gguf]'",
        ) from exc
    libdir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(libdir.glob("libggml-base.*")) + sorted(libdir.glob("ggml-base.*"))
    if not candidates:
        raise RuntimeMissingError(
            f"no libggml-base in {libdir}: this llama-cpp-python build cannot be read from",
            hint="reinstall llama-cpp-python from its source distribution",
        )
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                            ctypes.c_size_t]  # fmt: skip
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_tensor_overhead.argtypes = []
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    if lib.ggml_tensor_overhead() != GGML_OBJECT_SIZE + ctypes.sizeof(GgmlTensor):
        raise RuntimeMissingError(
            f"this llama.cpp's ggml_tensor is {lib.ggml_tensor_overhead() - GGML_OBJECT_SIZE} "
            f"bytes, not the {ctypes.sizeof(GgmlTensor)} edgeshrink reads",
            hint="use the llama-cpp-python version constraints.txt names",
        )
    _GGML = lib
    return lib


def tensor_bytes(address: int) -> Any:
    """A graph tensor's data: in place when its buffer is the host's, else a copy."""
    lib = ggml_base()
    t = GgmlTensor.from_address(address)
    nbytes = lib.ggml_nbytes(address)
    if t.buffer and lib.ggml_backend_buffer_is_host(t.buffer):
        return (ctypes.c_char * nbytes).from_address(t.data)
    raw = (ctypes.c_char * nbytes)()
    lib.ggml_backend_tensor_get(address, raw, 0, nbytes)
    return raw


def tensor_rows(address: int) -> Any:
    """A copy of a 2-D F32/F16 graph tensor as float32 (rows = tokens), or None."""
    import numpy as np

    t = GgmlTensor.from_address(address)
    if t.type not in (GGML_TYPE_F32, GGML_TYPE_F16) or t.ne[2] != 1 or t.ne[3] != 1:
        return None
    raw = tensor_bytes(address)
    dtype = np.float32 if t.type == GGML_TYPE_F32 else np.float16
    view = np.ndarray(shape=(t.ne[1], t.ne[0]), dtype=dtype, buffer=raw, strides=(t.nb[1], t.nb[0]))
    return np.array(view, dtype=np.float32)  # the compute buffer is reused by later nodes


class BlockStates:
    """An eval callback keeping each block's input and output for one decoded batch:
    ``states[0]`` is block 0's input, ``states[i + 1]`` block ``i``'s output.

    Most of llama.cpp's graph builders name a block's output ``l_out-<i>``. Some do not
    (BERT's ends in its output LayerNorm, ``norm_w-<i>``): with ``fallback`` on, the last
    residual-stream-shaped node (n_embd wide) tagged ``-<i>`` stands for block i's output
    when no ``l_out-<i>`` was seen. It copies more nodes, so it is turned on only when the
    names were not found.
    """

    def __init__(self, n_layer: int, n_embd: int = 0) -> None:
        import llama_cpp

        ggml_base()
        self.n_layer, self.n_embd = n_layer, n_embd
        self.index = {name: 0 for name in BLOCK_INPUT_NAMES}
        self.index.update({f"l_out-{i}".encode(): i + 1 for i in range(n_layer)})
        self.states: list[Any] = [None] * (n_layer + 1)
        self.last_tagged: list[Any] = [None] * n_layer
        self.fallback = False
        self.errors: list[str] = []
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._seen)

    def _tag(self, name: bytes, address: int) -> int | None:
        """The block a node's ``-<i>`` suffix names, for a node n_embd wide, else None."""
        head, _, tail = name.rpartition(b"-")
        if not head or not tail.isdigit() or int(tail) >= self.n_layer:
            return None
        t = GgmlTensor.from_address(address)
        return int(tail) if t.ne[0] == self.n_embd and t.ne[2] == 1 else None

    def _seen(self, address: int, ask: bool, _user: Any) -> bool:
        try:
            name = ctypes.string_at(address + GgmlTensor.name.offset)
            if ask:
                return name in self.index or (
                    self.fallback and self._tag(name, address) is not None
                )
            slot = self.index.get(name)
            if slot is not None:
                rows = tensor_rows(address)
                if rows is not None:
                    self.states[slot] = rows
            elif self.fallback:
                block = self._tag(name, address)
                rows = tensor_rows(address) if block is not None else None
                if rows is not None:
                    self.last_tagged[block] = rows  # type: ignore[index]
        except Exception as exc:  # noqa: BLE001 - raising into C would abort the graph
            self.errors.append(f"{type(exc).__name__}: {exc}")
        return True

    def take(self) -> list[Any]:
        states, self.states = self.states, [None] * (self.n_layer + 1)
        tagged, self.last_tagged = self.last_tagged, [None] * self.n_layer
        for i, rows in enumerate(tagged):
            if states[i + 1] is None:
                states[i + 1] = rows
        return states


GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID = 29, 30  # ggml.h's enum ggml_op, checked by name
IMATRIX_MIN_ROWS = 16  # llama-imatrix skips smaller batches (a warm-up, a last token)


def weight_name(raw: bytes) -> str:
    """A weight's name without the copies' decoration: ``CUDA0#blk.0.attn_k.weight#0`` ->
    ``blk.0.attn_k.weight`` (llama-imatrix's filter_tensor_name)."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


def tensor_array(address: int) -> Any:
    """A 4-D F32 graph tensor as a float32 array of shape (ne3, ne2, ne1, ne0), copied."""
    import numpy as np

    t = GgmlTensor.from_address(address)
    raw = tensor_bytes(address)
    shape = (t.ne[3], t.ne[2], t.ne[1], t.ne[0])
    strides = (t.nb[3], t.nb[2], t.nb[1], t.nb[0])
    return np.array(np.ndarray(shape=shape, dtype=np.float32, buffer=raw, strides=strides))


class MatmulInputs:
    """An eval callback summing, for every matrix multiplication by a model weight
    (``blk.*``), the squares of the activations that multiply each of the weight's input
    columns, and how many activation rows went in: llama-imatrix's collector
    (tools/imatrix/imatrix.cpp), whose ``sums / counts`` is the importance matrix.

    ``sums[name]`` has one row per matrix of the weight (one for a 2-D weight),
    ``counts[name]`` one count per row. Mixture-of-experts multiplications (MUL_MAT_ID)
    are not collected: their names land in ``experts``.
    """

    def __init__(self) -> None:
        import llama_cpp

        lib = ggml_base()
        lib.ggml_op_name.argtypes = [ctypes.c_int]
        lib.ggml_op_name.restype = ctypes.c_char_p
        if (lib.ggml_op_name(GGML_OP_MUL_MAT), lib.ggml_op_name(GGML_OP_MUL_MAT_ID)) != (
            b"MUL_MAT",
            b"MUL_MAT_ID",
        ):
            raise RuntimeMissingError(
                "this llama.cpp numbers its graph operations differently from the one "
                "edgeshrink reads",
                hint="use the llama-cpp-python version constraints.txt names",
            )
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.experts: set[str] = set()
        self.errors: list[str] = []
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._seen)

    def _wanted(self, t: GgmlTensor) -> str | None:
        if t.op == GGML_OP_MUL_MAT_ID:
            self.experts.add(weight_name(GgmlTensor.from_address(t.src[0]).name))
            return None
        if t.op != GGML_OP_MUL_MAT:
            return None
        src1 = GgmlTensor.from_address(t.src[1])
        if src1.ne[1] < IMATRIX_MIN_ROWS or src1.type != GGML_TYPE_F32:
            return None
        name = weight_name(GgmlTensor.from_address(t.src[0]).name)
        return name if name.startswith("blk.") else None

    def _seen(self, address: int, ask: bool, _user: Any) -> bool:
        try:
            t = GgmlTensor.from_address(address)
            name = self._wanted(t)
            if ask:
                return name is not None
            if name is not None:
                self._add(name, GgmlTensor.from_address(t.src[0]), t.src[1])
        except Exception as exc:  # noqa: BLE001 - raising into C would abort the graph
            self.errors.append(f"{type(exc).__name__}: {exc}")
        return True

    def _add(self, name: str, weight: GgmlTensor, src1: int) -> None:
        import numpy as np

        x = tensor_array(src1).astype(np.float64)
        n_mat = int(weight.ne[2] * weight.ne[3])
        sums = self.sums.get(name)
        if sums is None:
            sums = self.sums[name] = np.zeros((n_mat, x.shape[3]))
            self.counts[name] = np.zeros(n_mat, dtype=np.int64)
        elif sums.shape != (n_mat, x.shape[3]):
            raise ValueError(f"{name}: inputs of {x.shape[3]} columns, then {sums.shape[1]}")
        for i3 in range(x.shape[0]):
            for i2 in range(x.shape[1]):
                mat = (i3 % weight.ne[3]) * weight.ne[2] + (i2 % weight.ne[2])
                sums[mat] += np.einsum("ij,ij->j", x[i3, i2], x[i3, i2])
        self.counts[name] += x.shape[0] * x.shape[1] * x.shape[2] // n_mat
