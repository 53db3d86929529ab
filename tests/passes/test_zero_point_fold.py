"""ZeroPointFold: MatMulNBits with float zero points -> one MatMulNBits (integer zero points) whose input is
[X, block sums of X] and whose weights carry the correction E as extra quantized rows.

Before/Expected on a graph written as ONNX text, then the numbers: ORT's output equals the rewritten node's
own dense weights applied to [X, S(X)] (the rewrite is what it says), and is within the small rounding of E
of the float-zero-point weights (dense numpy, and ORT's own float-zero-point kernel)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper
from test_zero_point_split import graph, graph_with_twin, run, weights

from edgecompile.passes.zero_point_fold import ZeroPointFold, pack_rows, quantize_blocks


def fold(proto, **kw):
    res = ZeroPointFold(**kw)(ir.from_proto(proto))
    out = ir.to_proto(res.model)
    onnx.checker.check_model(out)
    return res, out


def dense(out, node):
    """The dequantized [K', N] weights of a MatMulNBits with uint8 zero points, from its initializers."""
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    k, n, bits, block = a["K"], a["N"], a["bits"], a["block_size"]
    nb = -(-k // block)
    wq = inits[node.input[1]].reshape(n, nb, -1)
    q = np.stack([wq & 15, wq >> 4], -1).reshape(n, nb, block) if bits == 4 else wq
    zp = inits[node.input[3]].reshape(n, -1)
    z = np.stack([zp & 15, zp >> 4], -1).reshape(n, -1)[:, :nb] if bits == 4 else zp
    s = inits[node.input[2]].reshape(n, nb)
    return (s[..., None].astype(np.float64) * (q.astype(np.float64) - z[..., None])).reshape(n, -1)[:, :k].T


def test_before_expected_ops_names_and_shapes():
    proto, _, _ = graph(64, 24, 4, 16)
    res, out = fold(proto)
    assert res.modified and res.notes == {"folded": 1, "widened_inputs": 1}
    assert [(n.op_type, n.name) for n in out.graph.node] == [
        ("MatMul", "/BlockSum"), ("Concat", "/WithBlockSums"), ("MatMulNBits", ""), ("Relu", "")]
    ind_mm, cat, mm = out.graph.node[:3]
    assert list(ind_mm.input)[0] == "x" and list(cat.input) == ["x", ind_mm.output[0]]
    assert mm.input[0] == cat.output[0] and mm.output[0] == "h" and list(out.graph.node[3].input) == ["h"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in mm.attribute}
    assert attrs["K"] == 64 + 16 and attrs["N"] == 24        # 4 blocks of sums padded to one block of 16
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert not {"wq", "s", "zp"} & set(inits)
    assert inits[mm.input[1]].shape == (24, 5, 8) and inits[mm.input[2]].shape == (24 * 5,)
    assert inits[mm.input[3]].dtype == np.uint8 and inits[mm.input[3]].shape == (24, 3)
    ind = inits[ind_mm.input[1]]
    assert ind.shape == (64, 16) and ind.sum() == 64 and ind[16:32, 1].all() and not ind[:, 4:].any()


@pytest.mark.parametrize("k, n, bits, block, bias, level", [
    (64, 24, 4, 16, False, 0), (96, 8, 4, 32, True, 0), (128, 16, 8, 32, False, 0), (576, 40, 4, 32, True, 0),
    (1024, 8, 4, 16, False, 0), (576, 40, 4, 32, False, 4)])
def test_folded_node_computes_its_dense_weights_and_is_close_to_the_float_zero_points(k, n, bits, block, bias,
                                                                                      level):
    proto, w, b = graph(k, n, bits, block, bias=bias, level=level)
    wq, s, zp, w = weights(k, n, bits, block, zp_range=(0.0, 2.0**bits - 1))   # Q4_1-like: f within the grid
    inits = {i.name: i for i in proto.graph.initializer}
    inits["zp"].CopyFrom(numpy_helper.from_array(zp, "zp"))
    x = np.random.default_rng(1).normal(size=(2, 3, k)).astype(np.float32)
    _, out = fold(proto)
    got = run(out, x)
    mm = next(nd for nd in out.graph.node if nd.op_type == "MatMulNBits")
    xd = x.astype(np.float64)
    pad = dense(out, mm).shape[0] - k
    sums = np.concatenate([xd.reshape(2, 3, k // block, block).sum(-1), np.zeros((2, 3, pad - k // block))], -1)
    own = np.maximum(np.concatenate([xd, sums], -1) @ dense(out, mm) + b, 0)
    ref = np.maximum(xd @ w + b, 0)
    if level == 0:
        np.testing.assert_allclose(got, own, rtol=0, atol=1e-5 * np.abs(own).max())
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < (2e-2 if level else 1e-2)             # E's 4-bit rounding (+ int8 activations at level 4)
    nb = k // block                     # vs integer zero points without the correction: s * (q - z) = W - E
    e = (s.reshape(n, nb) * (np.clip(np.rint(zp), 0, 2**bits - 1) - zp).reshape(n, nb)).astype(np.float64)
    no_corr = np.maximum(xd @ (w - np.repeat(e, block, axis=1).T) + b, 0)
    assert err < np.abs(no_corr - ref).max() / np.abs(ref).max() / 4
    assert np.abs(own - ref).max() > 1e-7 * np.abs(ref).max()     # E is rounded: close, not exact
    if bits == 4 and level == 0:
        assert np.abs(run(proto, x) - got).max() / np.abs(ref).max() < 5e-3     # ORT's float-zero-point kernel


def test_k_not_a_multiple_of_the_block_falls_back_to_the_exact_split():
    proto, w, b = graph(70, 24, 4, 16, bias=True)
    res, out = fold(proto)
    assert res.notes["folded"] == 0 and res.notes["split (K not a multiple of the block)"] == [""]
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMulNBits", "MatMul", "Add", "Relu"]
    x = np.random.default_rng(2).normal(size=(1, 4, 70)).astype(np.float32)
    ref = np.maximum(x.astype(np.float64) @ w + b, 0)
    np.testing.assert_allclose(run(out, x), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_integer_zero_points_are_left_alone_and_accuracy_level_is_set():
    proto, _, _ = graph(64, 24, 4, 16)
    _, once = fold(proto, accuracy_level=4)
    mm = next(n for n in once.graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in mm.attribute}["accuracy_level"] == 4
    res, twice = fold(once)
    assert not res.modified and [n.op_type for n in twice.graph.node] == [n.op_type for n in once.graph.node]


def test_nodes_reading_one_input_share_the_widened_input():
    proto = graph_with_twin()
    res, out = fold(proto)
    assert res.notes == {"folded": 2, "widened_inputs": 1}
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Concat", "MatMulNBits", "MatMulNBits", "Relu"]
    x = np.random.default_rng(4).normal(size=(1, 2, 64)).astype(np.float32)
    a, b = run(out, x), run(proto, x)
    np.testing.assert_allclose(a, b, rtol=0, atol=3e-2 * np.abs(b).max())


def test_quantize_blocks_and_pack_rows():
    m = np.array([[0.0, 0.3, -0.15, 0.15], [0, 0, 0, 0]], np.float32)
    q, s, z = quantize_blocks(m, 4, 4)
    assert q.shape == (2, 1, 4) and s.shape == z.shape == (2, 1)
    deq = s[..., None] * (q.astype(np.float32) - z[..., None])
    assert np.abs(deq - m.reshape(2, 1, 4)).max() <= s.max() / 2 + 1e-7
    assert deq[0, 0, 0] == 0 and not deq[1].any()                 # zero stays exactly zero
    assert pack_rows(np.array([[[1, 2, 3, 15]]]), 4).tolist() == [[[0x21, 0xF3]]]
