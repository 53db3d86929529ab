"""Cross-layer equalization: Before -> Expected on tiny graphs written as onnx.parser text."""
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgecompile.passes.equalize import CrossLayerEqualization

HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'


def model(text: str) -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(HEAD + text))


def run(m: ir.Model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(ir.to_proto(m).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def assert_same_graph(got: ir.Model, expected: ir.Model):
    """Structural equality: op types in order, then every initializer's value."""
    assert [n.op_type for n in got.graph] == [n.op_type for n in expected.graph]
    gi, ei = got.graph.initializers, expected.graph.initializers
    for name, v in ei.items():
        if v.uses():
            np.testing.assert_allclose(gi[name].const_value.numpy(), v.const_value.numpy(), rtol=1e-5, err_msg=name)


RELU_BEFORE = """
g (float[N,2,3,3] x) => (float[N,2,3,3] y)
<float[2,2,1,1] w1 = {4.0, 0.0, 0.0, 0.25}, float[2] b1 = {1.0, 2.0}, float[2,2,1,1] w2 = {1.0, 1.0, 1.0, 1.0}>
{ h = Conv(x, w1, b1)
  r = Relu(h)
  y = Conv(r, w2) }
"""
# s = sqrt(r1 / r2) = sqrt([4, 0.25] / [1, 1]) = [2, 0.5]: w1 rows / s, b1 / s, w2 columns * s
RELU_EXPECTED = """
g (float[N,2,3,3] x) => (float[N,2,3,3] y)
<float[2,2,1,1] w1 = {2.0, 0.0, 0.0, 0.5}, float[2] b1 = {0.5, 4.0}, float[2,2,1,1] w2 = {2.0, 0.5, 2.0, 0.5}>
{ h = Conv(x, w1, b1)
  r = Relu(h)
  y = Conv(r, w2) }
"""


def test_relu_pair_is_equalized_exactly():
    before = model(RELU_BEFORE)
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32)
    y0 = run(before, x)
    p = CrossLayerEqualization()
    result = p(before)
    assert result.modified and p.notes["pairs"] == 1 and p.notes["relu6"] == "skip"
    assert_same_graph(result.model, model(RELU_EXPECTED))
    np.testing.assert_allclose(run(result.model, x), y0, rtol=1e-5, atol=1e-6)


DEPTHWISE_BEFORE = """
g (float[N,2,3,3] x) => (float[N,2,3,3] y)
<float[2,2,1,1] w1 = {4.0, 0.0, 0.0, 1.0}, float[2,1,1,1] w2 = {1.0, 4.0}>
{ h = Conv(x, w1)
  r = Relu(h)
  y = Conv <group: int = 2> (r, w2) }
"""
# depthwise: channel i of w2 is group i; s = sqrt([4, 1] / [1, 4]) = [2, 0.5]
DEPTHWISE_EXPECTED = """
g (float[N,2,3,3] x) => (float[N,2,3,3] y)
<float[2,2,1,1] w1 = {2.0, 0.0, 0.0, 2.0}, float[2,1,1,1] w2 = {2.0, 2.0}>
{ h = Conv(x, w1)
  r = Relu(h)
  y = Conv <group: int = 2> (r, w2) }
"""


def test_depthwise_second_layer():
    before = model(DEPTHWISE_BEFORE)
    x = np.random.default_rng(1).normal(size=(2, 2, 3, 3)).astype(np.float32)
    y0 = run(before, x)
    result = CrossLayerEqualization()(before)
    assert_same_graph(result.model, model(DEPTHWISE_EXPECTED))
    np.testing.assert_allclose(run(result.model, x), y0, rtol=1e-5, atol=1e-6)


RELU6_BEFORE = """
g (float[N,2,1,1] x) => (float[N,2,1,1] y)
<float[2,2,1,1] w1 = {4.0, 0.0, 0.0, 0.25}, float[2,2,1,1] w2 = {1.0, 1.0, 1.0, 1.0},
 float lo = {0.0}, float hi = {6.0}>
{ h = Conv(x, w1)
  r = Clip(h, lo, hi)
  y = Conv(r, w2) }
"""
# data: channel 0 reaches 8 > 6 (saturates: s0 = 1); channel 1 peaks at 1 (s1 = sqrt(0.25) = 0.5 >= 1/6)
RELU6_DATA_EXPECTED = """
g (float[N,2,1,1] x) => (float[N,2,1,1] y)
<float[2,2,1,1] w1 = {4.0, 0.0, 0.0, 0.5}, float[2,2,1,1] w2 = {1.0, 0.5, 1.0, 0.5}, float lo = {0.0}, float hi = {6.0}>
{ h = Conv(x, w1)
  r = Clip(h, lo, hi)
  y = Conv(r, w2) }
"""
RELU6_AS_RELU_EXPECTED = """
g (float[N,2,1,1] x) => (float[N,2,1,1] y)
<float[2,2,1,1] w1 = {2.0, 0.0, 0.0, 0.5}, float[2,2,1,1] w2 = {2.0, 0.5, 2.0, 0.5}>
{ h = Conv(x, w1)
  r = Relu(h)
  y = Conv(r, w2) }
"""


def _relu6_feeds():
    x = np.array([[2.0, 4.0], [0.5, -1.0], [1.0, 2.0]], np.float32).reshape(3, 2, 1, 1)
    return x, [{"x": x}]


def test_relu6_data_aware_keeps_the_clip_exact_on_calibration_data():
    x, feeds = _relu6_feeds()
    before = model(RELU6_BEFORE)
    y0 = run(before, x)
    p = CrossLayerEqualization(feeds=feeds)
    result = p(before)
    assert p.notes["relu6"] == "data" and p.notes["relu6_channels_saturating"] == 1
    assert_same_graph(result.model, model(RELU6_DATA_EXPECTED))
    np.testing.assert_allclose(run(result.model, x), y0, rtol=1e-5, atol=1e-6)


def test_relu6_as_relu_replaces_the_clip_and_changes_saturated_outputs():
    x, _ = _relu6_feeds()
    before = model(RELU6_BEFORE)
    y0 = run(before, x)
    p = CrossLayerEqualization(relu6="relu")
    result = p(before)
    assert p.notes["relu6_replaced"] == 1
    assert_same_graph(result.model, model(RELU6_AS_RELU_EXPECTED))
    assert not np.allclose(run(result.model, x), y0)        # channel 0 no longer clipped at 6


def test_relu6_skip_and_shared_outputs_are_left_alone():
    assert not CrossLayerEqualization(relu6="skip")(model(RELU6_BEFORE)).modified
    branching = model("""
g (float[N,2,3,3] x) => (float[N,2,3,3] y, float[N,2,3,3] r)
<float[2,2,1,1] w1 = {4.0, 0.0, 0.0, 0.25}, float[2,2,1,1] w2 = {1.0, 1.0, 1.0, 1.0}>
{ h = Conv(x, w1)
  r = Relu(h)
  y = Conv(r, w2) }
""")
    assert not CrossLayerEqualization()(branching).modified   # r is also a graph output


def test_bad_options():
    with pytest.raises(ValueError, match="relu6"):
        CrossLayerEqualization(relu6="maybe")
    with pytest.raises(ValueError, match="needs calibration feeds"):
        CrossLayerEqualization(relu6="data")
