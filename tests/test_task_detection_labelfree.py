"""Label-free detection metric (issue 25): a detector built on data without boxes is scored by mAP
against the FP32 reference's detections (pseudo ground truth), reported as agreement, and that metric
drives the accuracy-aware fallback (its ranking included) instead of output cosine."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgecompile
from edgecompile.compiler.config import Config
from edgecompile.data import Dataset
from edgecompile.verify.evaluate import Evaluation, choose_metric, compare
from edgecompile.verify.metrics import get_metric

SPEC = {"kind": "detection", "decode": "centernet", "classes": ["a", "b"], "stride": 4, "size_unit": 16.0,
        "input_size": [64, 64], "score_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100, "peak_kernel": 3,
        "mean": [0.5] * 3, "std": [0.25] * 3, "scale": 1 / 255}


def _maps(n=40, seed=0):
    """Two well-separated objects per image: class 0 (score 0.9) and class 1 (score 0.8), plus a weak
    class-1 peak (0.1) below the pseudo-truth threshold."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((n, 6, 16, 16), np.float32)
    for i in range(n):
        for k, (y, x, s) in enumerate([(3, 3, 0.9), (11, 11, 0.8)]):
            maps[i, k, y, x] = s
            maps[i, 2:4, y, x] = rng.uniform(0.8, 1.6, 2)
            maps[i, 4:6, y, x] = rng.uniform(0, 1, 2)
        maps[i, 1, 3, 12] = 0.1
        maps[i, 2:4, 3, 12] = 1.0
    return maps


def _ds(labels=None, meta=True):
    x = np.zeros((40, 3, 64, 64), np.float32)
    return Dataset("det", {"input": x}, labels, meta={"detection": SPEC} if meta else {})


def test_unlabelled_detection_data_choose_map_agreement_not_cosine():
    assert choose_metric("map", _ds(), False).name == "map_agreement"
    assert choose_metric("map50", _ds(), False).name == "map50_agreement"
    assert choose_metric("map", _ds(meta=False), False).name == "output_cosine"     # nothing to decode with
    assert choose_metric("map", _ds(np.full((40, 2, 5), -1.0, np.float32)), False).name == "map"


def test_map_agreement_scores_the_candidate_against_the_references_detections():
    ref = _maps()
    same = compare(ref.copy(), ref, _ds(), get_metric("map_agreement"), "fp32")
    assert isinstance(same, Evaluation) and same.reference == 1.0 and same.candidate == 1.0
    ag = same.detection["agreement"]
    assert ag["boxes"] == 80 and ag["threshold"] == 0.3 and "not accuracy" in ag["note"]   # the 0.1 peaks left out
    assert set(same.beside) == {"map50_agreement"}

    shifted = ref.copy()
    shifted[20:, 4:6] += 0.5          # half the images: every box moved by half a cell (2 px)
    ev = compare(shifted, ref, _ds(), get_metric("map_agreement"), "fp32")
    assert ev.reference == 1.0 and 0.3 < ev.candidate < 0.95
    assert ev.beside["map50_agreement"]["candidate"] > ev.candidate       # IoU .5 forgives a 2 px shift
    assert ev.drop() == pytest.approx(100 * (1 - ev.candidate))          # points, as the bound is stated
    lost = ref.copy()
    lost[:, 0] = 0.0                  # class 0 never detected: its AP is 0
    assert compare(lost, ref, _ds(), get_metric("map_agreement"), "fp32").candidate == pytest.approx(0.5)


@pytest.fixture(scope="module")
def unlabelled_build(tmp_path_factory):
    from edgecompile.models.shapes import load_split

    tmp = tmp_path_factory.mktemp("unlabelled")
    np.savez(tmp / "images.npz", input=load_split("test").inputs["input"][:120])    # images only, no boxes
    bundle = edgecompile.build("models/shapes", "cpu", backend="ort", data=tmp / "images.npz", output=tmp / "b",
                               config=Config().with_overrides({"report.formats": ["json", "md", "html"]}))
    return bundle, tmp / "images.npz"


