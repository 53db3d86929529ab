"""Before -> Expected: ORT's transformer fusions on small encoder subgraphs written as ONNX text."""
import numpy as np
import onnx
import onnx_ir as ir
from edgecompile.passes.transformer_fusion import TransformerFusion
from edgecompile.targets.ort.build import ort_outputs

import onnxruntime.transformers.optimizer  # noqa: E402, F401

# residual Add + LayerNormalization, then an erf-based GELU on a MatMul + bias
BEFORE = """
<ir_version: 8, opset_import: ["" : 17]>
block (float[B, S, 8] x, float[B, S, 8] r) => (float[B, S, 8] y) <float[8] g = {1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0},
    float[8] b = {0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7}, float[8, 8] w = {0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,
    0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1,
    0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,
    0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1}, float sqrt2 = {1.4142135}, float one = {1.0}, float half = {0.5}> {
    s = Add(x, r)
    n = LayerNormalization <axis = -1, epsilon = 1e-12> (s, g, b)
    m = MatMul(n, w)
    mb = Add(m, b)
    d = Div(mb, sqrt2)
    e = Erf(d)
    e1 = Add(e, one)
    p = Mul(mb, e1)
    y = Mul(p, half)
}
"""


def test_fuses_skip_layernorm_and_bias_gelu():
    before = onnx.parser.parse_model(BEFORE)
    result = TransformerFusion("bert")(ir.from_proto(before))
    after = ir.to_proto(result.model)
    assert result.modified
    assert [n.op_type for n in after.graph.node] == ["SkipLayerNormalization", "MatMul", "BiasGelu"]
    assert result.notes["fused"] == {"SkipLayerNormalization": 1, "BiasGelu": 1}
    assert {(o.domain, o.version) for o in after.opset_import} == {("", 17), ("com.microsoft", 1)}
    onnx.shape_inference.infer_shapes(after, strict_mode=True)       # what later passes run
    typed = {v.name: v.type.tensor_type.elem_type for v in after.graph.value_info}
    assert typed["n"] == onnx.TensorProto.FLOAT and typed["m"] == onnx.TensorProto.FLOAT   # contrib op outputs
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, 3, 8)).astype(np.float32), "r": rng.normal(size=(2, 3, 8)).astype(np.float32)}
    np.testing.assert_allclose(ort_outputs(after.SerializeToString(), [feeds])[0],
                               ort_outputs(before.SerializeToString(), [feeds])[0], atol=1e-5)


def test_nothing_to_fuse_is_unmodified():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
""")
    result = TransformerFusion("bert")(ir.from_proto(model))
    assert not result.modified and result.notes["fused"] == {}
    assert [n.op_type for n in ir.to_proto(result.model).graph.node] == ["Relu"]
