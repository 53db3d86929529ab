"""Detection front-end: `runner.detect(image)` for bundles whose manifest says
`frontend = {"kind": "detection", ...}`. numpy only (no torch, onnx or image libraries).

The manifest's front-end record fixes everything an app would otherwise have to guess:

    {"kind": "detection", "decode": "centernet", "input": "input", "output": "maps",
     "input_size": [H, W], "layout": "NCHW", "scale": 1/255, "mean": [...], "std": [...],
     "resize": "bilinear", "stride": 4, "size_unit": 16.0, "classes": [...],
     "score_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100, "peak_kernel": 3}

`detect` resizes the HWC uint8 RGB image to input_size, normalises it, runs the graph, decodes
heatmap peaks into boxes (centre + offset, width/height), applies class-wise NMS and maps the boxes
back to the original image's pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompile.errors import DataError


@dataclass
class Detections:
    boxes: np.ndarray        # [K, 4] float32, x1 y1 x2 y2 in the original image's pixels
    classes: np.ndarray      # [K] int64
    scores: np.ndarray       # [K] float32
    labels: list[str]        # class names of `classes`

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self) -> list[dict]:
        return [{"box": [round(float(v), 2) for v in b], "class": int(c), "label": n, "score": round(float(s), 4)}
                for b, c, n, s in zip(self.boxes, self.classes, self.labels, self.scores)]


def _taps(n_out: int, n_in: int):
    """Source indices and weights of a 1-D bilinear resize (pixel centres aligned)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    return i0, np.minimum(i0 + 1, n_in - 1), pos - i0


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """HWC float32 bilinear resize (pixel centres aligned, like cv2.INTER_LINEAR without antialias).

    Only the source rows and columns the output reads are gathered (and converted to float), so the cost
    follows the output size, not the input's."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32)
    y0, y1, fy = _taps(height, h)
    x0, x1, fx = _taps(width, w)
    wy, wx = fy[:, None, None], fx[None, :, None]
    rows0, rows1 = image[y0], image[y1]
    top = rows0[:, x0].astype(np.float32) * (1 - wx) + rows0[:, x1].astype(np.float32) * wx
    bot = rows1[:, x0].astype(np.float32) * (1 - wx) + rows1[:, x1].astype(np.float32) * wx
    return top * (1 - wy) + bot * wy


def _normalise(x: np.ndarray, spec: dict) -> np.ndarray:
    x = x * np.float32(spec.get("scale", 1 / 255))
    return (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)


def preprocess(image: np.ndarray, spec: dict, _lut: dict | None = None) -> np.ndarray:
    """HWC uint8 RGB of any size -> [1, 3, H, W] float32 as the manifest says.

    An image already at the input size is normalised through a 256-entry table per channel (the same
    float32 arithmetic, done once per value instead of once per pixel); `_lut` caches that table."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) < 1:
        raise DataError(f"detect() takes an HWC uint8 RGB image, got shape {list(arr.shape)} dtype {arr.dtype}",
                        hint="pass e.g. a numpy array of shape (480, 640, 3) and dtype uint8")
    h, w = spec["input_size"]
    if arr.shape[:2] == (h, w):
        lut = None if _lut is None else _lut.get("table")
        if lut is None:
            lut = np.ascontiguousarray(_normalise(np.arange(256, dtype=np.float32)[:, None], spec).T)   # [3, 256]
            if _lut is not None:
                _lut["table"] = lut
        out = np.empty((1, 3, h, w), np.float32)
        for c in range(3):
            np.take(lut[c], arr[:, :, c], out=out[0, c])
        return out
    x = _normalise(resize_bilinear(arr, h, w), spec)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def window_max(heat: np.ndarray, k: int) -> np.ndarray:
    """k x k max filter (stride 1, same size; cells outside the map do not count) over the last two axes,
    as two 1-D passes of shifted maxima: a handful of vector ops, no padded copy."""
    out = heat.copy()
    for axis in (-1, -2):
        src = out.copy()
        n = heat.shape[axis]
        for d in range(1, min(k // 2, n - 1) + 1):
            lo, hi = [slice(None)] * heat.ndim, [slice(None)] * heat.ndim
            lo[axis], hi[axis] = slice(0, n - d), slice(d, n)
            np.maximum(out[tuple(lo)], src[tuple(hi)], out=out[tuple(lo)])
            np.maximum(out[tuple(hi)], src[tuple(lo)], out=out[tuple(hi)])
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first (ties: lower index first).

    With `classes`, boxes of different classes never suppress each other (class-wise NMS in one pass).
    One pairwise IoU matrix over the (few) candidates, then a loop over the boxes that overlap another only."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    over = ~(inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9) <= iou)    # a NaN IoU suppresses
    if classes is not None:
        c = np.asarray(classes)[order]
        over &= c[:, None] == c[None, :]
    over = np.triu(over, 1)                  # row i: the lower-scored boxes that box i would suppress
    alive = np.ones(n, bool)
    for i in np.flatnonzero(over.any(axis=1)):   # rows that suppress nothing cannot change the outcome
        if alive[i]:                         # earlier rows are final by now: greedy order
            alive &= ~over[i]
    return order[alive]


def decode(maps: np.ndarray, spec: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """CenterNet maps [N, C + 4, h, w] -> per image (boxes [K, 4] in input pixels, classes [K], scores [K]).

    Peaks are cells above the score threshold that equal their k x k window's maximum (a max-pool test);
    the top 4 x max_detections of them by score are decoded to boxes and class-wise NMS runs on that set."""
    if spec.get("decode") == "boxes":          # end-to-end detections from an ONNX detector (--annotations)
        return decode_boxes(maps, spec)
    maps = np.asarray(maps, np.float32)
    c = len(spec["classes"])
    stride, unit = spec["stride"], spec["size_unit"]
    H, W = spec["input_size"]
    k = spec.get("peak_kernel", 3)
    out = []
    for i in range(len(maps)):
        heat = maps[i, :c]
        cls, ys, xs = np.nonzero((heat >= spec["score_threshold"]) & (heat == window_max(heat, k)))
        scores = heat[cls, ys, xs]
        order = np.argsort(-scores, kind="stable")[: 4 * spec["max_detections"]]
        cls, ys, xs, scores = cls[order], ys[order], xs[order], scores[order]
        w_, h_, dx, dy = maps[i, c:c + 4][:, ys, xs]
        bw, bh = w_ * unit, h_ * unit
        cx, cy = (xs + dx) * stride, (ys + dy) * stride
        boxes = np.empty((len(scores), 4), np.float32)     # clip, then round to float32: the same either way
        boxes[:, 0], boxes[:, 2] = np.clip(cx - bw / 2, 0, W), np.clip(cx + bw / 2, 0, W)
        boxes[:, 1], boxes[:, 3] = np.clip(cy - bh / 2, 0, H), np.clip(cy + bh / 2, 0, H)
        keep = nms(boxes, scores, spec["nms_iou"], cls)[: spec["max_detections"]]
        out.append((boxes[keep], cls[keep].astype(np.int64), scores[keep].astype(np.float32)))
    return out


class DetectionFrontend:
    """Bound to a Runner by edgecompile.runtime.load when the manifest's front-end is "detection"."""

    def __init__(self, runner, bundle, spec: dict):
        self.runner = runner
        self.spec = spec
        self._lut: dict = {}             # preprocess's normalisation table, built on first use

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> Detections:
        spec = self.spec
        x = preprocess(image, spec, self._lut)
        maps = self.runner.run({spec["input"]: x})[spec["output"]]
        boxes, classes, scores = decode(maps, spec)[0]
        if score_threshold is not None:
            m = scores >= score_threshold
            boxes, classes, scores = boxes[m], classes[m], scores[m]
        h, w = np.asarray(image).shape[:2]
        H, W = spec["input_size"]
        boxes = boxes * np.asarray([w / W, h / H, w / W, h / H], np.float32)
        return Detections(boxes, classes, scores, [spec["classes"][int(k)] for k in classes])


def decode_boxes(out: np.ndarray, spec: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    arr = np.asarray(out, np.float32)
    if arr.ndim != 3 or arr.shape[2] != 6:
        raise DataError(f"the detector's first output has shape {list(arr.shape)}; --annotations needs end-to-end "
                        "detections [N, K, 6] (x1, y1, x2, y2, score, category_id)",
                        hint="export the model with its decoding and NMS in the graph")
    lookup = {c: k for k, c in enumerate(spec["category_ids"])}
    res = []
    for rows in arr:
        keep = [j for j, r in enumerate(rows) if r[4] > spec["score_threshold"] and int(round(r[5])) in lookup]
        r = rows[keep]
        order = np.argsort(-r[:, 4], kind="stable")[: spec["max_detections"]]
        r = r[order]
        res.append((r[:, :4].copy(), np.asarray([lookup[int(round(c))] for c in r[:, 5]], np.int64),
                    r[:, 4].copy()))
    return res
