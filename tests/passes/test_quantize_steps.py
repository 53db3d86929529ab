"""The static quantize pass runs equalization, range search and bias correction, and calibrates
once per graph + data + settings (what `auto`'s backend candidates share)."""
from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from edgecompile.compiler.config import QuantizeSection
from edgecompile.passes.calibration_cache import CALIBRATIONS
from edgecompile.passes.quantize import Quantize
from edgecompile.targets.ort.build import ort_outputs


@pytest.fixture(scope="module")
def digits_fp32(digits_bundle):
    return onnx.load(str(digits_bundle.artifact("model")))


def quantize(proto, cal, section=None, backend="ort", exclude=()):
    p = Quantize(section or QuantizeSection(calibrate="search"), exclude=exclude, backend=backend, calibration=cal)
    r = p(ir.from_proto(proto))
    return r.notes, ir.to_proto(r.model)


def top1(proto, ds) -> float:
    return float((ort_outputs(proto.SerializeToString(), ds.batches(128))[0].argmax(1) == ds.labels).mean())


def test_all_steps_run_and_hold_digits_accuracy(digits_fp32, digits_source):
    CALIBRATIONS.clear()
    cal, test = digits_source.dataset("calibration"), digits_source.dataset("test")
    notes, q = quantize(digits_fp32, cal, QuantizeSection(calibrate="search", equalize=True))
    assert notes["calibrate"] == "search" and sum(notes["range_search"].values()) == notes["tensors_calibrated"]
    assert notes["equalization"]["pairs"] >= 1 and notes["equalization"]["relu6"] == "data"
    assert notes["bias_correction"]["layers"] >= 1
    assert "calibration_reused" not in notes
    assert top1(q, test) >= top1(digits_fp32, test) - 0.01
    default = QuantizeSection()
    assert (default.calibrate, default.bias_correction, default.equalize) == ("search", True, True)


def test_backend_candidates_share_one_calibration(digits_fp32, digits_source, monkeypatch):
    CALIBRATIONS.clear()
    cal = digits_source.dataset("calibration").take(64)
    section = QuantizeSection(calibrate="search", calib_samples=64)
    n1, q1 = quantize(digits_fp32, cal, section, backend="ort")
    calls = []
    monkeypatch.setattr("edgecompile.compiler.calibration.collect_stats", lambda *a, **k: calls.append(1) or {})
    n2, q2 = quantize(digits_fp32, cal, section, backend="openvino")     # same preset as ORT: reused
    assert n2["calibration_reused"] is True and not calls
    assert q1.SerializeToString() == q2.SerializeToString()
    monkeypatch.undo()
    n3, _ = quantize(digits_fp32, digits_source.dataset("calibration").take(32),
                     QuantizeSection(calibrate="search", calib_samples=32))
    assert "calibration_reused" not in n3                                 # other data: calibrated again


def test_backend_candidates_share_learned_rounding(digits_fp32, digits_source, monkeypatch):
    """adaround = "auto" on a reused calibration: the second backend candidate reuses the roundings the
    first one learned instead of learning them again (minutes on MobileNetV2)."""
    from edgecompile.passes.calibration_cache import ROUNDINGS

    CALIBRATIONS.clear()
    ROUNDINGS.clear()
    cal = digits_source.dataset("calibration").take(64)
    section = QuantizeSection(calibrate="minmax", calib_samples=64, equalize=False)
    first, second = (Quantize(section, backend=b, calibration=cal) for b in ("ort", "openvino"))
    first(ir.from_proto(digits_fp32))
    r1 = first.adaround()
    calls = []
    monkeypatch.setattr("edgecompile.passes.adaround.adaround_proto", lambda *a, **k: calls.append(1))
    assert second(ir.from_proto(digits_fp32)).notes["calibration_reused"] is True
    r2 = second.adaround()
    assert not calls and r2.notes["adaround_reused"] is True and "adaround_reused" not in r1.notes
    assert r1.notes["adaround"] == r2.notes["adaround"]
    assert ir.to_proto(r1.model).SerializeToString() == ir.to_proto(r2.model).SerializeToString()
    ROUNDINGS.clear()
    third = Quantize(section, backend="ort", calibration=cal)
    third(ir.from_proto(digits_fp32))
    with pytest.raises(TypeError):            # nothing cached: it learns again (the stub cannot)
        third.adaround()
