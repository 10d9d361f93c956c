"""Small ONNX test models, made from nothing but onnx.helper, numpy and scikit-learn.

- ``make_mlp_onnx``: a matmul-heavy multi-layer perceptron (MatMul/Add/Relu),
  random weights from a fixed seed, a symbolic batch dimension.
- ``make_convnet_onnx``: a conv-heavy image network (Conv/Relu, GlobalAveragePool,
  Gemm) with a fixed 1x3xHxW input: nearly all of its multiply-adds are in Conv.
- ``make_digits_onnx``: a real classifier, trained here on scikit-learn's
  ``load_digits`` (8x8 handwritten digits that ship inside the package), exported
  by hand to MatMul/Add/Relu/Softmax nodes, so accuracy before and after
  quantization is a real number.

Writers for calibration / evaluation inputs (.npz whose keys are input names)
sit beside them.  The same arguments always give the same file.
"""

from __future__ import annotations

import argparse
import functools
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshrink.formats.onnx import inspect_onnx, io_specs, random_batches

if TYPE_CHECKING:
    import numpy as np

OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.18+ loads; newer onnx writes 10+ by default
DIGITS_INPUT = "pixels"
DIGITS_LABELS = "labels"
DIGITS_OUTPUTS = ("logits", "probabilities")


def _save(model: Any, path: str | os.PathLike[str], external_data: bool) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    if external_data:
        data = path.with_name(path.name + ".data")
        if data.exists():
            data.unlink()
        onnx.save_model(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=0,
        )
    else:
        onnx.save_model(model, path)
    return path


