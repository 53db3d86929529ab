"""The regression gate for detectors (`edgecompile baseline` / `check` on `map` or `map50`).

mAP is a property of the whole evaluation set, so the per-sample results a baseline keeps are each
image's decoded detections. `check` decodes the candidate's detections on the same images and
tests H0: drop <= max_drop (pt) with a paired bootstrap over images: both sides' mAP are recomputed
on the same resamples (edgecompile.verify.detection.MatchTable, equal to pycocotools on the full
set), the replicate drops are re-centred to the null boundary, and the p-value is the share at
least as far above it as the observed drop (+1 correction), like edgecompile.verify.gate.bootstrap_p.

On data without boxes the metric is `map_agreement` / `map50_agreement`: the baseline's own detections
scoring >= PSEUDO_TRUTH_SCORE are the ground truth of both sides (agreement with the baseline, not accuracy).
"""
from __future__ import annotations

import numpy as np

from edgecompile.verify import gate
from edgecompile.verify.detection import (
    PSEUDO_TRUTH_SCORE, MatchTable, coco_map, decode_outputs, ground_truth
)

N_BOOT = 400


def _spec(ds, metric_name: str):
    from edgecompile.errors import DataError

    spec = (ds.meta or {}).get("detection")
    if spec is None or (ds.labels is None and not metric_name.endswith("_agreement")):
        raise DataError(f"{ds.identity}: a detection baseline on {metric_name} needs labelled data with a "
                        "decoding spec", hint="record the baseline on the detector's bound evaluation split")
    return spec


def _truth(ds, baseline_dets, metric_name: str) -> list:
    """The ground truth: the labels, or for map_agreement / map50_agreement (data without boxes) the
    baseline's own detections scoring >= PSEUDO_TRUTH_SCORE -- agreement with the baseline, not accuracy."""
    if not metric_name.endswith("_agreement"):
        return ground_truth(ds.labels)
    return [(b[s >= PSEUDO_TRUTH_SCORE], c[s >= PSEUDO_TRUTH_SCORE]) for b, c, s in baseline_dets]


def serialize(dets) -> list[list[list[float]]]:
    return [[[round(float(v), 3) for v in b] + [int(c), round(float(s), 5)] for b, c, s in zip(*d)] for d in dets]


def deserialize(rows) -> list:
    out = []
    for r in rows:
        a = np.asarray(r, np.float64).reshape(-1, 6)
        out.append((a[:, :4], a[:, 4].astype(np.int64), a[:, 5]))
    return out


def baseline_results(out: np.ndarray, ds, metric_name: str) -> tuple[float, list, list[float]]:
    """(metric value, per-image detections, bootstrap ci95) for a baseline."""
    spec = _spec(ds, metric_name)
    rounded = deserialize(serialize(decode_outputs(out, spec)))     # exactly what the file will hold
    gts = _truth(ds, rounded, metric_name)
    res = coco_map(rounded, gts, list(spec["classes"]))
    boots = MatchTable.build(rounded, gts, len(spec["classes"])).bootstrap(N_BOOT)
    base = metric_name.removesuffix("_agreement")
    col = 0 if base == "map" else 1
    ci = [float(v) for v in np.quantile(boots[:, col], [0.025, 0.975])]
    return res[base], serialize(rounded), ci


def paired_test(base_rows: list, out: np.ndarray, ds, metric_name: str, margin: float,
                seed: int = 0) -> tuple[float, float, gate.TestResult]:
    """(baseline value, candidate value, TestResult) -- values by pycocotools, the test by bootstrap."""
    spec = _spec(ds, metric_name)
    classes = list(spec["classes"])
    base = deserialize(base_rows)
    gts = _truth(ds, base, metric_name)
    cand_rows = serialize(decode_outputs(out, spec))
    metric_name = metric_name.removesuffix("_agreement")
    col = 0 if metric_name == "map" else 1
    vb = coco_map(base, gts, classes)[metric_name]
    if cand_rows == base_rows:     # the same detections: the same mAP on every resample, a drop of exactly 0
        return vb, vb, gate.TestResult("paired bootstrap over images (one-sided): identical detections", 0.0,
                                       margin, 1.0, (0.0, 0.0), len(gts), {"identical_detections": True})
    cand = deserialize(cand_rows)
    vc = coco_map(cand, gts, classes)[metric_name]
    tb, tc = MatchTable.build(base, gts, len(classes)), MatchTable.build(cand, gts, len(classes))
    observed = tb.map()[col] - tc.map()[col]
    rng = np.random.default_rng(seed)
    n = len(gts)
    drops = np.empty(N_BOOT)
    for i in range(N_BOOT):
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        drops[i] = tb.map(w)[col] - tc.map(w)[col]
    if observed <= margin or np.all(drops == drops[0]):
        p = 1.0 if observed <= margin else 0.0
    else:
        p = float((1 + np.sum(drops - drops.mean() >= observed - margin)) / (N_BOOT + 1))
    ci = tuple(float(v) for v in np.quantile(drops, [0.025, 0.975]))
    test = gate.TestResult("paired bootstrap over images (one-sided)", float(vb - vc), margin, p, ci, n,
                           {"matcher_drop": float(observed)})
    return vb, vc, test
