"""TensorRT build-time checks that run without TensorRT: parser support table, per-node restrictions,
Q/DQ rules (on real ORT-quantized digits graphs), entropy calibration and the calibration cache."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.errors import CompileError
from edgecompile.targets.tensorrt import compat as trt_compat
from edgecompile.targets.tensorrt import ops as trt_ops
from edgecompile.targets.tensorrt import prepare as trt_prepare


def _model(nodes, inputs, outputs, inits=(), opset=20):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                                             helper.make_opsetid("custom", 1)]))


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


# -- the support table -----------------------------------------------------------------------------

def test_support_table_is_tensorrt_10_1():
    assert trt_ops.TRT_VERSION == "10.1" and trt_ops.OPSET_RANGE == (9, 20)
    assert len(trt_ops.SUPPORTED) == 150 and len(trt_ops.UNSUPPORTED) == 46
    assert not set(trt_ops.SUPPORTED) & trt_ops.UNSUPPORTED
    for op in ("Conv", "Gemm", "MatMul", "Relu", "MaxPool", "QuantizeLinear", "DequantizeLinear", "Resize"):
        assert op in trt_ops.SUPPORTED
    for op in ("QLinearConv", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "Unique", "SequenceAt"):
        assert op in trt_ops.UNSUPPORTED
    known = {"f32", "f16", "bf16", "i32", "i64", "i8", "u8", "bool", "f8", "i4"}
    assert all(set(t.split()) <= known for t in trt_ops.SUPPORTED.values())
    assert trt_ops.SUPPORTED["DequantizeLinear"].split() == ["i8", "f8", "i4"]


def test_prepared_digits_graph_is_compatible(trt_bundle):
    model = ir.load(str(trt_bundle.path / "tensorrt" / "model.onnx"))
    rep = trt_compat.check_graph(model)
    assert rep.ok, rep.summary()
    assert rep.nodes == len(list(model.graph)) and not rep.issues


def test_unsupported_nodes_are_listed_with_fallbacks():
    k = numpy_helper.from_array(np.array([5000], np.int64), "k")
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="uniq"),
        helper.make_node("MyOp", ["x"], ["c"], domain="custom", name="plugin"),
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"], name="dyn_slice"),
        helper.make_node("TopK", ["x", "k"], ["tv", "ti"], sorted=0, axis=1, name="topk"),
        helper.make_node("Resize", ["img", "", "scales"], ["r"], mode="cubic", name="resize"),
        helper.make_node("MaxPool", ["img"], ["mp", "mpi"], kernel_shape=[2, 2], name="pool"),
        helper.make_node("QLinearConv", ["a", "b", "c", "d", "e", "f", "g", "h"], ["qc"], name="qconv"),
        helper.make_node("Relu", ["x"], ["ok"], name="fine"),
    ]
    inputs = [_vi("x", [2, 6000]), _vi("starts", [1], TensorProto.INT64), _vi("ends", [1], TensorProto.INT64),
              _vi("axes", [1], TensorProto.INT64), _vi("img", [1, 3, 8, 8]), _vi("scales", [4])]
    outputs = [_vi(n, None) for n in ("u", "c", "s", "tv", "r", "mp", "mpi", "qc", "ok")]
    rep = trt_compat.check_graph(_model(nodes, inputs, outputs, [k]))
    by_node = {}
    for i in rep.errors:
        by_node.setdefault(i.node, []).append(i)
    assert set(by_node) == {"uniq", "plugin", "dyn_slice", "topk", "resize", "pool", "qconv"}
    assert "not supported by the parser" in by_node["uniq"][0].problem
    assert "plugin" in by_node["plugin"][0].fallback
    assert "axes" in by_node["dyn_slice"][0].problem
    assert {i.problem.split()[0] for i in by_node["topk"]} == {"`sorted`", "K=5000"}
    assert "cubic" in by_node["resize"][0].problem
    assert "Indices" in by_node["pool"][0].problem
    assert "QDQ" in by_node["qconv"][0].fallback
    assert not rep.ok and "7 node(s)" in rep.summary()


def test_opset_outside_the_parser_range_is_flagged():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1])], [_vi("y", [1])], opset=21)
    rep = trt_compat.check_graph(m)
    assert [i.op for i in rep.errors] == ["opset"] and "9..20" in rep.errors[0].problem


def test_double_inputs_are_a_warning_not_an_error():
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x", [1], TensorProto.DOUBLE)],
               [_vi("y", [1], TensorProto.DOUBLE)])
    rep = trt_compat.check_graph(m)
    assert rep.ok and rep.issues[0].severity == "warning" and "cast down" in rep.issues[0].problem


# -- Q/DQ rules ------------------------------------------------------------------------------------

def test_symmetric_int8_qdq_passes(quantized):
    rep = trt_compat.check_qdq(quantized["tensorrt"])
    assert rep.ok and not rep.issues, rep.summary()
    assert rep.nodes > 10
    assert trt_compat.check_graph(quantized["tensorrt"]).ok


def test_ort_default_qdq_fails_with_reasons(quantized):
    rep = trt_compat.check_qdq(quantized["ort-default"])
    problems = " | ".join(i.problem for i in rep.errors)
    assert not rep.ok
    assert "zero point must be 0" in problems
    assert "quantized type must be int8, got uint8" in problems
    assert "int32 (bias) dequantization" in problems


def test_int32_bias_dequantize_is_folded_exactly(quantized, digits_source):
    from edgecompile.targets.ort.build import ort_outputs

    qdq = quantized["tensorrt-int32-bias"]
    before = trt_compat.check_qdq(qdq)
    assert {i.problem.split(":")[0] for i in before.errors} == {"int32 (bias) dequantization is unsupported"}
    proto = ir.to_proto(qdq).SerializeToString()
    folded, n = trt_prepare.fold_int32_dequantize(ir.from_proto(ir.to_proto(qdq)))
    assert n == len(before.errors) == 4
    assert trt_compat.check_qdq(folded).ok
    x = digits_source.dataset("test").take(64).inputs["input"]
    np.testing.assert_allclose(ort_outputs(ir.to_proto(folded).SerializeToString(), [{"input": x}])[0],
                               ort_outputs(proto, [{"input": x}])[0], rtol=1e-5, atol=1e-5)


def test_q_without_dq_and_wrong_weight_axis_are_flagged():
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w")
    ws = numpy_helper.from_array(np.full(3, 0.1, np.float32), "ws")       # per-channel on axis 1: wrong
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
        helper.make_node("Relu", ["xq"], ["bad"], name="relu_on_int8"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=1, name="dq_w"),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"),
    ]
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 4, 4, 4]), _vi("bad", None, TensorProto.INT8)],
               [w, ws, s, z])
    rep = trt_compat.check_qdq(m)
    problems = {(i.node, i.problem.split(";")[0].split(":")[0]) for i in rep.errors}
    assert ("q_x", "QuantizeLinear output feeds Relu") in problems
    assert any(n == "dq_w" and "axis 1 feeding Conv" in p for n, p in problems)


def test_graph_without_qdq_is_a_warning():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1])], [_vi("y", [1])])
    rep = trt_compat.check_qdq(m)
    assert rep.ok and rep.issues[0].severity == "warning"


def test_strip_qdq_gives_the_simulated_float_graph(quantized, digits_source):
    from edgecompile.targets.ort.build import ort_outputs

    qdq = quantized["tensorrt"]
    fp, removed = trt_prepare.strip_qdq(qdq)
    assert removed > 10
    assert not trt_compat.has_qdq(fp)
    assert [v.name for v in fp.graph.outputs] == [v.name for v in qdq.graph.outputs]
    x = digits_source.dataset("test").take(128).inputs["input"]
    a = ort_outputs(ir.to_proto(fp).SerializeToString(), [{"input": x}])[0]
    b = ort_outputs(ir.to_proto(qdq).SerializeToString(), [{"input": x}])[0]
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95


# -- calibration -----------------------------------------------------------------------------------

def test_entropy_threshold_clips_rare_outliers_but_not_a_uniform_range():
    rng = np.random.default_rng(0)
    edges = np.linspace(0, 10, trt_prepare.HIST_BINS + 1)
    uniform = np.histogram(rng.uniform(0, 10, 200_000), bins=trt_prepare.HIST_BINS, range=(0, 10))[0]
    assert trt_prepare.entropy_amax(uniform, edges) > 9.5
    tailed = np.abs(rng.normal(0, 1, 200_000))
    tailed = np.concatenate([tailed, [10.0]])                          # one outlier sets the range
    hist = np.histogram(tailed, bins=trt_prepare.HIST_BINS, range=(0, 10))[0]
    amax = trt_prepare.entropy_amax(hist, edges)
    assert 2.0 < amax < 6.0


def test_calibration_cache_format():
    assert trt_prepare.version_number("10.1") == 100100
    assert trt_prepare.version_number("10.3.0.26") == 100300
    assert trt_prepare.version_number("8.6.1") == 8601
    assert trt_prepare.scale_hex(127.0) == "3f800000"                 # scale 1.0, big-endian float32
    text = trt_prepare.calibration_cache_text({"input": 1.0, "conv_out": 12.7}, "10.1")
    assert text.splitlines() == ["TRT-100100-EntropyCalibration2", "input: 3c010204", "conv_out: 3dcccccd"]
    header, scales = trt_prepare.parse_calibration_cache(text)
    assert header == "TRT-100100-EntropyCalibration2"
    assert scales["conv_out"] == pytest.approx(0.1) and scales["input"] == pytest.approx(1 / 127)
    with pytest.raises(CompileError):
        trt_prepare.parse_calibration_cache("garbage\n")


# -- build plan ------------------------------------------------------------------------------------

def test_build_plan_settings_and_validation(trt_bundle):
    from edgecompile.compiler.config import Config
    from edgecompile.targets.profiles import get_profile

    model = ir.load(str(trt_bundle.path / "tensorrt" / "model.onnx"))
    cfg = Config.from_dict({"tensorrt": {"dla_core": 1, "min_batch": 1, "opt_batch": 4, "max_batch": 16,
                                         "workspace_mb": 256}}).tensorrt
    plan = trt_prepare.build_plan(model, precision="fp16", int8_mode=None, profile=get_profile("jetson"), cfg=cfg,
                                  onnx_file="tensorrt/model.onnx", calibration_file=None, compatibility={}, qdq=None)
    assert plan["flags"] == ["FP16", "GPU_FALLBACK"]
    assert plan["dla"] == {"core": 1, "gpu_fallback": True}
    assert plan["workspace_bytes"] == 256 << 20
    assert plan["profiles"] == [{"input": {"min": [1, 1, 8, 8], "opt": [4, 1, 8, 8], "max": [16, 1, 8, 8]}}]
    assert plan["device"]["sm"] == 87
    bad = Config.from_dict({"tensorrt": {"dla_core": 2}}).tensorrt
    with pytest.raises(CompileError, match="dla_core 2 does not exist"):
        trt_prepare.build_plan(model, precision="fp16", int8_mode=None, profile=get_profile("jetson"), cfg=bad,
                               onnx_file="m", calibration_file=None, compatibility={}, qdq=None)
    with pytest.raises(CompileError, match="DLA runs fp16 or int8"):
        trt_prepare.build_plan(model, precision="fp32", int8_mode=None, profile=get_profile("jetson"), cfg=cfg,
                               onnx_file="m", calibration_file=None, compatibility={}, qdq=None)
    bad = Config.from_dict({"tensorrt": {"min_batch": 4, "opt_batch": 2}}).tensorrt
    with pytest.raises(CompileError, match="min_batch <= opt_batch"):
        trt_prepare.input_profiles(model, bad)


def test_simulated_int8_tells_good_ranges_from_bad(trt_bundle, digits_source):
    model = ir.load(str(trt_bundle.path / "tensorrt" / "model.onnx"))
    amax = trt_prepare.calibrate(model, digits_source.dataset("calibration"), samples=256)
    sim = trt_prepare.simulate_implicit_int8(model, amax)
    assert sum(n.op_type == "QuantizeLinear" for n in sim.graph) == len(amax) - 1     # all but the output
    good = trt_prepare.estimate_implicit_int8(model, amax, digits_source.dataset("test"))
    clipped = trt_prepare.estimate_implicit_int8(model, {k: v / 20 for k, v in amax.items()},
                                                 digits_source.dataset("test"))
    assert good["top1_agreement"] >= 0.97 and good["output_cosine"] > 0.99
    assert clipped["top1_agreement"] < 0.5
