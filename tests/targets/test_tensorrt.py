"""The jetson target end to end: bundles built here (engine deferred, TVM AArch64 fallback), the
runtime's choice on this host, `edgecompile engine`, explicit-INT8 Q/DQ graphs; and the paths that
need TensorRT + an NVIDIA GPU (marked needs_tensorrt, skipped here with the reason)."""
from __future__ import annotations

import json
import platform

import numpy as np
import onnx_ir as ir
import pytest

from conftest import run_cli
from edgecompile.runtime.bundle import Bundle
from edgecompile.compiler.writer import BundleWriter
from edgecompile.errors import BundleError, CompileError
from edgecompile.targets.tensorrt import build as trt_build
from edgecompile.targets.tensorrt import run as trt_target

ENGINE = trt_target.engine_availability()
needs_tensorrt = pytest.mark.skipif(not ENGINE.ok, reason=f"needs TensorRT and an NVIDIA GPU: {ENGINE.reason}")
needs_tensorrt_marker = pytest.mark.needs_tensorrt


def _has_tvm_fallback() -> bool:
    try:
        from edgecompile.targets.tvm.build import compile_library  # noqa: F401
    except ImportError:
        return False
    return True


needs_tvm = pytest.mark.skipif(not _has_tvm_fallback(),
                               reason="edgecompile.targets.tvm.compile_library (TVM backend issue) is not merged yet")


def test_jetson_fp16_bundle_holds_plan_and_says_what_runs_where(trt_bundle):
    m = trt_bundle.manifest
    assert m["target"] == "jetson-orin" and m["backend"] == "tensorrt" and m["precision"] == "fp16"
    roles = {info["role"]: rel for rel, info in m["artifacts"].items()}
    assert roles["trt-onnx"] == "tensorrt/model.onnx" and roles["trt-build-plan"] == "tensorrt/build_plan.json"
    assert "trt-calibration-cache" not in roles
    Bundle.open(trt_bundle.path)                                     # every artifact verifies
    plan = json.loads((trt_bundle.path / "tensorrt" / "build_plan.json").read_text())
    assert plan["flags"] == ["FP16"] and plan["int8"] is None and plan["device"]["sm"] == 87
    assert plan["profiles"][0]["input"]["max"] == [8, 1, 8, 8]
    assert m["backend_options"]["tensorrt_plan"]["flags"] == ["FP16"]
    assert "the ONNX stays fp32" in m["backend_options"]["execution"]["gpu"]
    onnx_model = ir.load(str(trt_bundle.path / "tensorrt" / "model.onnx"))
    assert all(v.dtype == ir.DataType.FLOAT for v in onnx_model.graph.inputs)
    status = m["artifact_status"]
    assert status["tensorrt/build_plan.json"]["state"] == "built"
    if not ENGINE.ok:
        assert status["tensorrt engine"]["state"] == "deferred"
        assert ENGINE.reason in status["tensorrt engine"]["why"]
        assert "trt-engine" not in roles
    report = trt_bundle.report()
    assert report["artifact_status"] == status
    assert "aarch64" in report["skipped"]                            # nothing measurable on this x86 host
    assert "tensorrt engine" in (trt_bundle.path / "report.md").read_text()


@needs_tvm
def test_jetson_bundle_has_the_aarch64_fallback_library(trt_bundle):
    m = trt_bundle.manifest
    assert m["artifacts"]["fallback/cpu.so"]["role"] == "cpu-fallback"
    assert m["artifact_status"]["fallback/cpu.so"]["state"] == "built"
    assert "fp32" in m["backend_options"]["execution"]["cpu_fallback"]
    head = (trt_bundle.path / "fallback" / "cpu.so").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183     # EM_AARCH64


