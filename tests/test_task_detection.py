"""Issue 25, detection end to end: models/shapes through export, INT8, the runtime's detect(),
mAP (pycocotools) in the report with per-class AP and drawn boxes, and the baseline/check gate."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli

import edgecompile
from edgecompile.compiler.config import Config


@pytest.fixture(scope="module")
def shapes_fp32(tmp_path_factory):
    cfg = Config().with_overrides({"report.formats": ["json", "md", "html"]})
    return edgecompile.build("models/shapes", "cpu", backend="ort", config=cfg,
                             output=tmp_path_factory.mktemp("shapes") / "fp32")


@pytest.fixture(scope="module")
def shapes_int8(tmp_path_factory):
    return edgecompile.build("models/shapes", "cpu", backend="ort", precision="int8", force=True,
                             output=tmp_path_factory.mktemp("shapes8") / "int8")


def _report(bundle) -> dict:
    return json.loads((bundle.path / "report.json").read_text())


def test_committed_weights_match_the_definition():
    """The shipped weights are the ones bench/train_shapes.py makes from this code (else the
    model would silently retrain in every fresh cache)."""
    from edgecompile.models import shapes

    with np.load(shapes.WEIGHTS, allow_pickle=False) as z:
        assert str(z["__key__"]) == shapes.training_key()


def test_fp32_detector_meets_the_map_target(shapes_fp32):
    rep = _report(shapes_fp32)
    man = json.loads((shapes_fp32.path / "manifest.json").read_text())
    acc = rep["accuracy"]
    assert man["metric"] == "map" and man["frontend"]["kind"] == "detection" and man["frontend"]["nms_iou"] == 0.5
    assert acc["metric"] == "map" and acc["kind"] == "percentage" and acc["higher_is_better"] is True
    det = acc["detection"]
    assert det["images"] == 400 and det["map50"] >= 0.80                 # the issue's FP32 target
    assert acc["beside"]["map50"]["candidate"] == det["map50"]
    assert abs(det["map"] - det["reference"]["map"]) < 0.002              # ORT fp32 = torch fp32
    assert [r["class"] for r in det["per_class"]] == ["circle", "square", "triangle"]
    assert all(r["ap"] > 0.3 and r["gt"] > 50 for r in det["per_class"])
    assert acc["ci95"][0] <= det["map"] <= acc["ci95"][1]


def test_report_draws_boxes_and_per_class_ap(shapes_fp32):
    html = (shapes_fp32.path / "report.html").read_text()
    svgs = re.findall(r'<svg class="plot" data-plot="boxes".*?</svg>', html, re.DOTALL)
    assert len(svgs) == 4
    assert all("data:image/png;base64," in s and 'stroke-dasharray="4 3"' in s for s in svgs)   # true boxes dashed
    assert sum(s.count("<rect") for s in svgs) >= 8
    md = (shapes_fp32.path / "report.md").read_text()
    assert "## Detection (mAP, per class, examples)" in md and re.search(r"\| triangle \| 0\.\d{4} \| 0\.\d{4} \|", md)


def test_detect_takes_any_image_size_and_returns_original_pixels(shapes_fp32):
    from edgecompile.models import shapes

    from edgecompile.runtime import load
    from edgecompile.runtime.detect import resize_bilinear
    from edgecompile.verify.detection import ground_truth

    from edgecompile.models.shapes.data import IMG

    images = shapes.raw_images("test")[:30]
    gts = ground_truth(shapes.load_split("test").labels[:30])
    hits = total = 0
    with load(shapes_fp32.path) as runner:
        for img, (gb, gc) in zip(images, gts):
            big = np.clip(resize_bilinear(img, IMG * 3 // 2, IMG * 5 // 2), 0, 255).round().astype(np.uint8)  # H 1.5x
            det = runner.detect(big, score_threshold=0.3)
            assert det.boxes.shape[1] == 4 and len(det.labels) == len(det.scores)
            for b, c in zip(gb * np.array([2.5, 1.5, 2.5, 1.5]), gc):
                total += 1
                same = det.boxes[det.classes == c]
                if len(same):
                    iw = np.clip(np.minimum(same[:, 2], b[2]) - np.maximum(same[:, 0], b[0]), 0, None)
                    ih = np.clip(np.minimum(same[:, 3], b[3]) - np.maximum(same[:, 1], b[1]), 0, None)
                    inter = iw * ih
                    union = (
                        (same[:, 2] - same[:, 0]) * (same[:, 3] - same[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
                    )
                    hits += bool((inter / union).max() >= 0.5)
    assert hits / total >= 0.8, (hits, total)


def test_runtime_detect_does_not_import_torch_onnx_or_pycocotools(shapes_fp32):
    code = ("import sys, numpy as np\n"
            "from edgecompile.runtime import load\n"
            f"r = load({str(shapes_fp32.path)!r})\n"
            "d = r.detect(np.zeros((50, 70, 3), np.uint8))\n"
            "bad = [m for m in ('torch', 'onnx', 'pycocotools', 'click') if m in sys.modules]\n"
            "print(len(d), bad)\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_detect_rejects_a_bad_image_in_one_line(shapes_fp32):
    from edgecompile.errors import DataError
    from edgecompile.runtime import load

    with load(shapes_fp32.path) as runner, pytest.raises(DataError, match="HWC uint8 RGB"):
        runner.detect(np.zeros((3, 64, 64), np.float32))


def test_int8_detector_within_the_issue_bounds(shapes_fp32, shapes_int8):
    d32, d8 = _report(shapes_fp32)["accuracy"]["detection"], _report(shapes_int8)["accuracy"]["detection"]
    man = json.loads((shapes_int8.path / "manifest.json").read_text())
    assert man["precision"] == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(shapes_int8.path / "model.onnx").graph.node)
    assert d8["map50"] >= d32["map50"] - 0.010 and d8["map"] >= d32["map"] - 0.015
    q = _report(shapes_int8)["quantization"]
    assert q["metric"] == "map" and q["metric_drop_unit"] == "pt"


def test_gate_unchanged_passes_20_of_20_and_degraded_conv_fails_on_map(shapes_fp32, tmp_path):
    from edgecompile.verify.regression import check, make_baseline, save_baseline

    base = make_baseline(shapes_fp32.path, measure_latency=False)
    assert base["metric"]["name"] == "map" and len(base["per_sample"]) == 400
    path = save_baseline(base, tmp_path / "baseline.json")
    results = [check(shapes_fp32.path, path) for _ in range(20)]
    assert all(r.ok for r in results), [r.failures for r in results if not r.ok]
    assert results[0].candidate_value == pytest.approx(base["metric"]["value"])

    bad = tmp_path / "degraded"
    shutil.copytree(shapes_fp32.path, bad)
    _noise_on_one_conv(bad, std_factor=0.6)
    code, out, err = run_cli("check", bad, "--baseline", path)
    assert code == 3, out + err
    assert "map" in out + err and "Traceback" not in err


def _noise_on_one_conv(bundle_dir: Path, std_factor: float) -> None:
    """Gaussian noise (std_factor x the weights' std) on the middle Conv's weights; manifest re-hashed."""
    import hashlib

    from onnx import numpy_helper

    path = bundle_dir / "model.onnx"
    m = onnx.load(path)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    target = convs[len(convs) // 2]
    inits = {i.name: i for i in m.graph.initializer}
    w = inits[target.input[1]]
    a = numpy_helper.to_array(w)
    a = a + np.random.default_rng(0).normal(0, std_factor * a.std(), a.shape).astype(np.float32)
    w.CopyFrom(numpy_helper.from_array(a.astype(np.float32), w.name))
    onnx.save(m, path)
    man = json.loads((bundle_dir / "manifest.json").read_text())
    man["artifacts"]["model.onnx"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    man["artifacts"]["model.onnx"]["size"] = path.stat().st_size
    (bundle_dir / "manifest.json").write_text(json.dumps(man))


@pytest.mark.slow
def test_fallback_ranks_layers_by_map_and_keeps_the_fragile_conv_in_float(tmp_path, monkeypatch):
    """Sensitivity re-measured on mAP per conv group (about 2-4 minutes on 2 cores). Latency is taken
    out of the decision: this checks the accuracy half. Calibrated as when the test was written (min-max, no
    cross-layer equalization or bias correction): equalization rescales the fragile conv's outlier channel
    away (INT8 then loses only ~0.4 pt), and this test needs a fragile layer."""
    from edgecompile.compiler import precision as precision_stage

    monkeypatch.setattr(precision_stage, "measurably_slower", lambda lat: False)
    fragile = Path(__file__).resolve().parent / "models" / "fragile_shapes"
    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 1.0, "passes.quantize.equalize": False,
                                   "passes.quantize.bias_correction": False, "passes.quantize.calibrate": "minmax"})
    bundle = edgecompile.build(str(fragile), "cpu", backend="ort", precision="int8", config=cfg, output=tmp_path / "f")
    rep = _report(bundle)
    assert rep["quantization"]["metric"] == "map" and rep["quantization"]["metric_drop"] > 3      # pt of mAP
    search = rep["precision_notes"]["precision_search"]
    assert search["ranked_by"] == "metric_drop" and search["method"].startswith("map drop")
    sens = search["sensitivity"]
    assert sens[0]["metric_drop"] > 3 and sens[0]["metric_drop"] > 3 * max(r["metric_drop"] for r in sens[1:])
    man = json.loads((bundle.path / "manifest.json").read_text())
    assert rep["precision"] == "mixed" and search["found"] and sens[0]["node"] in man["float_nodes"]
    assert search["steps"][-1]["metric_drop"] <= 1.0           # the ORT graph's mAP within the bound
    assert rep["accuracy"]["delta"] >= -0.015                  # the shipped bundle against torch fp32
