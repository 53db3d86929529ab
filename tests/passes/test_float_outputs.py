"""FloatOutputs: the Q/DQ pair on a graph output goes, every op stays quantized; Before/Expected on ONNX text,
then the static quantize pass end to end (its output is the integer MatMul's float result, not rounded)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from edgecompile.compiler.config import QuantizeSection
from edgecompile.data import Dataset
from edgecompile.passes.float_outputs import FloatOutputs
from edgecompile.passes.quantize import Quantize
from edgecompile.targets.ort.build import ort_outputs

HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'

QDQ_OUT = HEAD + """
g (float[N, 4] x) => (float[N, 3] y) <float s = {0.1}, uint8 z = {128}, int8[4, 3] wq, float ws = {0.02}> {
    xq = QuantizeLinear(x, s, z)
    xd = DequantizeLinear(xq, s, z)
    w = DequantizeLinear(wq, ws)
    h = MatMul(xd, w)
    hq = QuantizeLinear(h, s, z)
    y = DequantizeLinear(hq, s, z)
}
"""


FLOAT = HEAD + """
g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w> {
    y = MatMul(x, w)
}
"""


def reference() -> ir.Model:
    return parse(FLOAT, w=np.zeros((4, 3), np.float32))


def parse(text: str, **inits) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, value in inits.items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def run(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    return ort_outputs(ir.to_proto(model).SerializeToString(), [feeds])


def wq(seed=0):
    return np.random.default_rng(seed).integers(-127, 128, size=(4, 3)).astype(np.int8)


def test_before_expected_the_output_pair_goes_the_input_pairs_stay():
    model = parse(QDQ_OUT, wq=wq())
    result = FloatOutputs(reference())(model)
    assert result.modified and result.notes == {"float_outputs": ["y"]}
    out = ir.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul"]
    assert out.graph.node[-1].output[0] == "y" and [o.name for o in out.graph.output] == ["y"]
    assert out.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    before, after = run(parse(QDQ_OUT, wq=wq()), {"x": x})[0], run(result.model, {"x": x})[0]
    xd = (np.clip(np.rint(x / 0.1) + 128, 0, 255) - 128) * np.float32(0.1)
    exact = xd @ (wq().astype(np.float32) * np.float32(0.02))
    np.testing.assert_allclose(after, exact, rtol=1e-5, atol=1e-6)        # the MatMul's own result
    assert np.abs(before - exact).max() > 1e-3                            # the pair had rounded it


def test_an_output_that_a_node_also_reads_or_a_graph_input_is_left_alone():
    """(and one the float graph computes with another op: the pair may stand for it)"""
    read_twice = QDQ_OUT.replace("=> (float[N, 3] y)", "=> (float[N, 3] y, float[N, 3] r)").replace(
        "y = DequantizeLinear(hq, s, z)\n", "y = DequantizeLinear(hq, s, z)\n    r = Relu(y)\n")
    passthrough = HEAD + """
g (float[N, 4] x) => (float[N, 4] y) <float s = {0.1}, uint8 z = {128}> {
    xq = QuantizeLinear(x, s, z)
    y = DequantizeLinear(xq, s, z)
}
"""
    for text, inits in ((read_twice, {"wq": wq()}), (passthrough, {})):
        result = FloatOutputs(reference())(parse(text, **inits))
        assert not result.modified and result.notes == {}
        assert [n.op_type for n in result.model.graph].count("QuantizeLinear") == 2 - (text is passthrough)
    softplus = parse(FLOAT.replace("y = MatMul(x, w)", "h = MatMul(x, w)\n    y = Softplus(h)"),
                     w=np.zeros((4, 3), np.float32))
    result = FloatOutputs(softplus)(parse(QDQ_OUT, wq=wq()))
    assert not result.modified and [n.op_type for n in result.model.graph].count("QuantizeLinear") == 2


CONV_RELU = HEAD + """
cnn (float[N, 3, 8, 8] x) => (float[N, 8, 8, 8] y) <float[8, 3, 3, 3] w1, float[8, 8, 3, 3] w2> {
    [stem] a = Conv <pads = [1, 1, 1, 1]> (x, w1)
    r = Relu(a)
    [body] c = Conv <pads = [1, 1, 1, 1]> (r, w2)
    y = Relu(c)
}
"""


def test_a_relu_the_quantizer_folded_into_the_output_pair_comes_back_in_float():
    rng = np.random.default_rng(3)
    w = dict(w1=rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.3,
             w2=rng.normal(size=(8, 8, 3, 3)).astype(np.float32) * 0.2)
    calib = Dataset("float-outputs-cnn", {"x": rng.random((16, 3, 8, 8)).astype(np.float32)})
    section = QuantizeSection(calibrate="minmax", equalize=False, bias_correction=False)
    result = Quantize(section, backend="ort", calibration=calib)(parse(CONV_RELU, **w))
    graph = result.model.graph
    last = graph.outputs[0].producer()
    assert graph.outputs[0].name == "y" and last.op_type == "Relu" and last.inputs[0].producer().name == "body"
    assert [n.inputs[1].producer().op_type for n in graph if n.op_type == "Conv"] == ["DequantizeLinear"] * 2
    x = calib.inputs["x"][:4]
    out, ref = run(result.model, {"x": x})[0], run(parse(CONV_RELU, **w), {"x": x})[0]
    assert out.min() == 0.0 and np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


MLP = HEAD + """
mlp (float[N, 4] x) => (float[N, 3] y) <float[4, 8] w1, float[8] b1, float[8, 3] w2> {
    h = MatMul(x, w1)
    hb = Add(h, b1)
    r = Relu(hb)
    y = MatMul(r, w2)
}
"""


def test_static_quantize_leaves_the_logits_float_and_every_matmul_integer():
    rng = np.random.default_rng(0)
    w = dict(w1=rng.normal(size=(4, 8)).astype(np.float32), b1=rng.normal(size=8).astype(np.float32),
             w2=rng.normal(size=(8, 3)).astype(np.float32))
    x = rng.normal(size=(64, 4)).astype(np.float32)
    result = Quantize(QuantizeSection(calibrate="minmax", bias_correction=False, equalize=False),
                      backend="ort", calibration=Dataset("text-mlp", {"x": x}))(parse(MLP, **w))
    graph = result.model.graph
    last = graph.outputs[0].producer()
    assert last.op_type == "MatMul" and graph.outputs[0].name == "y"
    for mm in (n for n in graph if n.op_type == "MatMul"):
        assert [i.producer().op_type for i in mm.inputs] == ["DequantizeLinear", "DequantizeLinear"]
    assert result.notes["float_outputs"] == ["y"]
    # the output is the last MatMul on its dequantized inputs, no further rounding
    feeds = {"x": x[:16]}
    proto = ir.to_proto(result.model)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend([onnx.helper.make_empty_tensor_value_info(v.name) for v in last.inputs])
    y, a, b = ort_outputs(probe.SerializeToString(), [feeds])[:3]
    np.testing.assert_allclose(y, a @ b, rtol=1e-4, atol=1e-5)