def test_jetson_int8_cli_build_uses_a_calibration_cache(trt_int8_build):
    rc, stdout, stderr, out = trt_int8_build
    assert rc == 0, stderr
    assert "tensorrt engine" in stdout and "int8" in stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"] == "int8"
    plan = json.loads((out / "tensorrt" / "build_plan.json").read_text())
    graph = ir.load(str(out / "tensorrt" / "model.onnx"))
    from edgecompile.targets.tensorrt.compat import check_qdq, has_qdq

    if has_qdq(graph):                 # the quantize pass produced an explicit Q/DQ graph
        assert plan["int8"]["mode"] == "explicit" and check_qdq(graph).ok, check_qdq(graph).summary()
        assert plan["checks"]["qdq"]["ok"] and "tensorrt/calibration.cache" not in m["artifacts"]
    else:                              # no Q/DQ (quantize pass absent): implicit INT8 from our calibration cache
        assert plan["int8"]["mode"] == "implicit" and plan["int8"]["calibration_cache"] == "tensorrt/calibration.cache"
        assert m["artifacts"]["tensorrt/calibration.cache"]["role"] == "trt-calibration-cache"
    assert plan["flags"] == ["INT8", "FP16"]


def test_runtime_on_this_host_explains_why_it_cannot_run(trt_bundle):
    from edgecompile.runtime import load

    if ENGINE.ok or platform.machine() == "aarch64":
        pytest.skip(
            "needs a host without TensorRT and not aarch64 (this one can run the engine or the AArch64 fallback)"
        )
    with pytest.raises(BundleError) as exc:
        load(trt_bundle.path)
    msg = exc.value.message
    assert "TensorRT is unavailable here" in msg and ENGINE.reason in msg
    if _has_tvm_fallback():
        assert "aarch64" in msg and platform.machine() in msg
    else:
        assert "no CPU fallback" in msg


def test_engine_command_without_tensorrt_is_a_one_line_error(trt_bundle, digits_bundle):
    if ENGINE.ok:
        pytest.skip("needs a host without TensorRT (TensorRT is available here)")
    rc, _, err = run_cli("engine", trt_bundle.path)
    assert rc == 1 and err.startswith("error: cannot build the TensorRT engine here") and "Traceback" not in err
    assert not (trt_bundle.path / "cache").exists()
    rc, _, err = run_cli("engine", digits_bundle.path)
    assert rc == 1 and "no TensorRT engine" in err


def _compile(model, tmp_path, digits_source, precision="int8", evaluation=None, **tensorrt):
    from edgecompile.compiler.config import Config
    from edgecompile.progress import Progress
    from edgecompile.targets.base import BuildContext
    from edgecompile.targets.profiles import get_profile

    cfg = Config.from_dict({"tensorrt": {"cpu_fallback": False, **tensorrt}})
    writer = BundleWriter(tmp_path / "b")
    ctx = BuildContext(writer=writer, profile=get_profile("jetson-xavier"), config=cfg, precision=precision,
                       source=digits_source, calibration=digits_source.dataset("calibration"),
                       evaluation=evaluation, progress=Progress(quiet=True))
    return trt_build.TensorRtTarget().compile(model, ctx), writer


def test_explicit_int8_from_a_qdq_graph(quantized, tmp_path, digits_source):
    arts, writer = _compile(quantized["tensorrt"], tmp_path, digits_source)
    try:
        plan = json.loads((writer.staging / "tensorrt" / "build_plan.json").read_text())
        assert plan["int8"]["mode"] == "explicit" and plan["int8"]["calibration_cache"] is None
        assert plan["device"]["sm"] == 72 and plan["checks"]["qdq"]["ok"]
        assert "tensorrt/calibration.cache" not in arts.files
        assert arts.notes["artifact_status"]["fallback/cpu.so"]["state"] == "skipped"
    finally:
        writer.abort()


def test_non_tensorrt_qdq_and_mode_mismatches_are_compile_errors(quantized, trt_bundle, tmp_path, digits_source):
    with pytest.raises(CompileError, match="fails TensorRT's Q/DQ rules"):
        _compile(quantized["ort-default"], tmp_path / "a", digits_source)
    fp32 = ir.load(str(trt_bundle.path / "tensorrt" / "model.onnx"))
    with pytest.raises(CompileError, match="needs a Q/DQ graph"):
        _compile(fp32, tmp_path / "c", digits_source, int8="explicit")


