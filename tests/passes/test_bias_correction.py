"""Empirical bias correction: Before -> Expected on a tiny graph (onnx.parser text)."""
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgecompile.passes.bias_correction import BiasCorrection

HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'
BEFORE = """
g (float[N,2,16,16] x) => (float[N,2,16,16] y)
<float[2,2,1,1] w = {1.0, 0.0, 0.0, 1.0}, float[2] b = {0.5, -1.0}>
{ y = Conv <pads: ints = [0, 0, 0, 0]> (x, w, b) }
"""
# the "quantized" model's weight on channel 0 is 1.5 instead of 1: (W_q - W) E[x] = 0.5 * E[x0]
# = 0.5 * 2 = 1 too high there, so the corrected bias is 0.5 - 1 = -0.5; channel 1 is exact
EXPECTED = """
g (float[N,2,16,16] x) => (float[N,2,16,16] y)
<float[2,2,1,1] w = {1.0, 0.0, 0.0, 1.0}, float[2] b = {-0.5, -1.0}>
{ y = Conv <pads: ints = [0, 0, 0, 0]> (x, w, b) }
"""


def parse(text):
    m = ir.from_proto(onnx.parser.parse_model(HEAD + text))
    for i, n in enumerate(m.graph):
        n.name = n.name or f"conv{i}"
    return m


def fake_quantize(m: ir.Model) -> ir.Model:
    """A stand-in for QDQ insertion whose error is known: channel 0's weight gains +0.5."""
    q = ir.from_proto(ir.to_proto(m))
    w = q.graph.initializers["w"]
    arr = w.const_value.numpy().copy()
    arr[0, 0] += 0.5
    w.const_value = ir.tensor(arr, name="w")
    return q


def feeds():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(2.0, 0.3, size=(4, 16, 16)), rng.normal(-1.0, 0.3, size=(4, 16, 16))], axis=1)
    x[:, 0] += 2.0 - x[:, 0].mean()           # E[x0] = 2 exactly
    return [{"x": x.astype(np.float32)}]


def test_bias_moves_by_the_measured_mean_shift():
    p = BiasCorrection(feeds=feeds(), quantize=fake_quantize)
    result = p(parse(BEFORE))
    assert result.modified and p.notes["layers"] == 1
    got = result.model.graph.initializers["b"].const_value.numpy()
    want = parse(EXPECTED).graph.initializers["b"].const_value.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(result.model.graph.initializers["w"].const_value.numpy(),
                               parse(EXPECTED).graph.initializers["w"].const_value.numpy())
    assert p.notes["max_abs_shift"] == pytest.approx(0.5, abs=1e-4)   # mean of |[1, 0]|


def test_layers_with_too_few_values_per_channel_are_skipped():
    p = BiasCorrection(feeds=feeds(), quantize=fake_quantize, min_values=10_000)   # 4 x 16 x 16 = 1024 < 10k
    result = p(parse(BEFORE))
    assert not result.modified and p.notes["skipped"] == 1
    np.testing.assert_allclose(result.model.graph.initializers["b"].const_value.numpy(), [0.5, -1.0])


def test_conv_without_bias_is_not_touched():
    m = parse("""
g (float[N,2,16,16] x) => (float[N,2,16,16] y)
<float[2,2,1,1] w = {1.0, 0.0, 0.0, 1.0}>
{ y = Conv(x, w) }
""")
    assert not BiasCorrection(feeds=feeds(), quantize=fake_quantize)(m).modified


@pytest.mark.parametrize("group", [1, 2, 4])
def test_output_shift_equals_the_conv_of_the_weight_error(group):
    """Without padding, mean(conv(x, W + dW)) - mean(conv(x, W)) = output_shift(dW, E[x])."""
    import onnxruntime as ort

    from edgecompile.passes.bias_correction import output_shift

    rng = np.random.default_rng(group)
    w = rng.normal(size=(4, 4 // group, 3, 3)).astype(np.float32)
    dw = (0.05 * rng.normal(size=w.shape)).astype(np.float32)
    x = rng.normal(1.0, 1.0, size=(3, 4, 8, 8)).astype(np.float32)

    def conv_mean(weights):
        m = onnx.parser.parse_model(HEAD + f"""
g (float[N,4,8,8] x, float[4,{4 // group},3,3] w) => (float[N,4,6,6] y) {{ y = Conv <group: int = {group}> (x, w) }}
""")
        y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x, "w": weights}
        )[0]
        return y.mean(axis=(0, 2, 3))

    node = parse(f"""
g (float[N,4,8,8] x) => (float[N,4,6,6] y) <float[4] b = {{0.0, 0.0, 0.0, 0.0}}>
{{ y = Conv <group: int = {group}> (x, x, b) }}
""").graph.node(0)
    want = conv_mean(w + dw) - conv_mean(w)
    inner = np.stack([x[:, :, i:i + 6, j:j + 6] for i in range(3) for j in range(3)])   # [9, N, 4, 6, 6]
    xm = inner.mean(axis=(1, 3, 4))                                                        # [9, 4] per tap
    o, ig = dw.shape[:2]
    g = 4 // ig
    exact = np.array(
        [
            sum(dw[oc, i, t // 3, t % 3] * xm[t, (oc // (o // g)) * ig + i] for i in range(ig) for t in range(9))
            for oc in range(o)
        ]
    )
    np.testing.assert_allclose(want, exact, rtol=1e-3, atol=1e-5)
    approx = output_shift(node, dw.astype(np.float64), x.mean(axis=(0, 2, 3)).astype(np.float64))
    np.testing.assert_allclose(approx, exact, rtol=0.2, atol=0.02)      # channel mean instead of per-tap window means
