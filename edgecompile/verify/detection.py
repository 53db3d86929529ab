"""Detection metrics: COCO mAP@[.5:.95] (`map`, the one that gates) and mAP@.5 (`map50`), both
fractions 0-1, computed with pycocotools (its conventions: 101-point interpolated precision,
maxDets 100, area range "all"; boxes converted to its [x, y, w, h]).

Raw model outputs are decoded with the bundle's detection front-end spec (the same numpy code
`runner.detect` runs). Labels are [N, B, 5] arrays (x1, y1, x2, y2, class; rows with class < 0 pad).

For confidence intervals and the paired regression gate, `MatchTable` re-implements COCO's
greedy matching once per image, so that mAP over a bootstrap resample of the images is a weighted
cumulative sum rather than a new COCOeval run; a test checks it against pycocotools.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100

Dets = list[tuple[np.ndarray, np.ndarray, np.ndarray]]     # per image: boxes [K, 4], classes [K], scores [K]


def decode_outputs(outputs: np.ndarray, spec: dict) -> Dets:
    from edgecompile.runtime.detect import decode

    return decode(outputs, spec)


def ground_truth(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    lab = np.asarray(labels, np.float64)
    out = []
    for row in lab:
        keep = row[:, 4] >= 0
        out.append((row[keep, :4], row[keep, 4].astype(np.int64)))
    return out


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def coco_map(dets: Dets, gts, classes: list[str]) -> dict:
    """pycocotools' bbox evaluation: {"map", "map50", "per_class": [{class, ap, ap50, gt}], "images"}."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1} for i in range(len(gts))]
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(classes)]
    anns = []
    for i, (boxes, cls) in enumerate(gts):
        for b, c in zip(boxes, cls):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
    results = [{"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
               for i, (boxes, cls, scores) in enumerate(dets) for b, c, s in zip(boxes, cls, scores)]
    gt_count = [int(sum(int((c == k).sum()) for _, c in gts)) for k in range(len(classes))]
    if not results or not anns:
        return {"map": 0.0, "map50": 0.0, "images": len(gts),
                "per_class": [{"class": n, "ap": 0.0, "ap50": 0.0, "gt": g} for n, g in zip(classes, gt_count)]}
    with _quiet():
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": cats}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]                 # [T, R, K, A, M]; A=0 "all", M=-1 maxDets 100

    def mean_valid(p):
        p = p[p > -1]
        return float(p.mean()) if p.size else float("nan")

    per_class = [{"class": n, "ap": mean_valid(prec[:, :, k, 0, -1]), "ap50": mean_valid(prec[0, :, k, 0, -1]),
                  "gt": gt_count[k]} for k, n in enumerate(classes)]
    return {"map": float(max(ev.stats[0], 0.0)), "map50": float(max(ev.stats[1], 0.0)), "images": len(gts),
            "per_class": per_class}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class MatchTable:
    """Every kept detection's image, class, score and TP flag per IoU threshold; GT counts per image/class."""

    image: np.ndarray        # [D]
    cls: np.ndarray          # [D]
    score: np.ndarray        # [D]
    tp: np.ndarray           # [D, T] bool
    gt: np.ndarray           # [N, C] int
    num_classes: int

    @classmethod
    def build(cls, dets: Dets, gts, num_classes: int) -> MatchTable:
        img, cl, sc, tps = [], [], [], []
        gt_counts = np.zeros((len(gts), num_classes), np.int64)
        for i, ((boxes, dc, ds), (gboxes, gc)) in enumerate(zip(dets, gts)):
            for k in range(num_classes):
                g = np.asarray(gboxes)[gc == k]
                gt_counts[i, k] = len(g)
                sel = np.nonzero(dc == k)[0]
                sel = sel[np.argsort(-ds[sel], kind="mergesort")][:MAX_DETS]
                if not sel.size:
                    continue
                d = np.asarray(boxes, np.float64)[sel]
                ious = _iou(d, np.asarray(g, np.float64)) if len(g) else np.zeros((len(d), 0))
                tp = np.zeros((len(d), len(IOU_THRESHOLDS)), bool)
                for t, thr in enumerate(IOU_THRESHOLDS):
                    taken = np.zeros(len(g), bool)
                    for j in range(len(d)):
                        best, m = min(thr, 1 - 1e-10), -1
                        for q in range(len(g)):
                            if taken[q] or ious[j, q] < best:
                                continue
                            best, m = ious[j, q], q
                        if m >= 0:
                            taken[m] = True
                            tp[j, t] = True
                img.append(np.full(len(d), i))
                cl.append(np.full(len(d), k))
                sc.append(np.asarray(ds, np.float64)[sel])
                tps.append(tp)
        cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape)
        return cls(cat(img, 0).astype(np.int64), cat(cl, 0).astype(np.int64), cat(sc, 0),
                   cat(tps, (0, len(IOU_THRESHOLDS))).astype(bool), gt_counts, num_classes)

    def _orders(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per class, once: (image of each detection, TP flags, FP flags) in descending score order."""
        if getattr(self, "_cached", None) is None:
            out = []
            for k in range(self.num_classes):
                sel = np.nonzero(self.cls == k)[0]
                order = sel[np.argsort(-self.score[sel], kind="mergesort")]
                out.append((self.image[order], self.tp[order].astype(np.float64), (~self.tp[order]).astype(np.float64)))
            self._cached = out
        return self._cached

    def map(self, weights: np.ndarray | None = None) -> tuple[float, float]:
        """(mAP@[.5:.95], mAP@.5) with each image counted `weights[i]` times (a bootstrap resample)."""
        w_img = np.ones(len(self.gt)) if weights is None else np.asarray(weights, np.float64)
        aps = []
        for k, (image, tp_flags, fp_flags) in enumerate(self._orders()):
            npos = float((self.gt[:, k] * w_img).sum())
            if npos == 0:
                continue
            order = image
            w = w_img[image][:, None]
            tp = np.cumsum(tp_flags * w, axis=0)
            fp = np.cumsum(fp_flags * w, axis=0)
            ap_t = np.zeros(len(IOU_THRESHOLDS))
            if len(order):
                rec = tp / npos
                prec = tp / np.maximum(tp + fp, np.spacing(1))
                prec = np.maximum.accumulate(prec[::-1], axis=0)[::-1]     # precision envelope
                for t in range(len(IOU_THRESHOLDS)):
                    idx = np.searchsorted(rec[:, t], RECALL_POINTS, side="left")
                    q = np.where(idx < len(order), prec[np.minimum(idx, len(order) - 1), t], 0.0)
                    ap_t[t] = q.mean()
            aps.append(ap_t)
        if not aps:
            return 0.0, 0.0
        a = np.asarray(aps)
        return float(a.mean()), float(a[:, 0].mean())

    def bootstrap(self, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
        """[n_boot, 2] (mAP, mAP@.5) over image resamples."""
        rng = np.random.default_rng(seed)
        n = len(self.gt)
        return np.asarray([self.map(np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(n_boot)])


PSEUDO_TRUTH_SCORE = 0.3       # label-free: reference detections at or above this score are the ground truth


def pseudo_truth(reference_out: np.ndarray, spec: dict, threshold: float | None = None) -> list:
    """Label-free detectors: the reference's detections scoring at least `threshold` (default
    PSEUDO_TRUTH_SCORE) as ground truth, in ground_truth()'s per-image (boxes, classes) form."""
    thr = PSEUDO_TRUTH_SCORE if threshold is None else threshold
    return [(np.asarray(b, np.float64)[s >= thr], np.asarray(c, np.int64)[s >= thr])
            for b, c, s in decode_outputs(reference_out, spec)]