def test_implicit_int8_writes_a_calibration_cache_for_every_activation(trt_bundle, quantized, tmp_path,
                                                                       digits_source):
    from edgecompile.targets.tensorrt import prepare as trt_prepare

    fp32 = ir.load(str(trt_bundle.path / "tensorrt" / "model.onnx"))
    for name, model in (("fp32", fp32), ("qdq", quantized["tensorrt"])):
        arts, writer = _compile(model, tmp_path / name, digits_source, int8="implicit",
                                evaluation=digits_source.dataset("test"))
        try:
            text = (writer.staging / "tensorrt" / "calibration.cache").read_text()
            header, scales = trt_prepare.parse_calibration_cache(text)
            graph = ir.load(str(writer.staging / "tensorrt" / "model.onnx"))
            plan = json.loads((writer.staging / "tensorrt" / "build_plan.json").read_text())
        finally:
            writer.abort()
        assert header == "TRT-100100-EntropyCalibration2"
        assert (
            plan["int8"]["mode"] == "implicit" and arts.files["tensorrt/calibration.cache"] == "trt-calibration-cache"
        )
        assert list(scales) == trt_prepare.activation_names(graph)
        assert scales["input"] == pytest.approx(1 / 127)          # digits pixels are in [0, 1]
        assert all(s > 0 for s in scales.values())
        assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.graph)
        est = arts.notes["artifact_status"]["tensorrt/calibration.cache"]["estimate"]
        assert est["n"] == 360 and est["top1_agreement"] >= 0.97 and est["output_cosine"] > 0.99
    assert "Q/DQ removed" in arts.notes["artifact_status"]["tensorrt/model.onnx"]["why"]


def test_unsupported_graph_ships_with_the_engine_skipped(tmp_path, digits_source):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Unique", ["input"], ["logits"], name="u")], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    model = ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    arts, writer = _compile(model, tmp_path, digits_source, precision="fp16")
    try:
        st = arts.notes["artifact_status"]["tensorrt engine"]
        assert st["state"] == "skipped" and "Unique" in st["why"]
        checks = json.loads((writer.staging / "tensorrt" / "checks.json").read_text())
        assert checks["compatibility"]["issues"][0]["node"] == "u"
    finally:
        writer.abort()


def test_engine_key_and_lookup_order():
    assert trt_target.engine_key("10.3.0", (8, 7), "ab" * 32) == "10.3.0-sm87-" + "ab" * 8


# -- needs TensorRT + an NVIDIA GPU ----------------------------------------------------------------

@needs_tensorrt_marker
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_build_run_and_cache(trt_bundle, trt_int8_bundle, tmp_path, digits_source, precision):
    import shutil

    from edgecompile.targets.ort.build import ort_outputs

    src = trt_bundle.path if precision == "fp16" else trt_int8_bundle
    bundle_dir = tmp_path / "b"
    shutil.copytree(src, bundle_dir)
    info = trt_target.prebuild(bundle_dir)
    assert info["origin"] in ("built", "bundled")
    if info["origin"] == "built":
        assert list((bundle_dir / "cache" / "tensorrt").glob("timing-*.cache"))
        assert trt_target.prebuild(bundle_dir)["origin"] == "cached"
    from edgecompile.runtime import load

    x = digits_source.dataset("test").take(64).inputs["input"]
    with load(bundle_dir) as runner:
        assert isinstance(runner, trt_target.TrtRunner)
        y = runner(x)
    ref = ort_outputs((bundle_dir / "tensorrt" / "model.onnx").read_bytes(), [{"input": x}])[0]
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.95


@needs_tvm
def test_fallback_runs_on_an_aarch64_host(trt_bundle, digits_source):
    if platform.machine() != "aarch64" or ENGINE.ok:
        pytest.skip(f"needs an aarch64 host without TensorRT (the AArch64 fallback; this is {platform.machine()}, "
                    f"TensorRT {'available' if ENGINE.ok else 'absent'})")
    from edgecompile.runtime import load

    with pytest.warns(RuntimeWarning, match="TVM CPU fallback"):
        runner = load(trt_bundle.path)
    with runner:
        y = runner(digits_source.dataset("test").take(8).inputs["input"])
    assert y.shape == (8, 10) and np.isfinite(y).all()
