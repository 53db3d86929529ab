"""AdaRound: Before -> Expected on a tiny graph (onnx.parser text), exact landing on the quantizer's
integers, and lower reconstruction error than round-to-nearest on a small conv net."""
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgecompile.passes.adaround import AdaRound, Layer, nearest, scales

HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'
S = 1.0 / 127          # the channel's scale: its largest weight is 1.0
# y = x0 * 1.0 + x1 * w1 + x2 * w2 with x2 = 2 * x1. w1 = 10.6 s and w2 = 20.65 s: round-to-nearest
# takes 11 and 21 (output error (0.4 + 2 * 0.35) s x1 = 1.1 s x1); rounding w1 down instead gives
# (-0.6 + 0.7) s x1 = 0.1 s x1, the best of the four choices. The max element keeps its value.
BEFORE = f"""
g (float[N,3] x) => (float[N,1] y)
<float[3,1] w = {{1.0, {10.6 * S!r}, {20.65 * S!r}}}>
{{ y = MatMul(x, w) }}
"""
EXPECTED = f"""
g (float[N,3] x) => (float[N,1] y)
<float[3,1] w = {{1.0, {10 * S!r}, {21 * S!r}}}>
{{ y = MatMul(x, w) }}
"""


def parse(text):
    m = ir.from_proto(onnx.parser.parse_model(HEAD + text))
    for i, n in enumerate(m.graph):
        n.name = n.name or f"n{i}"
    return m


def correlated_feeds(n=2048):
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=n), rng.normal(size=n)
    return [{"x": np.stack([x0, x1, 2 * x1], axis=1).astype(np.float32)}]


def test_learned_rounding_cancels_correlated_errors():
    p = AdaRound(feeds=correlated_feeds(), inputs="fp32", iters=300, batch=256)
    result = p(parse(BEFORE))
    assert result.modified and p.notes["layers"] == 1 and p.notes["kept_nearest"] == 0
    got = result.model.graph.initializers["w"].const_value.numpy()
    want = parse(EXPECTED).graph.initializers["w"].const_value.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert p.notes["mean_heldout_error_ratio"] < 0.2          # (0.1 / 1.1)^2 ~ 0.008


def test_uncorrelated_inputs_keep_round_to_nearest():
    """With independent inputs every weight's error adds up: nearest is optimal, nothing may change."""
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(2048, 3)).astype(np.float32)}]
    p = AdaRound(feeds=feeds, inputs="fp32", iters=300, batch=256)
    result = p(parse(BEFORE))
    w = result.model.graph.initializers["w"].const_value.numpy().ravel()
    np.testing.assert_allclose(w, [1.0, 10.6 * S, 20.65 * S], rtol=1e-6)     # the quantizer rounds these
    assert p.notes["kept_nearest"] == 1 and p.notes["layers"] == 0


NET = """
g (float[N,3,12,12] x) => (float[N,10] y)
<{inits}, int64[2] shape = {{0, -1}}>
{{
  c1 = Conv <pads: ints = [1, 1, 1, 1], strides: ints = [2, 2]> (x, w1, b1)
  r1 = Relu(c1)
  c2 = Conv <pads: ints = [1, 1, 1, 1], group: int = 8> (r1, w2, b2)
  r2 = Relu(c2)
  c3 = Conv(r2, w3, b3)
  p = GlobalAveragePool(c3)
  f = Reshape(p, shape)
  y = Gemm <transB: int = 1> (f, w4, b4)
}}
"""
SHAPES = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 1, 3, 3), "b2": (8,), "w3": (16, 8, 1, 1), "b3": (16,),
          "w4": (10, 16), "b4": (10,)}


def small_net():
    """A conv / depthwise / pointwise / classifier net with random weights of the usual scale."""
    rng = np.random.default_rng(2)
    inits = []
    for name, shape in SHAPES.items():
        std = 0.1 if len(shape) == 1 else 1 / np.sqrt(np.prod(shape[1:]))
        values = ", ".join(f"{v:.6g}" for v in rng.normal(0, std, shape).ravel())
        inits.append(f"float[{','.join(map(str, shape))}] {name} = {{{values}}}")
    return parse(NET.format(inits=", ".join(inits)))


