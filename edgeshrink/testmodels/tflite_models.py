"""Small TFLite test models, written straight into the flatbuffer with the schema
ai-edge-litert ships (``schema_py_generated``): no TensorFlow needed.

- ``make_mlp_tflite``: a FULLY_CONNECTED multi-layer perceptron with a dynamic
  batch dimension (``shape_signature`` -1), random weights from a fixed seed.
- ``make_convnet_tflite``: a conv-heavy image network (CONV_2D, MEAN,
  FULLY_CONNECTED) with a fixed 1xHxWx3 NHWC input.
- ``make_digits_tflite``: the scikit-learn ``load_digits`` classifier that the
  ONNX tests use (same training, same split), written as MUL / FULLY_CONNECTED /
  SOFTMAX, so accuracy before and after quantization is a real number.

Every model carries a ``serving_default`` signature whose input and output
names are the tensor names, as TensorFlow's converter writes them.  The same
arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.formats.tflite import inspect_tflite, io_specs, tflite_schema
from edgeshrink.testmodels.onnx_models import train_digits_mlp, write_digits_npz, write_inputs_npz

if TYPE_CHECKING:
    import numpy as np

DIGITS_INPUT = "pixels"
DIGITS_LABELS = "labels"
DIGITS_OUTPUTS = ("logits", "probabilities")
SIGNATURE_KEY = "serving_default"


@dataclass
class FlatbufferModelBuilder:
    """Collects tensors, buffers and operators of one subgraph; ``to_bytes`` packs them."""

    schema: Any
    description: str
    tensors: list[Any] = field(default_factory=list)
    buffers: list[Any] = field(default_factory=list)
    operator_codes: list[Any] = field(default_factory=list)
    operators: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.buffers.append(self.schema.BufferT())  # buffer 0: the empty buffer

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        data: np.ndarray | None = None,
        *,
        dtype: str = "float32",
        shape_signature: tuple[int, ...] | None = None,
    ) -> int:
        import numpy as np

        s = self.schema
        tensor = s.TensorT()
        tensor.name = name
        tensor.shape = list(shape)
        tensor.type = {"float32": s.TensorType.FLOAT32, "int32": s.TensorType.INT32}[dtype]
        if shape_signature is not None:
            tensor.shapeSignature = list(shape_signature)
        if data is not None:
            buffer = s.BufferT()
            raw = np.ascontiguousarray(data, dtype=np.dtype(dtype)).tobytes()
            buffer.data = np.frombuffer(raw, np.uint8)
            self.buffers.append(buffer)
            tensor.buffer = len(self.buffers) - 1
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def operator(
        self,
        builtin: str,
        inputs: list[int],
        outputs: list[int],
        options: Any = None,
        *,
        version: int = 1,
    ) -> None:
        s = self.schema
        code = getattr(s.BuiltinOperator, builtin)
        key = (code, version)
        known = [(c.builtinCode, c.version) for c in self.operator_codes]
        if key not in known:
            opcode = s.OperatorCodeT()
            opcode.builtinCode = code
            opcode.deprecatedBuiltinCode = min(code, 127)  # 127: "look at builtin_code"
            opcode.version = version
            self.operator_codes.append(opcode)
            known.append(key)
        op = s.OperatorT()
        op.opcodeIndex = known.index(key)
        op.inputs = list(inputs)
        op.outputs = list(outputs)
        if options is not None:
            op.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        self.operators.append(op)

    def to_bytes(self, inputs: list[int], outputs: list[int]) -> bytes:
        import flatbuffers

        s = self.schema
        subgraph = s.SubGraphT()
        subgraph.name = "main"
        subgraph.tensors = self.tensors
        subgraph.inputs = list(inputs)
        subgraph.outputs = list(outputs)
        subgraph.operators = self.operators
        signature = s.SignatureDefT()
        signature.signatureKey = SIGNATURE_KEY
        signature.subgraphIndex = 0
        signature.inputs = [self._tensor_map(i) for i in inputs]
        signature.outputs = [self._tensor_map(i) for i in outputs]
        model = s.ModelT()
        model.version = 3
        model.description = self.description
        model.operatorCodes = self.operator_codes
        model.subgraphs = [subgraph]
        model.buffers = self.buffers
        model.signatureDefs = [signature]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def _tensor_map(self, index: int) -> Any:
        entry = self.schema.TensorMapT()
        entry.name = self.tensors[index].name
        entry.tensorIndex = index
        return entry

    def fully_connected(
        self, x: int, weight: np.ndarray, bias: np.ndarray, out: int, *, relu: bool, version: int
    ) -> None:
        """y = x @ weight.T + bias; ``weight`` is [out, in] as TFLite stores it."""
        s = self.schema
        name = self.tensors[out].name
        w = self.tensor(f"{name}/weight", weight.shape, weight)
        b = self.tensor(f"{name}/bias", bias.shape, bias)
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = (
            s.ActivationFunctionType.RELU if relu else s.ActivationFunctionType.NONE
        )
        self.operator("FULLY_CONNECTED", [x, w, b], [out], options, version=version)


def _schema() -> Any:

    return tflite_schema()


def _write(path: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    import numpy as np

    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def make_mlp_tflite(
    path: str | os.PathLike[str],
    *,
    features: int = 64,
    hidden: tuple[int, ...] = (256, 256),
    classes: int = 10,
    seed: int = 0,
    fc_version: int = 1,
) -> Path:
    """An MLP ``input [batch, features] -> logits [batch, classes]`` (ReLU between layers).

    ``fc_version`` sets the FULLY_CONNECTED operator version the file declares.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    b = FlatbufferModelBuilder(_schema(), "edgeshrink.testmodels.mlp")
    x = b.tensor("input", (1, features), shape_signature=(-1, features))
    first, width, current = x, features, x
    sizes = [*hidden, classes]
    for i, out in enumerate(sizes):
        last = i == len(sizes) - 1
        y = b.tensor("logits" if last else f"fc{i}", (1, out), shape_signature=(-1, out))
        weight = _he(rng, (out, width), width)
        bias = (rng.standard_normal(out) * 0.01).astype(np.float32)
        b.fully_connected(current, weight, bias, y, relu=not last, version=fc_version)
        current, width = y, out
    return _write(path, b.to_bytes([first], [current]))


