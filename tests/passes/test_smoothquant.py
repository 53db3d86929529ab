"""SmoothQuant-style smoothing (passes/smoothquant.py): Before -> Expected on ONNX-text graphs, the
function kept, the activation range flattened, and dynamic INT8 made more accurate on an outlier channel."""
from __future__ import annotations

import numpy as np
import pytest

from edgecompile.compiler.config import QuantizeSection
from edgecompile.data import Dataset
from edgecompile.errors import ConfigError
from edgecompile.passes.quantize import Quantize
from edgecompile.passes.smoothquant import SmoothQuant

from tests.passes.test_graph_passes_text import ops, parse, run

D, H = 16, 8
# post-LN block: the normalised value feeds a MatMul and the residual Add (as in BERT) -> a Mul is inserted
RESIDUAL = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, {D}] x) => (float[N, {H}] y, float[N, {D}] r) <float[{D}] gamma, float[{D}] beta, float[{D}, {H}] w> {{
    n = LayerNormalization<axis = -1>(x, gamma, beta)
    y = MatMul(n, w)
    r = Add(n, x)
}}
"""
# the normalised value read only by the MatMul -> 1/s folds into gamma and beta, no new node
ONLY_MATMUL = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, {D}] x) => (float[N, {H}] y) <float[{D}] gamma, float[{D}] beta, float[{D}, {H}] w> {{
    n = LayerNormalization<axis = -1>(x, gamma, beta)
    y = MatMul(n, w)
}}
"""


def weights(seed=0):
    rng = np.random.default_rng(seed)
    gamma = np.ones(D, np.float32)
    gamma[3] = 40.0                      # an outlier channel after the norm, as in transformer LayerNorms
    return dict(gamma=gamma, beta=rng.normal(0, 0.1, D).astype(np.float32),
                w=rng.normal(0, 0.2, (D, H)).astype(np.float32))


def feeds(n=64, seed=1):
    return {"x": np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)}


def test_mul_inserted_where_the_norm_output_also_feeds_the_residual():
    before = parse(RESIDUAL, **weights())
    p = SmoothQuant([feeds()], alpha=0.5)
    result = p(before)
    assert result.modified and result.notes["mul_inserted"] == 1 and result.notes["folded_into_norm"] == 0
    assert ops(result.model) == ["LayerNormalization", "Mul", "MatMul", "Add"]
    assert ops(before) == ["LayerNormalization", "MatMul", "Add"]           # functional: input untouched
    probe = feeds(8, seed=5)
    for got, want in zip(run_all(result.model, probe), run_all(before, probe)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    s = p.scales["n"]
    assert s[3] > 3 * np.median(s)                                           # the outlier channel is divided most


def test_scale_folds_into_gamma_and_beta_when_the_matmul_is_the_only_reader():
    before = parse(ONLY_MATMUL, **weights())
    result = SmoothQuant([feeds()], alpha=0.5)(before)
    assert result.notes["folded_into_norm"] == 1 and result.notes["mul_inserted"] == 0
    assert ops(result.model) == ["LayerNormalization", "MatMul"]
    probe = feeds(8, seed=5)
    np.testing.assert_allclose(run(result.model, probe), run(before, probe), rtol=1e-4, atol=1e-4)
    gamma = next(n for n in result.model.graph).inputs[1].const_value.numpy()
    assert gamma[3] < 40.0 / 2                                               # the outlier's range moved out


def test_smoothing_makes_dynamic_int8_more_accurate_on_an_outlier_channel():
    before = parse(ONLY_MATMUL, **weights())
    cal = Dataset("ln-mlp", feeds(256))
    probe = feeds(128, seed=7)
    ref = run(before, probe)
    errs = {}
    for alpha in (0.0, 0.5):
        result = Quantize(QuantizeSection(mode="dynamic", smooth_alpha=alpha), backend="ort", calibration=cal)(before)
        assert ("smoothing" in result.notes) == bool(alpha)
        errs[alpha] = float(np.abs(run(result.model, probe) - ref).mean())
    assert errs[0.5] < 0.7 * errs[0.0], errs


def test_dynamic_int8_without_calibration_data_skips_smoothing_and_says_so():
    result = Quantize(QuantizeSection(mode="dynamic"), backend="ort")(parse(ONLY_MATMUL, **weights()))
    assert result.modified and result.notes["smoothing"].startswith("skipped: no calibration data")


def test_graph_without_a_norm_is_left_alone():
    before = parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, {D}] x) => (float[N, {H}] y) <float[{D}, {H}] w> {{
        y = MatMul(x, w)
    }}
    """, w=weights()["w"])
    result = SmoothQuant([feeds()])(before)
    assert not result.modified and ops(result.model) == ["MatMul"]


def test_alpha_outside_unit_interval_is_a_config_error():
    with pytest.raises(ConfigError, match="alpha must be in"):
        SmoothQuant([feeds()], alpha=1.5)


def run_all(model, feed):
    import onnx_ir as ir
    import onnxruntime as ort

    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)