def _model(graph: Any, producer: str) -> Any:
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer
    )
    model.ir_version = IR_VERSION
    return model


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    import numpy as np

    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def make_mlp_onnx(
    path: str | os.PathLike[str],
    *,
    features: int = 64,
    hidden: tuple[int, ...] = (256, 256),
    classes: int = 10,
    seed: int = 0,
    external_data: bool = False,
) -> Path:
    """An MLP ``input [batch, features] -> logits [batch, classes]``, ReLU between layers."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current, width = "input", features
    sizes = [*hidden, classes]
    for i, out in enumerate(sizes):
        w, b = f"fc{i}.weight", f"fc{i}.bias"
        inits += [
            numpy_helper.from_array(_he(rng, (width, out), width), w),
            numpy_helper.from_array((rng.standard_normal(out) * 0.01).astype(np.float32), b),
        ]
        last = i == len(sizes) - 1
        nodes += [
            helper.make_node("MatMul", [current, w], [f"fc{i}.mm"], name=f"fc{i}.matmul"),
            helper.make_node(
                "Add", [f"fc{i}.mm", b], ["logits" if last else f"fc{i}.out"], name=f"fc{i}.add"
            ),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"fc{i}.out"], [f"act{i}"], name=f"relu{i}"))
            current = f"act{i}"
        width = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _save(_model(graph, "edgeshrink.testmodels.mlp"), path, external_data)


def make_convnet_onnx(
    path: str | os.PathLike[str],
    *,
    size: int = 32,
    channels: tuple[int, ...] = (16, 32, 32),
    classes: int = 10,
    seed: int = 0,
) -> Path:
    """A small CNN ``image [1, 3, size, size] -> logits [1, classes]``: three 3x3 convs
    (the second with stride 2), global average pooling, one Gemm."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current, c_in = "image", 3
    for i, c_out in enumerate(channels):
        w, b = f"conv{i}.weight", f"conv{i}.bias"
        inits += [
            numpy_helper.from_array(_he(rng, (c_out, c_in, 3, 3), c_in * 9), w),
            numpy_helper.from_array((rng.standard_normal(c_out) * 0.01).astype(np.float32), b),
        ]
        stride = 2 if i == 1 else 1
        nodes += [
            helper.make_node(
                "Conv",
                [current, w, b],
                [f"conv{i}.out"],
                name=f"conv{i}",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            ),
            helper.make_node("Relu", [f"conv{i}.out"], [f"act{i}"], name=f"relu{i}"),
        ]
        current, c_in = f"act{i}", c_out
    inits += [
        numpy_helper.from_array(_he(rng, (classes, c_in), c_in), "head.weight"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "head.bias"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node(
            "Gemm", ["flat", "head.weight", "head.bias"], ["logits"], name="head", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    return _save(_model(graph, "edgeshrink.testmodels.convnet"), path, False)


BERT_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def make_bert_onnx(
    path: str | os.PathLike[str],
    *,
    vocab: int = 120,
    hidden: int = 32,
    max_positions: int = 64,
    seed: int = 0,
) -> Path:
    """A sentence-embedding encoder shaped like a torch export of BERT: int64 inputs
    input_ids [batch, seq] (< vocab), token_type_ids (< 2) and attention_mask (0/1), word,
    position and token-type embeddings looked up with Gather, LayerNormalization, one
    single-head self-attention block whose scores the mask pushes to -10000, a GELU-free
    feed-forward, and the mean-pooled ``sentence_embedding`` [batch, hidden] as output.
    Random integers beyond the tables (e.g. a token type of 5) make its Gathers fail."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int) -> Any:
        return numpy_helper.from_array(_he(rng, shape, shape[0]), name)

    def const(name: str, value: Any, dtype: Any = np.float32) -> Any:
        return numpy_helper.from_array(np.array(value, dtype=dtype), name)

    inits = [
        w("emb.word", vocab, hidden), w("emb.position", max_positions, hidden),
        w("emb.type", 2, hidden),
        const("ln.scale", np.ones(hidden)), const("ln.bias", np.zeros(hidden)),
        w("attn.q", hidden, hidden), w("attn.k", hidden, hidden), w("attn.v", hidden, hidden),
        w("attn.o", hidden, hidden), w("ffn.up", hidden, 4 * hidden), w("ffn.down", 4 * hidden, hidden),
        const("scale", 1.0 / np.sqrt(hidden)), const("one", 1.0), const("neg", -10000.0),
        const("axis1", [1], np.int64), const("zero", 0, np.int64), const("one_i", 1, np.int64),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["ids.shape"]),
        helper.make_node("Gather", ["ids.shape", "one_i"], ["seq"], axis=0),
        helper.make_node("Range", ["zero", "seq", "one_i"], ["positions"]),
        helper.make_node("Gather", ["emb.word", "input_ids"], ["e.word"]),
        helper.make_node("Gather", ["emb.position", "positions"], ["e.pos"]),
        helper.make_node("Gather", ["emb.type", "token_type_ids"], ["e.type"]),
        helper.make_node("Add", ["e.word", "e.pos"], ["e.wp"]),
        helper.make_node("Add", ["e.wp", "e.type"], ["e.sum"]),
        helper.make_node("LayerNormalization", ["e.sum", "ln.scale", "ln.bias"], ["x"], axis=-1),
        helper.make_node("MatMul", ["x", "attn.q"], ["q"]),
        helper.make_node("MatMul", ["x", "attn.k"], ["k"]),
        helper.make_node("MatMul", ["x", "attn.v"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores.raw"]),
        helper.make_node("Mul", ["scores.raw", "scale"], ["scores.scaled"]),
        helper.make_node("Unsqueeze", ["attention_mask", "axis1"], ["mask.3d"]),
        helper.make_node("Cast", ["mask.3d"], ["mask.f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask.f"], ["mask.off"]),
        helper.make_node("Mul", ["mask.off", "neg"], ["mask.bias"]),
        helper.make_node("Add", ["scores.scaled", "mask.bias"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "attn.o"], ["attn.out"]),
        helper.make_node("Add", ["x", "attn.out"], ["h1"]),
        helper.make_node("MatMul", ["h1", "ffn.up"], ["up"]),
        helper.make_node("Relu", ["up"], ["act"]),
        helper.make_node("MatMul", ["act", "ffn.down"], ["down"]),
        helper.make_node("Add", ["h1", "down"], ["hidden"]),
        helper.make_node("ReduceMean", ["hidden"], ["sentence_embedding"], axes=[1], keepdims=0),
    ]
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in BERT_INPUTS]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "bert",
        ints,
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    return _save(_model(graph, "edgeshrink.testmodels.bert"), path, False)


def write_bert_npz(
    path: str | os.PathLike[str],
    *,
    samples: int = 64,
    seq: int = 16,
    vocab: int = 120,
    seed: int = 0,
) -> Path:
    """Real-looking inputs for make_bert_onnx: ids below ``vocab``, a sentence A/B split,
    masks that pad the end of some rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (samples, seq)).astype(np.int64)
    types = (np.arange(seq) >= seq // 2).astype(np.int64)[None].repeat(samples, 0)
    lengths = rng.integers(seq // 2, seq + 1, samples)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    return write_npz(path, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask})


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as (x_train, x_test, y_train, y_test): raw pixels 0..16, 80/20."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    return x_train, x_test, y_train, y_test


@functools.lru_cache(maxsize=4)
def train_digits_mlp(hidden: int = 64, seed: int = 0) -> tuple[tuple[Any, ...], float]:
    """((w1, b1, w2, b2), test accuracy) of scikit-learn's MLPClassifier on digits.

    About two seconds on one core; cached per process, since tests build the
    model more than once.
    """

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = digits_split(seed)
    classifier = MLPClassifier(
        hidden_layer_sizes=(hidden,), max_iter=300, random_state=seed, alpha=1e-3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x_train / 16.0, y_train)
    accuracy = float(classifier.score(x_test / 16.0, y_test))
    (w1, w2), (b1, b2) = classifier.coefs_, classifier.intercepts_
    return (w1, b1, w2, b2), accuracy


def make_digits_onnx(
    path: str | os.PathLike[str], *, hidden: int = 64, seed: int = 0
) -> tuple[Path, float]:
    """Train a one-hidden-layer MLP on the digits training split and export it.

    The graph takes raw pixels (0..16) and scales them itself, so calibration and
    evaluation files hold the data exactly as scikit-learn ships it.  Returns the
    path and the test-split accuracy scikit-learn measured.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    (w1, b1, w2, b2), accuracy = train_digits_mlp(hidden, seed)
    inits = [
        numpy_helper.from_array(np.array(1.0 / 16.0, np.float32), "scale"),
        numpy_helper.from_array(w1.astype(np.float32), "hidden.weight"),
        numpy_helper.from_array(b1.astype(np.float32), "hidden.bias"),
        numpy_helper.from_array(w2.astype(np.float32), "out.weight"),
        numpy_helper.from_array(b2.astype(np.float32), "out.bias"),
    ]
    nodes = [
        helper.make_node("Mul", [DIGITS_INPUT, "scale"], ["scaled"], name="scale"),
        helper.make_node(
            "MatMul", ["scaled", "hidden.weight"], ["hidden.mm"], name="hidden.matmul"
        ),
        helper.make_node("Add", ["hidden.mm", "hidden.bias"], ["hidden.pre"], name="hidden.add"),
        helper.make_node("Relu", ["hidden.pre"], ["hidden.act"], name="hidden.relu"),
        helper.make_node("MatMul", ["hidden.act", "out.weight"], ["out.mm"], name="out.matmul"),
        helper.make_node("Add", ["out.mm", "out.bias"], ["logits"], name="out.add"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info(DIGITS_INPUT, TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 10])
            for name in DIGITS_OUTPUTS
        ],
        inits,
    )
    model = _model(graph, "edgeshrink.testmodels.digits")
    return _save(model, path, False), accuracy


def write_digits_npz(
    path: str | os.PathLike[str], *, split: str = "test", limit: int | None = None, seed: int = 0
) -> Path:
    """The digits ``split`` ("train" or "test") as an .npz: ``pixels`` [N, 64] float32 and
    ``labels`` [N] int64 (calibrate on "train", evaluate on "test")."""

    x_train, x_test, y_train, y_test = digits_split(seed)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return write_npz(path, {DIGITS_INPUT: x, DIGITS_LABELS: y})


def write_random_inputs_npz(
    model_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    samples: int = 64,
    seed: int = 0,
) -> Path:
    """``samples`` random inputs for every input of ``model_path``, stacked on the first
    axis (a symbolic or size-1 first dimension becomes ``samples``): the random inputs
    edgeshrink itself uses (standard normal floats, small non-negative integers)."""

    return write_inputs_npz(io_specs(inspect_onnx(model_path))[0], path, samples=samples, seed=seed)


def write_inputs_npz(specs: Any, path: str | os.PathLike[str], *, samples: int, seed: int) -> Path:
    """Random inputs of the declared ``specs`` (ONNX or TFLite), one .npz keyed by name."""
    import numpy as np

    feeds = random_batches(specs, samples=samples, seed=seed).feeds
    return write_npz(path, {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]})


def write_npz(path: str | os.PathLike[str], arrays: dict[str, Any]) -> Path:
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write every ONNX test model and its calibration/evaluation data into one directory.

    python -m edgeshrink.testmodels.onnx_models -o out/onnx
    """

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("out/onnx"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    mlp = make_mlp_onnx(out / "mlp.onnx", seed=args.seed)
    conv = make_convnet_onnx(out / "convnet.onnx", seed=args.seed)
    digits, accuracy = make_digits_onnx(out / "digits.onnx", seed=args.seed)
    written = [
        mlp,
        write_random_inputs_npz(mlp, out / "mlp-calibration.npz", samples=128, seed=args.seed),
        write_random_inputs_npz(mlp, out / "mlp-eval.npz", samples=64, seed=args.seed + 1),
        conv,
        write_random_inputs_npz(conv, out / "convnet-calibration.npz", samples=32, seed=args.seed),
        write_random_inputs_npz(conv, out / "convnet-eval.npz", samples=16, seed=args.seed + 1),
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
