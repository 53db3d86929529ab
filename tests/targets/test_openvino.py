"""The OpenVINO target: IR in the bundle, explicit precision hints, device checks, torch-free runtime."""
import json
import shutil
import warnings

import numpy as np
import pytest

import edgecompile
from edgecompile.compiler.config import Config
from edgecompile.errors import TargetUnavailableError

import openvino  # noqa: E402,F401  (installed by the set-up: a missing one fails the run, naming it)

from edgecompile.targets.openvino import build as ovb  # noqa: E402
from edgecompile.targets.openvino import run as ovt  # noqa: E402

from conftest import run_cli  # noqa: E402


def _build(digits_onnx, out, **kw):
    onnx, npz = digits_onnx
    return edgecompile.build(onnx, target="cpu", backend="openvino", output=out, data=npz, **kw)


@pytest.fixture(scope="module")
def ov_fp32(digits_onnx, tmp_path_factory):
    return _build(digits_onnx, tmp_path_factory.mktemp("ov") / "fp32", threads=1)


@pytest.fixture(scope="module")
def ov_bf16(digits_onnx, tmp_path_factory):
    if not ovt.supports_bf16("CPU"):
        pytest.skip("this CPU lacks BF16 (OpenVINO reports no BF16 capability)")
    return _build(digits_onnx, tmp_path_factory.mktemp("ov") / "bf16", precision="bf16")


@pytest.fixture(scope="module")
def x_test(digits_source):
    return digits_source.dataset("test").inputs["input"]


def _outputs(path, x):
    with edgecompile.runtime.load(path) as r:
        return r(x)


def test_fp32_bundle_is_ir_with_an_explicit_f32_hint(ov_fp32, digits_bundle, x_test):
    m = ov_fp32.manifest
    assert m["backend"] == "openvino" and m["precision"] == "fp32"
    assert {k: v["role"] for k, v in m["artifacts"].items()} == {"model.xml": "model", "model.bin": "weights"}
    opts = m["backend_options"]
    assert opts["device"] == "CPU"
    assert opts["config"] == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_NUM_THREADS": 1}
    assert opts["applied_at_build"]["INFERENCE_PRECISION_HINT"] == "f32"     # what OpenVINO really used
    assert opts["applied_at_build"]["INFERENCE_NUM_THREADS"] == 1
    # real fp32: matches ORT's fp32 outputs far below bf16's ~1e-2 error
    np.testing.assert_allclose(_outputs(ov_fp32.path, x_test), _outputs(digits_bundle.path, x_test),
                               rtol=1e-4, atol=1e-4)
    rep = ov_fp32.report()
    assert rep["accuracy"]["metric"] == "top1" and rep["accuracy"]["delta"] == 0.0
    assert rep["cold_start"]["torch_imported"] is False and rep["latency_ms"]["p50"] > 0


