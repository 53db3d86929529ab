"""ZeroPointSplit: MatMulNBits with float zero points -> integer zero points + an exact block-sum correction.

Before/Expected on graphs written as ONNX text, and the numbers: the rewritten graph computes X @ W of
the float-zero-point weights (dense reference in numpy, and ORT's own float-zero-point kernel for 4 bits)
within float rounding, for K a multiple of the block or not, with a bias, 4 and 8 bits."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from edgecompile.passes.zero_point_split import ZeroPointSplit, block_indicator, pack_zero_points
from edgecompile.targets.ort.build import ort_outputs


def weights(k: int, n: int, bits: int, block: int, seed: int = 0, zp_range=(-6.0, 21.0)):
    """Packed q [N, n_blocks, blob], scales, float zero points (some outside [0, 2**bits - 1]), dense W [K, N]."""
    rng = np.random.default_rng(seed)
    nb = -(-k // block)
    q = rng.integers(0, 2**bits, size=(n, nb * block))
    q[:, k:] = 0
    s = rng.uniform(0.01, 0.1, size=(n, nb)).astype(np.float32)
    f = rng.uniform(*zp_range, size=(n, nb)).astype(np.float32)
    w = (s[:, :, None] * (q.reshape(n, nb, block) - f[:, :, None])).reshape(n, nb * block)[:, :k].T
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)) if bits == 4 else q
    return packed.astype(np.uint8).reshape(n, nb, -1), s.ravel(), f.ravel(), w.astype(np.float64)


def graph(k: int, n: int, bits: int, block: int, bias: bool = False, level: int = 0, seed: int = 0):
    wq, s, zp, w = weights(k, n, bits, block, seed)
    b = np.random.default_rng(seed + 7).normal(size=n).astype(np.float32)
    extra = ', "", bias' if bias else ""
    decl = f", float[{n}] bias" if bias else ""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    g (float[B, S, {k}] x) => (float[B, S, {n}] y)
      <uint8[{n}, {wq.shape[1]}, {wq.shape[2]}] wq, float[{s.size}] s, float[{zp.size}] zp{decl}> {{
        h = com.microsoft.MatMulNBits <K = {k}, N = {n}, bits = {bits}, block_size = {block},
                                       accuracy_level = {level}> (x, wq, s, zp{extra})
        y = Relu(h)
    }}
    """
    proto = onnx.parser.parse_model(text)
    for name, value in dict(wq=wq, s=s, zp=zp, **({"bias": b} if bias else {})).items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(proto)
    return proto, w, (b if bias else np.zeros(n))


def run(proto, x):
    return ort_outputs(proto.SerializeToString(), [{"x": x}])[0]


def split(proto, **kw):
    res = ZeroPointSplit(**kw)(ir.from_proto(proto))
    out = ir.to_proto(res.model)
    onnx.checker.check_model(out)
    return res, out


def test_before_expected_ops_names_and_zero_point_types():
    proto, _, _ = graph(64, 24, 4, 16)
    res, out = split(proto)
    assert res.modified and res.notes == {"split": 1, "block_sums": 1}
    assert [(n.op_type, n.name) for n in out.graph.node] == [
        ("MatMul", "/BlockSum"), ("MatMulNBits", ""), ("MatMul", "/Correction"), ("Add", "/AddCorrection"),
        ("Relu", "")]
    mm = out.graph.node[1]
    assert list(mm.input)[:3] == ["x", "wq", "s"] and mm.output[0] == "h_int_zp"
    assert out.graph.node[3].output[0] == "h" and list(out.graph.node[4].input) == ["h"]   # the name is kept
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert "zp" not in inits and inits[mm.input[3]].dtype == np.uint8
    assert inits[mm.input[3]].shape == (24, 2)                       # 4 blocks, two 4-bit zero points a byte
    ind = inits[out.graph.node[0].input[1]]
    assert ind.shape == (64, 4) and ind.sum() == 64 and ind[16:32, 1].all()
    assert inits[out.graph.node[2].input[1]].shape == (4, 24)          # E: one float per block and column


def test_integer_zero_points_are_left_alone():
    proto, _, _ = graph(64, 24, 4, 16)
    first, once = split(proto)
    res, twice = split(once)                                           # already integer: nothing to do
    assert not res.modified and res.notes["split"] == 0
    assert [n.op_type for n in twice.graph.node] == [n.op_type for n in once.graph.node]