def test_a_detector_built_without_boxes_reports_map_agreement(unlabelled_build):
    bundle, _ = unlabelled_build
    rep = json.loads((bundle.path / "report.json").read_text())
    acc = rep["accuracy"]
    assert acc["metric"] == "map_agreement" and acc["reference"] == 1.0
    assert acc["candidate"] > 0.98                       # ORT FP32 against torch FP32: the same detections
    assert acc["detection"]["agreement"]["boxes"] > 100 and acc["detection"]["images"] == 120
    md = (bundle.path / "report.md").read_text()
    html = (bundle.path / "report.html").read_text()
    assert "Agreement, not accuracy" in md and "Agreement, not accuracy" in html and "reference boxes" in md


def test_gate_on_unlabelled_data_checks_map_agreement_with_the_baseline(unlabelled_build, tmp_path):
    import shutil

    from conftest import run_cli
    from test_task_detection import _noise_on_one_conv

    from edgecompile.verify.regression import check, make_baseline, save_baseline

    bundle, npz = unlabelled_build
    base = make_baseline(bundle.path, data=npz, measure_latency=False)
    assert base["metric"]["name"] == "map_agreement" and base["metric"]["value"] == 1.0
    assert len(base["per_sample"]) == 120
    path = save_baseline(base, tmp_path / "baseline.json")
    results = [check(bundle.path, path, data=npz) for _ in range(3)]
    assert all(r.ok for r in results) and results[0].candidate_value == 1.0
    bad = tmp_path / "degraded"
    shutil.copytree(bundle.path, bad)
    _noise_on_one_conv(bad, std_factor=0.6)
    code, out, err = run_cli("check", bad, "--baseline", path, "--data", npz)
    assert code == 3, out + err
    assert "map_agreement" in out + err and "Traceback" not in err


@pytest.mark.slow
def test_fallback_on_unlabelled_data_ranks_by_map_agreement(tmp_path, monkeypatch):
    """The fragile detector (tests/models/fragile_shapes, cross-layer equalization off: it rescales the
    outlier channel away) built on images without boxes: the precision search ranks layer groups by
    map_agreement and keeps the fragile conv float (minutes on 2 cores)."""
    from pathlib import Path

    from edgecompile.compiler import precision as precision_stage
    from edgecompile.models.shapes import load_split

    monkeypatch.setattr(precision_stage, "measurably_slower", lambda lat: False)
    np.savez(tmp_path / "images.npz", input=load_split("test").inputs["input"][:200])
    fragile = Path(__file__).resolve().parent / "models" / "fragile_shapes"
    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 5.0, "passes.quantize.equalize": False,
                                   "data.calibration": "fragile_shapes:calibration"})    # equalization defuses it
    bundle = edgecompile.build(str(fragile), "cpu", backend="ort", precision="int8", config=cfg,
                               data=tmp_path / "images.npz", output=tmp_path / "f")
    rep = json.loads((bundle.path / "report.json").read_text())
    assert rep["quantization"]["metric"] == "map_agreement" and rep["quantization"]["metric_drop"] > 3
    search = rep["precision_notes"]["precision_search"]
    assert search["ranked_by"] == "metric_drop" and search["method"].startswith("map_agreement drop")
    sens = search["sensitivity"]
    man = json.loads((bundle.path / "manifest.json").read_text())
    assert rep["precision"] == "mixed" and search["found"] and sens[0]["node"] in man["float_nodes"]
    assert search["steps"][-1]["metric_drop"] <= 5.0       # agreement at IoU up to .95 is strict: a 5 pt bound
    assert rep["accuracy"]["metric"] == "map_agreement"


def test_compare_scores_unlabelled_detection_sides_on_map_agreement():
    from edgecompile.verify.compare import Side, _task_metric

    side = Side("a", "onnx", "", [], ["maps"], "map", run=lambda *a, **k: [], onnx=lambda: None)
    ref = _maps()
    moved = ref.copy()
    moved[20:, 4:6] += 0.5
    res = _task_metric(side, side, _ds(), ref, moved)
    assert res["metric"] == "map_agreement" and res["a"] == 1.0 and 0.3 < res["b"] < 0.95
    assert _task_metric(side, side, _ds(meta=False), ref, moved)["metric"] == "output_cosine"