def make_convnet_tflite(
    path: str | os.PathLike[str],
    *,
    size: int = 32,
    channels: tuple[int, ...] = (16, 32, 32),
    classes: int = 10,
    seed: int = 0,
) -> Path:
    """A small CNN ``image [1, size, size, 3] -> logits [1, classes]`` (NHWC): three 3x3
    CONV_2D with fused ReLU (the second with stride 2), MEAN over H and W, one
    FULLY_CONNECTED."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s = _schema()
    b = FlatbufferModelBuilder(s, "edgeshrink.testmodels.convnet")
    image = b.tensor("image", (1, size, size, 3))
    current, c_in, hw = image, 3, size
    for i, c_out in enumerate(channels):
        stride = 2 if i == 1 else 1
        hw = -(-hw // stride)
        weight = b.tensor(
            f"conv{i}/weight", (c_out, 3, 3, c_in), _he(rng, (c_out, 3, 3, c_in), 9 * c_in)
        )
        bias = b.tensor(
            f"conv{i}/bias", (c_out,), (rng.standard_normal(c_out) * 0.01).astype(np.float32)
        )
        out = b.tensor(f"conv{i}", (1, hw, hw, c_out))
        options = s.Conv2DOptionsT()
        options.padding = s.Padding.SAME
        options.strideW = options.strideH = stride
        options.fusedActivationFunction = s.ActivationFunctionType.RELU
        b.operator("CONV_2D", [current, weight, bias], [out], options)
        current, c_in = out, c_out
    axes = b.tensor("pool/axes", (2,), np.array([1, 2], np.int32), dtype="int32")
    pooled = b.tensor("pool", (1, c_in))
    reducer = s.ReducerOptionsT()
    reducer.keepDims = False
    b.operator("MEAN", [current, axes], [pooled], reducer)
    logits = b.tensor("logits", (1, classes))
    b.fully_connected(
        pooled, _he(rng, (classes, c_in), c_in), np.zeros(classes, np.float32), logits,
        relu=False, version=1,
    )  # fmt: skip
    return _write(path, b.to_bytes([image], [logits]))


def make_digits_tflite(
    path: str | os.PathLike[str], *, hidden: int = 64, seed: int = 0
) -> tuple[Path, float]:
    """The digits MLP of ``onnx_models.train_digits_mlp`` as a .tflite.

    Raw pixels (0..16) in, scaled by the graph itself; ``logits`` and
    ``probabilities`` out.  Returns the path and scikit-learn's test accuracy.
    """
    import numpy as np

    (w1, b1, w2, b2), accuracy = train_digits_mlp(hidden, seed)
    s = _schema()
    b = FlatbufferModelBuilder(s, "edgeshrink.testmodels.digits")
    pixels = b.tensor(DIGITS_INPUT, (1, 64), shape_signature=(-1, 64))
    scale = b.tensor("scale", (), np.array(1.0 / 16.0, np.float32))
    scaled = b.tensor("scaled", (1, 64), shape_signature=(-1, 64))
    b.operator("MUL", [pixels, scale], [scaled], s.MulOptionsT())
    hidden_out = b.tensor("hidden", (1, hidden), shape_signature=(-1, hidden))
    b.fully_connected(
        scaled, w1.T.astype(np.float32), b1.astype(np.float32), hidden_out, relu=True, version=1
    )
    logits = b.tensor("logits", (1, 10), shape_signature=(-1, 10))
    b.fully_connected(
        hidden_out, w2.T.astype(np.float32), b2.astype(np.float32), logits, relu=False, version=1
    )
    probabilities = b.tensor("probabilities", (1, 10), shape_signature=(-1, 10))
    softmax = s.SoftmaxOptionsT()
    softmax.beta = 1.0
    b.operator("SOFTMAX", [logits], [probabilities], softmax)
    return _write(path, b.to_bytes([pixels], [logits, probabilities])), accuracy


def write_random_inputs_npz(
    model_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    samples: int = 32,
    seed: int = 0,
) -> Path:
    """``samples`` random inputs for every input of ``model_path``, keyed by input name
    and stacked on the first axis (a batch of 1 becomes ``samples``)."""

    inputs, _ = io_specs(inspect_tflite(model_path))
    return write_inputs_npz(inputs, path, samples=samples, seed=seed)


def main(argv: list[str] | None = None) -> int:
    """Write every TFLite test model and its calibration/evaluation data into one directory.

    python -m edgeshrink.testmodels.tflite_models -o out/tflite
    """

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("out/tflite"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    mlp = make_mlp_tflite(out / "mlp.tflite", seed=args.seed)
    conv = make_convnet_tflite(out / "convnet.tflite", seed=args.seed)
    digits, accuracy = make_digits_tflite(out / "digits.tflite", seed=args.seed)
    written = [
        mlp,
        write_random_inputs_npz(mlp, out / "mlp-calibration.npz", samples=128, seed=args.seed),
        conv,
        write_random_inputs_npz(conv, out / "convnet-calibration.npz", samples=32, seed=args.seed),
        digits,
        write_digits_npz(out / "digits-calibration.npz", split="train", limit=256, seed=args.seed),
        write_digits_npz(out / "digits-test.npz", split="test", seed=args.seed),
    ]
    for path in written:
        print(f"{path}\t{path.stat().st_size:,} bytes")
    print(f"digits classifier test accuracy (scikit-learn): {accuracy:.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