@pytest.mark.parametrize("k, n, bits, block, bias", [
    (64, 24, 4, 16, False), (70, 24, 4, 16, True), (96, 8, 4, 32, True), (128, 16, 8, 32, False),
    (40, 5, 8, 16, True)])
def test_split_graph_equals_the_float_zero_point_weights(k, n, bits, block, bias):
    proto, w, b = graph(k, n, bits, block, bias=bias)
    x = np.random.default_rng(1).normal(size=(2, 3, k)).astype(np.float32)
    ref = np.maximum(x.astype(np.float64) @ w + b, 0)
    _, out = split(proto)
    got = run(out, x)
    tol = 1e-5 * np.abs(ref).max() + 1e-5
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    if bits == 4:                      # ORT's own float-zero-point kernel agrees (it has none for 8 bits on CPU)
        np.testing.assert_allclose(run(proto, x), got, rtol=0, atol=tol)


def test_zero_points_far_out_of_range_stay_exact():
    """Every zero point outside [0, 15]: the clipped integer one is off by up to 20 steps, E absorbs it."""
    proto, w, _ = graph(64, 8, 4, 32)
    wq, s, zp, w = weights(64, 8, 4, 32, zp_range=(-20.0, -1.0))
    inits = {i.name: i for i in proto.graph.initializer}
    inits["zp"].CopyFrom(numpy_helper.from_array(zp, "zp"))
    x = np.random.default_rng(2).normal(size=(1, 5, 64)).astype(np.float32)
    _, out = split(proto)
    zp_u8 = numpy_helper.to_array(next(i for i in out.graph.initializer if i.name.endswith("_uint8")))
    assert not zp_u8.any()                                              # all clipped to 0
    ref = np.maximum(x.astype(np.float64) @ w, 0)
    np.testing.assert_allclose(run(out, x), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_accuracy_level_and_float16_correction_options():
    proto, w, _ = graph(64, 24, 4, 16)
    res, out = split(proto, accuracy_level=4, correction_dtype="float16")
    mm = next(n for n in out.graph.node if n.op_type == "MatMulNBits")
    assert onnx.helper.get_attribute_value(next(a for a in mm.attribute if a.name == "accuracy_level")) == 4
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMulNBits", "Cast", "MatMul", "Add", "Relu"]
    x = np.random.default_rng(3).normal(size=(1, 4, 64)).astype(np.float32)
    ref = np.maximum(x.astype(np.float64) @ w, 0)
    err = np.abs(run(out, x) - ref).max() / np.abs(ref).max()
    assert 1e-6 < err < 2e-2                        # int8 activations + fp16 E: close, but not exact
    with pytest.raises(ValueError, match="correction_dtype"):
        ZeroPointSplit(correction_dtype="bfloat16")


def graph_with_twin():
    """`graph(64, 24, 4, 16)` plus a second MatMulNBits ("twin", output h2, a graph output) on the same input."""
    proto, _, _ = graph(64, 24, 4, 16)
    mm = proto.graph.node[0]
    twin = onnx.helper.make_node("MatMulNBits", list(mm.input), ["h2"], domain="com.microsoft", name="twin")
    twin.attribute.extend(mm.attribute)
    proto.graph.node.insert(1, twin)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("h2", onnx.TensorProto.FLOAT, ["B", "S", 24]))
    return proto


def test_nodes_reading_one_input_share_its_block_sums():
    proto = graph_with_twin()
    res, out = split(proto)
    assert res.notes == {"split": 2, "block_sums": 1}
    assert [o.name for o in out.graph.output] == ["y", "h2"]           # a graph output keeps its name too
    x = np.random.default_rng(4).normal(size=(1, 2, 64)).astype(np.float32)
    a = ort_outputs(out.SerializeToString(), [{"x": x}])
    b = ort_outputs(proto.SerializeToString(), [{"x": x}])
    np.testing.assert_allclose(a[1], b[1], rtol=0, atol=1e-5 * np.abs(b[1]).max())


def test_helpers():
    z = np.array([[1, 2, 3], [15, 0, 7]])
    assert pack_zero_points(z, 4).tolist() == [[0x21, 0x03], [0x0F, 0x07]]
    assert pack_zero_points(z, 8).tolist() == z.tolist()
    ind = block_indicator(5, 2, np.float32)
    assert ind.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]]
