"""WeightOnlyInt8: constant MatMul weights -> 8-bit integers per output channel + DequantizeLinear.

Before/Expected on a graph written as ONNX text, the numbers (the dequantized weights are within half a
step of the float ones, per column, and the rewritten graph gives the same output within that
error; ONNX's reference evaluator runs both graphs), and what is left alone: an excluded MatMul, a
weight that something else also reads, a non-constant B input."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from edgecompile.passes.weight_int8 import WeightOnlyInt8, quantize_columns

TEXT = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[B, 16] x, float[8, 4] y) => (float[B, 8] out, float[B, 4] side, float[B, 4] shared_out)
  <float[16, 8] w1, float[8, 4] w2, float[4, 4] w3, int64[1] zero_axis = {0}> {
    h = MatMul(x, w1)
    a = Relu(h)
    out = Add(a, a)
    side = MatMul(a, y)
    t = MatMul(side, w3)
    w3_row = ReduceMean <keepdims = 1> (w3, zero_axis)
    shared_out = Add(t, w3_row)
}
"""


def model(seed: int = 0):
    proto = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(16, 8)).astype(np.float32)
    w1[:, 3] = 0.0                                          # an all-zero column
    w1[:, 5] = np.abs(w1[:, 5]) + 0.5                       # a column that never goes below zero
    for name, value in {"w1": w1, "w2": rng.normal(size=(8, 4)).astype(np.float32),
                        "w3": rng.normal(size=(4, 4)).astype(np.float32)}.items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    return proto


def rewrite(proto, **kw):
    res = WeightOnlyInt8(**kw)(ir.from_proto(proto))
    out = ir.to_proto(res.model)
    onnx.checker.check_model(out)
    return res, out


def test_before_expected():
    res, out = rewrite(model())
    assert res.modified and res.notes == {"quantized_matmuls": 1}
    ops = [(n.op_type, n.name) for n in out.graph.node]
    assert ops[0] == ("DequantizeLinear", "w1/WeightDequantize") and [o for o, _ in ops[1:]] == [
        "MatMul", "Relu", "Add", "MatMul", "MatMul", "ReduceMean", "Add"]
    dq = out.graph.node[0]
    assert list(dq.input) == ["w1_quantized", "w1_scale", "w1_zero_point"] and list(dq.output) == ["w1"]
    assert next(a.i for a in dq.attribute if a.name == "axis") == 1
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert "w1" not in inits and "w2" in inits                      # w2 is read by nothing: untouched
    assert "w3" in inits                                           # w3 also feeds a ReduceMean: untouched
    assert inits["w1_quantized"].dtype == np.uint8 and inits["w1_quantized"].shape == (16, 8)
    assert inits["w1_scale"].shape == (8,) and inits["w1_zero_point"].dtype == np.uint8


def test_dequantized_weights_and_output_within_half_a_step():
    proto = model(1)
    w1 = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w1"))
    q, s, z = quantize_columns(w1, symmetric=False)
    back = (q.astype(np.float32) - z.astype(np.float32)) * s
    assert np.all(np.abs(back - w1) <= s / 2 + 1e-6)
    assert np.array_equal(back[:, 3], np.zeros(16))                # a zero column stays exactly zero
    _, out = rewrite(proto)
    x = np.random.default_rng(2).normal(size=(5, 16)).astype(np.float32)
    y = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)
    # ONNX's reference evaluator: the graph's meaning (ORT's optimizer may fuse DQ + MatMul into an int8 op)
    got = ReferenceEvaluator(out).run(None, {"x": x, "y": y})[0]
    want = ReferenceEvaluator(proto).run(None, {"x": x, "y": y})[0]
    assert np.allclose(got, 2 * np.maximum(x @ back, 0), rtol=1e-5, atol=1e-5)
    bound = 2 * np.abs(x) @ np.broadcast_to(s / 2, (16, 8)) + 1e-4      # sum_k |x_k| * step/2, doubled by Add
    assert np.all(np.abs(got - want) <= bound)
    assert not np.allclose(got, want, atol=0, rtol=0)              # the weights really changed


def test_symmetric_grid():
    w = np.array([[1.0, -2.0], [-0.5, 0.25]], np.float32)
    q, s, z = quantize_columns(w, symmetric=True)
    assert q.dtype == np.int8 and np.array_equal(z, [0, 0])
    assert np.allclose(s, [1.0 / 127, 2.0 / 127]) and q[0, 0] == 127 and q[0, 1] == -127


def test_excluded_matmul_stays_float():
    res, out = rewrite(model(), exclude=["missing", ""])
    # the graph's MatMuls have empty names: excluding "" keeps w1's MatMul float
    assert not res.modified and res.notes["float_matmuls"] == [""]
    assert "DequantizeLinear" not in {n.op_type for n in out.graph.node}