def evaluate_detections(outputs: np.ndarray, labels, spec: dict, n_boot: int = 200) -> dict:
    """pycocotools mAP / mAP@.5 / per-class AP of raw outputs, plus a bootstrap CI of mAP. `labels`: a
    [N, B, 5] array, or ground truth already in per-image (boxes, classes) form (pseudo_truth)."""
    dets = decode_outputs(outputs, spec)
    gts = labels if isinstance(labels, list) else ground_truth(labels)
    res = coco_map(dets, gts, list(spec["classes"]))
    if n_boot:
        boots = MatchTable.build(dets, gts, len(spec["classes"])).bootstrap(n_boot)
        res["ci95"] = [float(v) for v in np.quantile(boots[:, 0], [0.025, 0.975])]
        res["ci95_50"] = [float(v) for v in np.quantile(boots[:, 1], [0.025, 0.975])]
    return res


EXAMPLES = 4               # test images drawn in the report
DRAW_THRESHOLD = 0.3


def detection_evaluation(candidate_out, reference_out, ds, metric, reference_name: str, evaluation_cls):
    """An edgecompile.verify.evaluate.Evaluation for `map` / `map50` (the other one reported beside it).

    `map_agreement` / `map50_agreement` (data without labels): the same mAPs, with the reference's
    detections scoring >= PSEUDO_TRUTH_SCORE as the ground truth -- agreement with the reference, not
    accuracy (the reference's own value is its mAP against itself, 1.0 unless a class has no box)."""
    from edgecompile.errors import DataError
    from edgecompile.verify.metrics import raw_similarity

    spec = (ds.meta or {}).get("detection")
    if spec is None:
        raise DataError(f"metric {metric.name!r} needs detection data: {ds.identity} carries no decoding spec",
                        hint="evaluate a detection model on its bound split, or pass --annotations gt.json")
    agree = metric.name.endswith("_agreement")
    if ds.labels is None and not agree:
        raise DataError(f"metric {metric.name!r} needs ground-truth boxes; {ds.identity} has none",
                        hint="pass labelled data")
    truth = _pseudo_truth(reference_out, spec) if agree else ds.labels
    cand = evaluate_detections(candidate_out, truth, spec)
    ref = cand if reference_out is candidate_out else _reference_result(reference_out, truth, spec)
    base = metric.name.removesuffix("_agreement")
    other = "map50" if base == "map" else "map"
    suffix = "_agreement" if agree else ""
    ev = evaluation_cls(metric.name, True, "percentage", ref[base], cand[base], len(ds),
                        cand["ci95"] if base == "map" else cand["ci95_50"],
                        raw_similarity(candidate_out, reference_out), reference_name, None)
    ev.beside = {other + suffix: {"reference": ref[other], "candidate": cand[other], "delta": cand[other] - ref[other],
                                  "higher_is_better": True}}
    gts = truth if agree else ground_truth(ds.labels)
    ev.detection = {"map": cand["map"], "map50": cand["map50"], "images": cand["images"],
                    "reference": {"map": ref["map"], "map50": ref["map50"]},
                    "per_class": cand["per_class"], "classes": list(spec["classes"]),
                    "draw_threshold": DRAW_THRESHOLD,
                    "examples": examples(ds, decode_outputs(candidate_out[:EXAMPLES], spec), spec, gts[:EXAMPLES])}
    if agree:
        ev.detection["agreement"] = {
            "truth": f"the reference's detections with score >= {PSEUDO_TRUTH_SCORE:g} ({reference_name})",
            "threshold": PSEUDO_TRUTH_SCORE, "boxes": int(sum(len(c) for _, c in truth)),
            "note": "agreement with the reference model, not accuracy: the data carry no ground-truth boxes"}
    return ev


