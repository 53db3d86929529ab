"""Small ONNX models built in code for the quantization tests (no torch, no downloads)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp(seed: int = 0, hidden: int = 64) -> onnx.ModelProto:
    """x[N,16] -> MatMul+Add -> Relu -> Gemm(transB) -> logits[N,10], random weights."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (16, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, (hidden,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (10, hidden)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(0, 0.1, (10,)).astype(np.float32), "b2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h"], name="relu"),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], [w1, b1, w2, b2])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def mlp_feeds(n=256, seed=1):
    return {"x": np.random.default_rng(seed).normal(0, 1, (n, 16)).astype(np.float32)}


def fragile_mlp(seed: int = 0, outlier: float = 1000.0) -> onnx.ModelProto:
    """x[N,16] -> fc1 -> Relu -> fc2 -> Relu -> fc3 -> logits[N,10] with one deliberately fragile layer:
    hidden channel 0 of fc1 is scaled by `outlier` and fc2's matching weight row by 1/outlier. The FP32
    function is unchanged, but fc2's input range is now set by that one channel, so quantizing fc2's
    input (uint8, per tensor) wipes out every other channel."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (16, 64)).astype(np.float32)
    b1 = rng.normal(0.2, 0.1, (64,)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (64, 64)).astype(np.float32)
    w3 = rng.normal(0, 0.3, (64, 10)).astype(np.float32)
    w1[:, 0] *= outlier
    b1[0] = abs(b1[0]) * outlier
    w2[0, :] /= outlier
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h"], name="relu1"),
             helper.make_node("MatMul", ["h", "w2"], ["g0"], name="fc2"),
             helper.make_node("Relu", ["g0"], ["g"], name="relu2"),
             helper.make_node("MatMul", ["g", "w3"], ["logits"], name="fc3")]
    g = helper.make_graph(nodes, "fragile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