def test_bundle_is_verified_before_openvino_reads_it(ov_fp32, tmp_path):
    dest = tmp_path / "b"
    shutil.copytree(ov_fp32.path, dest)
    with open(dest / "model.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(edgecompile.errors.BundleError, match="sha256"):
        edgecompile.runtime.load(dest)


def test_bf16_runs_in_bf16_and_reports_its_delta(ov_bf16, ov_fp32, x_test):
    b = ov_bf16
    assert b.manifest["precision"] == "bf16"
    assert b.manifest["backend_options"]["applied_at_build"]["INFERENCE_PRECISION_HINT"] == "bf16"
    diff = np.abs(_outputs(b.path, x_test) - _outputs(ov_fp32.path, x_test)).max()
    assert 1e-4 < diff < 0.5          # bf16 arithmetic really happened, and it is still close
    acc = b.report()["accuracy"]
    assert acc["n"] == 360 and abs(acc["delta"]) <= 0.02 and acc["similarity"]["cosine"] > 0.999


def test_bf16_bundle_on_a_cpu_without_bf16_warns_and_runs_f32(ov_bf16, ov_fp32, x_test, monkeypatch):
    b = ov_bf16
    monkeypatch.setattr(ovt, "capabilities", lambda device="CPU": ["FP32", "INT8"])   # the device answer only
    with pytest.warns(RuntimeWarning, match="has no bf16"):
        got = _outputs(b.path, x_test)
    np.testing.assert_allclose(got, _outputs(ov_fp32.path, x_test), rtol=1e-4, atol=1e-4)


def test_precisions_come_from_the_device(monkeypatch):
    t = ovb.OpenVinoTarget()
    assert t.precisions[0] == "fp32"
    assert ("bf16" in t.precisions) == ovt.supports_bf16("CPU")
    monkeypatch.setattr(ovt, "capabilities", lambda device="CPU": ["FP32"])
    assert "bf16" not in t.precisions


def test_unlisted_device_is_a_clear_error_before_any_work(tmp_path):
    absent = next(d for d in ("NPU", "GPU", "GPU.3") if d not in ovt.available_devices())
    with pytest.raises(TargetUnavailableError, match=f"device '{absent}' is not available"):
        edgecompile.build("models/digits", target="cpu", backend="openvino", output=tmp_path / "o",
                          config=Config().with_overrides({"openvino.device": absent}))
    assert not (tmp_path / "o").exists()
    cfg = tmp_path / "edgecompile.toml"
    cfg.write_text(f'[openvino]\ndevice = "{absent}"\n')
    rc, _, err = run_cli("build", "models/digits", "--backend", "openvino", "-c", cfg, "-o", tmp_path / "o")
    assert rc == 1 and "Traceback" not in err and "OpenVINO lists: CPU" in err
    assert not (tmp_path / "o").exists()


def test_runtime_warns_when_the_cpu_features_differ(ov_fp32, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edgecompile.runtime.load(ov_fp32.path).close()          # same machine: silent
    dest = tmp_path / "b"
    shutil.copytree(ov_fp32.path, dest)
    m = json.loads((dest / "manifest.json").read_text())
    flags = set(m["measured_on"]["cpu"]["flags"])
    m["measured_on"]["cpu"]["flags"] = sorted(flags ^ {"amx_int8", "avx512_vnni"})
    (dest / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(RuntimeWarning, match="measured on a CPU with other features"):
        edgecompile.runtime.load(dest).close()


def _has_quantize():
    from edgecompile.compiler import registry

    return registry.has_pass("quantize")


@pytest.mark.skipif(not _has_quantize(), reason="the quantize pass (int8 QDQ) is not in this tree yet")
def test_int8_reads_the_qdq_graph_and_keeps_the_rest_f32(digits_onnx, tmp_path):
    cfg = Config().with_overrides({"openvino.int8_float_hint": "f32"})
    b = _build(digits_onnx, tmp_path / "int8", precision="int8", force=True, config=cfg)
    assert "execution" not in b.manifest["backend_options"]      # pinned: nothing measured
    assert b.manifest["precision"] == "int8" and "int8" in ovb.OpenVinoTarget().precisions
    assert b.manifest["backend_options"]["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    xml = (b.path / "model.xml").read_text()
    assert "FakeQuantize" in xml or 'element_type="u8"' in xml or 'element_type="i8"' in xml
    acc = b.report()["accuracy"]
    assert acc["n"] == 360 and acc["delta"] is not None


@pytest.mark.skipif(not _has_quantize(), reason="the quantize pass (int8 QDQ) is not in this tree yet")
def test_int8_float_ops_hint_is_measured_where_bf16_is_native(digits_onnx, tmp_path):
    """`int8_float_hint = "auto"` (the default): on a CPU where OpenVINO runs bf16 natively, the INT8 graph is
    compiled both ways and the hint kept is the one the recorded measurement favours; elsewhere f32, with
    nothing measured. The report says which."""
    b = _build(digits_onnx, tmp_path / "int8", precision="int8", force=True)
    opts = b.manifest["backend_options"]
    hint = opts["config"]["INFERENCE_PRECISION_HINT"]
    assert opts["applied_at_build"]["INFERENCE_PRECISION_HINT"] == hint
    if not ovt.supports_bf16("CPU"):
        assert hint == "f32" and "execution" not in opts
        return
    note = opts["execution"]["float_ops"]
    assert note.startswith(hint) and "measured here" in note and "cosine" in note
    assert note in (b.path / "report.md").read_text()


def test_int8_bf16_float_ops_when_pinned(digits_onnx, x_test, tmp_path):
    """`int8_float_hint = "bf16"`: bf16 for the float ops without measuring, where the CPU has it; a one-line
    build error where it does not."""
    cfg = Config().with_overrides({"openvino.int8_float_hint": "bf16"})
    if not ovt.supports_bf16("CPU"):
        toml = tmp_path / "ec.toml"
        toml.write_text('[openvino]\nint8_float_hint = "bf16"\n')
        code, out, err = run_cli("build", digits_onnx[0], "--backend", "openvino", "-p", "int8", "--force",
                                 "--data", digits_onnx[1], "-c", toml, "-o", tmp_path / "b")
        assert code != 0 and "int8_float_hint" in err and "Traceback" not in out + err
        assert not (tmp_path / "b").exists()
        return
    b = _build(digits_onnx, tmp_path / "int8", precision="int8", force=True, config=cfg)
    assert b.manifest["backend_options"]["applied_at_build"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert b.manifest["backend_options"]["execution"]["float_ops"].startswith("bf16")
    ref = _outputs(_build(digits_onnx, tmp_path / "f32", precision="int8", force=True,
                          config=Config().with_overrides({"openvino.int8_float_hint": "f32"})).path, x_test)
    got = _outputs(b.path, x_test)
    diff = float(np.abs(np.asarray(got) - np.asarray(ref)).max())
    assert 0 < diff < 0.5                     # the float ops really ran in bf16, and stayed close


def test_bf16_for_float_ops_needs_speed_and_agreement():
    assert ovb.prefer_bf16(f32_ms=3.4, bf16_ms=3.0, cosine=0.9998)
    assert not ovb.prefer_bf16(f32_ms=3.1, bf16_ms=3.0, cosine=0.99999)     # under 5 % faster
    assert not ovb.prefer_bf16(f32_ms=6.0, bf16_ms=3.0, cosine=0.999)       # outputs moved too far


@pytest.mark.skipif(not ovt.supports_bf16("CPU"), reason="OpenVINO runs no native bf16 on this CPU")
def test_weight_only_int8_under_bf16_says_its_activations_are_not_quantized(digits_onnx, x_test, tmp_path):
    """A dynamic (weight-only) INT8 graph under the bf16 hint runs bf16 MatMuls on int8 weights: OpenVINO
    quantizes no activations then (the group size changes nothing), and the manifest and report say so;
    under f32 its activations are quantized per group and nothing is added."""
    pinned = {"openvino.int8_float_hint": "bf16", "passes.quantize.mode": "dynamic"}
    b = _build(digits_onnx, tmp_path / "bf16", precision="int8", force=True, config=Config().with_overrides(pinned))
    execution = b.manifest["backend_options"]["execution"]
    assert execution["activations"].startswith("bf16, not quantized")
    assert execution["activations"] in (b.path / "report.md").read_text()
    import openvino as ov

    name, xs = b.manifest["inputs"][0]["name"], np.split(np.asarray(x_test[:8], np.float32), 8)

    def by_group(hint, g):
        cfg = {**b.manifest["backend_options"]["config"], "INFERENCE_PRECISION_HINT": hint,
               "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(g)}
        req = ov.Core().compile_model(str(b.path / "model.xml"), "CPU", cfg).create_infer_request()
        return np.concatenate([next(iter(req.infer({name: x}).values())).copy() for x in xs])

    np.testing.assert_array_equal(by_group("bf16", 0), by_group("bf16", 16))    # the group size has no effect
    assert not np.array_equal(by_group("f32", 0), by_group("f32", 16))          # it has under f32
    f32 = _build(digits_onnx, tmp_path / "f32", precision="int8", force=True,
                 config=Config().with_overrides({**pinned, "openvino.int8_float_hint": "f32"}))
    assert "execution" not in f32.manifest["backend_options"]