_LAST_REFERENCE: list = []      # (reference array, labels, result): the pass evaluator reuses one reference
_LAST_TRUTH: list = []          # (reference array, pseudo truth) likewise


def _pseudo_truth(reference_out, spec) -> list:
    for ref, truth in _LAST_TRUTH:
        if ref is reference_out:
            return truth
    truth = pseudo_truth(reference_out, spec)
    _LAST_TRUTH[:] = [(reference_out, truth)]
    return truth


def _reference_result(reference_out, labels, spec) -> dict:
    for ref, lab, res in _LAST_REFERENCE:
        if ref is reference_out and lab is labels:
            return res
    res = evaluate_detections(reference_out, labels, spec, n_boot=0)
    _LAST_REFERENCE[:] = [(reference_out, labels, res)]
    return res


def examples(ds, dets: Dets, spec: dict, gts=None) -> list[dict]:
    """The first test images (de-normalised to uint8, PNG base64) with true (`gts`, else the labels')
    and predicted boxes."""
    import base64

    if "mean" not in spec or "std" not in spec:        # a third-party detector's normalisation is unknown
        return []
    x = next(iter(ds.inputs.values()))[: len(dets)]
    out = []
    for i, (boxes, cls, scores) in enumerate(dets):
        img = x[i].transpose(1, 2, 0) * np.asarray(spec["std"], np.float32) + np.asarray(spec["mean"], np.float32)
        img = np.clip(img / spec.get("scale", 1 / 255), 0, 255).round().astype(np.uint8)
        gb, gc = gts[i] if gts is not None else ground_truth(ds.labels[i:i + 1])[0]
        keep = scores >= DRAW_THRESHOLD
        out.append({"width": int(img.shape[1]), "height": int(img.shape[0]),
                    "png_base64": base64.b64encode(png_bytes(img)).decode(),
                    "true": [{"box": [float(v) for v in b], "class": int(c)} for b, c in zip(gb, gc)],
                    "predicted": [{"box": [round(float(v), 2) for v in b], "class": int(c), "score": round(float(s), 3)}
                                  for b, c, s in zip(boxes[keep], cls[keep], scores[keep])]})
    return out


def png_bytes(img: np.ndarray) -> bytes:
    """HWC uint8 RGB -> PNG file bytes (filter 0, zlib)."""
    import struct
    import zlib

    h, w, _ = img.shape
    raw = b"".join(b"\x00" + np.ascontiguousarray(img[y]).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
