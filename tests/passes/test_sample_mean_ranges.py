"""Per-sample mean extremes (TensorStats.add_samples / sample_mean_range, collected in calibration's first pass) and
calibrate = "sample-mean": the rare outlier samples that set min-max (and that the MSE search keeps) do not set
the range; each sample's own extremes, averaged, do."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from edgecompile.compiler.calibration import TensorStats, collect_stats
from edgecompile.compiler.config import QuantizeSection
from edgecompile.data import Dataset
from edgecompile.passes.quantize import Quantize


def test_each_sample_adds_its_own_extremes():
    s = TensorStats(-4.0, 9.0)
    s.add_samples(np.array([[[1.0, 2.0], [3.0, 9.0]], [[-4.0, 0.5], [0.5, 0.5]]]), 2)   # two samples
    assert (s.samples, s.lo_sum, s.hi_sum) == (2, -3.0, 9.5)
    assert s.sample_mean_range == (-1.5, 4.75)
    s.add_samples(np.array([[5.0, 6.0, 7.0]]), 4)          # first axis is not the 4 samples: one sample
    assert s.samples == 3 and s.sample_mean_range == (0.0, pytest.approx(5.5))   # mean min 2/3 > 0: 0
    positive = TensorStats(1.0, 2.0)
    positive.add_samples(np.array([[1.0, 2.0]]), 1)
    assert positive.sample_mean_range == (0.0, 2.0)        # zero stays representable
    assert TensorStats(-1.0, 3.0).sample_mean_range == (-1.0, 3.0)   # no samples: min-max


def test_calibration_collects_per_sample_extremes():
    proto = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n'
                                    "g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }")
    x = np.random.default_rng(0).normal(size=(70, 3)).astype(np.float32)
    stats = collect_stats(proto, ["x", "y"], [{"x": x[:50]}, {"x": x[50:]}], histograms=False)
    y = np.maximum(x, 0)
    assert stats["y"].samples == 70 and stats["x"].samples == 70
    assert stats["y"].sample_mean_range == (0.0, pytest.approx(y.max(axis=1).mean(), rel=1e-6))
    assert stats["x"].sample_mean_range[0] == pytest.approx(x.min(axis=1).mean(), rel=1e-6)
    assert (stats["x"].lo, stats["x"].hi) == (pytest.approx(x.min()), pytest.approx(x.max()))


MLP = """<ir_version: 8, opset_import: ["" : 17]>
mlp (float[N, 64, 16] x) => (float[N, 64, 8] y) <float[16, 16] w1, float[16, 8] w2> {
    h = MatMul(x, w1)
    r = Relu(h)
    y = MatMul(r, w2)
}"""


def outlier_model(outlier_weight: float) -> ir.Model:
    """Channel 0 of `r` is 20 in a tenth of the samples (0..1 elsewhere); w2's row 0 says how much the
    output cares about it."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 16)).astype(np.float32) / 4
    w1[0, :], w1[:, 0], w1[0, 0] = 0.0, 0.0, 1.0
    w2 = rng.normal(size=(16, 8)).astype(np.float32)
    w2[0, :] = outlier_weight
    proto = onnx.parser.parse_model(MLP)
    proto.graph.initializer.extend([numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return ir.from_proto(proto)


def outlier_data(n: int = 200) -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 64, 16)).astype(np.float32)
    x[:, :, 0] = np.where(rng.random((n, 1)) < 0.1, 20.0, rng.uniform(0, 1, (n, 64)))
    return Dataset("range-choice-outliers", {"x": x})


def r_top(result) -> float:
    """The top of the quantized range of `r` (uint8 from zero: 255 steps)."""
    q = next(n for n in result.model.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == "r")
    assert int(q.inputs[2].const_value.numpy()) == 0
    return 255 * float(q.inputs[1].const_value.numpy())


def test_sample_mean_ranges_follow_the_typical_sample_search_keeps_the_outliers():
    data = outlier_data()
    x = data.inputs["x"]
    r = np.maximum(x @ outlier_model(0.0).graph.initializers["w1"].const_value.numpy(), 0)
    typical = float(r.reshape(len(r), -1).max(axis=1).mean())
    found = {}
    for method in ("sample-mean", "search"):
        section = QuantizeSection(calibrate=method, equalize=False, bias_correction=False)
        result = Quantize(section, backend="ort", calibration=data)(outlier_model(0.0))
        found[method] = (r_top(result), result.notes)
    top, notes = found["sample-mean"]
    assert top == pytest.approx(typical, rel=0.02) and top < 10 and notes["calibrate"] == "sample-mean"
    assert found["search"][0] > 10                 # the MSE search keeps the 20s of the outlier samples
    assert notes["float_outputs"] == ["y"] and notes["ranges_clipped"] >= 1


def test_sample_mean_is_a_calibration_method():
    from edgecompile.compiler.calibration import compute_ranges

    s = TensorStats(-10.0, 20.0)
    s.add_samples(np.array([[-1.0, 2.0], [-3.0, 20.0], [-10.0, 1.0]]), 3)
    assert compute_ranges({"t": s, "y": s}, "sample-mean", keep=("y",)) == {"t": (-14 / 3, 23 / 3), "y": (-10.0, 20.0)}
