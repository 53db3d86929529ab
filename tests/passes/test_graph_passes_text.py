"""Before -> Expected for every graph pass, on small graphs written as ONNX text (onnx.parser).

Each test states the graph a pass is given and the op sequence (and the types that matter) it must
return; they run in milliseconds and need no model package or build."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from edgecompile.compiler.config import Fp16Section, QuantizeSection
from edgecompile.data import Dataset
from edgecompile.passes.fp16 import Float16
from edgecompile.passes.quantize import Quantize
from edgecompile.passes.simplify import Simplify
from edgecompile.targets.ort.build import ort_outputs


def parse(text: str, **initializers: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, value in initializers.items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def run(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort_outputs(ir.to_proto(model).SerializeToString(), [feeds])[0]


MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[N, 4] x) => (float[N, 3] y) <float[4, 8] w1, float[8] b1, float[8, 3] w2> {
    h = MatMul(x, w1)
    hb = Add(h, b1)
    r = Relu(hb)
    y = MatMul(r, w2)
}
"""


def mlp_weights(seed=0):
    rng = np.random.default_rng(seed)
    return dict(w1=rng.normal(size=(4, 8)).astype(np.float32), b1=rng.normal(size=8).astype(np.float32),
                w2=rng.normal(size=(8, 3)).astype(np.float32))


def test_simplify_folds_constants_and_drops_identities():
    before = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) <float[4] a, float[4] b> {
        c = Add(a, b)
        i = Identity(x)
        y = Mul(i, c)
    }
    """, a=np.ones(4, np.float32), b=np.full(4, 2.0, np.float32))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = Simplify()(before)
    assert result.modified
    assert ops(result.model) == ["Mul"]                      # Add of two constants folded, Identity gone
    np.testing.assert_allclose(run(result.model, {"x": x}), x * 3.0)
    assert result.model is not before                        # functional: the input is left as it was
    assert ops(before) == ["Add", "Identity", "Mul"]


def test_fp16_converts_weights_and_keeps_float32_io():
    before = parse(MLP, **mlp_weights())
    result = Float16(Fp16Section(io_types="float32"))(before)
    assert result.modified
    after = result.model
    assert ops(after) == ["Cast", "MatMul", "Add", "Relu", "MatMul", "Cast"]
    assert after.graph.inputs[0].dtype == ir.DataType.FLOAT and after.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert {v.dtype for v in after.graph.initializers.values()} == {ir.DataType.FLOAT16}
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(run(after, {"x": x}), run(parse(MLP, **mlp_weights()), {"x": x}), rtol=2e-2, atol=2e-2)


def test_fp16_leaves_a_graph_without_float32_tensors_unchanged():
    before = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[N] x) => (int64[N] y) {
        y = Neg(x)
    }
    """)
    result = Float16()(before)
    assert not result.modified and ops(result.model) == ["Neg"] and "nothing_to_convert" in result.notes


def _calibration(n=64, seed=2) -> Dataset:
    return Dataset("text-mlp", {"x": np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)})


def test_static_quantize_wraps_matmuls_in_qdq():
    before = parse(MLP, **mlp_weights())
    result = Quantize(QuantizeSection(calibrate="minmax"), backend="ort", calibration=_calibration())(before)
    assert result.modified
    seq = ops(result.model)
    # activations: QuantizeLinear -> DequantizeLinear before each MatMul; weights stored int8 with a DequantizeLinear
    assert seq.count("MatMul") == 2 and seq.count("QuantizeLinear") >= 2
    for mm in (n for n in result.model.graph if n.op_type == "MatMul"):
        assert [i.producer().op_type for i in mm.inputs] == ["DequantizeLinear", "DequantizeLinear"]
    int8 = [v for v in result.model.graph.initializers.values() if v.dtype == ir.DataType.INT8]
    assert int8, "weights are stored as int8"
    x = _calibration().inputs["x"][:16]           # inside the calibrated ranges: only rounding error is left
    ref = run(parse(MLP, **mlp_weights()), {"x": x})
    out = run(result.model, {"x": x})
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    assert result.notes["preset"] == "ort" and result.notes["calibrate"] == "minmax"


def test_tensorrt_preset_gives_symmetric_int8_activations():
    before = parse(MLP, **mlp_weights())
    result = Quantize(QuantizeSection(calibrate="minmax"), backend="tensorrt", calibration=_calibration())(before)
    zps = [n.inputs[2].const_value.numpy() for n in result.model.graph if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)


