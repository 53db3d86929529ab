"""[passes.quantize] ops: static QDQ on every op ONNX Runtime's registry lists ("all") or on the MatMul/Gemm
inputs only ("matmul", what `auto` picks for token-id models): where the Q/DQ pairs go, that the smoothing
then covers every MatMul activation, and that a transformer-like residual stream with one huge channel keeps
its accuracy only under "matmul"."""
from __future__ import annotations

import numpy as np
import pytest

from edgecompile.compiler.config import QuantizeSection, resolve_quantize_ops
from edgecompile.data import Dataset
from edgecompile.passes.quantize import Quantize

from tests.passes.test_graph_passes_text import parse, run

D, F = 16, 32
# a post-LN encoder block's FFN: norm -> MatMul -> Relu -> MatMul -> residual Add
FFN = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, {D}] x) => (float[N, {D}] y) <float[{D}] gamma, float[{D}] beta, float[{D}, {F}] w1, float[{F}, {D}] w2> {{
    n = LayerNormalization<axis = -1>(x, gamma, beta)
    h = MatMul(n, w1)
    a = Relu(h)
    f = MatMul(a, w2)
    y = Add(f, x)
}}
"""


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return dict(gamma=np.ones(D, np.float32), beta=np.zeros(D, np.float32),
                w1=rng.normal(0, 0.3, (D, F)).astype(np.float32), w2=rng.normal(0, 0.3, (F, D)).astype(np.float32))


def feeds(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    x[:, 3] *= 200.0            # the residual stream's huge channel (BERT-class encoders have a few)
    return {"x": x}


def quantize(ops: str, smooth_alpha=0.0):
    section = QuantizeSection(mode="static", ops=ops, smooth_alpha=smooth_alpha, equalize=False,
                              bias_correction=False, calibrate="minmax")
    return Quantize(section, backend="ort", calibration=Dataset("ffn", feeds(256, 1)))(parse(FFN, **weights()))


def producers(model) -> dict:
    return {v.name: n for n in model.graph for v in n.outputs}


def test_matmul_ops_put_qdq_on_matmul_inputs_only():
    result = quantize("matmul")
    assert result.modified and result.notes["quantized_ops"] == 2
    prod = producers(result.model)
    for node in result.model.graph:
        if node.op_type == "DequantizeLinear":
            assert {u.node.op_type for u in node.outputs[0].uses()} == {"MatMul"}, node.name
        if node.op_type == "QuantizeLinear" and node.inputs[0].name in prod:
            assert prod[node.inputs[0].name].op_type not in ("MatMul", "Gemm"), node.name   # outputs stay float
    # under "all" the MatMul outputs, the Relu and the Add get pairs too
    everything = quantize("all")
    q_inputs = {producers(everything.model).get(n.inputs[0].name).op_type for n in everything.model.graph
                if n.op_type == "QuantizeLinear" and n.inputs[0].name in producers(everything.model)}
    assert "MatMul" in q_inputs


def test_matmul_ops_keep_a_huge_residual_channel_accurate():
    before = parse(FFN, **weights())
    probe = feeds(128, 7)
    ref = run(before, probe)
    err = {ops: float(np.abs(run(quantize(ops).model, probe) - ref).mean()) for ops in ("all", "matmul")}
    assert err["matmul"] < 0.2 * err["all"], err


def test_static_matmul_smoothing_covers_every_matmul_activation():
    """Under ops = "matmul" the smoothing also divides the Relu output feeding the second MatMul; under "all"
    (and in dynamic INT8) only norm outputs are smoothed."""
    assert quantize("matmul", 0.5).notes["smoothing"]["smoothed"] == 2
    assert quantize("all", 0.5).notes["smoothing"]["smoothed"] == 1
    before = parse(FFN, **weights())
    probe = feeds(32, 9)
    smoothed = quantize("matmul", 0.5)
    assert np.abs(run(smoothed.model, probe) - run(before, probe)).mean() < 0.05 * np.abs(run(before, probe)).mean()


@pytest.mark.parametrize("dtypes, want", [(["int64", "int64"], "matmul"), (["float32"], "all"),
                                          (["int64", "float32"], "all"), ([], "all")])
def test_ops_auto_resolves_from_the_inputs(dtypes, want):
    assert QuantizeSection().ops == "auto"
    assert resolve_quantize_ops("auto", dtypes) == want
    assert resolve_quantize_ops("all", ["int64"]) == "all"          # an explicit choice is kept


def test_smoothing_alpha_default_follows_the_quantization():
    """smooth_alpha unset: 0.95 for static matmul-only INT8 (one range per activation), 0.5 otherwise; an
    explicit value is kept."""
    assert QuantizeSection().smooth_alpha is None
    alpha = lambda **kw: Quantize(QuantizeSection(**kw)).section.smooth_alpha   # noqa: E731
    assert alpha(mode="static", ops="matmul") == 0.95
    assert alpha(mode="static", ops="all") == 0.5
    assert alpha(mode="dynamic", ops="matmul") == 0.5
    assert alpha(mode="static", ops="auto") == 0.5        # the pass alone: auto -> all
    assert alpha(mode="static", ops="matmul", smooth_alpha=0.3) == 0.3


ATTENTION = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, {D}] x) => (float[N, {D}] y) <float[{D}, {D}] wq, float[{D}, {D}] wk, float[{D}, {D}] wv> {{
    q = MatMul(x, wq)
    k = MatMul(x, wk)
    v = MatMul(x, wv)
    kt = Transpose<perm = [1, 0]>(k)
    s = MatMul(q, kt)
    p = Softmax<axis = -1>(s)
    y = MatMul(p, v)
}}
"""


def test_matmul_ops_leave_attention_probabilities_float():
    """The MatMul reading a Softmax (probabilities x V) stays float under "matmul" and is named in the notes;
    the score MatMul (Q x K^T) and the projections are quantized. Under "all" it is quantized."""
    rng = np.random.default_rng(0)
    w = {k: rng.normal(0, 0.3, (D, D)).astype(np.float32) for k in ("wq", "wk", "wv")}
    cal = Dataset("attn", {"x": rng.normal(size=(64, D)).astype(np.float32)})
    section = QuantizeSection(mode="static", ops="matmul", smooth_alpha=0.0, equalize=False, bias_correction=False)
    result = Quantize(section, backend="ort", calibration=cal)(parse(ATTENTION, **w))
    by_output = {n.outputs[0].name: n for n in result.model.graph}
    pv = by_output["y"]
    assert all(i.producer().op_type != "DequantizeLinear" for i in pv.inputs)
    assert result.notes["float_probabilities"] == [pv.name]
    assert by_output["s"].inputs[0].producer().op_type == "DequantizeLinear"
    everything = Quantize(QuantizeSection(mode="static", ops="all", smooth_alpha=0.0, equalize=False,
                                          bias_correction=False), backend="ort", calibration=cal)(parse(ATTENTION, **w))
    y = next(n for n in everything.model.graph if n.outputs[0].name == "y")
    assert y.inputs[0].producer().op_type == "DequantizeLinear" and "float_probabilities" not in everything.notes
