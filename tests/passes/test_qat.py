"""QAT (issue 7): fake-quant module pass -> QDQ export -> int8 bundle with the FP32/PTQ/QAT comparison."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest

from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def qat_cli_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "digits-qat"
    rc, stdout, stderr = run_cli("build", "models/digits", "--target", "cpu", "--backend", "ort", "--precision", "int8",
                                 "--quantize", "qat", "--qat-epochs", "3", "-o", out, cwd=REPO)
    assert rc == 0, stderr
    return out, stdout + stderr


@pytest.fixture(scope="module")
def base_module(digits_source):
    return digits_source.module().eval()


def _ctx(digits_source, backend="ort", **kw):
    from edgecompile.passes.base import PassContext

    args = dict(config=None, profile=None, backend=backend, source=digits_source,
                calibration=digits_source.dataset("calibration"), evaluation=digits_source.dataset("test"),
                train=digits_source.dataset("train"))
    args.update(kw)
    return PassContext(**args)


def test_cli_qat_bundle_is_qdq_int8_with_the_fp32_ptq_qat_comparison(qat_cli_bundle):
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.runtime import load

    out, log = qat_cli_bundle
    bundle = Bundle.open(out)                                       # every artifact verifies
    assert bundle.manifest["precision"] == "int8" and bundle.manifest["requested_precision"] == "int8"
    model = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    # weights are stored as int8 initializers that are only dequantized (PTQ's layout)
    inits = {i.name: i for i in model.graph.initializer}
    dq_out = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    compute = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(compute) == 4
    for node in compute:
        dq = dq_out[node.input[1]]
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in inits for n in model.graph.node)

    report = json.loads((out / "report.json").read_text())
    q = report["quantization"]
    assert q["mode"] == "qat" and q["preset"] == "ort" and q["epochs"] == 3 and q["weights_folded"] == 4
    cmp_ = q["qat"]
    assert cmp_["metric"] == "top1" and cmp_["data"] == "digits:test"
    # the targets: QAT >= PTQ and within 0.3 pt of FP32 (torch, and the ORT-measured bundle)
    assert cmp_["qat"] >= cmp_["ptq"] and cmp_["qat"] >= cmp_["fp32"] - 0.003
    assert report["accuracy"]["candidate"] >= report["accuracy"]["reference"] - 0.003
    md = (out / "report.md").read_text()
    assert "| top1 fp32 / ptq / qat |" in md and "3 QAT epochs" in md
    with load(out) as runner:
        x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
        assert runner.run({"input": x})["logits"].shape == (3, 10)


def test_act_qparams_follow_ort_qdq_convention():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    from edgecompile.passes.module.qat import act_qparams

    for lo, hi in ((-0.5, 3.0), (0.0, 1.0), (0.2, 4.0), (-2.0, -0.1)):
        zp, scale = compute_scale_zp(np.float32(min(lo, 0)), np.float32(max(hi, 0)), np.uint8(0), np.uint8(255),
                                     symmetric=False)
        s, z, qmin, qmax = act_qparams(lo, hi, unsigned=True, symmetric=False)
        assert (qmin, qmax) == (0, 255) and z == int(zp) and s == pytest.approx(float(scale), rel=1e-6)
    s, z, qmin, qmax = act_qparams(-1.0, 2.54, unsigned=False, symmetric=True)       # TensorRT preset
    assert (z, qmin, qmax) == (0, -128, 127) and s == pytest.approx(2.54 / 127)


def test_tensorrt_preset_uses_symmetric_int8_activations_and_train_step(digits_source, base_module):
    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.module.qat import QuantizationAwareTraining

    calls = []

    def step(module, epoch):
        calls.append((epoch, module.training))

    ctx = _ctx(digits_source, backend="tensorrt", options={"train_step": step})
    res = QuantizationAwareTraining(QuantizeSection(mode="qat", qat_epochs=2))(copy.deepcopy(base_module), ctx)
    assert calls == [(0, True), (1, True)]
    wrappers = [m for m in res.module.modules() if m.__class__.__name__ == "FakeQuantized"]
    assert len(wrappers) == 4 and res.notes["batchnorm_folded"] == 3
    assert all(int(w.act_zero_point) == 0 and (w.act_qmin, w.act_qmax) == (-128, 127) for w in wrappers)
    assert res.notes["preset"] == "tensorrt" and res.notes["trained_with"] == "train_step (Python API)"
    # a no-op train step leaves the PTQ-initialised model: the same metric
    c = res.notes["comparison"]
    assert c["ptq"] == c["qat"] and c["fp32"] == 1.0
    # ranges come from the PTQ calibrator over the calibration split: the first layer sees pixels in [0, 1]
    assert res.notes["ranges"]["layer0"] == [0.0, 1.0]
    assert not any(p.requires_grad for p in res.module.parameters())


def test_calibration_method_changes_the_initial_ranges(digits_source, base_module):
    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.module.qat import QuantizationAwareTraining

    def ranges(method):
        sec = QuantizeSection(mode="qat", qat_epochs=0, calibrate=method, percentile=99.0)
        return QuantizationAwareTraining(sec)(copy.deepcopy(base_module), _ctx(digits_source)).notes["ranges"]

    mm, pc, sm = ranges("minmax"), ranges("percentile"), ranges("sample-mean")
    assert all(pc[k][1] <= mm[k][1] for k in mm) and any(pc[k][1] < mm[k][1] for k in mm)
    # each sample's own max, averaged: below the one largest sample's in the hidden layers
    assert all(sm[k][1] <= mm[k][1] for k in mm) and any(sm[k][1] < 0.95 * mm[k][1] for k in mm)


def test_qat_needs_training_data_or_a_train_step(digits_source, base_module):
    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.errors import ConfigError, DataError
    from edgecompile.passes.module.qat import QuantizationAwareTraining

    with pytest.raises(DataError, match="labelled training data"):
        QuantizationAwareTraining(QuantizeSection(mode="qat"))(copy.deepcopy(base_module),
                                                               _ctx(digits_source, train=None))
    with pytest.raises(ConfigError, match="qat_epochs"):
        QuantizationAwareTraining(QuantizeSection(mode="qat", qat_epochs=-1))


def test_fold_weight_quantize_keeps_outputs_and_stores_int8(tmp_path):
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from edgecompile.passes.module.qat_graph import fold_weight_quantize
    from edgecompile.targets.ort.build import ort_outputs

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
         helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0),
         helper.make_node("Conv", ["x", "wd"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(np.zeros(4, np.int8), "z")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    feeds = [{"x": rng.normal(size=(2, 3, 6, 6)).astype(np.float32)}]
    before = ort_outputs(proto.SerializeToString(), feeds)[0]
    model = ir.from_proto(proto)
    assert fold_weight_quantize(model) == 1
    folded = ir.to_proto(model)
    assert [n.op_type for n in folded.graph.node] == ["DequantizeLinear", "Conv"]
    assert {i.name: i.data_type for i in folded.graph.initializer}["w_quantized"] == TensorProto.INT8
    assert "w" not in {i.name for i in folded.graph.initializer}
    np.testing.assert_array_equal(ort_outputs(folded.SerializeToString(), feeds)[0], before)


def test_qat_epochs_are_part_of_the_cache_keys():
    from edgecompile.compiler.config import Config
    from edgecompile.compiler.plan import export_key, make_plan

    base = Config().with_overrides({"model.source": "models/digits", "build.precision": "int8",
                                    "passes.quantize.mode": "qat"})
    p1 = make_plan(base, output=None, data=None, options={})
    p2 = make_plan(base.with_overrides({"passes.quantize.qat_epochs": 5}), output=None, data=None, options={})
    assert p1.bundle_id() != p2.bundle_id() and export_key(p1) != export_key(p2)


def test_cli_rejects_negative_qat_epochs():
    rc, _, err = run_cli("build", "models/digits", "--precision", "int8", "--quantize", "qat",
                         "--qat-epochs", "-1", cwd=REPO)
    assert rc == 2 and "qat-epochs" in err and "Traceback" not in err


def test_a_qat_graph_is_never_offered_as_fp32(qat_cli_bundle):
    """Automatic backend choice asks the precision stage for fp32 baselines: a Q/DQ graph from QAT
    must not come back labelled fp32."""
    from types import SimpleNamespace

    import onnx_ir as ir

    from edgecompile.compiler import precision
    from edgecompile.compiler.config import Config

    out, _ = qat_cli_bundle
    model = ir.load(str(out / "model.onnx"))
    cfg = Config().with_overrides({"passes.quantize.mode": "qat"})
    plan = SimpleNamespace(precision="fp32", config=cfg, target=SimpleNamespace(precisions=("fp32", "int8")),
                           backend="ort")
    m, achieved, notes = precision.apply(plan, model, None, [], None)
    assert achieved == "int8" and "QAT" in notes["reason"]
    plain = SimpleNamespace(precision="fp32", config=Config(), target=plan.target, backend="ort")
    assert precision.apply(plain, model, None, [], None)[1] == "fp32"     # PTQ/other modes: unchanged