def test_dynamic_quantize_uses_integer_matmuls():
    before = parse(MLP, **mlp_weights())
    result = Quantize(QuantizeSection(mode="dynamic"), backend="ort")(before)
    assert result.modified
    seq = ops(result.model)
    assert "MatMul" not in seq and "DynamicQuantizeLinear" in seq
    assert {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"} & set(seq)


def test_quantize_leaves_a_graph_without_compute_ops_alone():
    before = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) {
        y = Relu(x)
    }
    """)
    result = Quantize(QuantizeSection(), calibration=_calibration())(before)
    assert not result.modified and ops(result.model) == ["Relu"] and "nothing_to_quantize" in result.notes


def test_static_quantize_without_calibration_data_is_a_data_error():
    from edgecompile.errors import DataError

    with pytest.raises(DataError, match="needs calibration data"):
        Quantize(QuantizeSection())(parse(MLP, **mlp_weights()))


STEM = """
<ir_version: 8, opset_import: ["" : 17]>
cnn (float[N, 3, 8, 8] x) => (float[N, 8, 8, 8] y) <float[8, 3, 3, 3] w1, float[8, 8, 3, 3] w2> {
    [stem] a = Conv <pads = [1, 1, 1, 1]> (x, w1)
    r = Relu(a)
    [body] c = Conv <pads = [1, 1, 1, 1]> (r, w2)
    y = Relu(c)
}
"""


@pytest.mark.parametrize("backend, stems, float_convs", [("ort", None, []), ("openvino", None, []),
                                                         ("ort", 4, ["stem"]), ("openvino", 3, ["stem"])])
def test_static_quantize_keeps_a_3_channel_stem_float_where_the_config_says(backend, stems, float_convs):
    rng = np.random.default_rng(3)
    w = dict(w1=rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.3,
             w2=rng.normal(size=(8, 8, 3, 3)).astype(np.float32) * 0.2)
    calib = Dataset("text-cnn", {"x": rng.random((16, 3, 8, 8)).astype(np.float32)})
    section = QuantizeSection(calibrate="minmax", float_stem_channels=stems)
    result = Quantize(section, backend=backend, calibration=calib)(parse(STEM, **w))
    convs = {n.name: n for n in result.model.graph if n.op_type == "Conv"}
    assert set(convs) == {"stem", "body"}
    weight_from_dq = {k: n.inputs[1].producer() is not None and n.inputs[1].producer().op_type == "DequantizeLinear"
                      for k, n in convs.items()}
    assert weight_from_dq == {"stem": not float_convs, "body": True}
    # the stem's output is still quantized, so the body conv reads an integer tensor
    assert convs["body"].inputs[0].producer().op_type == "DequantizeLinear"
    assert result.notes.get("float_stems", []) == float_convs
    assert result.notes["preset"] == backend + ("" if stems is None else " (overridden)")
    ref = run(parse(STEM, **w), {"x": calib.inputs["x"][:4]})
    assert np.abs(run(result.model, {"x": calib.inputs["x"][:4]}) - ref).max() < 0.05 * np.abs(ref).max()


def test_a_negative_float_stem_channels_is_a_config_error():
    from edgecompile.errors import ConfigError

    with pytest.raises(ConfigError, match="float_stem_channels"):
        Quantize(QuantizeSection(float_stem_channels=-1))


def test_a_wide_3_channel_stem_stays_quantized_with_float_stem_channels():
    wide = STEM.replace("float[N, 8, 8, 8] y", "float[N, 16, 8, 8] y").replace(
        "float[8, 3, 3, 3] w1, float[8, 8, 3, 3] w2", "float[16, 3, 3, 3] w1, float[16, 16, 3, 3] w2")
    rng = np.random.default_rng(4)
    w = dict(w1=rng.normal(size=(16, 3, 3, 3)).astype(np.float32) * 0.3,
             w2=rng.normal(size=(16, 16, 3, 3)).astype(np.float32) * 0.2)
    calib = Dataset("text-cnn", {"x": rng.random((16, 3, 8, 8)).astype(np.float32)})
    result = Quantize(QuantizeSection(calibrate="minmax", float_stem_channels=4), backend="ort",
                      calibration=calib)(parse(wide, **w))
    stem = next(n for n in result.model.graph if n.name == "stem")
    assert stem.inputs[1].producer().op_type == "DequantizeLinear" and "float_stems" not in result.notes