def images(n, seed):
    """Smooth random images (neighbouring pixels correlate, as in photos)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 4, 4)).repeat(3, axis=2).repeat(3, axis=3) + 0.3 * rng.normal(size=(n, 3, 12, 12))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def rounded():
    before = small_net()
    feeds = [{"x": images(64, 3)}, {"x": images(64, 4)}]
    p = AdaRound(feeds=feeds, inputs="fp32", iters=500, batch=256, samples=2048)
    return before, p(small_net()).model, p.notes


def layer_outputs(model, x):
    """{conv/gemm node name: (its input, its output)} of the float model on x."""
    from edgecompile.compiler.calibration import _augmented
    from edgecompile.targets.ort.run import create_session

    nodes = [n for n in model.graph if n.op_type in ("Conv", "Gemm")]
    names = sorted({n.inputs[0].name for n in nodes})
    sess = create_session(_augmented(ir.to_proto(model), names), level="disable")
    outs = dict(zip(names, sess.run(names, {"x": x})))
    return {n.name: outs[n.inputs[0].name] for n in nodes}


def test_reconstruction_error_below_round_to_nearest_on_new_images(rounded):
    """Per layer, on images the pass never saw: ||W x - W_ada x|| < ||W x - W_rtn x|| (fp32 inputs)."""
    before, after, notes = rounded
    assert notes["layers"] >= 3
    x = images(128, 99)
    inputs = layer_outputs(before, x)
    nodes_after = {n.name: n for n in after.graph}
    better = 0
    for node in (n for n in before.graph if Layer.eligible(n)):
        lay = Layer(node, 0)
        s = scales(lay.w, True)
        ada = Layer(nodes_after[node.name], 0).w
        ada = s * nearest(ada, s)                 # what the quantizer makes of it (layers kept at nearest too)
        pos = np.arange(min(4000, lay.positions(inputs[node.name].shape) * len(x)))
        patches = lay.patches(inputs[node.name], pos)
        target = np.einsum("gok,ngk->ngo", lay.w, patches)
        err = {k: float(((np.einsum("gok,ngk->ngo", w, patches) - target) ** 2).mean())
               for k, w in (("rtn", s * nearest(lay.w, s)), ("ada", ada))}
        assert err["ada"] <= err["rtn"] * 1.001, node.name
        better += err["ada"] < 0.9 * err["rtn"]
    assert better >= 3       # measured: 0.46, 0.94, 0.80, 0.19 of nearest's error (depthwise: 9 weights a channel)


def test_the_quantizer_lands_exactly_on_the_learned_integers(rounded):
    """ORT's QDQ insertion of the rounded graph: its int8 weights times its scales give back W' exactly."""
    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.bias_correction import dequantized_weight
    from edgecompile.passes.quantize import Quantize

    _, after, _ = rounded
    feeds = [{"x": images(32, 5)}]
    q = Quantize(QuantizeSection(equalize=False, bias_correction=False, adaround=False),
                 calibration_data=feeds)(after).model
    qnodes = {n.name: n for n in q.graph if n.op_type in ("Conv", "Gemm")}
    for node in (n for n in after.graph if Layer.eligible(n)):
        w = node.inputs[1].const_value.numpy()
        lay = Layer(node, 0)
        ints = lay.w / scales(lay.w, True)
        np.testing.assert_allclose(ints, np.rint(ints), atol=1e-3)    # W' sits on the grid
        np.testing.assert_allclose(dequantized_weight(qnodes[node.name].inputs[1]), w, rtol=1e-5, atol=1e-7)


def test_bad_inputs_option_is_refused():
    with pytest.raises(ValueError, match="inputs"):
        AdaRound(feeds=[], inputs="int8")


def test_config_key_takes_auto_true_or_false():
    from edgecompile.compiler.config import Config
    from edgecompile.errors import ConfigError

    for value in ("auto", True, False):
        assert Config().with_overrides({"passes.quantize.adaround": value}).passes.quantize.adaround is not None
        assert Config().with_overrides({"passes.quantize.adaround": value}).passes.quantize.adaround == value
    with pytest.raises(ConfigError, match="adaround"):
        Config().with_overrides({"passes.quantize.adaround": "yes"})


def test_bias_correction_after_adaround_measures_against_the_original_weights():
    """AdaRound writes the weights onto the grid, so W_q - W in the rounded graph is 0: bias correction
    must use the weights from before AdaRound or it silently does nothing (measured: it did, on Fashion)."""
    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.quantize import Quantize

    feeds = [{"x": images(64, 3)}, {"x": images(64, 4)}]
    p = Quantize(QuantizeSection(equalize=False, adaround=True), calibration_data=feeds)
    notes = p(small_net()).notes
    assert notes["adaround"]["layers"] >= 1
    assert notes["bias_correction"]["layers"] >= 3 and notes["bias_correction"]["mean_abs_shift"] > 1e-5
