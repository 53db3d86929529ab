"""MatMulNBitsFuse: MatMulNBits nodes reading one input, with the same settings, -> one wider node + Split.

Before/Expected on a graph written as ONNX text (three siblings, q/k/v-like, one with a different block
size left alone), and ORT's outputs identical before and after."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper
from test_zero_point_split import run, weights

from edgecompile.passes.matmulnbits_fuse import MatMulNBitsFuse
from edgecompile.passes.zero_point_split import pack_zero_points

TEXT = """
<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
g (float[B, S, 64] x) => (float[B, S, 24] y, float[B, S, 8] k_out, float[B, S, 16] v_out, float[B, S, 8] other)
  <uint8[24, 4, 8] qw, float[96] qs, uint8[24, 2] qz, float[24] qb, uint8[8, 4, 8] kw, float[32] ks,
   uint8[8, 2] kz, float[8] kb, uint8[16, 4, 8] vw, float[64] vs, uint8[16, 2] vz, float[16] vb,
   uint8[8, 2, 16] ow, float[16] os, uint8[8, 1] oz> {
    q = com.microsoft.MatMulNBits <K = 64, N = 24, bits = 4, block_size = 16, accuracy_level = 4>
        (x, qw, qs, qz, "", qb)
    k_out = com.microsoft.MatMulNBits <K = 64, N = 8, bits = 4, block_size = 16, accuracy_level = 4>
        (x, kw, ks, kz, "", kb)
    v_out = com.microsoft.MatMulNBits <K = 64, N = 16, bits = 4, block_size = 16, accuracy_level = 4>
        (x, vw, vs, vz, "", vb)
    other = com.microsoft.MatMulNBits <K = 64, N = 8, bits = 4, block_size = 32, accuracy_level = 4>
        (x, ow, os, oz)
    y = Relu(q)
}
"""


def model():
    proto = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(0)
    for p, n, block in (("q", 24, 16), ("k", 8, 16), ("v", 16, 16), ("o", 8, 32)):
        wq, s, _, _ = weights(64, n, 4, block, seed=n + block)
        z = pack_zero_points(rng.integers(0, 16, size=(n, 64 // block)), 4)
        arrays = {f"{p}w": wq, f"{p}s": s, f"{p}z": z}
        if p != "o":
            arrays[f"{p}b"] = rng.normal(size=n).astype(np.float32)
        for name, a in arrays.items():
            proto.graph.initializer.append(numpy_helper.from_array(a, name))
    onnx.checker.check_model(proto)
    return proto


def test_before_expected_and_same_outputs():
    proto = model()
    res = MatMulNBitsFuse()(ir.from_proto(proto))
    out = ir.to_proto(res.model)
    onnx.checker.check_model(out)
    assert res.notes == {"fused": 1, "nodes": 3}
    assert [n.op_type for n in out.graph.node] == ["MatMulNBits", "Split", "MatMulNBits", "Relu"]
    fused, split = out.graph.node[:2]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in fused.attribute}
    assert attrs["N"] == 48 and attrs["K"] == 64 and attrs["accuracy_level"] == 4
    assert list(split.output) == ["q", "k_out", "v_out"] and out.graph.node[3].input[0] == "q"
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert inits[fused.input[1]].shape == (48, 4, 8) and inits[fused.input[2]].shape == (192,)
    assert inits[fused.input[3]].shape == (48, 2) and inits[fused.input[5]].shape == (48,)
    assert inits[split.input[1]].tolist() == [24, 8, 16]
    assert not {"qw", "kw", "vw", "qs", "qb"} & set(inits) and "ow" in inits
    x = np.random.default_rng(1).normal(size=(2, 3, 64)).astype(np.float32)
    from edgecompile.targets.ort.build import ort_outputs

    a = ort_outputs(out.SerializeToString(), [{"x": x}])
    b = ort_outputs(proto.SerializeToString(), [{"x": x}])
    assert [o.name for o in out.graph.output] == ["y", "k_out", "v_out", "other"]
    for got, want in zip(a, b):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert run(out, x).shape == (2, 3, 24)


def test_nothing_to_fuse():
    proto = model()
    proto.graph.node.pop(1)
    proto.graph.node.pop(1)
    del proto.graph.output[1:3]
    res = MatMulNBitsFuse()(ir.from_proto(proto))
    assert not res.modified and res.notes == {"fused": 0, "nodes": 0}
